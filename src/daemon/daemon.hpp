// The blkstack storage daemon: reactors, the devices it serves, the exports
// on top of them, and the control path (signals, control socket) on the main
// thread. Control-path state is touched only by the main thread; the data
// path lives on the reactors and is reached by posting work to them.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "daemon/block_device.hpp"
#include "daemon/config.hpp"
#include "daemon/control_server.hpp"
#include "daemon/log.hpp"
#include "daemon/reactor.hpp"
#include "exports/nbd/nbd_listener.hpp"
#include "exports/ublk/ublk_export.hpp"
#include "exports/vhost_user_blk/vhost_user_blk_export.hpp"

namespace blkstack {

class Daemon {
 public:
  explicit Daemon(DaemonConfig config);
  ~Daemon();

  // Everything up to listening sockets; then tells the supervisor (ready fd,
  // sd_notify) that the daemon is ready.
  Status start();
  // Serves until SIGTERM/SIGINT (then drains) or a control "shutdown".
  int run();
  // One control request (JSON object) -> reply (JSON object).
  nlohmann::json handle(const nlohmann::json& request);

  Status add_device(KeyValueList spec);
  Status remove_device(const std::string& id);
  Status add_export(KeyValueList spec);
  Status remove_export(const std::string& id);

 private:
  struct Export {
    std::string type;
    std::string address;  // nbd: listener address; ublk: block device path
    std::string blockdev;
    std::shared_ptr<nbd::NbdExport> nbd;
    std::shared_ptr<ublk::UblkExport> ublk;
    std::shared_ptr<vhost_blk::VhostUserBlkExport> vhost;
  };

  Status start_reactors();
  Status add_ublk_export(const KeyValueList& spec);
  Status add_vhost_user_blk_export(const KeyValueList& spec);
  Status attach_nbd(const std::string& id, std::shared_ptr<nbd::NbdExport> exp, const std::string& address);
  void publish_catalog(nbd::Listener& l);
  // Shuts down the NBD connections for which pred is true and waits for them.
  void close_connections(const std::function<bool(const nbd::Connection&)>& pred);
  void drain();
  void notify_ready();
  nlohmann::json device_json(BlockDevice& d);
  nlohmann::json export_json(const std::string& id, const Export& e);

  DaemonConfig config_;
  Logging logging_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  std::vector<std::unique_ptr<nbd::ConnectionSet>> nbd_connections_;  // per reactor
  std::map<std::string, std::unique_ptr<BlockDevice>> devices_;
  std::map<std::string, Export> exports_;
  std::map<std::string, std::unique_ptr<nbd::Listener>> listeners_;  // by address
  std::vector<int> activated_fds_;  // systemd socket activation
  std::shared_ptr<nbd::TlsContext> tls_;
  ControlServer control_;
  bool shutdown_requested_ = false;
};

}  // namespace blkstack
