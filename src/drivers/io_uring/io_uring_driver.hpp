// The io_uring driver: regular files and block devices through Linux io_uring
// (blkio(3), DRIVERS, io_uring).
#pragma once

#include <string>
#include <vector>

#include "core/driver.hpp"
#include "core/fd.hpp"

namespace blkstack {

// What every queue of one io_uring device needs to know.
struct IoUringTarget {
  int fd = -1;
  bool is_block = false;
  bool direct = false;
  // Regular files grow: reads past the end read zeroes, writes past it
  // extend the file (as real libblkio's io_uring driver does).
  bool can_grow = false;
  // Reads and writes of at most this many bytes are done by the thread that
  // calls do_io(), with pread/pwrite, instead of through the ring; 0: none.
  // Only for files in memory (tmpfs, shmem, ramfs) on kernels whose io_uring
  // cannot read them without a worker thread, see io_uring_needs_worker().
  uint32_t inline_max = 0;
  // The single-issuer property: each queue's ring is bound to the first
  // thread that drives it (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN).
  bool single_issuer = false;
  // Every read and write of this file goes to an io-wq worker (a file in
  // memory whose io_uring cannot do it in the submitting thread; see
  // io_uring_needs_worker()). They are marked IOSQE_ASYNC: io-wq starts another
  // worker for a request only when no worker runs or the request asks for
  // it, and a memory copy never sleeps, so without the flag every request
  // of the ring is copied by one worker, one after the other.
  bool worker_only = false;
};

// How many mapped regions get an io_uring fixed-buffer slot; regions beyond
// this still work, through the plain opcodes.
inline constexpr int kMaxFixedBuffers = 1024;

class IoUringDriver final : public Driver {
 public:
  static std::unique_ptr<Driver> create();

  std::span<const DriverProperty> properties() const override;
  Status connect(bool& read_only, DeviceInfo& info) override;
  Result<std::unique_ptr<DriverQueue>> create_queue(bool poll) override;
  Status map_region(MappedRegion& r) override;
  void unmap_region(const MappedRegion& r) override;
  Result<AllocationExtent> extent_at(uint64_t offset, uint64_t len) override;
  uint64_t current_capacity(uint64_t connected_capacity) override;
  int memory_file() const override { return in_memory_ ? target_.fd : -1; }

 private:
  friend struct IoUringProperties;
  bool probe_iopoll(const DeviceInfo& info) const;
  bool probe_punch_hole(uint64_t capacity) const;

  // Properties (blkio(3)).
  std::string path_;
  int fd_prop_ = -1;
  bool direct_ = false;
  int num_entries_ = 128;
  bool single_issuer_ = false;

  UniqueFd fd_;
  IoUringTarget target_;
  bool in_memory_ = false;  // a regular file on tmpfs/ramfs, not O_DIRECT
  std::vector<bool> fixed_used_;
};

}  // namespace blkstack
