// The device side of a virtio 1.x split virtqueue, over memory shared with
// an untrusted front-end (a VM or a libblkio client). Pure: no system calls,
// so it can be fuzzed over arbitrary ring memory.
//
//  - GuestMemory translates front-end addresses (guest-physical for
//    descriptors, front-end virtual for the ring addresses of
//    SET_VRING_ADDR) to our mappings, with bounds checks.
//  - VirtqueueDevice pops descriptor chains from the available ring
//    (indirect tables, loops, chains longer than the queue, addresses outside
//    mapped memory, readable-after-writable are all detected), pushes used
//    entries, and decides when the front-end must be notified (EVENT_IDX).
//
// Every value read from shared memory is read once and then checked: the
// front-end may change it at any time.
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>

namespace blkstack::vhost {

// Split-ring constants (virtio 1.x, 2.7; the same values as
// <linux/virtio_ring.h>, whose inline vring_init() is not valid C++).
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr unsigned kRingFIndirectDesc = 28;  // feature bits
inline constexpr unsigned kRingFEventIdx = 29;

// The EVENT_IDX rule: notify when the other side's event index lies in
// (old, new].
inline bool need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

struct GuestRegion {
  uint64_t gpa = 0;   // guest-physical (descriptor addresses)
  uint64_t size = 0;
  uint64_t uva = 0;   // front-end virtual (ring addresses)
  uint8_t* host = nullptr;  // our mapping of the region
};

class GuestMemory {
 public:
  static constexpr size_t kMaxRegions = 32;  // what GET_MAX_MEM_SLOTS reports

  // Why the region cannot be added (overlap, empty, wraps, table full), or
  // nullptr once added.
  const char* add(const GuestRegion& r);
  // Removes the region with this gpa and size; false when there is none.
  bool remove(uint64_t gpa, uint64_t size, GuestRegion* removed = nullptr);
  void clear() { n_ = 0; }
  size_t size() const { return n_; }
  const GuestRegion& region(size_t i) const { return regions_[i]; }

  // Our pointer to [gpa, gpa+len) when it lies in one region, else nullptr.
  uint8_t* gpa_to_host(uint64_t gpa, uint64_t len) const;
  // Our pointer to gpa and how many bytes follow it in the same region.
  uint8_t* gpa_run(uint64_t gpa, uint64_t& avail) const;
  uint8_t* uva_to_host(uint64_t uva, uint64_t len) const;

 private:
  std::array<GuestRegion, kMaxRegions> regions_{};
  size_t n_ = 0;
};

// One popped request: its head index and the buffers it names, translated,
// device-readable ones first.
struct Chain {
  // Descriptor buffers after splitting at region boundaries. Requests beyond
  // this are rejected as too long (we advertise seg_max well below it).
  static constexpr unsigned kMaxSegments = 256;
  uint16_t head = 0;
  uint16_t n_readable = 0;  // iov[0, n_readable)
  uint16_t n_writable = 0;  // iov[n_readable, n_readable + n_writable)
  uint64_t readable_bytes = 0, writable_bytes = 0;
  const char* error = nullptr;  // set for kBadChain: why
  iovec iov[kMaxSegments];

  const iovec* readable() const { return iov; }
  const iovec* writable() const { return iov + n_readable; }
};

enum class PopResult {
  kEmpty,     // nothing available
  kOk,        // chain filled in
  kBadChain,  // the head was consumed but its chain is invalid (chain.error):
              // complete it with push(head, 0)
  kBroken,    // the ring itself is inconsistent (avail index or head out of
              // range): stop processing it until the front-end resets it
};

struct RingLayout {
  uint16_t num = 0;     // queue size: a power of two, at most kMaxQueueSize
  uint64_t desc = 0;    // front-end virtual addresses (SET_VRING_ADDR)
  uint64_t avail = 0;
  uint64_t used = 0;
};

class VirtqueueDevice {
 public:
  static constexpr uint16_t kMaxQueueSize = 32768;

  // Translates the ring addresses against mem; nullptr or why not (unmapped,
  // misaligned, bad size). last_avail: where to resume (SET_VRING_BASE).
  // The used index is read back from the ring, so a restarted ring resumes
  // where the previous run left it.
  const char* attach(const GuestMemory& mem, const RingLayout& layout, uint16_t last_avail, bool event_idx,
                     bool indirect);

  // Takes the next available chain.
  PopResult pop(Chain& out);
  // Returns a chain to the front-end with `len` bytes written to its
  // device-writable buffers (stores the element, then the index).
  void push(uint16_t head, uint32_t len);
  // After pushes: true when the front-end asked to be notified of them
  // (EVENT_IDX used_event, or the NO_INTERRUPT flag without it). Call once
  // per batch; it remembers what it signalled.
  bool should_notify();
  // Before waiting for a kick: tell the front-end where we are (EVENT_IDX
  // avail_event) and report whether more became available meanwhile (then
  // pop again rather than sleep).
  bool arm_kick();

  uint16_t last_avail() const { return last_avail_; }
  uint16_t used_idx() const { return used_idx_; }
  uint16_t num() const { return num_; }
  bool broken() const { return broken_; }

 private:
  const char* walk(uint16_t head, Chain& out);
  const char* add_buffer(Chain& out, uint64_t addr, uint32_t len, bool writable);

  const GuestMemory* mem_ = nullptr;
  uint8_t* desc_ = nullptr;   // struct vring_desc[num]
  uint8_t* avail_ = nullptr;  // flags, idx, ring[num], used_event
  uint8_t* used_ = nullptr;   // flags, idx, ring[num] {id, len}, avail_event
  uint16_t num_ = 0;
  uint16_t last_avail_ = 0;
  uint16_t used_idx_ = 0;
  uint16_t signalled_used_ = 0;
  bool signalled_valid_ = false;
  bool event_idx_ = false;
  bool indirect_ = false;
  bool broken_ = false;
};

}  // namespace blkstack::vhost
