// A queue of the nbd driver. Requests go straight to libnbd's asynchronous
// calls (nbd_aio_*); replies are read by whichever queue drives the
// connection and handed to the queue that issued them. A queue usually has a
// connection of its own (multi-conn); queues that share one also share the
// work of reading it, and wake each other through their eventfds.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/uio.h>

#include "core/driver.hpp"
#include "core/fd.hpp"
#include "core/uring.hpp"
#include "drivers/nbd/nbd_connection.hpp"

namespace blkstack {

// What the server said it can do, as the queues need it.
struct NbdCaps {
  bool can_flush = false;
  bool can_fua = false;
  bool can_fast_zero = false;
  // base:allocation was negotiated (on every connection): queues answer
  // Op::kBlockStatus with NBD_CMD_BLOCK_STATUS on their own connection.
  bool can_block_status = false;
  uint64_t max_status_len = 0;  // 32-bit lengths, aligned to the block size
};

class NbdQueue final : public DriverQueue {
 public:
  // reconnect_delay_s: how long a request made while the connection is
  // being made again waits for it (0: it fails at once).
  NbdQueue(std::shared_ptr<NbdLink> conn, NbdCaps caps, int reconnect_delay_s);
  ~NbdQueue() override;

  void enqueue(uint32_t slot, const Request& req) override;
  int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
              const sigset_t* sig) override;
  int completion_fd() const override { return wake_.get(); }
  void set_completion_fd_enabled(bool enable) override;
  void notify() override;
  DriverQueueStats stats() const override { return stats_; }
  bool supports_block_status() const override { return caps_.can_block_status; }

  bool ok() const { return wake_.valid() && timer_.valid() && bridge_ok_; }

 private:
  // One request in flight: libnbd calls back once per command it was split
  // into (vectored requests become one command per segment).
  struct Cmd {
    NbdQueue* queue;
    uint32_t slot;
    std::atomic<uint32_t> parts;  // commands not yet finished, plus the issuer's hold
    std::atomic<int> err;         // first failure (positive errno)
    // Block status: the caller's struct (written by the extent callback,
    // which runs before the completion callback, on whichever thread reads
    // the reply; the completion hands it over with release_parts()'s
    // acquire/release) and the offset asked.
    AllocationExtent* extent;
    uint64_t offset;
    const char* msg;  // for the completion when failed by the driver itself, else nullptr
  };

  // A request made while the connection is down, waiting for it to come
  // back (reconnect-delay).
  struct Parked {
    uint32_t slot;
    Request req;
    std::vector<iovec> iov;  // req.iov points here
    uint64_t deadline_ns;
  };

  static int on_command_done(void* user_data, int* error);
  static int on_extent(void* user_data, const char* metacontext, uint64_t offset, uint32_t* entries,
                       size_t nr_entries, int* error);
  Cmd* new_cmd(uint32_t slot, uint32_t parts);
  void release_parts(Cmd* c, uint32_t n);  // drops n parts; the last one finishes c
  void finish(Cmd* c);                     // c's request is over: hand it to our thread
  void fail_part(Cmd* c, int err);         // an nbd_aio_* call refused a part
  void issue(Cmd* c, const Request& req, nbd_handle* h);
  // deadline_ns: when it was parked before, its reconnect-delay's end.
  void submit_now(uint32_t slot, const Request& req, uint64_t deadline_ns = 0);
  void fail_now(uint32_t slot, const char* msg);

  // Reconnection: notices a dead connection, has the link make it again,
  // moves to the new handle's socket, sends parked
  // requests once it is back and fails those whose reconnect-delay ran out
  // (or all of them when the device failed for good). wait_ms: how long it
  // may wait for the server's answers while connecting.
  void service_link(int wait_ms);
  void sync_socket();
  void park(uint32_t slot, const Request& req, uint64_t deadline_ns = 0);  // 0: reconnect-delay from now
  void arm_timer(bool on);

  enum class Read { kNo, kIfReadable, kReadable };
  // Reads every reply in the socket (unless kNo; kReadable: poll() just said
  // so) and sends what libnbd still holds. Never blocks.
  void pump(Read read);
  bool socket_readable();
  // Blocks until the socket or the eventfd is ready, the timeout ends
  // (err -ETIME) or a signal arrives (err -EINTR). Says whether the socket is
  // readable.
  Read wait(const struct timespec* timeout, const sigset_t* sig, int& err);
  // Moves finished requests from other threads into ready_.
  void collect();
  unsigned reap(Queue& owner, unsigned budget);
  bool connection_alive() const;  // (sets the link's hint when not)
  // The link may have died, has a new handle, or requests wait for it.
  bool link_needs_care() const;

  std::shared_ptr<NbdLink> conn_;
  NbdCaps caps_;
  // The completion fd: an eventfd, as blkio(3) has applications read it.
  // Other threads that finished our requests and notify() write it; the
  // bridge ring signals it when the socket or the timer becomes readable.
  UniqueFd wake_;
  UniqueFd timer_;  // ticks while requests are parked, so event loops come back to us
  bool timer_armed_ = false;
  // Once the application enables the completion fd: multishot polls of the
  // socket and the timer on a small ring with wake_ registered as its
  // eventfd, so the kernel signals wake_ itself (no thread of ours). Armed
  // by the thread that drives the queue (poll completions run as its task
  // work), and again from process() when the kernel ended them (the arming
  // thread exited, the CQ overflowed) or the socket changed.
  void arm_bridge();
  void reap_bridge();
  Ring bridge_;
  bool bridge_ok_ = false;
  bool fd_wanted_ = false;
  bool sock_polled_ = false;
  uint64_t sock_poll_gen_ = 0;  // the generation whose socket is polled
  bool timer_polled_ = false;
  int sock_fd_ = -1;  // the current handle's socket
  uint64_t gen_seen_ = 0;  // conn_->generation() that sock_fd_ belongs to
  int reconnect_delay_s_ = 0;
  std::vector<Parked> parked_;

  // The thread inside this queue's process() or enqueue(), if any: replies
  // it reads for this queue skip the inbox lock and the eventfd. Written and
  // compared only by the thread itself, so relaxed order is enough (no other
  // thread can ever find its own id there).
  std::atomic<std::thread::id> driving_{};
  friend struct Driving;

  std::mutex inbox_mu_;
  std::vector<Cmd*> inbox_;  // finished by other threads
  std::vector<Cmd*> ready_;  // finished, not yet handed to the Queue (our thread only)
  size_t ready_head_ = 0;
  std::vector<std::unique_ptr<Cmd>> cmds_;  // every Cmd this queue made
  std::vector<Cmd*> free_;
  uint64_t in_flight_ = 0;  // Cmds issued and not yet reaped
  bool read_since_wait_ = false;  // this process() call has drained the socket
  DriverQueueStats stats_;
};

}  // namespace blkstack
