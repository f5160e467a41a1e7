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
  if (read_mode_) {
    // A read of the eventfd, re-armed after each wakeup. Not a multishot
    // poll: the kernel turns a poll on an io_uring's own eventfd into a
    // one-shot one (EPOLL_URING_WAKE, against completion loops), and an
    // eventfd that is never read is still readable when the poll is re-armed,
    // so each wakeup cost two CQEs and an extra loop iteration. The read
    // resets the counter: one CQE per wakeup.
    io_uring_prep_read(s, queue_.completion_fd(), &event_value_, sizeof(event_value_), 0);
  } else {
    // Multishot: one SQE keeps reporting every time the fd is signalled, so
    // the eventfd never needs reading (spurious wakeups are allowed).
    io_uring_prep_poll_multishot(s, queue_.completion_fd(), POLLIN);
  }
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(this));
  poll_armed_ = true;
}

void IoQueue::shutdown() {
  if (!poll_armed_ || shutting_down_) return;
  shutting_down_ = true;
  io_uring_sqe* s = reactor_.sqe();
  if (read_mode_) {
    io_uring_prep_cancel(s, static_cast<Reactor::Op*>(this), 0);
  } else {
    io_uring_prep_poll_remove(s, reinterpret_cast<uint64_t>(static_cast<Reactor::Op*>(this)));
  }
  io_uring_sqe_set_data(s, nullptr);
}

void IoQueue::complete(int res, uint32_t flags) {
  if (read_mode_) {
    poll_armed_ = false;
    if (shutting_down_) return;
    if (res == -EAGAIN || res == -EINVAL || res == -EOPNOTSUPP) {
      // A kernel that will not wait for a non-blocking eventfd to become
      // readable: fall back to the poll.
      read_mode_ = false;
    } else if (res < 0) {
      return;  // as with the poll: an error ends the polling
    }
    reap();
    // Completions that land from here on count up the eventfd again, so
    // arming after reaping loses nothing.
    if (!shutting_down_) arm_poll();
    return;
  }
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
