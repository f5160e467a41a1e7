// Arbitrary ring memory: the device side of a split virtqueue pops whatever
// chains the bytes describe (indirect tables, loops, wild addresses), each
// is parsed as a virtio-blk request and returned. Every buffer handed out
// must lie inside guest memory, and the used ring must stay in step.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "exports/vhost_user_blk/blk_request.hpp"
#include "fuzz_check.hpp"
#include "vhost/virtqueue_device.hpp"

using namespace blkstack;
using namespace blkstack::vhost;

namespace {
constexpr uint64_t kGpa = 0x40000;  // guest-physical and front-end virtual base
constexpr size_t kMem = 64 * 1024;
// Input: 4 bytes of setup, then the memory image (rings at fixed places).
//   [0]: log2(queue size) (mod 6: 1..32), [1]: bit0 event_idx, bit1
//   indirect, bit2 read-only; [2..3]: last_avail.
bool inside(const void* p, size_t len, const uint8_t* mem) {
  auto a = reinterpret_cast<uintptr_t>(p), m = reinterpret_cast<uintptr_t>(mem);
  return a >= m && len <= kMem && a - m <= kMem - len;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  static std::vector<uint64_t> storage(kMem / 8);
  auto* mem = reinterpret_cast<uint8_t*>(storage.data());
  std::memset(mem, 0, kMem);
  std::memcpy(mem, data + 4, std::min(size - 4, kMem));
  uint16_t num = static_cast<uint16_t>(1u << (data[0] % 6));
  GuestMemory gm;
  FUZZ_CHECK(gm.add({kGpa, kMem, kGpa, mem}) == nullptr);
  // Rings within the first KiB, so short inputs control them: descriptors
  // at 0, avail ring at 0x200, used ring at 0x280; buffers anywhere.
  RingLayout l{num, kGpa, kGpa + 0x200, kGpa + 0x280};
  VirtqueueDevice vq;
  uint16_t last = static_cast<uint16_t>(data[2] | data[3] << 8);
  FUZZ_CHECK(vq.attach(gm, l, last, data[1] & 1, data[1] & 2) == nullptr);
  vhost_blk::BlkLimits lim;
  lim.capacity = 1 << 20;
  lim.read_only = data[1] & 4;
  lim.flush = lim.discard = lim.write_zeroes = true;
  lim.max_discard_sectors = lim.max_write_zeroes_sectors = 1024;
  static Chain chain;
  for (int i = 0; i < 2 * 32 + 4; i++) {
    uint16_t used_before = vq.used_idx();
    PopResult r = vq.pop(chain);
    if (r == PopResult::kEmpty || r == PopResult::kBroken) break;
    FUZZ_CHECK(chain.head < num);
    if (r == PopResult::kBadChain) {
      FUZZ_CHECK(chain.error != nullptr);
      vq.push(chain.head, 0);
    } else {
      unsigned n = chain.n_readable + chain.n_writable;
      FUZZ_CHECK(n <= Chain::kMaxSegments);
      uint64_t rb = 0, wb = 0;
      for (unsigned k = 0; k < n; k++) {
        FUZZ_CHECK(inside(chain.iov[k].iov_base, chain.iov[k].iov_len, mem));
        (k < chain.n_readable ? rb : wb) += chain.iov[k].iov_len;
      }
      FUZZ_CHECK(rb == chain.readable_bytes && wb == chain.writable_bytes);
      // The status byte is the chain's last writable byte.
      uint8_t* want_status = nullptr;
      if (chain.n_writable > 0) want_status = static_cast<uint8_t*>(chain.iov[n - 1].iov_base) + chain.iov[n - 1].iov_len - 1;
      const unsigned n_writable = chain.n_writable;
      vhost_blk::BlkRequest b = vhost_blk::parse_request(chain, lim);
      FUZZ_CHECK(b.status_byte == want_status);
      if (b.status_byte) FUZZ_CHECK(inside(b.status_byte, 1, mem));
      if (b.op != vhost_blk::BlkOp::kDone) {
        FUZZ_CHECK(b.status_byte != nullptr);
        uint64_t len = 0;
        for (int k = 0; k < b.iovcnt; k++) {
          FUZZ_CHECK(inside(b.iov[k].iov_base, b.iov[k].iov_len, mem));
          len += b.iov[k].iov_len;
        }
        // Data the device writes stops short of the status byte when both
        // share the last descriptor. (A hostile driver may still point
        // another descriptor at the status byte's address: aliasing its own
        // memory harms nobody else, so it is not checked.)
        const bool writes_data = b.op == vhost_blk::BlkOp::kRead || b.op == vhost_blk::BlkOp::kGetId;
        if (writes_data && b.iovcnt > 0 && static_cast<unsigned>(b.iovcnt) == n_writable) {
          const iovec& tail = b.iov[b.iovcnt - 1];
          FUZZ_CHECK(static_cast<uint8_t*>(tail.iov_base) + tail.iov_len == b.status_byte);
        }
        if (b.op == vhost_blk::BlkOp::kRead || b.op == vhost_blk::BlkOp::kWrite) {
          FUZZ_CHECK(len == b.len);
          FUZZ_CHECK(b.offset + b.len <= lim.capacity && b.len % 512 == 0);
          FUZZ_CHECK(!(lim.read_only && b.op == vhost_blk::BlkOp::kWrite));
        }
        if (b.op == vhost_blk::BlkOp::kDiscard || b.op == vhost_blk::BlkOp::kWriteZeroes) {
          FUZZ_CHECK(!lim.read_only && b.offset + b.len <= lim.capacity);
        }
      }
      if (b.status_byte) *b.status_byte = b.status;
      vq.push(chain.head, b.used_len_ok);
    }
    FUZZ_CHECK(static_cast<uint16_t>(vq.used_idx() - used_before) == 1);
    (void)vq.should_notify();
  }
  (void)vq.arm_kick();
  return 0;
}
