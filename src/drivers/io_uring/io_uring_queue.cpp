#include "drivers/io_uring/io_uring_queue.hpp"

#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

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
  if (target_.single_issuer) {
    // Completions then run in one batch when this thread asks for them,
    // never as task work interrupting it (fio's own setup). Only the thread
    // that enables the ring may enter it: it starts disabled, so the thread
    // that first calls do_io() is that thread, not the one that created it.
    optional |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
  }
  if (Status s = ring_.init(entries, p, optional); !s) {
    if (s.code() == -EINVAL) return error(-EINVAL, "num-entries ({}) is larger than io_uring allows", entries);
    return s;
  }
  io_uring* ring = ring_.get();
  needs_enable_ = (ring_.flags() & IORING_SETUP_R_DISABLED) != 0;
  sq_entries_ = ring->sq.ring_entries;
  sq_mask_ = ring->sq.ring_mask;

  if (target_.can_grow) fast_read_end_ = 0;  // looked up on the first read
  if (!poll_ && target_.inline_max > 0) {
    inline_max_ = target_.inline_max;
    inline_cap_ = entries;
    inline_ = std::make_unique<InlineRw[]>(inline_cap_);
  }
  sqe_fd_ = target_.fd;
  if (io_uring_register_files(ring, &target_.fd, 1) == 0) {
    sqe_fd_ = 0;
    sqe_flags_ = IOSQE_FIXED_FILE;
  }
  data_flags_ = sqe_flags_ | (target_.worker_only ? IOSQE_ASYNC : 0);
  fixed_buffers_ = io_uring_register_buffers_sparse(ring, kMaxFixedBuffers) == 0;
  registered_.assign(kMaxFixedBuffers, 0);

  if (!poll_) {
    event_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!event_fd_.valid()) return errno_error("eventfd");
    int r = io_uring_register_eventfd(ring, event_fd_.get());
    if (r < 0) return Status(r, fmt::format("io_uring_register_eventfd: {}", strerror(-r)));
    // Disabled until the application asks (blkio(3)); kernels without the
    // toggle keep signalling, which counts as spurious wakeups.
    io_uring_cq_eventfd_toggle(ring, false);
  }
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

Status IoUringQueue::map_region(MappedRegion& r) {
  if (r.driver_index < 0) return {};
  const auto index = static_cast<unsigned>(r.driver_index);
  iovec iov{r.desc.addr, r.desc.len};
  int ret = fixed_buffers_ ? io_uring_register_buffers_update_tag(ring_.get(), index, &iov, nullptr, 1) : -EOPNOTSUPP;
  if (ret == 1) {
    registered_[index] = 1;
  } else if (ret == -EEXIST) {
    // A single-issuer ring bound to another thread: registered later by
    // that thread. Meanwhile requests on this queue use the plain opcodes.
    defer_buffer_change(index, iov);
  }
  // Otherwise (memory the kernel will not pin) the plain opcodes work.
  return {};
}

void IoUringQueue::unmap_region(const MappedRegion& r) {
  if (r.driver_slot < 0) return;
  const auto index = static_cast<unsigned>(r.driver_slot);
  {
    // A registration still waiting for the owning thread must not happen
    // after the memory is gone.
    std::lock_guard lock(pending_mu_);
    std::erase_if(pending_, [&](const PendingBuffer& p) { return p.index == index && p.iov.iov_len > 0; });
  }
  if (!registered_[index]) return;
  registered_[index] = 0;
  iovec iov{nullptr, 0};
  if (io_uring_register_buffers_update_tag(ring_.get(), index, &iov, nullptr, 1) == -EEXIST) {
    // The pages stay pinned until the owning thread drops them.
    defer_buffer_change(index, iov);
  }
}

void IoUringQueue::defer_buffer_change(unsigned index, iovec iov) {
  std::lock_guard lock(pending_mu_);
  pending_.push_back({index, iov});
  has_pending_.store(true, std::memory_order_release);
}

void IoUringQueue::apply_pending_buffers() {
  std::vector<PendingBuffer> todo;
  {
    std::lock_guard lock(pending_mu_);
    todo.swap(pending_);
    has_pending_.store(false, std::memory_order_relaxed);
  }
  for (PendingBuffer& p : todo) {
    int ret = io_uring_register_buffers_update_tag(ring_.get(), p.index, &p.iov, nullptr, 1);
    if (p.iov.iov_len > 0 && ret == 1) registered_[p.index] = 1;
  }
}

int IoUringQueue::enable_ring() {
  int r = io_uring_enable_rings(ring_.get());
  if (r == 0) needs_enable_ = false;
  return r;
}

int IoUringQueue::submit() {
  if (int r = prepare_enter(); r < 0) return r;
  stats_.submit_calls++;
  return io_uring_submit(ring_.get());
}

io_uring_sqe* IoUringQueue::sqe_slow() {
  io_uring_sqe* s = io_uring_get_sqe(ring_.get());
  while (!s) {
    // More requests queued than the ring holds: hand the full ring over.
    if (submit() == -EEXIST) {
      // A single-issuer ring driven from a thread it is not bound to can
      // never take this request: the queue is unusable from here on
      // (process() says so), and the request goes nowhere rather than
      // spinning here forever.
      foreign_thread_ = true;
      return &scratch_sqe_;
    }
    s = io_uring_get_sqe(ring_.get());
  }
  return s;
}

namespace {

// Every field of a read/write SQE, written once (liburing's prep helpers
// write several twice; this is the hottest code in the driver).
inline void fill_rw(io_uring_sqe* s, uint8_t opcode, uint8_t flags, int fd, const void* buf, uint32_t len,
                    uint64_t off, uint32_t rw_flags, uint16_t buf_index, uint64_t user_data) {
  s->opcode = opcode;
  s->flags = flags;
  s->ioprio = 0;
  s->fd = fd;
  s->off = off;
  s->addr = reinterpret_cast<uint64_t>(buf);
  s->len = len;
  s->rw_flags = static_cast<__kernel_rwf_t>(rw_flags);
  s->user_data = user_data;
  s->buf_index = buf_index;
  s->personality = 0;
  s->file_index = 0;
  s->addr3 = 0;
  s->__pad2[0] = 0;
}

static_assert(IORING_OP_WRITE_FIXED == IORING_OP_READ_FIXED + 1 && IORING_OP_WRITE == IORING_OP_READ + 1);
static_assert(kReqFua == 1 && RWF_DSYNC == 2);

// Zeroes everything in iov after the first `from` bytes.
void zero_iov_tail(const struct iovec* iov, int iovcnt, uint64_t from) {
  for (int i = 0; i < iovcnt; i++) {
    const uint64_t n = iov[i].iov_len;
    if (from < n) std::memset(static_cast<char*>(iov[i].iov_base) + from, 0, n - from);
    from = from > n ? from - n : 0;
  }
}

}  // namespace

// The hot path: a read or write into a free SQE, every field written once.
// A ring that looks full, or a huge request, takes the tracked path.
void IoUringQueue::enqueue_rw(RwTag tag, uint64_t offset, void* buf, uint64_t len, const MappedRegion* region) {
  if (len <= inline_max_) {
    InlineRw& e = next_inline();
    e.tag = tag;
    e.offset = offset;
    e.data = buf;
    e.len = static_cast<uint32_t>(len);
    e.iovcnt = 0;
    return;
  }
  enqueue_ring(tag, offset, buf, len, region);
}

void IoUringQueue::enqueue_ring(RwTag tag, uint64_t offset, void* buf, uint64_t len, const MappedRegion* region) {
  io_uring_sq& sq = ring_.get()->sq;
  const unsigned tail = sq.sqe_tail;
  if (tail - sq_head_ >= sq_entries_ || len > kMaxChunk || (offset + len > fast_read_end_ && tag.op() != Op::kWrite))
      [[unlikely]] {
    return enqueue_rw_slow(tag, offset, buf, len, region);
  }
  sq.sqe_tail = tail + 1;
  const unsigned write = tag.op() == Op::kWrite;
  const int fixed = fixed_index(region);
  uint8_t opcode;
  uint16_t buf_index = 0;
  if (fixed >= 0) {
    stats_.fixed_buffer_ops++;
    opcode = static_cast<uint8_t>(IORING_OP_READ_FIXED + write);
    buf_index = static_cast<uint16_t>(fixed);
  } else {
    stats_.plain_ops++;
    opcode = static_cast<uint8_t>(IORING_OP_READ + write);
  }
  fill_rw(&sq.sqes[tail & sq_mask_], opcode, data_flags_, sqe_fd_, buf, static_cast<uint32_t>(len), offset,
          (tag.flags() & kReqFua) << 1, buf_index, tag.slot());
}

void IoUringQueue::enqueue_rw_slow(RwTag tag, uint64_t offset, void* buf, uint64_t len,
                                   const MappedRegion* region) {
  if (target_.can_grow && offset + len > fast_read_end_) {
    // The file may have grown since we last looked (writes through any queue
    // or process): look again, and take the fast path if it has.
    struct stat st {};
    if (::fstat(target_.fd, &st) == 0) fast_read_end_ = static_cast<uint64_t>(st.st_size);
    if (offset + len <= fast_read_end_) return enqueue_ring(tag, offset, buf, len, region);
  }
  DriverQueue::enqueue_rw(tag, offset, buf, len, region);
}

IoUringQueue::Tracked& IoUringQueue::track(uint32_t slot, const Request& req) {
  if (slot >= tracked_.size()) tracked_.resize(std::max<size_t>(slot + 1, tracked_.size() * 2));
  Tracked& t = tracked_[slot];
  t.req = req;
  t.done = 0;
  t.result = 0;
  t.zero_step = 0;
  t.zero_mode = 0;
  return t;
}

// Reads and writes on the tracked path (also the rest of a short one).
void IoUringQueue::issue_data(uint32_t slot, Tracked& t) {
  const Request& r = t.req;
  const bool write = r.op == Op::kWrite;
  const auto len = static_cast<uint32_t>(std::min(r.len - t.done, kMaxChunk));
  const int fixed = fixed_index(r.region);
  io_uring_sqe* s = sqe();
  if (fixed >= 0) {
    stats_.fixed_buffer_ops++;
    fill_rw(s, write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED, data_flags_, sqe_fd_,
            static_cast<char*>(r.buf) + t.done, len, r.offset + t.done, (r.flags & kReqFua) << 1,
            static_cast<uint16_t>(fixed), kTracked | slot);
  } else {
    stats_.plain_ops++;
    fill_rw(s, write ? IORING_OP_WRITE : IORING_OP_READ, data_flags_, sqe_fd_, static_cast<char*>(r.buf) + t.done, len,
            r.offset + t.done, (r.flags & kReqFua) << 1, 0, kTracked | slot);
  }
}

// A step settled before submission still completes through the ring (a NOP
// carries it), so completions keep one path and the completion fd fires.
void IoUringQueue::settle(uint32_t slot, int result) {
  io_uring_sqe* s = sqe();
  io_uring_prep_nop(s);
  s->user_data = kSaved | slot;
  tracked_[slot].result = result;
}

// Reads and writes, plain or vectored, that the calling thread will do
// (IoUringTarget::inline_max).
bool IoUringQueue::try_inline(uint32_t slot, const Request& req) {
  if (req.len > inline_max_) return false;
  const bool vectored = req.op == Op::kReadv || req.op == Op::kWritev;
  if (!vectored && req.op != Op::kRead && req.op != Op::kWrite) return false;
  next_inline() = {RwTag::make(slot, req.op, req.flags), req.offset, vectored ? const_cast<iovec*>(req.iov) : req.buf,
                   static_cast<uint32_t>(req.len), vectored ? req.iovcnt : 0};
  return true;
}

void IoUringQueue::enqueue(uint32_t slot, const Request& req) {
  if (try_inline(slot, req)) return;
  sq_head_ = io_uring_smp_load_acquire(ring_.get()->sq.khead);
  Tracked& t = track(slot, req);
  io_uring_sqe* s;
  switch (req.op) {
    case Op::kRead:
    case Op::kWrite:
      return issue_data(slot, t);
    case Op::kReadv:
    case Op::kWritev:
      s = sqe();
      if (req.op == Op::kWritev) {
        io_uring_prep_writev(s, sqe_fd_, req.iov, static_cast<unsigned>(req.iovcnt), req.offset);
      } else {
        io_uring_prep_readv(s, sqe_fd_, req.iov, static_cast<unsigned>(req.iovcnt), req.offset);
      }
      if (req.flags & kReqFua) s->rw_flags = RWF_DSYNC;
      s->flags = data_flags_;
      s->user_data = kTracked | slot;
      return;
    case Op::kFlush:
      if (poll_) return settle(slot, -EOPNOTSUPP);  // polled rings cannot fsync
      s = sqe();
      io_uring_prep_fsync(s, sqe_fd_, IORING_FSYNC_DATASYNC);
      s->flags = sqe_flags_;
      s->user_data = kTracked | slot;
      return;
    case Op::kWriteZeroes:
      if (poll_) return settle(slot, -EOPNOTSUPP);
      return issue_zeroes(slot, t);
    case Op::kDiscard:
      if (poll_) return settle(slot, -EOPNOTSUPP);
      if (target_.is_block) {
        // No ring opcode for block-device discard before Linux 6.12's
        // uring_cmd; the ioctl is quick and happens here.
        uint64_t range[2] = {req.offset, req.len};
        return settle(slot, ::ioctl(target_.fd, BLKDISCARD, range) < 0 ? -errno : 0);
      }
      s = sqe();
      io_uring_prep_fallocate(s, sqe_fd_, kPunch, req.offset, req.len);
      s->flags = sqe_flags_;
      s->user_data = kTracked | slot;
      return;
    default:
      return settle(slot, -EOPNOTSUPP);  // zones: none here
  }
}

// Write-zeroes tries fallocate modes in order of preference. On a block
// device PUNCH_HOLE means "zero, may unmap, never fall back to writing" and
// ZERO_RANGE "zero, keep allocated, the kernel may write zeroes itself".
// Returns 0 when no mode is left.
int IoUringQueue::zero_mode(uint32_t flags, unsigned step) const {
  int modes[2];
  unsigned n = 0;
  if (!(flags & kReqNoUnmap) && punch_hole_works_) modes[n++] = kPunch;
  if (zero_range_works_ && !(target_.is_block && (flags & kReqNoFallback))) modes[n++] = kZeroRange;
  return step < n ? modes[step] : 0;
}

void IoUringQueue::issue_zeroes(uint32_t slot, Tracked& t) {
  int mode = zero_mode(t.req.flags, t.zero_step);
  if (!mode) return settle(slot, -EOPNOTSUPP);
  t.zero_mode = mode;
  io_uring_sqe* s = sqe();
  io_uring_prep_fallocate(s, sqe_fd_, mode, t.req.offset, t.req.len);
  s->flags = sqe_flags_;
  s->user_data = kTracked | slot;
}

void IoUringQueue::on_cqe_slow(Queue& owner, uint32_t slot, uint64_t user_data, int res) {
  if (!(user_data & (kTracked | kSaved))) {
    // A fast-path read or write that did not move every byte. Regular files
    // and block devices only fall short at the end of the file, which the
    // contract layer's range check rules out unless the file shrank under
    // us: report that as an I/O error.
    return owner.complete(slot, res < 0 ? res : -EIO);
  }
  Tracked& t = tracked_[slot];
  if (user_data & kSaved) return owner.complete(slot, t.result);
  const Request& r = t.req;
  switch (r.op) {
    case Op::kRead:
    case Op::kWrite:
      if (res < 0) return owner.complete(slot, res);
      if (res == 0) {
        if (r.op == Op::kWrite) return owner.complete(slot, -EIO);
        // The file shrank under us: what is gone reads as zeroes.
        std::memset(static_cast<char*>(r.buf) + t.done, 0, r.len - t.done);
        return owner.complete(slot, 0);
      }
      t.done += static_cast<uint64_t>(res);
      if (t.done >= r.len) return owner.complete(slot, 0);
      return issue_data(slot, t);  // a short or chunked transfer: continue it
    case Op::kReadv:
      if (res >= 0 && static_cast<uint64_t>(res) < r.len && target_.can_grow) {
        // Past the end of a growable file: the rest reads as zeroes.
        zero_iov_tail(r.iov, r.iovcnt, static_cast<uint64_t>(res));
        return owner.complete(slot, 0);
      }
      [[fallthrough]];
    case Op::kWritev:
      // Otherwise a short vectored transfer only happens when the file shrank.
      return owner.complete(slot, res < 0 ? res : static_cast<uint64_t>(res) == r.len ? 0 : -EIO);
    case Op::kWriteZeroes:
      if (res == -EOPNOTSUPP || (res == -EINVAL && !target_.is_block)) {
        (t.zero_mode == kPunch ? punch_hole_works_ : zero_range_works_) = false;
        t.zero_step++;
        return issue_zeroes(slot, t);
      }
      return owner.complete(slot, res);
    default:
      return owner.complete(slot, res);
  }
}

// One inline request, start to finish. The result is what its CQE would
// have said: the length, or a negative errno.
int IoUringQueue::inline_rw(const InlineRw& r) {
  const Op op = r.tag.op();
  const bool write = op == Op::kWrite || op == Op::kWritev;
  const int rwf = (r.tag.flags() & kReqFua) ? RWF_DSYNC : 0;
  if (op == Op::kReadv || op == Op::kWritev) {
    // Vectored transfers fall short only at the end of the file, with the
    // same outcome as through the ring (see on_cqe_slow()).
    const auto* iov = static_cast<const struct iovec*>(r.data);
    ssize_t n;
    do {
      n = write ? ::pwritev2(target_.fd, iov, r.iovcnt, static_cast<off_t>(r.offset), rwf)
                : ::preadv(target_.fd, iov, r.iovcnt, static_cast<off_t>(r.offset));
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if (static_cast<uint64_t>(n) < r.len) {
      if (write) return -EIO;
      zero_iov_tail(iov, r.iovcnt, static_cast<uint64_t>(n));
    }
    return static_cast<int>(r.len);
  }
  char* p = static_cast<char*>(r.data);
  uint64_t done = 0;
  while (done < r.len) {
    struct iovec iov {p + done, r.len - done};
    const auto at = static_cast<off_t>(r.offset + done);
    ssize_t n = write ? ::pwritev2(target_.fd, &iov, 1, at, rwf) : ::preadv(target_.fd, &iov, 1, at);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) {
      // Only the end of the file stops a transfer short. Past it a growable
      // file reads as zeroes; a write that moves nothing is an error.
      if (write) return -EIO;
      std::memset(p + done, 0, r.len - done);
      break;
    }
    done += static_cast<uint64_t>(n);
  }
  return static_cast<int>(r.len);
}

// Runs the inline requests in the order they came. Completing one may queue
// another (a follow-up step of a multi-step request), which runs in the same
// loop; completions beyond the caller's room wait in the core's ready list,
// which signals the completion fd itself.
//
// The common case (a plain read or write that moves every byte in one call)
// completes through the queue's fast completer; anything else is done again
// from the start by inline_rw(), which finishes short transfers and turns
// failures into results (reading or writing the same bytes twice is
// harmless).
void IoUringQueue::run_inline(Queue& owner) {
  Queue::Completer fast(owner);
  const int fd = target_.fd;
  for (size_t i = 0; i < inline_n_; i++) {
    // Fields, not the entry: completing may queue more and move the array.
    const RwTag tag = inline_[i].tag;
    const uint32_t len = inline_[i].len;
    ssize_t n = -1;
    if (tag.op() == Op::kRead) {
      n = ::pread(fd, inline_[i].data, len, static_cast<off_t>(inline_[i].offset));
    } else if (tag.op() == Op::kWrite && !(tag.flags() & kReqFua)) {
      n = ::pwrite(fd, inline_[i].data, len, static_cast<off_t>(inline_[i].offset));
    }
    if (static_cast<uint64_t>(n) == len && fast.complete_ok(tag.slot())) [[likely]] continue;
    const int res = static_cast<uint64_t>(n) == len ? static_cast<int>(len) : inline_rw(inline_[i]);
    fast.flush();
    owner.complete(tag.slot(), res);
    fast.reload();
  }
  stats_.inline_ops += inline_n_;
  inline_n_ = 0;
}

void IoUringQueue::grow_inline() {
  const size_t cap = std::max<size_t>(16, inline_cap_ * 2);
  auto bigger = std::make_unique<InlineRw[]>(cap);
  std::copy(inline_.get(), inline_.get() + inline_n_, bigger.get());
  inline_ = std::move(bigger);
  inline_cap_ = cap;
}

bool IoUringQueue::kernel_has_work(const Queue& owner) const {
  if (owner.outstanding() == 0) return false;
  // Completions may wait in task work (COOP_TASKRUN) or the overflow list
  // until we enter the kernel; polled rings complete only when polled.
  unsigned kflags = IO_URING_READ_ONCE(*ring_.get()->sq.kflags);
  return poll_ || (kflags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW));
}

unsigned IoUringQueue::reap(Queue& owner, unsigned budget) {
  io_uring_cq& cq = ring_.get()->cq;
  const io_uring_cqe* const cqes = cq.cqes;
  const unsigned mask = cq.ring_mask;
  unsigned head = *cq.khead;
  unsigned n = 0;
  Queue::Completer fast(owner);
  while (n < budget) {
    const unsigned tail = io_uring_smp_load_acquire(cq.ktail);
    if (head == tail) break;
    const unsigned end = head + std::min(tail - head, budget - n);
    n += end - head;
    for (; head != end; head++) {
      const io_uring_cqe& cqe = cqes[head & mask];
      const uint64_t ud = cqe.user_data;
      const int res = cqe.res;
      const auto slot = static_cast<uint32_t>(ud);
      // The common case: a fast-path read or write that moved every byte.
      // Anything tagged, short, failed, or not directly completable goes
      // the careful way.
      if (ud <= UINT32_MAX && static_cast<uint64_t>(static_cast<int64_t>(res)) == fast.expected(slot) &&
          fast.complete_ok(slot)) [[likely]] {
      } else {
        fast.flush();
        on_cqe_slow(owner, slot, ud, res);
        fast.reload();
      }
    }
    io_uring_smp_store_release(cq.khead, head);
  }
  return n;
}

int IoUringQueue::process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
                          const sigset_t* sig) {
  io_uring* ring = ring_.get();
  if (foreign_thread_) [[unlikely]] return -EEXIST;
  if (int r = prepare_enter(); r < 0) return r;
  int err = 0;
  if (inline_n_ > 0) {
    run_inline(owner);
    wait_for = 0;  // what the caller waits for may be among them: let it look first
  }
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
    int r = budget > 0 && kernel_has_work(owner) ? io_uring_submit_and_get_events(ring) : io_uring_submit(ring);
    if (r < 0) err = r;
  } else if (budget > 0 && kernel_has_work(owner)) {
    io_uring_get_events(ring);
  }
  // Another thread than the one a single-issuer ring is bound to: the
  // kernel refuses it. Nothing was submitted or reaped.
  if (err == -EEXIST) [[unlikely]] return err;
  unsigned n = budget ? reap(owner, budget) : 0;
  if (inline_n_ > 0) run_inline(owner);  // follow-up steps queued while reaping
  // Follow-up steps queued while reaping must reach the kernel now: the
  // caller may next wait on the completion fd rather than call us.
  if (io_uring_sq_ready(ring) > 0) submit();
  // Completions left behind for lack of room would otherwise go unnoticed by
  // an event-driven caller that has already consumed the eventfd.
  if (fd_enabled_ && budget > 0 && n == budget && io_uring_cq_ready(ring) > 0) notify();
  if (n > 0) return static_cast<int>(n);
  if (err == -ETIME || err == -EINTR) return err;
  return (err < 0 && err != -EAGAIN && err != -EBUSY) ? err : 0;
}

}  // namespace blkstack
