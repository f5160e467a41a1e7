#include "drivers/rbd/rbd_queue.hpp"

#include <poll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <climits>

#include "blkstack/queue.hpp"

namespace blkstack {

RbdQueue::RbdQueue(std::shared_ptr<RbdImage> image) : image_(std::move(image)) {
  posted_.reserve(64);
  ready_.reserve(64);
  scratch_.reserve(64);
}

Status RbdQueue::init() {
  // Always an eventfd, even when the application polls: blocking do_io()
  // calls sleep on it, since completions come from librbd's threads.
  efd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!efd_.valid()) return errno_error("eventfd");
  return {};
}

RbdQueue::~RbdQueue() {
  // librbd has no way to cancel a request: wait for every callback. With an
  // op timeout set, requests to a dead OSD end in -ETIMEDOUT; without one,
  // this waits for the cluster, as closing the image would anyway.
  while (in_flight_ > 0) {
    collect();
    if (in_flight_ > 0) (void)wait(nullptr, nullptr);
  }
  // The last callback may still be inside its critical section (it writes
  // the eventfd under the lock): taking the lock once waits it out.
  std::lock_guard<std::mutex> lock(mu_);
}

RbdQueue::Ctx* RbdQueue::get_ctx(uint32_t slot) {
  Ctx* c;
  if (free_ctx_.empty()) {
    c = &ctx_pool_.emplace_back();
  } else {
    c = free_ctx_.back();
    free_ctx_.pop_back();
  }
  c->q = this;
  c->slot = slot;
  return c;
}

void RbdQueue::on_complete(rbd_completion_t c, void* arg) {
  // librbd's thread, not ours: read what we need, give the completion back
  // to librbd, then hand the result over under the lock.
  auto* ctx = static_cast<Ctx*>(arg);
  auto res = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  ctx->q->post(ctx, res < 0 ? static_cast<int>(res) : 0);
}

void RbdQueue::post(Ctx* ctx, int res) {
  std::lock_guard<std::mutex> lock(mu_);
  posted_.push_back({ctx->slot, res, ctx});
  // Only the first completion of a batch may signal, and only when someone
  // listens: the queue's thread asleep in wait(), or an application
  // watching the completion fd. A busy reaper finds the batch without a
  // system call on librbd's completion thread (which all requests share).
  if (!has_posted_.load(std::memory_order_relaxed)) {
    has_posted_.store(true, std::memory_order_release);
    if (sleeping_ || fd_enabled_.load(std::memory_order_relaxed)) {
      signaled_ = true;
      eventfd_write(efd_.get(), 1);
    }
  }
}

void RbdQueue::enqueue(uint32_t slot, const Request& req) {
  rbd_image_t img = image_->image.h;
  Ctx* ctx = get_ctx(slot);
  rbd_completion_t c = nullptr;
  int r = rbd_aio_create_completion(ctx, &RbdQueue::on_complete, &c);
  if (r == 0) {
    switch (req.op) {
      case Op::kRead:
        r = rbd_aio_read(img, req.offset, req.len, static_cast<char*>(req.buf), c);
        break;
      case Op::kWrite:
        r = rbd_aio_write(img, req.offset, req.len, static_cast<const char*>(req.buf), c);
        break;
      case Op::kReadv:
        r = rbd_aio_readv(img, req.iov, req.iovcnt, req.offset, c);
        break;
      case Op::kWritev:
        r = rbd_aio_writev(img, req.iov, req.iovcnt, req.offset, c);
        break;
      case Op::kWriteZeroes:
        // NO_UNMAP asks for allocated zeroes; librbd's thick-provision flag
        // writes them instead of deallocating objects.
        r = rbd_aio_write_zeroes(img, req.offset, req.len, c,
                                 (req.flags & kReqNoUnmap) ? RBD_WRITE_ZEROES_FLAG_THICK_PROVISION : 0, 0);
        break;
      case Op::kDiscard:
        r = rbd_aio_discard(img, req.offset, req.len, c);
        break;
      case Op::kFlush:
        r = rbd_aio_flush(img, c);
        break;
      default:
        r = -ENOTSUP;
        break;
    }
    if (r < 0) rbd_aio_release(c);  // refused: librbd will not call back
  }
  stats_.plain_ops++;
  if (r < 0) {
    free_ctx_.push_back(ctx);
    ready_.push_back({slot, r, nullptr});
    if (fd_enabled_.load(std::memory_order_relaxed)) notify();
    return;
  }
  in_flight_++;
}

void RbdQueue::collect() {
  if (!has_posted_.load(std::memory_order_acquire)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    scratch_.swap(posted_);
    has_posted_.store(false, std::memory_order_relaxed);
    // Reset the eventfd under the lock, so no signal for a later batch is
    // lost. The application's own reset (blkio(3)) may have come first:
    // the read then finds nothing, which is fine (non-blocking fd).
    if (signaled_) {
      eventfd_t v;
      (void)eventfd_read(efd_.get(), &v);
      signaled_ = false;
    }
  }
  in_flight_ -= scratch_.size();
  // The contexts of finished requests are free again: each callback read
  // its context before it posted under the lock we just held.
  for (const Done& d : scratch_) {
    ready_.push_back(d);
    free_ctx_.push_back(d.ctx);
  }
  scratch_.clear();
}

int RbdQueue::wait(const Deadline* deadline, const sigset_t* sig) {
  timespec rel{};
  if (deadline) {
    if (deadline->passed()) return -ETIME;
    rel = deadline->left();
  }
  if (notified_) {
    // A notify() during this do_io() (a refused request, a contract-layer
    // completion) was for work reaped before we got here: without this
    // read, ppoll() would return at once, again and again.
    eventfd_t v;
    (void)eventfd_read(efd_.get(), &v);
    notified_ = false;
  }
  {
    // Tell the callbacks to signal, unless something already arrived.
    std::lock_guard<std::mutex> lock(mu_);
    if (!posted_.empty()) return 0;
    sleeping_ = true;
  }
  pollfd p{efd_.get(), POLLIN, 0};
  int r = ::ppoll(&p, 1, deadline ? &rel : nullptr, sig);
  int err = errno;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sleeping_ = false;
  }
  if (r < 0) return err == EINTR ? -EINTR : -err;
  if (r == 0) return -ETIME;
  return 0;
}

int RbdQueue::process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
                      const sigset_t* sig) {
  Deadline deadline(timeout);
  if (notified_) {
    // notify() made the fd readable for work now being reaped: reset it so
    // an event-driven caller does not wake for nothing.
    eventfd_t v;
    (void)eventfd_read(efd_.get(), &v);
    notified_ = false;
  }
  unsigned n = 0;
  int err = 0;
  for (;;) {
    collect();
    while (n < budget && ready_head_ < ready_.size()) {
      // Copy: completing may enqueue a follow-up step (FUA's flush), and a
      // refused follow-up appends to ready_.
      Done d = ready_[ready_head_++];
      int res = d.res < 0 ? d.res : static_cast<int>(std::min<uint64_t>(owner.expected(d.slot), INT_MAX));
      owner.complete(d.slot, res);
      n++;
    }
    if (ready_head_ == ready_.size()) {
      ready_.clear();
      ready_head_ = 0;
    }
    if (n >= wait_for || n >= budget) break;
    int r = wait(deadline.never() ? nullptr : &deadline, sig);
    if (r < 0) {
      err = r;
      break;
    }
  }
  if (fd_enabled_.load(std::memory_order_relaxed) && ready_head_ < ready_.size()) notify();
  return n > 0 ? static_cast<int>(n) : err;
}

void RbdQueue::set_completion_fd_enabled(bool enable) {
  {
    // A batch already posted unsignalled must be signalled now.
    std::lock_guard<std::mutex> lock(mu_);
    fd_enabled_.store(enable, std::memory_order_relaxed);
    if (enable && !posted_.empty() && !signaled_) {
      signaled_ = true;
      eventfd_write(efd_.get(), 1);
    }
  }
  if (enable && ready_head_ < ready_.size()) notify();
}

void RbdQueue::notify() {
  notified_ = true;
  eventfd_write(efd_.get(), 1);
}

}  // namespace blkstack
