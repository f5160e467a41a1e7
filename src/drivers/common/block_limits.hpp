// Limits of a Linux block device, read from sysfs and block ioctls. Shared by
// the drivers that open block devices or files on them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace blkstack {

struct BlockLimits {
  uint64_t size = 0;                  // bytes (BLKGETSIZE64)
  uint32_t logical_block_size = 512;  // BLKSSZGET
  uint32_t physical_block_size = 512; // BLKPBSZGET
  uint32_t optimal_io_size = 0;       // BLKIOOPT
  uint32_t dma_alignment = 512;       // queue/dma_alignment + 1
  uint64_t max_transfer = 0;          // queue/max_sectors_kb
  uint32_t max_segments = 0;          // queue/max_segments
  uint64_t discard_granularity = 0;   // queue/discard_granularity
  uint64_t discard_max_bytes = 0;     // queue/discard_max_bytes (0: no discard)
  uint64_t discard_alignment = 0;     // <dev>/discard_alignment (partitions)
  uint64_t write_zeroes_max_bytes = 0;// queue/write_zeroes_max_bytes
  bool rotational = false;            // queue/rotational
  bool write_back_cache = true;       // queue/write_cache says "write back"
  bool io_poll = false;               // queue/io_poll
};

// Limits of the block device open as fd (ioctls first, sysfs for the rest).
BlockLimits block_limits_of_fd(int fd);
// Limits read from sysfs only, for the device that holds a file (st_dev).
BlockLimits block_limits_of_dev(dev_t dev);

// The first line of a sysfs attribute, or "" when it cannot be read.
std::string read_sysfs(const std::string& path);

}  // namespace blkstack
