// One io_uring queue: a ring, the device fd registered as a fixed file, mapped
// regions registered as fixed buffers, and an eventfd for the completion fd.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
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

  void enqueue_rw(RwTag tag, uint64_t offset, void* buf, uint64_t len, const MappedRegion* region) override;
  void enqueue(uint32_t slot, const Request& req) override;
  int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
              const sigset_t* sig) override;
  int completion_fd() const override { return poll_ ? -1 : event_fd_.get(); }
  void set_completion_fd_enabled(bool enable) override;
  void notify() override;
  Status map_region(MappedRegion& r) override;
  void unmap_region(const MappedRegion& r) override;
  DriverQueueStats stats() const override { return stats_; }

 private:
  // Tags in a CQE's user_data (the low 32 bits are the slot). Untagged CQEs
  // are fast-path reads and writes.
  static constexpr uint64_t kTracked = 1ull << 62;  // details in tracked_[slot]
  static constexpr uint64_t kSaved = 1ull << 63;    // settled before submission; result in tracked_[slot]
  // Linux caps one read/write at a little under 2 GiB; stay well inside it.
  static constexpr uint64_t kMaxChunk = 1u << 30;

  // A request that takes the careful path: everything but reads and writes
  // that fit one SQE, with what finishing it needs.
  struct Tracked {
    Request req;
    uint64_t done = 0;   // read/write: bytes moved so far
    int result = 0;      // kSaved: the result
    uint8_t zero_step = 0;
    int zero_mode = 0;
  };

  // A read or write kept for the calling thread to do (IoUringTarget::inline_max).
  // The tag holds the slot, the operation (plain or vectored read or write)
  // and the flags; data is the buffer, or the iovec array for vectored ones.
  struct InlineRw {
    RwTag tag;
    uint64_t offset;
    void* data;
    uint32_t len;
    int iovcnt;
  };
  bool try_inline(uint32_t slot, const Request& req);
  // The next free entry of inline_, for the caller to fill in place.
  InlineRw& next_inline() {
    if (inline_n_ == inline_cap_) [[unlikely]] grow_inline();
    return inline_[inline_n_++];
  }
  [[gnu::noinline]] void grow_inline();

  // enqueue_rw() for requests that go through the ring. Out of line, so
  // the inline path runs without its prologue.
  [[gnu::noinline]] void enqueue_ring(RwTag tag, uint64_t offset, void* buf, uint64_t len,
                                      const MappedRegion* region);
  [[gnu::noinline]] void enqueue_rw_slow(RwTag tag, uint64_t offset, void* buf, uint64_t len,
                                         const MappedRegion* region);
  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(ring_.get());
    return s ? s : sqe_slow();
  }
  io_uring_sqe* sqe_slow();
  Tracked& track(uint32_t slot, const Request& req);
  void issue_data(uint32_t slot, Tracked& t);
  void settle(uint32_t slot, int result);
  int zero_mode(uint32_t flags, unsigned step) const;
  void issue_zeroes(uint32_t slot, Tracked& t);
  [[gnu::noinline]] void on_cqe_slow(Queue& owner, uint32_t slot, uint64_t user_data, int res);
  unsigned reap(Queue& owner, unsigned budget);
  // (Out of line: the fast loop in run_inline() keeps its registers.)
  [[gnu::noinline]] int inline_rw(const InlineRw& r);
  void run_inline(Queue& owner);
  bool kernel_has_work(const Queue& owner) const;
  int submit();
  // Binds a disabled ring to the calling thread; 0, or a negative errno.
  int enable_ring();
  // Before any entry into the kernel: binds a disabled ring and applies the
  // buffer changes other threads left. 0, or a negative errno.
  int prepare_enter() {
    if (needs_enable_) [[unlikely]] {
      if (int r = enable_ring(); r < 0) return r;
    }
    if (has_pending_.load(std::memory_order_acquire)) [[unlikely]] apply_pending_buffers();
    return 0;
  }
  // The fixed-buffer index to use for memory in `region`, or -1 (no region,
  // no slot, or the slot not registered on this ring).
  int fixed_index(const MappedRegion* region) const {
    const int index = region ? region->driver_index : -1;
    return index >= 0 && registered_[static_cast<unsigned>(index)] ? index : -1;
  }

  IoUringTarget target_;
  bool poll_;
  bool fd_enabled_ = false;
  Ring ring_;
  UniqueFd event_fd_;
  int sqe_fd_ = -1;  // fixed-file index 0, or the raw fd
  uint8_t sqe_flags_ = 0;
  uint8_t data_flags_ = 0;  // reads and writes: sqe_flags_, plus IOSQE_ASYNC on worker-only files
  bool fixed_buffers_ = false;
  // Created disabled (single-issuer): enabled by the first thread that
  // enters the kernel through it, which the ring is then bound to.
  bool needs_enable_ = false;
  // Set when a thread the single-issuer ring refuses had to queue into a
  // full ring: the queue fails every do_io() with -EEXIST from then on.
  bool foreign_thread_ = false;
  io_uring_sqe scratch_sqe_{};
  unsigned sq_head_ = 0;  // a possibly stale copy of the kernel's SQ head
  // Reads ending past this take the tracked path, which zero-fills what lies
  // beyond the end of a growable file. The file's size when last looked at;
  // UINT64_MAX for devices that cannot grow (the core's range check rules
  // out reads past their end).
  uint64_t fast_read_end_ = UINT64_MAX;
  // Requests up to this length take the inline path (0 on rings that go
  // through the kernel for everything); checked by the fast path as
  // `len <= inline_max_`, so 0 costs nothing.
  uint64_t inline_max_ = 0;
  // Queued since the last process(): the first inline_n_ entries of
  // inline_cap_ (an array, not a vector: fewer instructions per request).
  std::unique_ptr<InlineRw[]> inline_;
  size_t inline_n_ = 0;
  size_t inline_cap_ = 0;
  unsigned sq_entries_ = 0;
  unsigned sq_mask_ = 0;
  DriverQueueStats stats_;
  // Fixed-buffer slot -> registered on this ring. Requests use the
  // fixed-buffer opcodes only for slots registered here.
  std::vector<uint8_t> registered_;
  // Registrations (iov_len > 0) and unregistrations a single-issuer ring
  // refused because another thread than its own asked (a region mapped by
  // the application's other threads): the owning thread applies them, in
  // order, before it next enters the kernel.
  struct PendingBuffer {
    unsigned index;
    iovec iov;
  };
  void apply_pending_buffers();
  void defer_buffer_change(unsigned index, iovec iov);  // for the owning thread
  std::mutex pending_mu_;
  std::vector<PendingBuffer> pending_;
  std::atomic<bool> has_pending_{false};
  std::vector<Tracked> tracked_;   // by slot
  // File-system capabilities learnt from -EOPNOTSUPP, so later requests skip
  // fallocate modes that cannot work.
  bool punch_hole_works_ = true;
  bool zero_range_works_ = true;
};

}  // namespace blkstack
