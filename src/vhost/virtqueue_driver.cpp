#include "vhost/virtqueue_driver.hpp"

#include <atomic>
#include <cstring>

namespace blkstack::vhost {

namespace {

// Virtio 1.x rings are little-endian, and so is every host this builds for.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "virtio 1.x ring fields are little-endian");

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

uint16_t load_acquire(const uint16_t& v) {
  return std::atomic_ref<uint16_t>(const_cast<uint16_t&>(v)).load(std::memory_order_acquire);
}
uint16_t load_relaxed(const uint16_t& v) {
  return std::atomic_ref<uint16_t>(const_cast<uint16_t&>(v)).load(std::memory_order_relaxed);
}
void store_release(uint16_t& v, uint16_t x) { std::atomic_ref<uint16_t>(v).store(x, std::memory_order_release); }
void store_relaxed(uint16_t& v, uint16_t x) { std::atomic_ref<uint16_t>(v).store(x, std::memory_order_relaxed); }

}  // namespace

VirtqueueDriver::Layout VirtqueueDriver::layout(uint16_t size) {
  // Alignments from the virtio spec (split virtqueue): descriptor table 16,
  // available ring 2, used ring 4. Each part gets its own cache lines so the
  // device's used-ring writes do not bounce the lines we write.
  Layout l;
  l.desc = 0;
  l.avail = align_up(sizeof(vring_desc) * size, 64);
  // flags, idx, ring[size], used_event
  l.used = align_up(l.avail + 4 + 2 * size_t{size} + 2, 64);
  // flags, idx, ring[size], avail_event
  l.bytes = align_up(l.used + 4 + sizeof(vring_used_elem) * size_t{size} + 2, 64);
  return l;
}

VirtqueueDriver::VirtqueueDriver(void* mem, uint16_t size, bool event_idx)
    : size_(size), event_idx_(event_idx), num_free_(size), next_(size), chain_len_(size), chain_tail_(size) {
  Layout l = layout(size);
  char* base = static_cast<char*>(mem);
  desc_ = reinterpret_cast<vring_desc*>(base + l.desc);
  avail_ = reinterpret_cast<vring_avail*>(base + l.avail);
  used_ = reinterpret_cast<vring_used*>(base + l.used);
  for (uint16_t i = 0; i < size; i++) next_[i] = static_cast<uint16_t>(i + 1);
}

uint16_t VirtqueueDriver::add(const Segment* segs, unsigned n) {
  const uint16_t head = free_head_;
  uint16_t d = head, prev = head;
  for (unsigned i = 0; i < n; i++) {
    vring_desc& e = desc_[d];
    e.addr = segs[i].addr;
    e.len = segs[i].len;
    uint16_t flags = segs[i].device_writes ? VRING_DESC_F_WRITE : 0;
    if (i + 1 < n) flags |= VRING_DESC_F_NEXT;
    e.flags = flags;
    e.next = next_[d];
    prev = d;
    d = next_[d];
  }
  free_head_ = d;
  num_free_ = static_cast<uint16_t>(num_free_ - n);
  chain_len_[head] = static_cast<uint16_t>(n);
  chain_tail_[head] = prev;
  in_flight_++;
  // The ring slot is ours until publish() moves idx past it.
  avail_->ring[avail_idx_ & (size_ - 1)] = head;
  avail_idx_++;
  return head;
}

bool VirtqueueDriver::publish() {
  const uint16_t old = published_idx_;
  const uint16_t now = avail_idx_;
  if (old == now) return false;
  // Descriptors and ring entries before the index (release).
  store_release(avail_->idx, now);
  published_idx_ = now;
  // The index store must be visible before we read what the device asked
  // for, or we could miss a device that just went to sleep (store->load).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event_idx_) {
    const uint16_t* avail_event = reinterpret_cast<const uint16_t*>(&used_->ring[size_]);
    return vring_need_event(load_relaxed(*avail_event), now, old);
  }
  return !(load_relaxed(used_->flags) & VRING_USED_F_NO_NOTIFY);
}

bool VirtqueueDriver::has_used() const { return load_acquire(used_->idx) != last_used_; }

bool VirtqueueDriver::pop_used(uint16_t& head, uint32_t& written) {
  for (;;) {
    if (load_acquire(used_->idx) == last_used_) return false;
    const vring_used_elem& e = used_->ring[last_used_ & (size_ - 1)];
    const uint32_t id = e.id;
    written = e.len;
    last_used_++;
    if (id >= size_ || chain_len_[id] == 0) {
      bad_ids_++;
      continue;
    }
    head = static_cast<uint16_t>(id);
    free_chain(head);
    if (event_idx_ && suppressed_) {
      // Keep the device's notification point half the index space ahead,
      // so it is never reached however long we poll.
      uint16_t* used_event = &avail_->ring[size_];
      store_relaxed(*used_event, static_cast<uint16_t>(last_used_ + 0x8000));
    }
    return true;
  }
}

void VirtqueueDriver::free_chain(uint16_t head) {
  next_[chain_tail_[head]] = free_head_;
  free_head_ = head;
  num_free_ = static_cast<uint16_t>(num_free_ + chain_len_[head]);
  chain_len_[head] = 0;
  in_flight_--;
}

bool VirtqueueDriver::arm_notifications() {
  suppressed_ = false;
  if (event_idx_) {
    uint16_t* used_event = &avail_->ring[size_];
    store_relaxed(*used_event, last_used_);
  } else {
    store_relaxed(avail_->flags, 0);
  }
  // The request for a notification must be visible before we look at the
  // used index again (store->load), or an entry added in between would
  // neither be seen nor notified.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return has_used();
}

void VirtqueueDriver::disarm_notifications() {
  if (event_idx_) {
    // An index the device has already passed: reached again only after it
    // wraps, which costs at most one spurious notification.
    uint16_t* used_event = &avail_->ring[size_];
    store_relaxed(*used_event, static_cast<uint16_t>(last_used_ - 1));
  } else {
    store_relaxed(avail_->flags, VRING_AVAIL_F_NO_INTERRUPT);
  }
}

void VirtqueueDriver::suppress_notifications() {
  suppressed_ = true;
  if (event_idx_) {
    uint16_t* used_event = &avail_->ring[size_];
    store_relaxed(*used_event, static_cast<uint16_t>(last_used_ + 0x8000));
  } else {
    store_relaxed(avail_->flags, VRING_AVAIL_F_NO_INTERRUPT);
  }
}

}  // namespace blkstack::vhost
