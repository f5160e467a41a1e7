// The driver (front-end) side of a virtio 1.x split virtqueue: adding
// descriptor chains, publishing them, reading the used ring, and the
// EVENT_IDX notification rules in both directions. Sans-IO: it works on
// memory the caller provides (shared with the device) and never makes a
// system call, so the caller decides when to kick and when to sleep.
//
// Single-threaded by design (one queue, one thread). The device's side runs
// in another process: every store the device must see is ordered with
// release/acquire on the ring indices, and the "should I notify" checks use
// a full fence, as the virtio spec's memory-ordering section requires.
#pragma once

// The legacy part of the UAPI header (struct vring, vring_init) is not
// valid C++; the ring layout is computed here instead.
#ifndef VIRTIO_RING_NO_LEGACY
#define VIRTIO_RING_NO_LEGACY
#endif
#include <linux/virtio_ring.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace blkstack::vhost {

class VirtqueueDriver {
 public:
  // Where the three parts of a ring of `size` entries go inside one block of
  // memory (offsets from its start) and how big the block is.
  struct Layout {
    size_t desc = 0;
    size_t avail = 0;
    size_t used = 0;
    size_t bytes = 0;
  };
  static Layout layout(uint16_t size);

  // One buffer of a chain, in the device's address space.
  struct Segment {
    uint64_t addr;
    uint32_t len;
    bool device_writes;  // VRING_DESC_F_WRITE
  };

  // `mem` holds layout(size).bytes zeroed bytes; `size` is a power of two.
  // `event_idx`: VIRTIO_RING_F_EVENT_IDX was negotiated.
  VirtqueueDriver(void* mem, uint16_t size, bool event_idx);

  uint16_t size() const { return size_; }
  uint16_t free_descriptors() const { return num_free_; }
  uint16_t in_flight() const { return in_flight_; }
  // The head the next add() will return (the first free descriptor), so
  // per-chain data indexed by head can be written before the chain.
  uint16_t next_head() const { return free_head_; }

  const vring_desc* desc() const { return desc_; }
  const vring_avail* avail() const { return avail_; }
  const vring_used* used() const { return used_; }

  // Writes a chain of n (1..free_descriptors()) segments and puts its head
  // in the avail ring, unpublished. Returns the head: the id the device
  // hands back in the used ring.
  uint16_t add(const Segment* segs, unsigned n);

  // Makes everything added since the last call visible to the device.
  // Returns whether the device asked to be notified (kick) about it.
  bool publish();

  // The next chain the device finished: its head and the bytes it wrote.
  // Returns false when the used ring holds nothing new. Ids that are not a
  // chain in flight (a misbehaving device) are skipped and counted.
  bool pop_used(uint16_t& head, uint32_t& written);
  bool has_used() const;

  // Asks the device to notify (call) when it adds the next used entry.
  // Returns true if entries arrived meanwhile (then no notification is
  // promised for them: reap them first).
  bool arm_notifications();
  // Takes the request back while we are busy anyway (the device may still
  // notify once: the flag and index are hints).
  void disarm_notifications();
  // Asks the device not to notify at all (poll queues).
  void suppress_notifications();

  uint64_t bad_used_ids() const { return bad_ids_; }

 private:
  void free_chain(uint16_t head);

  vring_desc* desc_;
  vring_avail* avail_;
  vring_used* used_;
  uint16_t size_;
  bool event_idx_;
  bool suppressed_ = false;

  uint16_t free_head_ = 0;
  uint16_t num_free_;
  uint16_t in_flight_ = 0;
  uint16_t avail_idx_ = 0;      // ours, not yet necessarily published
  uint16_t published_idx_ = 0;  // what the device has seen
  uint16_t last_used_ = 0;      // next used entry to read

  // Our own view of the descriptor chains: the table itself is shared
  // memory, and a device that scribbled on it must not steer our free list.
  std::vector<uint16_t> next_;       // free list and chain links
  std::vector<uint16_t> chain_len_;  // by head; 0 when not in flight
  std::vector<uint16_t> chain_tail_;
  uint64_t bad_ids_ = 0;
};

}  // namespace blkstack::vhost
