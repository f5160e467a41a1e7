#include "vhost/virtqueue_device.hpp"

#include <atomic>
#include <bit>
#include <cstring>

namespace blkstack::vhost {

// Virtio 1.x rings are little-endian; so are the hosts we build for.
static_assert(std::endian::native == std::endian::little);

namespace {

constexpr size_t kDescSize = 16;

// Ring fields live in memory the front-end writes concurrently: access them
// as atomics (the ring layout guarantees their alignment, checked at attach).
uint16_t load16(const uint8_t* p, std::memory_order o = std::memory_order_relaxed) {
  return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(const_cast<uint8_t*>(p))).load(o);
}
void store16(uint8_t* p, uint16_t v, std::memory_order o = std::memory_order_relaxed) {
  std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(p)).store(v, o);
}
void store32(uint8_t* p, uint32_t v) {
  std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(p)).store(v, std::memory_order_relaxed);
}

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == kDescSize);

}  // namespace

// ---- GuestMemory ----

const char* GuestMemory::add(const GuestRegion& r) {
  if (n_ == kMaxRegions) return "too many memory regions";
  if (r.size == 0) return "empty memory region";
  if (r.gpa + r.size < r.gpa || r.uva + r.size < r.uva) return "memory region wraps around the address space";
  for (size_t i = 0; i < n_; i++) {
    const GuestRegion& o = regions_[i];
    if (r.gpa < o.gpa + o.size && o.gpa < r.gpa + r.size) return "memory region overlaps another (guest address)";
  }
  regions_[n_++] = r;
  return nullptr;
}

bool GuestMemory::remove(uint64_t gpa, uint64_t size, GuestRegion* removed) {
  for (size_t i = 0; i < n_; i++) {
    if (regions_[i].gpa == gpa && regions_[i].size == size) {
      if (removed) *removed = regions_[i];
      regions_[i] = regions_[n_ - 1];
      n_--;
      return true;
    }
  }
  return false;
}

uint8_t* GuestMemory::gpa_run(uint64_t gpa, uint64_t& avail) const {
  for (size_t i = 0; i < n_; i++) {
    const GuestRegion& r = regions_[i];
    if (gpa - r.gpa < r.size) {  // unsigned: also false when gpa < r.gpa
      avail = r.size - (gpa - r.gpa);
      return r.host + (gpa - r.gpa);
    }
  }
  avail = 0;
  return nullptr;
}

uint8_t* GuestMemory::gpa_to_host(uint64_t gpa, uint64_t len) const {
  uint64_t avail;
  uint8_t* p = gpa_run(gpa, avail);
  return p && len <= avail ? p : nullptr;
}

uint8_t* GuestMemory::uva_to_host(uint64_t uva, uint64_t len) const {
  for (size_t i = 0; i < n_; i++) {
    const GuestRegion& r = regions_[i];
    if (uva - r.uva < r.size && len <= r.size - (uva - r.uva)) return r.host + (uva - r.uva);
  }
  return nullptr;
}

// ---- VirtqueueDevice ----

const char* VirtqueueDevice::attach(const GuestMemory& mem, const RingLayout& l, uint16_t last_avail, bool event_idx,
                                    bool indirect) {
  if (l.num == 0 || l.num > kMaxQueueSize || !std::has_single_bit(l.num)) return "queue size is not a power of two up to 32768";
  if (l.desc % 16 || l.avail % 2 || l.used % 4) return "ring addresses are misaligned";
  uint8_t* desc = mem.uva_to_host(l.desc, uint64_t{l.num} * kDescSize);
  uint8_t* avail = mem.uva_to_host(l.avail, 6 + 2 * uint64_t{l.num});
  uint8_t* used = mem.uva_to_host(l.used, 6 + 8 * uint64_t{l.num});
  if (!desc || !avail || !used) return "ring addresses are outside the front-end's memory";
  // Our mappings are page-aligned (mmap), so these stay aligned unless the
  // region's own offset is odd.
  if (reinterpret_cast<uintptr_t>(desc) % 16 || reinterpret_cast<uintptr_t>(avail) % 2 ||
      reinterpret_cast<uintptr_t>(used) % 4) {
    return "rings are misaligned in our mapping";
  }
  mem_ = &mem;
  desc_ = desc;
  avail_ = avail;
  used_ = used;
  num_ = l.num;
  last_avail_ = last_avail;
  used_idx_ = load16(used_ + 2);
  signalled_valid_ = false;
  event_idx_ = event_idx;
  indirect_ = indirect;
  broken_ = false;
  return nullptr;
}

PopResult VirtqueueDevice::pop(Chain& out) {
  if (broken_ || !avail_) return PopResult::kBroken;
  // Acquire: the ring entries and descriptors the index publishes are read
  // after it.
  uint16_t avail_idx = load16(avail_ + 2, std::memory_order_acquire);
  uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_);
  if (pending == 0) return PopResult::kEmpty;
  if (pending > num_) {
    broken_ = true;  // the front-end claims more than the ring holds
    return PopResult::kBroken;
  }
  uint16_t head = load16(avail_ + 4 + 2 * (last_avail_ & (num_ - 1)));
  if (head >= num_) {
    broken_ = true;
    return PopResult::kBroken;
  }
  last_avail_++;
  out.head = head;
  out.error = walk(head, out);
  return out.error ? PopResult::kBadChain : PopResult::kOk;
}

const char* VirtqueueDevice::add_buffer(Chain& out, uint64_t addr, uint32_t len, bool writable) {
  if (!writable && out.n_writable) return "device-readable descriptor after a device-writable one";
  uint64_t left = len;
  while (left > 0) {
    uint64_t run;
    uint8_t* p = mem_->gpa_run(addr, run);
    if (!p) return "descriptor points outside the front-end's memory";
    unsigned n = out.n_readable + out.n_writable;
    if (n == Chain::kMaxSegments) return "chain has too many segments";
    uint64_t take = run < left ? run : left;
    out.iov[n] = {p, static_cast<size_t>(take)};
    (writable ? out.n_writable : out.n_readable)++;
    addr += take;
    left -= take;
  }
  (writable ? out.writable_bytes : out.readable_bytes) += len;
  if (out.readable_bytes + out.writable_bytes > UINT32_MAX) return "chain longer than 4 GiB";
  return nullptr;
}

const char* VirtqueueDevice::walk(uint16_t head, Chain& out) {
  out.n_readable = out.n_writable = 0;
  out.readable_bytes = out.writable_bytes = 0;
  const uint8_t* table = desc_;
  uint32_t table_len = num_;
  uint32_t i = head;
  uint32_t seen = 0;
  bool in_indirect = false;
  for (;;) {
    // Every descriptor of a well-formed chain is visited once: more visits
    // than the table holds means a loop.
    if (++seen > table_len) return in_indirect ? "indirect chain loops" : "descriptor chain loops or exceeds the queue size";
    Desc d;
    std::memcpy(&d, table + size_t{i} * kDescSize, kDescSize);  // one snapshot of each descriptor
    if (d.flags & kDescFIndirect) {
      if (!indirect_) return "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
      if (in_indirect) return "indirect descriptor inside an indirect table";
      if (d.flags & kDescFNext) return "indirect descriptor with the NEXT flag";
      if (d.len == 0 || d.len % kDescSize) return "indirect table length is not a multiple of 16";
      // The table must be in one region: read in place.
      const uint8_t* t = mem_->gpa_to_host(d.addr, d.len);
      if (!t) return "indirect table outside the front-end's memory";
      table = t;
      table_len = d.len / kDescSize;
      i = 0;
      seen = 0;
      in_indirect = true;
      continue;
    }
    if (d.len > 0) {
      if (const char* e = add_buffer(out, d.addr, d.len, d.flags & kDescFWrite)) return e;
    }
    if (!(d.flags & kDescFNext)) return nullptr;
    if (d.next >= table_len) return "next descriptor index out of range";
    i = d.next;
  }
}

void VirtqueueDevice::push(uint16_t head, uint32_t len) {
  uint8_t* elem = used_ + 4 + 8 * size_t(used_idx_ & (num_ - 1));
  store32(elem, head);
  store32(elem + 4, len);
  used_idx_++;
  // Release: the element is visible before the index that publishes it.
  store16(used_ + 2, used_idx_, std::memory_order_release);
}

bool VirtqueueDevice::should_notify() {
  if (!used_) return false;
  // Our used index store must be ordered before reading what the front-end
  // wants (it does the mirror image): a full barrier.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!event_idx_) {
    return !(load16(avail_) & kAvailFNoInterrupt);
  }
  uint16_t old = signalled_used_;
  bool valid = signalled_valid_;
  signalled_used_ = used_idx_;
  signalled_valid_ = true;
  if (!valid) return true;
  if (old == used_idx_) return false;
  uint16_t used_event = load16(avail_ + 4 + 2 * size_t{num_});
  return need_event(used_event, used_idx_, old);
}

bool VirtqueueDevice::arm_kick() {
  if (!avail_ || broken_) return false;
  if (event_idx_) store16(used_ + 4 + 8 * size_t{num_}, last_avail_);
  // The store above must be visible before we look at the index again, or a
  // kick the front-end decides to skip could be missed.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return load16(avail_ + 2, std::memory_order_acquire) != last_avail_;
}

}  // namespace blkstack::vhost
