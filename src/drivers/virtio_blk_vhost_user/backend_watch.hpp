// Notices a vhost-user back-end that went away. The socket hangs up when the
// back-end dies; nobody reads it on the data path, and an event-driven
// application waits on a queue's completion fd (the vring call eventfd),
// which a dead back-end will never signal. So one thread per device sleeps in
// poll() on the socket and, on hang-up, marks the back-end dead and signals
// every queue's completion fd: their next process() fails what is in flight
// with -EIO. The data path only reads the atomic flag: no lock, no syscall.
#pragma once

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "core/fd.hpp"

namespace blkstack {

class BackendWatch {
 public:
  BackendWatch() = default;
  ~BackendWatch() { stop(); }
  BackendWatch(const BackendWatch&) = delete;
  BackendWatch& operator=(const BackendWatch&) = delete;

  // Starts watching `sock` (not owned; it must outlive stop()).
  bool start(int sock);
  void stop();

  bool dead() const { return dead_.load(std::memory_order_acquire); }
  // Marks the back-end dead (also used when a control request finds it gone).
  void mark_dead();

  // Completion fds to signal when the back-end dies (queues register theirs).
  void add_wake_fd(int fd);
  void remove_wake_fd(int fd);

 private:
  void run(int sock);

  std::atomic<bool> dead_{false};
  UniqueFd stop_;  // eventfd: ends the thread
  std::thread thread_;
  std::mutex mu_;
  std::vector<int> wake_fds_;
};

}  // namespace blkstack
