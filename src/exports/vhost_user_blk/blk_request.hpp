// virtio-blk requests from a popped descriptor chain: the header, the data
// buffers and the status byte located (any framing: VERSION_1 implies
// ANY_LAYOUT), everything a front-end controls checked against the device.
// Pure, fuzzable: the result is either a library request to issue or a
// status to report at once.
#pragma once

#include <linux/virtio_blk.h>

#include <cstdint>

#include "vhost/virtqueue_device.hpp"

namespace blkstack::vhost_blk {

// What the export offers, as the checks need it.
struct BlkLimits {
  uint64_t capacity = 0;        // bytes
  uint32_t block_size = 512;    // logical block: offsets and lengths are multiples of it
  bool read_only = false;
  bool flush = false;           // VIRTIO_BLK_F_FLUSH offered
  bool discard = false;         // VIRTIO_BLK_F_DISCARD offered
  bool write_zeroes = false;    // VIRTIO_BLK_F_WRITE_ZEROES offered
  uint32_t max_discard_sectors = 0;
  uint32_t max_write_zeroes_sectors = 0;
  uint32_t discard_sector_alignment = 1;  // in 512-byte sectors
};

enum class BlkOp : uint8_t {
  kDone,        // nothing to issue: report `status` now
  kRead,
  kWrite,
  kFlush,
  kGetId,
  kDiscard,
  kWriteZeroes,
};

struct BlkRequest {
  BlkOp op = BlkOp::kDone;
  uint8_t status = VIRTIO_BLK_S_OK;  // for kDone
  uint8_t* status_byte = nullptr;    // where the status goes; nullptr: the chain has none (push len 0)
  uint32_t type = 0;                 // the header's type (for logs and stats), when there is a header
  uint64_t offset = 0, len = 0;      // bytes
  bool unmap = false;                // write zeroes may deallocate
  const iovec* iov = nullptr;        // data buffers (read/write; get-id: the id buffer)
  int iovcnt = 0;
  const char* why = nullptr;         // for kDone with an error status: what was wrong
  // Bytes the device writes into the chain on success (the used length):
  // data read (or id) plus the status byte.
  uint32_t used_len_ok = 0;
};

// Parses chain (whose iov array it trims in place to the data buffers).
BlkRequest parse_request(vhost::Chain& chain, const BlkLimits& limits);

// Copies n bytes at offset `skip` of the buffers into dst; false if short.
bool gather(const iovec* iov, int iovcnt, uint64_t skip, void* dst, uint64_t n);
// Copies n bytes from src into the buffers; returns bytes copied.
uint64_t scatter(const iovec* iov, int iovcnt, const void* src, uint64_t n);

}  // namespace blkstack::vhost_blk
