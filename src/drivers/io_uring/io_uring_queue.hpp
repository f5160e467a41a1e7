// One io_uring queue: a ring, the device fd registered as a fixed file, mapped
// regions registered as fixed buffers, and an eventfd for the completion fd.
#pragma once

#include <vector>

#include "core/driver.hpp"
#include "core/fd.hpp"
#include "core/uring.hpp"
#include "drivers/io_uring/io_uring_driver.hpp"

namespace blkstack {

class IoUringQueue final : public DriverQueue {
 public:
  IoUringQueue(const IoUringTarget& target, bool poll) : target_(target), poll_(poll) {}
  Status init(unsigned entries);

  void enqueue(uint32_t slot, const Request& req) override;
  int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
              const sigset_t* sig) override;
  int completion_fd() const override { return poll_ ? -1 : event_fd_.get(); }
  void set_completion_fd_enabled(bool enable) override;
  void notify() override;
  Status map_region(const MappedRegion& r) override;
  void unmap_region(const MappedRegion& r) override;
  DriverQueueStats stats() const override { return stats_; }

 private:
  // How a slot's CQE is judged.
  enum class Kind : uint8_t {
    kData,       // read/write: short transfers are continued
    kVectored,   // readv/writev: a short transfer is an error
    kZeroes,     // write-zeroes: -EOPNOTSUPP moves on to the next fallocate mode
    kPlain,      // flush, discard: the result is final
    kSaved,      // done before submission (a NOP carries it): result in `done`
  };
  // What was issued for a slot.
  struct InFlight {
    Kind kind;
    uint8_t zero_step;  // write-zeroes: index into the mode list
    bool write;
    uint32_t flags;
    int fixed;          // fixed-buffer index or -1
    uint64_t offset;
    uint64_t len;
    uint64_t done;      // bytes transferred so far, or the saved result
    union {
      char* buf;
      const iovec* iov;
    };
    int iovcnt;
  };

  io_uring_sqe* next_sqe();
  void issue(uint32_t slot, InFlight& f);
  void issue_saved(uint32_t slot, InFlight& f, int result);
  void prep_data(io_uring_sqe* sqe, const InFlight& f);
  int zero_mode(const InFlight& f) const;
  void finish(Queue& owner, uint32_t slot, int res) {
    --in_flight_;
    owner.complete(slot, res);
  }
  void on_cqe(Queue& owner, uint32_t slot, int res);
  int reap(Queue& owner, unsigned budget);
  bool kernel_has_work() const;
  int submit();

  IoUringTarget target_;
  bool poll_;
  bool fd_enabled_ = false;
  Ring ring_;
  UniqueFd event_fd_;
  int sqe_fd_ = -1;  // fixed-file index 0, or the raw fd
  uint8_t sqe_flags_ = 0;
  bool fixed_buffers_ = false;
  unsigned in_flight_ = 0;
  DriverQueueStats stats_;
  std::vector<uint8_t> fixed_ok_;   // fixed-buffer index -> registered on this ring
  std::vector<InFlight> inflight_;  // by slot
  // File-system capabilities learnt from -EOPNOTSUPP, so later requests skip
  // fallocate modes that cannot work.
  bool punch_hole_works_ = true;
  bool zero_range_works_ = true;
};

}  // namespace blkstack
