// One ublk hardware queue on one reactor: its tags each cycle through
// FETCH -> (copy in) -> library I/O -> (copy out) -> COMMIT_AND_FETCH, all as
// submissions on the reactor's ring, so a queue needs no thread of its own
// and no locks. Three data paths:
//   kernel:   the driver copies into/out of a buffer per tag (fewest syscalls)
//   get-data: as kernel, but write data is copied only when asked
//             (UBLK_F_NEED_GET_DATA)
//   user:     we copy with reads/writes of /dev/ublkcN (UBLK_F_USER_COPY), so
//             buffers come from the shared pool per request: deep queues
//             without a buffer per tag
#pragma once

#include <memory>
#include <vector>

#include "daemon/block_device.hpp"
#include "daemon/io_queue.hpp"
#include "daemon/reactor.hpp"
#include "daemon/stats.hpp"
#include "exports/ublk/ublk_uapi.hpp"

namespace blkstack::ublk {

enum class CopyMode { kKernel, kGetData, kUser };

struct QueueSetup {
  uint16_t q_id;
  uint16_t depth;
  uint32_t max_io_bytes;
  int char_fd;
  CopyMode mode;
};

class Queue {
 public:
  Queue(Reactor& reactor, BlockDevice::Lane& lane, Device& device, StatsShard& stats, const QueueSetup& setup);
  ~Queue();
  Queue(const Queue&) = delete;

  // Reactor thread: map the descriptors, set up buffers, fetch every tag.
  Status start();
  // Tags that still have a command or request in flight.
  unsigned busy_tags() const { return busy_; }
  // Cancels the FETCH commands still waiting (a device that never started
  // or whose stop left them behind).
  void cancel_fetches();

 private:
  enum class State : uint8_t { kIdle, kFetch, kGetData, kCopyIn, kIo, kCopyOut, kDone };
  struct Tag final : Reactor::Op, IoDone {
    Queue* q = nullptr;
    uint16_t tag = 0;
    State state = State::kIdle;
    int result = 0;
    char* buf = nullptr;         // kernel/get-data: this tag's buffer
    BufferPool::Buffer pooled;   // user copy: borrowed for one request
    uint64_t start_ns = 0;
    void complete(int res, uint32_t flags) override { q->on_cqe(*this, res, flags); }
    void io_done(int ret) override { q->on_io(*this, ret); }
  };

  void on_cqe(Tag& t, int res, uint32_t flags);
  void on_io(Tag& t, int ret);
  void handle_request(Tag& t);
  void submit_io(Tag& t, const IoDesc& d);
  void commit(Tag& t, int result);
  void uring_cmd(Tag& t, uint32_t op, int32_t result, uint64_t addr);
  void copy_user(Tag& t, bool to_kernel, const IoDesc& d);
  uint64_t user_copy_pos(uint16_t tag) const {
    return kIoBufOffset + (static_cast<uint64_t>(setup_.q_id) << kQidOff) + (static_cast<uint64_t>(tag) << kTagOff);
  }
  void finished(Tag& t);

  Reactor& reactor_;
  BlockDevice::Lane& lane_;
  Device& device_;
  StatsShard& stats_;
  QueueSetup setup_;
  const IoDesc* descs_ = nullptr;
  size_t descs_len_ = 0;
  MemRegion buffers_{};  // kernel/get-data: depth * max_io_bytes, mapped on the device
  bool buffers_mapped_ = false;
  std::vector<Tag> tags_;
  unsigned busy_ = 0;
};

}  // namespace blkstack::ublk
