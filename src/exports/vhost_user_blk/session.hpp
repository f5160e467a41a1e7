// One vhost-user front-end connection, as a state machine over messages:
// feature and protocol-feature negotiation, the memory table, per-vring
// state (size, addresses, base, kick/call fds, enable), config space. Pure:
// the socket, mmap and the data path are behind SessionHost, so the fuzzer
// feeds it arbitrary messages without sockets.
//
// A vring starts (SessionHost::start_vring) once it has a size, addresses,
// a kick fd and is enabled, and memory is mapped; it stops (drained, its
// next avail index saved) on GET_VRING_BASE, on disable, before the memory
// table changes (then it restarts) and when the connection ends.
#pragma once

#include <linux/virtio_blk.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/fd.hpp"
#include "vhost/vhost_user_message.hpp"
#include "vhost/virtqueue_device.hpp"

namespace blkstack::vhost_blk {

struct VringStart {
  unsigned index = 0;
  vhost::RingLayout layout;
  uint16_t last_avail = 0;
  bool event_idx = false;
  bool indirect = false;
  int kick_fd = -1;
  int call_fd = -1;  // -1: never notify
  const vhost::GuestMemory* mem = nullptr;  // valid until stop_vring returns
};

class SessionHost {
 public:
  // Maps len bytes of fd from offset 0, shared and writable; nullptr when
  // it cannot (errno-style reason logged by the host).
  virtual uint8_t* map(int fd, uint64_t len) = 0;
  virtual void unmap(uint8_t* addr, uint64_t len) = 0;
  // Starts serving vring s.index; nullptr or why it cannot.
  virtual const char* start_vring(const VringStart& s) = 0;
  // Stops serving it once every request it took is complete and returned to
  // the used ring; returns the next available index to process.
  virtual uint16_t stop_vring(unsigned index) = 0;
  // A running vring's call fd changed (-1: none); the old one is closed
  // after this returns.
  virtual void set_call_fd(unsigned index, int fd) = 0;
  // The driver wrote the config space's writeback-cache flag.
  virtual void set_writeback(bool on) = 0;

 protected:
  ~SessionHost() = default;
};

struct SessionConfig {
  uint64_t features = 0;           // virtio features offered (VERSION_1 etc. included)
  uint64_t protocol_features = 0;  // vhost-user protocol features offered
  unsigned num_queues = 1;
  uint16_t max_queue_size = 1024;
  virtio_blk_config config{};      // little-endian, as the driver reads it
};

class Session {
 public:
  static constexpr uint64_t kMaxMemSlots = vhost::GuestMemory::kMaxRegions;

  Session(SessionHost& host, const SessionConfig& config);
  ~Session() { close(); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  struct Outcome {
    bool reply = false;       // send `msg`
    vhost::Message msg;
    bool disconnect = false;  // drop the connection (after the reply, if any)
    std::string why;          // for the log
  };
  // Handles one received request (its fds are taken over).
  Outcome handle(vhost::Message& m);
  // The connection ended: stops every vring and unmaps memory.
  void close();

  uint64_t acked_features() const { return acked_; }
  unsigned running_vrings() const;
  const vhost::GuestMemory& memory() const { return mem_; }

 private:
  struct Vring {
    uint16_t num = 0;
    vhost::RingLayout layout;
    bool addr_set = false;
    uint16_t base = 0;
    UniqueFd kick, call, err;
    bool kick_set = false;
    bool enabled = false;
    bool running = false;
  };
  struct Mapped {
    uint8_t* addr;
    uint64_t len;
  };

  const char* apply(vhost::Message& m, Outcome& out);  // nullptr or why the connection must go
  const char* maybe_start(unsigned i);
  void stop(unsigned i);
  std::vector<unsigned> stop_running();
  const char* restart(const std::vector<unsigned>& which);
  const char* add_region(const vhost::MemoryRegion& r, int fd);
  void unmap_all();
  void reset_vrings();

  SessionHost& host_;
  SessionConfig cfg_;
  uint64_t acked_ = 0;
  uint64_t protocol_ = 0;
  bool features_set_ = false;
  vhost::GuestMemory mem_;
  std::vector<Mapped> maps_;  // parallel to mem_'s regions
  std::vector<Vring> vrings_;
};

}  // namespace blkstack::vhost_blk
