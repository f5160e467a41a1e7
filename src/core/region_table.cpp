#include "core/region_table.hpp"

#include <algorithm>

namespace blkstack {

RegionTable::RegionTable(std::vector<MappedRegion> regions) : regions_(std::move(regions)) {
  std::sort(regions_.begin(), regions_.end(),
            [](const MappedRegion& a, const MappedRegion& b) { return a.begin < b.begin; });
}

const MappedRegion* RegionTable::find_sorted(uintptr_t addr, size_t len) const {
  // The last region starting at or before addr is the only candidate.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uintptr_t a, const MappedRegion& r) { return a < r.begin; });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (addr - it->begin <= it->end - it->begin && len <= it->end - addr) return &*it;
  return nullptr;
}

const MappedRegion* RegionTable::overlapping(uintptr_t addr, size_t len) const {
  for (const MappedRegion& r : regions_) {
    if (addr < r.end && r.begin < addr + len) return &r;
  }
  return nullptr;
}

const MappedRegion* RegionTable::exact(const MemRegion& m) const {
  for (const MappedRegion& r : regions_) {
    if (r.desc.same_as(m)) return &r;
  }
  return nullptr;
}

}  // namespace blkstack
