// IoQueue: a library queue driven by a reactor. Exports queue requests on it
// during an iteration; at the end of the iteration everything queued goes to
// the device in one do_io() call, and completions come back through the
// queue's completion fd, which the reactor polls. Each request's user_data is
// the IoDone that wants its result.
#pragma once

#include <vector>

#include "blkstack/queue.hpp"
#include "daemon/reactor.hpp"

namespace blkstack {

class IoDone {
 public:
  virtual void io_done(int ret) = 0;

 protected:
  ~IoDone() = default;
};

class IoQueue final : public Reactor::Op, public Reactor::Deferred {
 public:
  IoQueue(Reactor& reactor, Queue& queue);
  ~IoQueue();
  IoQueue(const IoQueue&) = delete;

  Queue& queue() { return queue_; }
  // Call after queueing requests on queue(): they are submitted at the end
  // of this reactor iteration, together with everything else queued.
  void kick() { reactor_.defer(*this); }
  // Stops polling (the reactor must then see the poll's final CQE before
  // this object goes away: see closing()).
  void shutdown();
  bool closed() const { return !poll_armed_; }

  void complete(int res, uint32_t flags) override;  // completion fd readable
  void run_deferred() override;                     // submit and reap

 private:
  void arm_poll();
  void reap();

  Reactor& reactor_;
  Queue& queue_;
  bool poll_armed_ = false;  // the read (or poll) of the completion fd is in flight
  bool shutting_down_ = false;
  bool read_mode_ = true;    // read the eventfd (false: multishot poll, never read)
  uint64_t event_value_ = 0;
  std::vector<Completion> completions_;
};

}  // namespace blkstack
