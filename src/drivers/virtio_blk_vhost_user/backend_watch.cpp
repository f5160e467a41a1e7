#include "drivers/virtio_blk_vhost_user/backend_watch.hpp"

#include <poll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>

namespace blkstack {

bool BackendWatch::start(int sock) {
  stop_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_.valid()) return false;
  thread_ = std::thread([this, sock] { run(sock); });
  return true;
}

void BackendWatch::stop() {
  if (!thread_.joinable()) return;
  eventfd_write(stop_.get(), 1);
  thread_.join();
}

void BackendWatch::run(int sock) {
  // POLLRDHUP only: replies to control requests make the socket readable,
  // and those belong to the control path, not to us. A peer that closed its
  // end reports POLLHUP/POLLRDHUP whatever we ask for.
  pollfd fds[2] = {{sock, POLLRDHUP, 0}, {stop_.get(), POLLIN, 0}};
  for (;;) {
    int r = ::poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (fds[1].revents & POLLIN)) return;
    if (fds[0].revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) {
      mark_dead();
      return;
    }
  }
}

void BackendWatch::mark_dead() {
  dead_.store(true, std::memory_order_release);
  std::lock_guard lock(mu_);
  for (int fd : wake_fds_) eventfd_write(fd, 1);
}

void BackendWatch::add_wake_fd(int fd) {
  std::lock_guard lock(mu_);
  wake_fds_.push_back(fd);
  if (dead()) eventfd_write(fd, 1);
}

void BackendWatch::remove_wake_fd(int fd) {
  std::lock_guard lock(mu_);
  wake_fds_.erase(std::remove(wake_fds_.begin(), wake_fds_.end(), fd), wake_fds_.end());
}

}  // namespace blkstack
