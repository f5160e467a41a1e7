// One virtqueue served on one reactor: kick eventfd read on the reactor's
// ring -> pop chains -> virtio-blk requests on the reactor's library queue,
// with buffers pointing straight into the front-end's memory -> completion
// -> status byte, used ring, call eventfd (EVENT_IDX respected). Everything
// runs on the reactor thread; the control thread only starts and stops it
// (run_on), so nothing here takes a lock.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "daemon/block_device.hpp"
#include "daemon/reactor.hpp"
#include "daemon/stats.hpp"
#include "exports/vhost_user_blk/blk_request.hpp"
#include "exports/vhost_user_blk/session.hpp"

namespace blkstack::vhost_blk {

// Shared by an export's workers, read-only while they run (except wce).
struct WorkerShared {
  BlkLimits limits;
  BlockDevice* device = nullptr;
  std::string id;                     // GET_ID answer (up to 20 bytes)
  std::atomic<bool> writeback{true};  // false: writes are FUA (CONFIG_WCE)
};

class VringWorker final : public Reactor::Op, public Reactor::Deferred {
 public:
  VringWorker(Reactor& reactor, BlockDevice::Lane& lane, WorkerShared& shared, StatsShard& stats);
  ~VringWorker();
  VringWorker(const VringWorker&) = delete;

  // ---- reactor thread ----
  // nullptr or why the ring cannot be served.
  const char* start(const VringStart& s);
  // Stops taking requests; those in flight complete and are returned.
  void request_stop();
  // Stopped and drained: nothing of ours in flight on the reactor.
  bool idle() const { return !kick_armed_ && inflight_ == 0; }
  uint16_t last_avail() const { return vq_.last_avail(); }
  void set_call_fd(int fd) { call_fd_ = fd; }

  void complete(int res, uint32_t flags) override;  // kick fd readable
  void run_deferred() override;                     // notify the front-end

 private:
  struct Req final : IoDone {
    VringWorker* w = nullptr;
    vhost::Chain chain;
    BlkRequest blk;
    uint64_t start_ns = 0;
    uint32_t slot = 0;
    uint32_t next_free = 0;
    void io_done(int ret) override { w->finish(*this, ret); }
  };

  void arm_kick();
  void process();
  void submit(Req& r);
  void finish(Req& r, int ret);
  void put_used(Req& r, uint8_t status, uint32_t used_len);

  Reactor& reactor_;
  BlockDevice::Lane& lane_;
  WorkerShared& shared_;
  StatsShard& stats_;
  vhost::GuestMemory mem_;  // our copy: the session may change its own meanwhile
  vhost::VirtqueueDevice vq_;
  unsigned index_ = 0;
  int kick_fd_ = -1;
  int call_fd_ = -1;
  bool kick_armed_ = false;
  bool poll_mode_ = false;  // the kick read came back -EAGAIN: poll, then read(2)
  bool stopping_ = false;
  bool notify_pending_ = false;
  bool logged_broken_ = false;
  bool starved_ = false;
  uint64_t kick_value_ = 0;
  unsigned inflight_ = 0;
  std::vector<std::unique_ptr<Req>> reqs_;
  uint32_t free_head_ = UINT32_MAX;
};

}  // namespace blkstack::vhost_blk
