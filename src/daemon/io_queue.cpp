#include "daemon/io_queue.hpp"

#include <poll.h>

namespace blkstack {

IoQueue::IoQueue(Reactor& reactor, Queue& queue) : reactor_(reactor), queue_(queue), completions_(256) {
  queue_.set_completion_fd_enabled(true);
  arm_poll();
}

IoQueue::~IoQueue() = default;

void IoQueue::arm_poll() {
  io_uring_sqe* s = reactor_.sqe();
  // Multishot: one SQE keeps reporting every time the fd is signalled, so
  // the eventfd never needs reading (spurious wakeups are allowed).
  io_uring_prep_poll_multishot(s, queue_.completion_fd(), POLLIN);
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(this));
  poll_armed_ = true;
}

void IoQueue::shutdown() {
  if (!poll_armed_ || shutting_down_) return;
  shutting_down_ = true;
  io_uring_sqe* s = reactor_.sqe();
  io_uring_prep_poll_remove(s, reinterpret_cast<uint64_t>(static_cast<Reactor::Op*>(this)));
  io_uring_sqe_set_data(s, nullptr);
}

void IoQueue::complete(int res, uint32_t flags) {
  if (!(flags & IORING_CQE_F_MORE)) {
    poll_armed_ = false;
    if (!shutting_down_ && res >= 0) arm_poll();
  }
  // The eventfd is never read: multishot poll reports each signal, and the
  // library allows spurious wakeups.
  if (res >= 0 && !shutting_down_) reap();
}

void IoQueue::run_deferred() { reap(); }

void IoQueue::reap() {
  for (;;) {
    int n = queue_.do_io(completions_.data(), 0, static_cast<int>(completions_.size()), nullptr);
    if (n <= 0) return;
    for (int i = 0; i < n; i++) static_cast<IoDone*>(completions_[i].user_data)->io_done(completions_[i].ret);
    if (n < static_cast<int>(completions_.size())) return;
  }
}

}  // namespace blkstack
