#include "drivers/io_uring/io_uring_queue.hpp"

#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>

namespace blkstack {

namespace {
constexpr int kPunch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
constexpr int kZeroRange = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
}  // namespace

Status IoUringQueue::init(unsigned entries) {
  io_uring_params p{};
  if (poll_) p.flags |= IORING_SETUP_IOPOLL;
  // Cooperative task running avoids an IPI per completion; the TASKRUN flag
  // tells us when completions wait for us to enter the kernel.
  unsigned optional = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  if (Status s = ring_.init(entries, p, optional); !s) {
    if (s.code() == -EINVAL) return error(-EINVAL, "num-entries ({}) is larger than io_uring allows", entries);
    return s;
  }
  io_uring* ring = ring_.get();

  sqe_fd_ = target_.fd;
  if (io_uring_register_files(ring, &target_.fd, 1) == 0) {
    sqe_fd_ = 0;
    sqe_flags_ = IOSQE_FIXED_FILE;
  }
  fixed_buffers_ = io_uring_register_buffers_sparse(ring, kMaxFixedBuffers) == 0;
  fixed_ok_.assign(kMaxFixedBuffers, 0);

  if (!poll_) {
    event_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!event_fd_.valid()) return errno_error("eventfd");
    int r = io_uring_register_eventfd(ring, event_fd_.get());
    if (r < 0) return Status(r, fmt::format("io_uring_register_eventfd: {}", strerror(-r)));
    // Disabled until the application asks (blkio(3)); kernels without the
    // toggle keep signalling, which counts as spurious wakeups.
    io_uring_cq_eventfd_toggle(ring, false);
  }
  inflight_.resize(64);
  return {};
}

void IoUringQueue::set_completion_fd_enabled(bool enable) {
  if (poll_) return;
  fd_enabled_ = enable;
  io_uring_cq_eventfd_toggle(ring_.get(), enable);
}

void IoUringQueue::notify() {
  if (event_fd_.valid()) eventfd_write(event_fd_.get(), 1);
}

Status IoUringQueue::map_region(const MappedRegion& r) {
  if (!fixed_buffers_ || r.driver_index < 0) return {};
  iovec iov{r.desc.addr, r.desc.len};
  // Memory the kernel will not pin still works, through the plain opcodes.
  int ret = io_uring_register_buffers_update_tag(ring_.get(), static_cast<unsigned>(r.driver_index), &iov, nullptr, 1);
  fixed_ok_[static_cast<size_t>(r.driver_index)] = ret == 1;
  return {};
}

void IoUringQueue::unmap_region(const MappedRegion& r) {
  if (!fixed_buffers_ || r.driver_index < 0 || !fixed_ok_[static_cast<size_t>(r.driver_index)]) return;
  iovec iov{nullptr, 0};
  io_uring_register_buffers_update_tag(ring_.get(), static_cast<unsigned>(r.driver_index), &iov, nullptr, 1);
  fixed_ok_[static_cast<size_t>(r.driver_index)] = 0;
}

int IoUringQueue::submit() {
  stats_.submit_calls++;
  return io_uring_submit(ring_.get());
}

io_uring_sqe* IoUringQueue::next_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  while (!sqe) [[unlikely]] {
    // More requests queued than the ring holds: hand the full ring over.
    int r = submit();
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) return nullptr;
    sqe = io_uring_get_sqe(ring_.get());
  }
  return sqe;
}

void IoUringQueue::enqueue(uint32_t slot, const Request& req) {
  if (slot >= inflight_.size()) [[unlikely]] inflight_.resize(std::max<size_t>(slot + 1, inflight_.size() * 2));
  ++in_flight_;
  InFlight& f = inflight_[slot];
  f.zero_step = 0;
  f.flags = req.flags;
  f.offset = req.offset;
  f.len = req.len;
  f.done = 0;
  f.fixed = -1;
  switch (req.op) {
    case Op::kRead:
    case Op::kWrite:
      f.kind = Kind::kData;
      f.write = req.op == Op::kWrite;
      f.buf = static_cast<char*>(req.buf);
      if (req.region && req.region->driver_index >= 0 && fixed_ok_[static_cast<size_t>(req.region->driver_index)]) {
        f.fixed = req.region->driver_index;
      }
      break;
    case Op::kReadv:
    case Op::kWritev:
      f.kind = Kind::kVectored;
      f.write = req.op == Op::kWritev;
      f.iov = req.iov;
      f.iovcnt = req.iovcnt;
      break;
    case Op::kWriteZeroes:
      f.kind = poll_ ? Kind::kSaved : Kind::kZeroes;
      break;
    case Op::kFlush:
    case Op::kDiscard:
      f.kind = poll_ ? Kind::kSaved : Kind::kPlain;
      f.write = req.op == Op::kDiscard;
      break;
    default:
      f.kind = Kind::kSaved;  // zones: this driver has none
      break;
  }
  if (f.kind == Kind::kSaved) return issue_saved(slot, f, -EOPNOTSUPP);
  if (req.op == Op::kDiscard && target_.is_block) {
    // No ring opcode for block-device discard before Linux 6.12's uring_cmd;
    // the ioctl is quick and happens here.
    uint64_t range[2] = {f.offset, f.len};
    return issue_saved(slot, f, ::ioctl(target_.fd, BLKDISCARD, range) < 0 ? -errno : 0);
  }
  issue(slot, f);
}

// A request finished before submission still completes through the ring (a
// NOP), so completions keep one path and the completion fd fires as usual.
void IoUringQueue::issue_saved(uint32_t slot, InFlight& f, int result) {
  f.kind = Kind::kSaved;
  f.done = static_cast<uint64_t>(static_cast<int64_t>(result));
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_nop(sqe);
  sqe->user_data = slot;
}

void IoUringQueue::prep_data(io_uring_sqe* sqe, const InFlight& f) {
  if (f.kind == Kind::kVectored) {
    if (f.write) {
      io_uring_prep_writev(sqe, sqe_fd_, f.iov, static_cast<unsigned>(f.iovcnt), f.offset);
    } else {
      io_uring_prep_readv(sqe, sqe_fd_, f.iov, static_cast<unsigned>(f.iovcnt), f.offset);
    }
  } else {
    char* buf = f.buf + f.done;
    auto len = static_cast<unsigned>(std::min<uint64_t>(f.len - f.done, 1u << 30));
    uint64_t off = f.offset + f.done;
    if (f.fixed >= 0) {
      stats_.fixed_buffer_ops++;
      if (f.write) {
        io_uring_prep_write_fixed(sqe, sqe_fd_, buf, len, off, f.fixed);
      } else {
        io_uring_prep_read_fixed(sqe, sqe_fd_, buf, len, off, f.fixed);
      }
    } else if (f.write) {
      stats_.plain_ops++;
      io_uring_prep_write(sqe, sqe_fd_, buf, len, off);
    } else {
      stats_.plain_ops++;
      io_uring_prep_read(sqe, sqe_fd_, buf, len, off);
    }
  }
  if (f.flags & kReqFua) sqe->rw_flags = RWF_DSYNC;
  sqe->flags |= sqe_flags_;
}

// Write-zeroes tries fallocate modes in order of preference. On a block
// device PUNCH_HOLE means "zero, may unmap, never fall back to writing" and
// ZERO_RANGE "zero, keep allocated, the kernel may write zeroes itself".
// Returns 0 when no mode is left.
int IoUringQueue::zero_mode(const InFlight& f) const {
  int modes[2];
  int n = 0;
  if (!(f.flags & kReqNoUnmap) && punch_hole_works_) modes[n++] = kPunch;
  if (zero_range_works_ && !(target_.is_block && (f.flags & kReqNoFallback))) modes[n++] = kZeroRange;
  return f.zero_step < n ? modes[f.zero_step] : 0;
}

void IoUringQueue::issue(uint32_t slot, InFlight& f) {
  if (f.kind == Kind::kZeroes) {
    int mode = zero_mode(f);
    if (!mode) return issue_saved(slot, f, -EOPNOTSUPP);
    f.done = static_cast<uint64_t>(mode);
    io_uring_sqe* sqe = next_sqe();
    io_uring_prep_fallocate(sqe, sqe_fd_, mode, f.offset, f.len);
    sqe->flags |= sqe_flags_;
    sqe->user_data = slot;
    return;
  }
  io_uring_sqe* sqe = next_sqe();
  if (f.kind == Kind::kPlain) {
    if (f.write) {
      io_uring_prep_fallocate(sqe, sqe_fd_, kPunch, f.offset, f.len);  // discard on a file
    } else {
      io_uring_prep_fsync(sqe, sqe_fd_, IORING_FSYNC_DATASYNC);
    }
    sqe->flags |= sqe_flags_;
  } else {
    prep_data(sqe, f);
  }
  sqe->user_data = slot;
}

void IoUringQueue::on_cqe(Queue& owner, uint32_t slot, int res) {
  InFlight& f = inflight_[slot];
  switch (f.kind) {
    case Kind::kData:
      if (res >= 0 && static_cast<uint64_t>(res) != f.len - f.done) [[unlikely]] {
        if (res == 0) {
          if (f.write) return finish(owner, slot, -EIO);
          // The file shrank under us: what is gone reads as zeroes.
          std::memset(f.buf + f.done, 0, f.len - f.done);
          return finish(owner, slot, 0);
        }
        f.done += static_cast<uint64_t>(res);  // a short transfer: continue it
        return issue(slot, f);
      }
      return finish(owner, slot, res);
    case Kind::kVectored:
      // A short vectored transfer only happens when the file shrank.
      if (res >= 0 && static_cast<uint64_t>(res) != f.len) return finish(owner, slot, -EIO);
      return finish(owner, slot, res);
    case Kind::kZeroes:
      if (res == -EOPNOTSUPP || (res == -EINVAL && !target_.is_block)) {
        (f.done == kPunch ? punch_hole_works_ : zero_range_works_) = false;
        f.zero_step++;
        return issue(slot, f);
      }
      return finish(owner, slot, res);
    case Kind::kSaved:
      return finish(owner, slot, static_cast<int>(static_cast<int64_t>(f.done)));
    case Kind::kPlain:
      return finish(owner, slot, res);
  }
}

bool IoUringQueue::kernel_has_work() const {
  if (in_flight_ == 0) return false;
  // Completions may wait in task work (COOP_TASKRUN) or the overflow list
  // until we enter the kernel; polled rings complete only when polled.
  unsigned kflags = IO_URING_READ_ONCE(*ring_.get()->sq.kflags);
  return poll_ || (kflags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW));
}

int IoUringQueue::reap(Queue& owner, unsigned budget) {
  io_uring* ring = ring_.get();
  unsigned n = 0;
  while (n < budget) {
    unsigned head;
    io_uring_cqe* cqe;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      if (n + seen == budget) break;
      seen++;
      on_cqe(owner, static_cast<uint32_t>(cqe->user_data), cqe->res);
    }
    if (seen == 0) break;
    io_uring_cq_advance(ring, seen);
    n += seen;
  }
  return static_cast<int>(n);
}

int IoUringQueue::process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
                          const sigset_t* sig) {
  io_uring* ring = ring_.get();
  int err = 0;
  if (wait_for > 0 && io_uring_cq_ready(ring) < wait_for) {
    __kernel_timespec ts{};
    if (timeout) {
      ts.tv_sec = timeout->tv_sec;
      ts.tv_nsec = timeout->tv_nsec;
    }
    io_uring_cqe* cqe = nullptr;
    if (io_uring_sq_ready(ring)) stats_.submit_calls++;
    int r = io_uring_submit_and_wait_timeout(ring, &cqe, wait_for, timeout ? &ts : nullptr, const_cast<sigset_t*>(sig));
    if (r < 0) err = r;
  } else if (io_uring_sq_ready(ring) > 0) {
    stats_.submit_calls++;
    int r = budget > 0 && kernel_has_work() ? io_uring_submit_and_get_events(ring) : io_uring_submit(ring);
    if (r < 0) err = r;
  } else if (budget > 0 && kernel_has_work()) {
    io_uring_get_events(ring);
  }
  int n = budget ? reap(owner, budget) : 0;
  // Follow-up steps queued while reaping must reach the kernel now: the
  // caller may next wait on the completion fd rather than call us.
  if (io_uring_sq_ready(ring) > 0) submit();
  // Completions left behind for lack of room would otherwise go unnoticed by
  // an event-driven caller that has already consumed the eventfd.
  if (fd_enabled_ && budget > 0 && n == static_cast<int>(budget) && io_uring_cq_ready(ring) > 0) notify();
  if (n > 0) return n;
  if (err == -ETIME || err == -EINTR) return err;
  return (err < 0 && err != -EAGAIN && err != -EBUSY) ? err : 0;
}

}  // namespace blkstack
