// A vhost-user-blk export: a library device served to one vhost-user
// front-end at a time (QEMU's vhost-user-blk-pci, libblkio's
// virtio-blk-vhost-user driver) over a Unix socket. Control messages are
// handled on the export's own control thread (a Session per connection);
// each virtqueue is served by a VringWorker on one of the daemon's
// reactors, with that reactor's queue on the device.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "blkstack/device_spec.hpp"
#include "core/fd.hpp"
#include "daemon/block_device.hpp"
#include "daemon/stats.hpp"
#include "exports/vhost_user_blk/session.hpp"
#include "exports/vhost_user_blk/vring_worker.hpp"

namespace blkstack::vhost_blk {

struct VhostUserBlkConfig {
  std::string id;
  std::string blockdev;
  std::string socket;
  unsigned queues = 0;  // 0: one per reactor
  bool readonly = false;
  uint16_t queue_size = 1024;  // the largest SET_VRING_NUM accepted
  std::string serial;          // GET_ID; default: the export id
};

// Reads "vhost-user-blk,blockdev=ID,socket=PATH[,queues=N][,readonly=on]
// [,queue-size=N][,serial=S][,id=ID]".
Result<VhostUserBlkConfig> parse_vhost_user_blk_export(const KeyValueList& spec);

class VhostUserBlkExport final : public SessionHost {
 public:
  static Result<std::unique_ptr<VhostUserBlkExport>> create(const VhostUserBlkConfig& config, BlockDevice& device,
                                                            const std::vector<Reactor*>& reactors);
  // Ends the connection (its rings drained, memory unmapped), removes the
  // socket.
  ~VhostUserBlkExport();

  const VhostUserBlkConfig& config() const { return cfg_; }
  bool read_only() const { return shared_.limits.read_only; }
  bool connected() const { return connected_.load(std::memory_order_relaxed); }
  uint64_t features() const { return scfg_.features; }
  StatsSnapshot snapshot() const;
  std::vector<uint64_t> queue_requests() const;

  // ---- SessionHost (control thread) ----
  uint8_t* map(int fd, uint64_t len) override;
  void unmap(uint8_t* addr, uint64_t len) override;
  const char* start_vring(const VringStart& s) override;
  uint16_t stop_vring(unsigned index) override;
  void set_call_fd(unsigned index, int fd) override;
  void set_writeback(bool on) override;

 private:
  VhostUserBlkExport(const VhostUserBlkConfig& c, BlockDevice& d) : cfg_(c), dev_(d) {}
  void build_session_config(unsigned queues);
  void serve();
  void serve_connection(int fd);

  VhostUserBlkConfig cfg_;
  BlockDevice& dev_;
  SessionConfig scfg_;
  WorkerShared shared_;
  std::vector<Reactor*> vring_reactor_;              // per virtqueue
  std::vector<std::unique_ptr<VringWorker>> workers_;  // per virtqueue, made on first start
  std::vector<std::unique_ptr<StatsShard>> stats_;     // per virtqueue (its reactor writes)
  StatsShard control_stats_;                           // connections (the control thread writes)
  UniqueFd listen_fd_, stop_fd_;
  std::thread thread_;
  std::mutex conn_mutex_;  // conn_fd_ against shutdown() from the destructor
  int conn_fd_ = -1;
  std::atomic<bool> connected_{false};
};

}  // namespace blkstack::vhost_blk
