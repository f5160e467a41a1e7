// A queue of the virtio-blk-vhost-user driver: one split virtqueue shared
// with the back-end. Requests become descriptor chains (header, data, status
// byte) with identity addressing (a descriptor address is our virtual
// address); process() publishes everything enqueued since the last call with
// at most one kick, then reaps the used ring. The call eventfd is the
// completion fd. No allocation and no lock per request.
#pragma once

#include <linux/virtio_blk.h>

#include <cstdint>
#include <vector>

#include "core/driver.hpp"
#include "core/fd.hpp"
#include "drivers/virtio_blk_vhost_user/backend_watch.hpp"
#include "vhost/virtqueue_driver.hpp"

namespace blkstack {

// What the back-end negotiated, as the queues need it.
struct VirtioBlkCaps {
  bool flush = false;
  bool discard = false;
  bool write_zeroes = false;
  bool write_zeroes_may_unmap = false;
  uint32_t max_segment_len = 1u << 30;  // SIZE_MAX, or our own cap (descriptor lengths are 32-bit)
};

// Per-chain memory the back-end reads (header, discard/write-zeroes range)
// and writes (status), indexed by the chain's head descriptor.
struct VirtioBlkReqHeader {
  virtio_blk_outhdr out;
  virtio_blk_discard_write_zeroes range;
  uint8_t status;
  uint8_t pad[15];
};
static_assert(sizeof(VirtioBlkReqHeader) == 48);

// Where a queue's pieces live inside the driver's shared memory.
struct VirtioBlkQueueMemory {
  char* ring;                     // VirtqueueDriver::layout(size).bytes, zeroed
  VirtioBlkReqHeader* headers;    // size entries
  uint64_t zero_addr;             // an all-zero area (write-zeroes fallback)
  uint32_t zero_len;
};

class VirtioBlkQueue final : public DriverQueue {
 public:
  VirtioBlkQueue(const VirtioBlkQueueMemory& mem, uint16_t size, bool event_idx, bool poll, const VirtioBlkCaps& caps,
                 BackendWatch& watch, int sock, UniqueFd kick, UniqueFd call);
  ~VirtioBlkQueue() override;

  void enqueue(uint32_t slot, const Request& req) override;
  void enqueue_rw(RwTag tag, uint64_t offset, void* buf, uint64_t len, const MappedRegion* region) override;
  int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
              const sigset_t* sig) override;
  int completion_fd() const override { return poll_ ? -1 : call_.get(); }
  void notify() override;
  void set_completion_fd_enabled(bool on) override;
  DriverQueueStats stats() const override { return stats_; }

 private:
  struct InFlight {
    uint32_t slot;
    bool active;
  };
  struct Pending {
    uint32_t slot;
    Request req;
  };
  struct Failed {
    uint32_t slot;
    int res;
  };

  // Descriptors a request needs, or 0 when it completes without the device.
  unsigned descriptors_for(const Request& req) const;
  // Builds the chain of a request that fits in the free descriptors.
  void issue(uint32_t slot, const Request& req);
  void issue_rw(uint32_t slot, Op op, uint64_t offset, char* buf, uint64_t len, bool zero_fill);
  unsigned add_data(unsigned n, uint64_t addr, uint64_t len, bool device_writes, bool same_addr);
  // Adds header, segs_[1..n-1] and status as one chain; `range` (discard,
  // write zeroes) becomes segment 1.
  void finish_chain(uint32_t slot, uint32_t type, uint64_t sector, unsigned n,
                    const virtio_blk_discard_write_zeroes* range);
  void defer(uint32_t slot, int res);
  // Moves pending requests into the ring while descriptors last, publishes
  // and kicks if the back-end asked for it.
  void submit();
  unsigned reap(Queue& owner, unsigned budget);
  unsigned fail_everything(Queue& owner, unsigned budget);
  // Sleeps until the call fd or the socket is ready, the timeout ends
  // (-ETIME) or a signal arrives (-EINTR). 0 otherwise.
  int wait(const struct timespec* timeout, const sigset_t* sig);
  bool spin_for_used();

  vhost::VirtqueueDriver vq_;
  VirtioBlkReqHeader* headers_;
  uint64_t zero_addr_;
  uint32_t zero_len_;
  bool poll_;
  VirtioBlkCaps caps_;
  BackendWatch& watch_;
  int sock_;  // the control socket, watched for hang-up while we sleep (not owned)
  UniqueFd kick_;
  UniqueFd call_;

  std::vector<InFlight> inflight_;               // by head
  std::vector<vhost::VirtqueueDriver::Segment> segs_;  // scratch, size entries
  std::vector<Pending> pending_;                 // waiting for descriptors (FIFO)
  size_t pending_head_ = 0;
  std::vector<Failed> failed_;                   // finished without the device
  size_t failed_head_ = 0;
  uint32_t active_ = 0;                          // chains the device holds
  // How long to spin on the used ring before sleeping, when the last wait
  // was shorter than this. 10 us: below a wakeup round trip through the
  // back-end at depth 1 (about 15-20 us with qemu-storage-daemon), so depth 1
  // never spins; above the gap between completions at depth 32 (a few us).
  // Measured on 2 shared cores: spinning at depth 1 (30 us) cost 40% of the
  // IOPS, as the spinning front-end takes the back-end's CPU.
  static constexpr uint64_t kSpinNs = 10000;
  uint64_t last_wait_ns_ = UINT64_MAX;  // how long the last wait for a completion took
  bool fd_enabled_ = false;                      // the application waits on the completion fd
  bool dead_ = false;                            // the back-end is gone: fail everything
  DriverQueueStats stats_;
};

}  // namespace blkstack
