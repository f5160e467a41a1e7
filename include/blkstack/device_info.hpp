// What a connected device is and can do. Filled in by the driver at connect;
// the common "connected" properties of blkio(3) are read straight from here,
// and exports derive their protocol flags from it.
#pragma once

#include <climits>
#include <cstdint>

#include "blkstack/request.hpp"  // AllocationExtent

namespace blkstack {

struct DeviceInfo {
  // Device and queues.
  uint64_t capacity = 0;
  int max_queues = INT_MAX;
  bool supports_poll_queues = false;

  // Memory regions.
  uint64_t max_mem_regions = UINT64_MAX;
  bool may_pin_mem_regions = false;
  uint64_t mem_region_alignment = 1;
  bool needs_mem_regions = false;
  bool needs_mem_region_fd = false;

  // All requests.
  int optimal_io_alignment = 4096;
  int optimal_io_size = 0;
  int request_alignment = 1;
  bool flush_needed = true;

  // Reads and writes.
  int buf_alignment = 1;
  bool can_grow = false;
  int max_segments = 1024;
  int max_segment_len = 0;
  int max_transfer = 0;
  int optimal_buf_alignment = 4096;
  bool supports_fua_natively = false;

  // Write zeroes and discard.
  uint64_t max_write_zeroes_len = 0;
  int discard_alignment = 1;
  int discard_alignment_offset = 0;
  uint64_t max_discard_len = 0;

  // Beyond blkio(3): capabilities the contract layer and the exports need.
  bool supports_write_zeroes = true;      // false: every write-zeroes uses the write fallback
  bool supports_discard = true;           // false: discards complete with -ENOTSUP
  bool fua_native_write_zeroes = false;   // false: FUA on write-zeroes is emulated by a flush
  bool rotational = false;                // spinning media (NBD_FLAG_ROTATIONAL)
  bool can_report_holes = false;          // allocation queries (Queue::block_status, Device::extent_at)
                                          // answer from the backend; false: everything is data
  bool zoned = false;                     // zone requests are supported
};

}  // namespace blkstack
