// KnownData: where one reactor has learnt that a device holds data, so that
// allocation queries are not repeated by every hole-aware read and every
// NBD_CMD_BLOCK_STATUS. On a file, a query is SEEK_DATA + SEEK_HOLE, and the
// kernel walks the page cache as far as the next hole whatever length is
// asked: over a large, fully written image each query costs milliseconds.
//
// Data stays data until a discard or write-zeroes, and those bump the
// device's holes generation (BlockDevice::holes_may_appear) before they are
// submitted: what was learnt is used only while the generation it was
// learnt under is current. Writes only turn holes into data, so they never
// make the memory wrong (a hole next to the extent is just asked again).
//
// One per device lane: only its reactor touches it, so there is no locking.
#pragma once

#include <algorithm>
#include <cstdint>

namespace blkstack {

class KnownData {
 public:
  // How many bytes from `offset` on are known to be data under holes
  // generation `gen` (0: nothing known).
  uint64_t data_from(uint64_t offset, uint64_t gen) const {
    if (gen != gen_ || offset < begin_ || offset >= end_) return 0;
    return end_ - offset;
  }

  // [begin, end) was reported as data by a query asked under `gen`. An
  // extent that touches the one remembered (same generation) extends it, so
  // a client walking a data area backwards or at random still converges on
  // one extent; otherwise the newest wins.
  void learn(uint64_t begin, uint64_t end, uint64_t gen) {
    if (begin >= end) return;
    if (gen == gen_ && begin <= end_ && end >= begin_) {
      begin_ = std::min(begin_, begin);
      end_ = std::max(end_, end);
      return;
    }
    begin_ = begin;
    end_ = end;
    gen_ = gen;
  }

 private:
  uint64_t begin_ = 0, end_ = 0, gen_ = 0;
};

}  // namespace blkstack
