// One queue of the rbd driver. Requests go to librbd's asynchronous API as
// soon as they are enqueued; librbd calls back on its own threads, which
// post (slot, result) to this queue's completion list and signal its eventfd.
// process() reaps that list on the queue's thread.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "core/clock.hpp"
#include "core/driver.hpp"
#include "core/fd.hpp"
#include "drivers/rbd/rbd_handles.hpp"

namespace blkstack {

class RbdQueue final : public DriverQueue {
 public:
  explicit RbdQueue(std::shared_ptr<RbdImage> image);
  // Waits for every request librbd still holds: its callbacks touch this
  // queue's memory, so it must outlive them.
  ~RbdQueue() override;

  Status init();

  void enqueue(uint32_t slot, const Request& req) override;
  int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
              const sigset_t* sig) override;

  int completion_fd() const override { return efd_.get(); }
  void set_completion_fd_enabled(bool enable) override;
  void notify() override;
  DriverQueueStats stats() const override { return stats_; }

 private:
  // The callback argument of one librbd completion. Kept in a deque, whose
  // elements never move, and recycled through a free list.
  struct Ctx {
    RbdQueue* q;
    uint32_t slot;
  };
  struct Done {
    uint32_t slot;
    int res;   // librbd's result: 0 success, negative errno
    Ctx* ctx;  // to recycle; null for requests librbd refused at once
  };

  static void on_complete(rbd_completion_t c, void* arg);
  void post(Ctx* ctx, int res);  // any thread
  Ctx* get_ctx(uint32_t slot);
  // Moves what librbd posted into ready_ (queue thread only).
  void collect();
  // Blocks until the eventfd is readable: 0, -ETIME or -EINTR.
  int wait(const Deadline* deadline, const sigset_t* sig);

  std::shared_ptr<RbdImage> image_;
  UniqueFd efd_;
  bool notified_ = false;  // notify() wrote the eventfd (queue thread only)

  // Shared with librbd's callback threads, under mu_.
  std::mutex mu_;
  std::vector<Done> posted_;
  // True while posted_ is not empty: lets process() skip the lock and the
  // eventfd read when nothing arrived, and tells a callback whether it is
  // the one that must signal the eventfd.
  std::atomic<bool> has_posted_{false};
  bool sleeping_ = false;               // the queue's thread is in ppoll()
  bool signaled_ = false;               // a callback wrote the eventfd
  std::atomic<bool> fd_enabled_{false}; // written under mu_, read by callbacks

  // Queue thread only.
  std::vector<Done> ready_;  // collected, not yet handed to the contract layer
  size_t ready_head_ = 0;
  std::vector<Done> scratch_;
  std::deque<Ctx> ctx_pool_;
  std::vector<Ctx*> free_ctx_;
  uint64_t in_flight_ = 0;  // handed to librbd, not yet collected
  DriverQueueStats stats_;
};

}  // namespace blkstack
