#include "drivers/common/block_limits.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

namespace blkstack {

std::string read_sysfs(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

namespace {

uint64_t sysfs_u64(const std::string& path, uint64_t fallback) {
  std::string s = read_sysfs(path);
  if (s.empty()) return fallback;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  return end == s.c_str() ? fallback : v;
}

void fill_from_sysfs(dev_t dev, BlockLimits& l) {
  std::string base = "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
  // A partition has no queue/ of its own: use its disk's.
  std::string queue = base + "/queue";
  if (!read_sysfs(base + "/partition").empty()) queue = base + "/../queue";
  l.logical_block_size = static_cast<uint32_t>(sysfs_u64(queue + "/logical_block_size", l.logical_block_size));
  l.physical_block_size = static_cast<uint32_t>(sysfs_u64(queue + "/physical_block_size", l.physical_block_size));
  l.optimal_io_size = static_cast<uint32_t>(sysfs_u64(queue + "/optimal_io_size", l.optimal_io_size));
  l.dma_alignment = static_cast<uint32_t>(sysfs_u64(queue + "/dma_alignment", l.dma_alignment - 1) + 1);
  l.max_transfer = sysfs_u64(queue + "/max_sectors_kb", 0) * 1024;
  l.max_segments = static_cast<uint32_t>(sysfs_u64(queue + "/max_segments", 0));
  l.discard_granularity = sysfs_u64(queue + "/discard_granularity", 0);
  l.discard_max_bytes = sysfs_u64(queue + "/discard_max_bytes", 0);
  l.discard_alignment = sysfs_u64(base + "/discard_alignment", 0);
  l.write_zeroes_max_bytes = sysfs_u64(queue + "/write_zeroes_max_bytes", 0);
  l.rotational = sysfs_u64(queue + "/rotational", 0) != 0;
  std::string wc = read_sysfs(queue + "/write_cache");
  l.write_back_cache = wc.empty() || wc == "write back";
  l.io_poll = sysfs_u64(queue + "/io_poll", 0) != 0;
}

}  // namespace

BlockLimits block_limits_of_dev(dev_t dev) {
  BlockLimits l;
  fill_from_sysfs(dev, l);
  return l;
}

BlockLimits block_limits_of_fd(int fd) {
  BlockLimits l;
  struct stat st {};
  if (::fstat(fd, &st) == 0) fill_from_sysfs(st.st_rdev, l);
  uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) == 0) l.size = size;
  int ssz = 0;
  if (::ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz > 0) l.logical_block_size = static_cast<uint32_t>(ssz);
  unsigned int pbsz = 0;
  if (::ioctl(fd, BLKPBSZGET, &pbsz) == 0 && pbsz > 0) l.physical_block_size = pbsz;
  unsigned int opt = 0;
  if (::ioctl(fd, BLKIOOPT, &opt) == 0) l.optimal_io_size = opt;
  return l;
}

}  // namespace blkstack
