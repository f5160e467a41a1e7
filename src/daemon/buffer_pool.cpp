#include "daemon/buffer_pool.hpp"

#include <bit>
#include <cstdlib>

namespace blkstack {

BufferPool::~BufferPool() {
  for (auto& list : free_) list.clear();
  if (dev_ && base_) {
    dev_->unmap_mem_region(region_);
    dev_->free_mem_region(region_);
  }
}

Status BufferPool::init(Device& dev, size_t bytes) {
  dev_ = &dev;
  if (Status s = dev.alloc_mem_region(region_, bytes); !s) return s;
  if (Status s = dev.map_mem_region(region_); !s) {
    dev.free_mem_region(region_);
    return s;
  }
  base_ = static_cast<char*>(region_.addr);
  heap_ok_ = !dev.info().needs_mem_regions;
  size_ = bytes;
  // The largest class must fit twice, so one huge request cannot starve all.
  while (max_shift_ > kMinShift && (uint64_t{2} << max_shift_) > bytes) max_shift_--;
  return {};
}

BufferPool::Buffer BufferPool::alloc(uint64_t len) {
  unsigned shift = len <= (1u << kMinShift) ? kMinShift : static_cast<unsigned>(std::bit_width(len - 1));
  if (shift > max_shift_) return {};
  auto& list = free_[shift];
  if (!list.empty()) {
    char* p = list.back();
    list.pop_back();
    return {p, static_cast<uint8_t>(shift)};
  }
  size_t sz = size_t{1} << shift;
  size_t at = (carved_ + sz - 1) & ~(sz - 1);  // natural alignment
  if (at + sz <= size_) {
    carved_ = at + sz;
    return {base_ + at, static_cast<uint8_t>(shift)};
  }
  if (!heap_ok_) return {};
  void* p = nullptr;
  if (posix_memalign(&p, 4096, sz) != 0) return {};
  heap_allocs_++;
  return {static_cast<char*>(p), kHeap};
}

void BufferPool::release(Buffer b) {
  if (!b.data) return;
  if (b.cls == kHeap) return free(b.data);
  free_[b.cls].push_back(b.data);
}

}  // namespace blkstack
