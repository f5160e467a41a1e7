#include "daemon/reactor.hpp"

#include <sys/eventfd.h>

namespace blkstack {

Reactor::~Reactor() {
  stop();
  join();
}

Status Reactor::init(unsigned entries) {
  io_uring_params p{};
  // Completions are only ever reaped by this thread: let the kernel defer
  // their work until we ask, and skip IPIs.
  unsigned optional = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = entries * 4;
  if (Status s = ring_.init(entries, p, optional); !s) return s;
  // Blocking on purpose: it is only read through the ring, and some kernels
  // answer an io_uring read of an O_NONBLOCK file with -EAGAIN instead of
  // waiting, which would make the mailbox spin. Writers never block (the
  // counter cannot come near overflow).
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_.valid()) return errno_error("eventfd");
  return {};
}

void Reactor::start() {
  thread_ = std::thread([this] {
    thread_id_ = std::this_thread::get_id();
    loop();
  });
}

void Reactor::stop() {
  stop_.store(true, std::memory_order_release);
  if (wake_fd_.valid()) eventfd_write(wake_fd_.get(), 1);
}

void Reactor::join() {
  if (thread_.joinable()) thread_.join();
}

io_uring_sqe* Reactor::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(ring_.get());
  while (!s) {
    io_uring_submit(ring_.get());
    s = io_uring_get_sqe(ring_.get());
  }
  return s;
}

void Reactor::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mailbox_mutex_);
    mailbox_.push_back(std::move(fn));
  }
  eventfd_write(wake_fd_.get(), 1);
}

void Reactor::Mailbox::arm() {
  io_uring_sqe* s = r_.sqe();
  io_uring_prep_read(s, r_.wake_fd_.get(), &value_, sizeof(value_), 0);
  io_uring_sqe_set_data(s, static_cast<Op*>(this));
}

void Reactor::Mailbox::complete(int, uint32_t) {
  r_.run_mailbox();
  if (!r_.stop_.load(std::memory_order_acquire)) arm();
}

void Reactor::run_mailbox() {
  std::vector<std::function<void()>> work;
  {
    std::lock_guard lock(mailbox_mutex_);
    work.swap(mailbox_);
  }
  for (auto& fn : work) fn();
}

void Reactor::run_deferred() {
  // Deferred work may defer more work (for the next round of this loop).
  while (!deferred_.empty()) {
    std::vector<Deferred*> now;
    now.swap(deferred_);
    for (Deferred* d : now) {
      d->queued_ = false;
      d->run_deferred();
    }
  }
}

void Reactor::loop() {
  io_uring* ring = ring_.get();
  mailbox_op_.arm();
  run_mailbox();
  while (!stop_.load(std::memory_order_acquire)) {
    run_deferred();
    int r = io_uring_submit_and_wait(ring, 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) break;
    unsigned head;
    io_uring_cqe* cqe;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      seen++;
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      if (op) op->complete(cqe->res, cqe->flags);
    }
    io_uring_cq_advance(ring, seen);
  }
  run_mailbox();
  run_deferred();
}

}  // namespace blkstack
