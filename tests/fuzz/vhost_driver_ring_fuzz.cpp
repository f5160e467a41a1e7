// The front-end's side of a split virtqueue (the virtio-blk-vhost-user
// driver's VirtqueueDriver) against a hostile back-end: the input is a script
// of driver steps (add chains, publish, arm/disarm notifications) and device
// steps that write arbitrary used entries, jump the used index, or scribble
// on the shared descriptor table. The driver must only ever hand back heads
// of chains it has in flight, and its own accounting must stay whole.
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "fuzz_check.hpp"
#include "vhost/virtqueue_driver.hpp"

using blkstack::vhost::VirtqueueDriver;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const auto qsize = static_cast<uint16_t>(1u << (1 + data[0] % 8));  // 2..256
  const bool event_idx = data[1] & 1;
  auto layout = VirtqueueDriver::layout(qsize);
  std::vector<uint64_t> storage((layout.bytes + 7) / 8, 0);
  auto* mem = reinterpret_cast<uint8_t*>(storage.data());
  VirtqueueDriver vq(mem, qsize, event_idx);
  auto* used = reinterpret_cast<vring_used*>(mem + layout.used);
  auto* desc = reinterpret_cast<vring_desc*>(mem + layout.desc);

  std::vector<unsigned> chain_len(qsize, 0);  // by head; 0: not ours in flight
  unsigned descriptors_in_flight = 0;
  uint16_t device_used_idx = 0;

  auto reap = [&] {
    uint16_t head;
    uint32_t written;
    while (vq.pop_used(head, written)) {
      FUZZ_CHECK(head < qsize);
      FUZZ_CHECK(chain_len[head] != 0);  // only chains we have in flight
      descriptors_in_flight -= chain_len[head];
      chain_len[head] = 0;
    }
  };

  for (size_t i = 2; i + 8 <= size; i += 8) {
    const uint8_t* s = data + i;
    switch (s[0] % 6) {
      case 0: {  // add a chain of 1..4 segments when there is room
        unsigned n = 1 + s[1] % 4;
        if (vq.free_descriptors() < n) break;
        VirtqueueDriver::Segment segs[4];
        for (unsigned k = 0; k < n; k++) segs[k] = {0x1000u * (k + 1), 512, bool(s[2] >> k & 1)};
        uint16_t expect = vq.next_head();
        uint16_t head = vq.add(segs, n);
        FUZZ_CHECK(head == expect && head < qsize && chain_len[head] == 0);
        chain_len[head] = n;
        descriptors_in_flight += n;
        break;
      }
      case 1:
        (void)vq.publish();
        break;
      case 2: {  // the device returns an arbitrary id
        uint16_t id;
        uint32_t len;
        std::memcpy(&id, s + 2, 2);
        std::memcpy(&len, s + 4, 4);
        used->ring[device_used_idx % qsize] = {id, len};
        device_used_idx++;
        __atomic_store_n(&used->idx, device_used_idx, __ATOMIC_RELEASE);
        reap();
        break;
      }
      case 3: {  // the device jumps its used index (claims entries it never wrote)
        device_used_idx = static_cast<uint16_t>(device_used_idx + s[1]);
        __atomic_store_n(&used->idx, device_used_idx, __ATOMIC_RELEASE);
        reap();
        break;
      }
      case 4:  // the device scribbles on the shared descriptor table
        std::memcpy(&desc[s[1] % qsize], s + 2, 6);
        break;
      case 5:
        if (s[1] & 1) {
          (void)vq.arm_notifications();
        } else if (s[1] & 2) {
          vq.disarm_notifications();
        } else {
          vq.suppress_notifications();
        }
        reap();
        break;
    }
    FUZZ_CHECK(vq.free_descriptors() + descriptors_in_flight == qsize);
    unsigned chains = 0;
    for (unsigned l : chain_len) chains += l != 0;
    FUZZ_CHECK(vq.in_flight() == chains);
  }
  return 0;
}
