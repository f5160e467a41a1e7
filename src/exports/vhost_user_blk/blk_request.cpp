#include "exports/vhost_user_blk/blk_request.hpp"

#include <algorithm>
#include <cstring>

namespace blkstack::vhost_blk {

bool gather(const iovec* iov, int iovcnt, uint64_t skip, void* dst, uint64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int i = 0; i < iovcnt && n > 0; i++) {
    uint64_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    uint64_t take = std::min(len - skip, n);
    std::memcpy(out, static_cast<const uint8_t*>(iov[i].iov_base) + skip, take);
    out += take;
    n -= take;
    skip = 0;
  }
  return n == 0;
}

uint64_t scatter(const iovec* iov, int iovcnt, const void* src, uint64_t n) {
  auto* in = static_cast<const uint8_t*>(src);
  uint64_t done = 0;
  for (int i = 0; i < iovcnt && done < n; i++) {
    uint64_t take = std::min<uint64_t>(iov[i].iov_len, n - done);
    std::memcpy(iov[i].iov_base, in + done, take);
    done += take;
  }
  return done;
}

namespace {

// Drops the first `skip` bytes of iov[0, n): returns the index of the first
// buffer left (trimmed in place).
int skip_front(iovec* iov, int n, uint64_t skip) {
  int i = 0;
  while (i < n && skip >= iov[i].iov_len) {
    skip -= iov[i].iov_len;
    i++;
  }
  if (i < n && skip > 0) {
    iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + skip;
    iov[i].iov_len -= skip;
  }
  return i;
}

BlkRequest done(BlkRequest r, uint8_t status, const char* why) {
  r.op = BlkOp::kDone;
  r.status = status;
  r.why = why;
  r.iov = nullptr;
  r.iovcnt = 0;
  return r;
}

// Offset and length in bytes of sectors [sector, sector + len/512): aligned
// to the logical block and inside the device.
const char* check_range(const BlkLimits& l, uint64_t sector, uint64_t len) {
  if (sector > (UINT64_MAX >> 9)) return "sector out of range";
  uint64_t off = sector << 9;
  if ((off | len) % l.block_size) return "offset or length not a multiple of the block size";
  if (off > l.capacity || len > l.capacity - off) return "request beyond the end of the device";
  return nullptr;
}

}  // namespace

BlkRequest parse_request(vhost::Chain& c, const BlkLimits& l) {
  BlkRequest r;
  // The status byte: the last byte the device may write. Without one there
  // is nothing we can report; the chain is returned with nothing written.
  if (c.n_writable == 0) return done(r, VIRTIO_BLK_S_IOERR, "no device-writable status byte");
  iovec& last = c.iov[c.n_readable + c.n_writable - 1];
  r.status_byte = static_cast<uint8_t*>(last.iov_base) + last.iov_len - 1;
  r.used_len_ok = 1;
  virtio_blk_outhdr hdr;
  if (c.readable_bytes < sizeof(hdr) || !gather(c.readable(), c.n_readable, 0, &hdr, sizeof(hdr))) {
    return done(r, VIRTIO_BLK_S_IOERR, "request header shorter than 16 bytes");
  }
  r.type = hdr.type;
  uint64_t writable_data = c.writable_bytes - 1;  // everything before the status byte
  switch (hdr.type) {
    case VIRTIO_BLK_T_IN: {
      if (const char* e = check_range(l, hdr.sector, writable_data)) return done(r, VIRTIO_BLK_S_IOERR, e);
      // Data: the writable buffers less the status byte.
      last.iov_len -= 1;
      int n = c.n_writable - (last.iov_len == 0 ? 1 : 0);
      r.op = BlkOp::kRead;
      r.offset = hdr.sector << 9;
      r.len = writable_data;
      r.iov = c.iov + c.n_readable;
      r.iovcnt = n;
      r.used_len_ok = static_cast<uint32_t>(writable_data + 1);
      if (r.len == 0) return done(r, VIRTIO_BLK_S_OK, nullptr);
      return r;
    }
    case VIRTIO_BLK_T_OUT: {
      if (l.read_only) return done(r, VIRTIO_BLK_S_IOERR, "write to a read-only device");
      uint64_t len = c.readable_bytes - sizeof(hdr);
      if (const char* e = check_range(l, hdr.sector, len)) return done(r, VIRTIO_BLK_S_IOERR, e);
      int first = skip_front(c.iov, c.n_readable, sizeof(hdr));
      r.op = BlkOp::kWrite;
      r.offset = hdr.sector << 9;
      r.len = len;
      r.iov = c.iov + first;
      r.iovcnt = c.n_readable - first;
      if (r.len == 0) return done(r, VIRTIO_BLK_S_OK, nullptr);
      return r;
    }
    case VIRTIO_BLK_T_FLUSH:
      if (!l.flush) return done(r, VIRTIO_BLK_S_UNSUPP, "flush not offered");
      r.op = BlkOp::kFlush;
      return r;
    case VIRTIO_BLK_T_GET_ID: {
      // The id buffer: up to 20 bytes before the status byte.
      last.iov_len -= 1;
      int n = c.n_writable - (last.iov_len == 0 ? 1 : 0);
      r.op = BlkOp::kGetId;
      r.len = std::min<uint64_t>(writable_data, VIRTIO_BLK_ID_BYTES);
      r.iov = c.iov + c.n_readable;
      r.iovcnt = n;
      r.used_len_ok = static_cast<uint32_t>(r.len + 1);
      return r;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      bool discard = hdr.type == VIRTIO_BLK_T_DISCARD;
      if (discard ? !l.discard : !l.write_zeroes) return done(r, VIRTIO_BLK_S_UNSUPP, "request type not offered");
      if (l.read_only) return done(r, VIRTIO_BLK_S_IOERR, "write to a read-only device");
      uint64_t body = c.readable_bytes - sizeof(hdr);
      virtio_blk_discard_write_zeroes seg;
      if (body % sizeof(seg) || body == 0) return done(r, VIRTIO_BLK_S_IOERR, "segment list is not a multiple of 16 bytes");
      // We advertise max_discard_seg = max_write_zeroes_seg = 1.
      if (body > sizeof(seg)) return done(r, VIRTIO_BLK_S_UNSUPP, "more than one segment");
      gather(c.readable(), c.n_readable, sizeof(hdr), &seg, sizeof(seg));
      uint32_t flags = seg.flags;
      if (discard ? flags != 0 : (flags & ~uint32_t{VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}) != 0) {
        return done(r, VIRTIO_BLK_S_UNSUPP, "unsupported segment flags");
      }
      uint32_t max = discard ? l.max_discard_sectors : l.max_write_zeroes_sectors;
      if (seg.num_sectors > max) return done(r, VIRTIO_BLK_S_IOERR, "segment longer than the advertised maximum");
      uint64_t len = uint64_t{seg.num_sectors} << 9;
      if (const char* e = check_range(l, seg.sector, len)) return done(r, VIRTIO_BLK_S_IOERR, e);
      if (discard && l.discard_sector_alignment > 1 &&
          (seg.sector % l.discard_sector_alignment || seg.num_sectors % l.discard_sector_alignment)) {
        return done(r, VIRTIO_BLK_S_IOERR, "discard not aligned to discard_sector_alignment");
      }
      r.op = discard ? BlkOp::kDiscard : BlkOp::kWriteZeroes;
      r.offset = seg.sector << 9;
      r.len = len;
      r.unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
      if (r.len == 0) return done(r, VIRTIO_BLK_S_OK, nullptr);
      return r;
    }
    default:
      return done(r, VIRTIO_BLK_S_UNSUPP, "unsupported request type");
  }
}

}  // namespace blkstack::vhost_blk
