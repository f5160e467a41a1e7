// Request parsing and validation. validate() is the single place that decides
// whether a request reaches the device, so every rule here cites the spec's
// reason in a comment.
#include "exports/nbd/transmission.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>

namespace blkstack::nbd {

Parse parse_request(std::span<const uint8_t> in, bool extended, RequestHeader& out, size_t& consumed) {
  consumed = 0;
  const size_t size = extended ? kExtendedRequestSize : kCompactRequestSize;
  if (in.size() >= 4 && get_be32(in.data()) != (extended ? kExtendedRequestMagic : kRequestMagic))
    return Parse::kBadMagic;
  if (in.size() < size) return Parse::kNeedMore;
  const uint8_t* p = in.data();
  out.flags = get_be16(p + 4);
  out.type = get_be16(p + 6);
  out.cookie = get_be64(p + 8);
  out.offset = get_be64(p + 16);
  out.length = extended ? get_be64(p + 24) : get_be32(p + 24);
  consumed = size;
  return Parse::kOk;
}

uint64_t payload_discard_limit(const ExportInfo& e) {
  return std::max<uint64_t>(e.max_block, kDefaultMaxPayload);
}

Verdict validate(const RequestHeader& r, const Negotiated& n) {
  Verdict v;
  const ExportInfo& e = *n.exp;
  const uint16_t tf = n.transmission_flags;
  const bool chunks = n.structured_replies || n.extended_headers;

  // Whether a payload follows is fixed by the header alone: the type in
  // compact mode, NBD_CMD_FLAG_PAYLOAD_LEN in extended mode. It must be known
  // before anything else so that a rejected request can still be skipped.
  // A WRITE always carries its data: the extension says an extended WRITE
  // MUST set PAYLOAD_LEN, but QEMU's client (9.0 to at least 10.0) never
  // does, and QEMU's server accepts that. So do we; refusing would also
  // leave the data to be misread as request headers.
  if (r.type == kCmdWrite || (n.extended_headers && (r.flags & kCmdFlagPayloadLen))) {
    v.payload_follows = true;
    v.payload_len = r.length;
  }
  if (r.type == kCmdDisc) {  // no reply; the client sends nothing more
    v.disconnect = true;
    v.payload_follows = false;
    v.payload_len = 0;
    return v;
  }
  auto fail = [&v](uint32_t err) {
    v.error = err;
    return v;
  };
  if (v.payload_follows && v.payload_len > payload_discard_limit(e)) {
    // Too big to read past: reply and hard-disconnect, as the spec allows
    // for payloads beyond the maximum (and 2^25) as a denial of service.
    v.fatal = true;
    return fail(kEinval);
  }

  switch (r.type) {
    case kCmdRead:
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
    case kCmdWriteZeroes:
    case kCmdBlockStatus:
      break;
    default:
      return fail(kEinval);  // unknown command
  }

  // Flags: only those documented for the command and enabled by negotiation.
  uint16_t allowed = (tf & kFlagSendFua) ? kCmdFlagFua : 0;  // FUA is valid on every command
  if (r.type == kCmdRead && (tf & kFlagSendDf)) allowed |= kCmdFlagDf;
  if (r.type == kCmdWriteZeroes) {
    allowed |= kCmdFlagNoHole;
    if (tf & kFlagSendFastZero) allowed |= kCmdFlagFastZero;
  }
  if (r.type == kCmdBlockStatus) allowed |= kCmdFlagReqOne;
  // PAYLOAD_LEN exists only with extended headers, and only WRITE takes a
  // payload here (we do not advertise NBD_FLAG_BLOCK_STATUS_PAYLOAD).
  if (n.extended_headers && r.type == kCmdWrite) allowed |= kCmdFlagPayloadLen;
  if (r.flags & ~allowed) return fail(kEinval);

  const bool writes = r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes;
  if (writes && (tf & kFlagReadOnly)) return fail(kEperm);

  // Commands the client was never offered.
  if ((r.type == kCmdFlush && !(tf & kFlagSendFlush)) || (r.type == kCmdTrim && !(tf & kFlagSendTrim)) ||
      (r.type == kCmdWriteZeroes && !(tf & kFlagSendWriteZeroes)) ||
      (r.type == kCmdCache && !(tf & kFlagSendCache)) ||
      (r.type == kCmdBlockStatus && !(n.base_allocation && chunks)))
    return fail(kEinval);

  if (r.type == kCmdFlush) return (r.offset || r.length) ? fail(kEinval) : v;  // reserved, MUST be 0

  // Range commands. Zero length is "unspecified" by the spec; refusing it
  // keeps the device path free of empty I/O (and a block status reply must
  // contain at least one nonzero descriptor, impossible for length 0).
  if (r.length == 0) return fail(kEinval);
  if (r.offset > e.size || r.length > e.size - r.offset)
    return fail((r.type == kCmdWrite || r.type == kCmdWriteZeroes) ? kEnospc : kEinval);
  const uint64_t align = std::max<uint32_t>(e.min_block, 1);
  if (r.offset % align || r.length % align) return fail(kEinval);

  if (r.type == kCmdRead) {
    // With chunks a big read could be split, but refusing up front with
    // EOVERFLOW is explicitly allowed and keeps reply buffers bounded. Simple
    // replies have no EOVERFLOW semantics: EINVAL. A compact OFFSET_DATA chunk
    // cannot carry more than 2^32 - 9 data bytes.
    const bool too_big = r.length > e.max_block || (chunks && !n.extended_headers && r.length > UINT32_MAX - 8);
    if (too_big) return fail(chunks ? kEoverflow : kEinval);
  }
  if (r.type == kCmdWrite && r.length > e.max_block) return fail(kEinval);  // has a payload: no EOVERFLOW
  return v;
}

uint32_t errno_to_nbd(int err) {
  if (err == 0) return 0;
  if (err == INT_MIN) return kEio;
  if (err < 0) err = -err;
  switch (err) {
    case EPERM:
    case EROFS:
    case EACCES:
      return kEperm;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
    case EFAULT:
    case ERANGE:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case ENOTSUP:
#if EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP:
#endif
      return kEnotsup;
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

// ---- Reply encoders ------------------------------------------------------------------

size_t encode_simple_reply(std::span<uint8_t> out, uint64_t cookie, uint32_t error) {
  if (out.size() < kSimpleReplySize) return 0;
  put_be32(out.data(), kSimpleReplyMagic);
  put_be32(out.data() + 4, error);
  put_be64(out.data() + 8, cookie);
  return kSimpleReplySize;
}

size_t encode_chunk_header(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint16_t type,
                           uint64_t payload_len) {
  uint8_t* p = out.data();
  if (to.extended) {
    if (out.size() < kExtendedChunkHeaderSize) return 0;
    put_be32(p, kExtendedReplyMagic);
    put_be16(p + 4, flags);
    put_be16(p + 6, type);
    put_be64(p + 8, to.cookie);
    put_be64(p + 16, to.offset);
    put_be64(p + 24, payload_len);
    return kExtendedChunkHeaderSize;
  }
  if (out.size() < kCompactChunkHeaderSize || payload_len > UINT32_MAX) return 0;
  put_be32(p, kStructuredReplyMagic);
  put_be16(p + 4, flags);
  put_be16(p + 6, type);
  put_be64(p + 8, to.cookie);
  put_be32(p + 16, uint32_t(payload_len));
  return kCompactChunkHeaderSize;
}

size_t encode_offset_data(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint64_t data_offset,
                          uint64_t data_len) {
  if (data_len == 0 || data_len > UINT64_MAX - 8) return 0;  // MUST describe at least one byte
  size_t h = encode_chunk_header(out, to, flags, kReplyTypeOffsetData, 8 + data_len);
  if (h == 0 || out.size() < h + 8) return 0;
  put_be64(out.data() + h, data_offset);
  return h + 8;
}

size_t encode_offset_hole(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint64_t hole_offset,
                          uint32_t hole_len) {
  if (hole_len == 0) return 0;  // hole size MUST be nonzero
  size_t h = encode_chunk_header(out, to, flags, kReplyTypeOffsetHole, 12);
  if (h == 0 || out.size() < h + 12) return 0;
  put_be64(out.data() + h, hole_offset);
  put_be32(out.data() + h + 8, hole_len);
  return h + 12;
}

namespace {
size_t encode_error_common(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint16_t type,
                           uint32_t error, std::string_view msg, size_t trailer) {
  const size_t h = to.extended ? kExtendedChunkHeaderSize : kCompactChunkHeaderSize;
  if (error == 0 || out.size() < h + 6 + trailer) return 0;
  msg = msg.substr(0, std::min(kMaxString, out.size() - h - 6 - trailer));
  encode_chunk_header(out, to, flags, type, 6 + msg.size() + trailer);
  put_be32(out.data() + h, error);
  put_be16(out.data() + h + 4, uint16_t(msg.size()));
  std::copy(msg.begin(), msg.end(), out.data() + h + 6);
  return h + 6 + msg.size() + trailer;
}
}  // namespace

size_t encode_error(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint32_t error,
                    std::string_view message) {
  return encode_error_common(out, to, flags, kReplyTypeError, error, message, 0);
}

size_t encode_error_offset(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint32_t error,
                           uint64_t error_offset, std::string_view message) {
  size_t n = encode_error_common(out, to, flags, kReplyTypeErrorOffset, error, message, 8);
  if (n) put_be64(out.data() + n - 8, error_offset);
  return n;
}

size_t encode_none(std::span<uint8_t> out, const ReplyTo& to) {
  return encode_chunk_header(out, to, kReplyFlagDone, kReplyTypeNone, 0);
}

BlockStatusResult encode_block_status(std::span<uint8_t> out, const ReplyTo& to, const BlockStatusQuery& q,
                                      std::span<const Extent> extents) {
  BlockStatusResult res;
  const size_t head = to.extended ? kExtendedChunkHeaderSize : kCompactChunkHeaderSize;
  const size_t fixed = to.extended ? 8 : 4;  // context id (+ descriptor count)
  const size_t dsize = to.extended ? 16 : 8;
  if (out.size() < head + fixed + dsize) return res;
  const size_t cap = std::min((out.size() - head - fixed) / dsize, kMaxBlockStatusDescriptors);
  // Compact descriptors hold 32-bit lengths; longer runs are cut into the
  // largest pieces that keep the alignment.
  const uint64_t align = std::max<uint32_t>(q.align, 1);
  const uint64_t max_piece = to.extended ? UINT64_MAX : (uint64_t(UINT32_MAX) / align) * align;

  uint8_t* d = out.data() + head + fixed;
  for (const Extent& x : extents) {
    if (res.covered >= q.length || res.descriptors >= cap) break;
    // Clamping the total to the request length satisfies both REQ_ONE (one
    // descriptor no longer than the request) and the rule that only the last
    // descriptor may reach past the requested range.
    uint64_t len = std::min(x.length, q.length - res.covered);
    while (len > 0 && res.descriptors < cap) {
      const uint64_t piece = std::min(len, max_piece);
      if (to.extended) {
        put_be64(d, piece);
        put_be64(d + 8, x.flags);  // base: contexts leave the upper 32 bits zero
      } else {
        put_be32(d, uint32_t(piece));
        put_be32(d + 4, x.flags);
      }
      d += dsize;
      ++res.descriptors;
      res.covered += piece;
      len -= piece;
      if (q.req_one) break;
    }
    if (q.req_one && res.descriptors == 1) break;
  }
  if (res.descriptors == 0) {
    res.covered = 0;
    return res;  // MUST send at least one descriptor: caller reports an error instead
  }
  const uint64_t payload = fixed + res.descriptors * dsize;
  encode_chunk_header(out, to, q.flags, to.extended ? kReplyTypeBlockStatusExt : kReplyTypeBlockStatus, payload);
  put_be32(out.data() + head, q.context_id);
  if (to.extended) put_be32(out.data() + head + 4, uint32_t(res.descriptors));
  res.bytes = head + payload;
  return res;
}

}  // namespace blkstack::nbd
