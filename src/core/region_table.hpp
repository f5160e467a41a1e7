// Mapped memory regions as the device knows them. A RegionTable is an
// immutable, sorted snapshot: map/unmap publish a new one, so queues can look
// buffers up from any thread without locks.
#pragma once

#include <cstdint>
#include <vector>

#include "blkstack/request.hpp"

namespace blkstack {

struct MappedRegion {
  MemRegion desc;         // exactly as the application mapped it
  uintptr_t begin = 0;    // desc.addr
  uintptr_t end = 0;      // desc.addr + desc.len
  int driver_slot = -1;   // the driver's own bookkeeping handle
  int driver_index = -1;  // what queues may use (io_uring: fixed-buffer index; -1 if any queue cannot)
  uint64_t driver_addr = 0;  // the driver's address for begin (vhost-user: guest address)
};

class RegionTable {
 public:
  RegionTable() = default;
  explicit RegionTable(std::vector<MappedRegion> regions);

  bool empty() const { return regions_.empty(); }
  const std::vector<MappedRegion>& all() const { return regions_; }

  // The region that wholly contains [addr, addr+len), or nullptr.
  const MappedRegion* find(uintptr_t addr, size_t len) const {
    if (regions_.size() <= 4) {
      for (const MappedRegion& r : regions_) {
        if (addr >= r.begin && addr - r.begin <= r.end - r.begin && len <= r.end - addr) return &r;
      }
      return nullptr;
    }
    return find_sorted(addr, len);
  }
  // The region that overlaps [addr, addr+len) at all, or nullptr.
  const MappedRegion* overlapping(uintptr_t addr, size_t len) const;
  const MappedRegion* exact(const MemRegion& r) const;

 private:
  const MappedRegion* find_sorted(uintptr_t addr, size_t len) const;
  std::vector<MappedRegion> regions_;  // sorted by begin, never overlapping
};

}  // namespace blkstack
