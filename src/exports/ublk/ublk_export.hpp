// A ublk export: a library device as a Linux block device /dev/ublkbN. The
// control path (create, parameters, start, stop, delete, user recovery)
// runs here; the data path runs in Queue objects on the reactors.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "blkstack/device_spec.hpp"
#include "daemon/block_device.hpp"
#include "daemon/stats.hpp"
#include "exports/ublk/ublk_control.hpp"
#include "exports/ublk/ublk_queue.hpp"

namespace blkstack::ublk {

struct UblkExportConfig {
  std::string id;
  std::string blockdev;
  unsigned queues = 0;  // 0: one per reactor
  unsigned depth = 128;
  int dev_id = -1;      // -1: the kernel picks
  CopyMode mode = CopyMode::kKernel;
  bool recovery = true;       // UBLK_F_USER_RECOVERY(_REISSUE)
  bool unprivileged = false;  // UBLK_F_UNPRIVILEGED_DEV
  uint32_t max_io_bytes = 512 << 10;
};

// Reads "ublk,blockdev=ID[,queues=N][,depth=D][,id=DEVID][,copy=kernel|get-data|user]
// [,recovery=on|off][,unprivileged=on][,max-io=BYTES][,name=ID]"; checks it
// before anything is created.
Result<UblkExportConfig> parse_ublk_export(const KeyValueList& spec);

class UblkExport {
 public:
  static Result<std::unique_ptr<UblkExport>> create(const UblkExportConfig& config, BlockDevice& device,
                                                    const std::vector<Reactor*>& reactors);
  ~UblkExport();  // stops and deletes the device

  const UblkExportConfig& config() const { return config_; }
  uint32_t dev_id() const { return dev_id_; }
  std::string block_device() const { return block_dev_path(dev_id_); }
  bool recovered() const { return recovered_; }
  StatsSnapshot snapshot() const;
  // Requests completed by each hardware queue (how the kernel spread them).
  std::vector<uint64_t> queue_requests() const;

 private:
  UblkExport(const UblkExportConfig& c, BlockDevice& d) : config_(c), device_(d) {}
  Status check_features(uint64_t features) const;
  Params params() const;
  Status open_queues(const std::vector<Reactor*>& reactors, unsigned nr_queues, unsigned depth,
                     uint32_t max_io_bytes);
  void close_queues();

  UblkExportConfig config_;
  BlockDevice& device_;
  std::unique_ptr<Control> control_;
  uint32_t dev_id_ = 0;
  uint32_t max_io_bytes_ = 0;  // what the kernel granted (ADD_DEV), for the parameters
  bool added_ = false;
  bool started_ = false;
  bool recovered_ = false;
  UniqueFd char_fd_;
  std::vector<Reactor*> queue_reactor_;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::vector<std::unique_ptr<StatsShard>> stats_;  // one per queue
};

}  // namespace blkstack::ublk
