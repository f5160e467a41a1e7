#include "daemon/daemon.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace blkstack {

Daemon::Daemon(DaemonConfig config) : config_(std::move(config)) {}

Daemon::~Daemon() {
  for (auto& [addr, l] : listeners_) l->stop();
  listeners_.clear();
  close_connections([](const nbd::Connection&) { return true; });
  exports_.clear();
  devices_.clear();
  for (auto& r : reactors_) r->stop();
  for (auto& r : reactors_) r->join();
}

Status Daemon::start_reactors() {
  unsigned n = config_.threads ? config_.threads : std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; i++) {
    auto r = std::make_unique<Reactor>(i);
    if (Status s = r->init(); !s) return error(s.code(), "reactor {}: {}", i, s.message());
    reactors_.push_back(std::move(r));
    nbd_connections_.push_back(std::make_unique<nbd::ConnectionSet>());
  }
  for (auto& r : reactors_) r->start();
  spdlog::info("daemon: started reactors={}", n);
  return {};
}

Status Daemon::start() {
  if (Status s = logging_.init(config_.log_file, config_.log_level); !s) return s;
  // Signals are taken synchronously through a signalfd in run().
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  if (Status s = start_reactors(); !s) return s;
  if (!config_.tls.creds_dir.empty() || !config_.tls.cert_file.empty() || !config_.tls.psk_file.empty()) {
    auto ctx = nbd::TlsContext::create(config_.tls);
    if (!ctx) return error(ctx.status().code(), "TLS: {}", ctx.status().message());
    tls_ = std::move(ctx.value());
  }
  int nfds = sd_listen_fds(1);
  for (int i = 0; i < nfds; i++) activated_fds_.push_back(SD_LISTEN_FDS_START + i);
  for (auto& spec : config_.blockdevs) {
    if (Status s = add_device(spec); !s) return s;
  }
  for (auto& spec : config_.exports) {
    if (Status s = add_export(spec); !s) return s;
  }
  if (!config_.control_socket.empty()) {
    if (Status s = control_.open(config_.control_socket); !s) return s;
  }
  notify_ready();
  return {};
}

void Daemon::notify_ready() {
  if (config_.ready_fd >= 0) {
    (void)!::write(config_.ready_fd, "READY=1\n", 8);
    ::close(config_.ready_fd);
    config_.ready_fd = -1;
  }
  sd_notify(0, "READY=1");
  spdlog::info("daemon: ready devices={} exports={}", devices_.size(), exports_.size());
}

// ---- devices ----

Status Daemon::add_device(KeyValueList spec) {
  auto id = spec.take("id");
  if (!id || id->empty()) return error(-EINVAL, "--blockdev {}: id= is required", spec.head);
  if (devices_.count(*id)) return error(-EEXIST, "a device with id {} already exists", *id);
  std::vector<Reactor*> rs;
  for (auto& r : reactors_) rs.push_back(r.get());
  auto dev = BlockDevice::open(*id, spec, rs, config_.pool_bytes);
  if (!dev) return error(dev.status().code(), "device {}: {}", *id, dev.status().message());
  const DeviceInfo& info = (*dev)->device().info();
  spdlog::info("daemon: device added id={} spec=\"{}\" capacity={} request_alignment={} fua_native={}", *id,
               (*dev)->spec(), info.capacity, info.request_alignment, info.supports_fua_natively);
  devices_[*id] = std::move(dev.value());
  return {};
}

Status Daemon::remove_device(const std::string& id) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return error(-ENOENT, "no device with id {}", id);
  if (it->second->users > 0) return error(-EBUSY, "device {} is used by {} export(s)", id, it->second->users);
  devices_.erase(it);
  spdlog::info("daemon: device removed id={}", id);
  return {};
}

// ---- exports ----

Status Daemon::add_ublk_export(const KeyValueList& spec) {
  auto cfg = ublk::parse_ublk_export(spec);
  if (!cfg) return cfg.status();
  if (exports_.count(cfg->id)) return error(-EEXIST, "an export with id {} already exists", cfg->id);
  auto dev = devices_.find(cfg->blockdev);
  if (dev == devices_.end()) return error(-ENOENT, "export {}: no device with id {}", cfg->id, cfg->blockdev);
  std::vector<Reactor*> rs;
  for (auto& r : reactors_) rs.push_back(r.get());
  auto exp = ublk::UblkExport::create(*cfg, *dev->second, rs);
  if (!exp) return error(exp.status().code(), "export {}: {}", cfg->id, exp.status().message());
  std::shared_ptr<ublk::UblkExport> e = std::move(exp.value());
  dev->second->users++;
  exports_[cfg->id] = Export{"ublk", e->block_device(), cfg->blockdev, nullptr, e, nullptr};
  spdlog::info("daemon: export added id={} type=ublk device={} blockdev={} queues={} depth={} copy={} recovered={}",
               cfg->id, e->block_device(), cfg->blockdev, e->queue_requests().size(), cfg->depth,
               cfg->mode == ublk::CopyMode::kUser ? "user" : cfg->mode == ublk::CopyMode::kGetData ? "get-data" : "kernel",
               e->recovered());
  return {};
}

Status Daemon::add_vhost_user_blk_export(const KeyValueList& spec) {
  auto cfg = vhost_blk::parse_vhost_user_blk_export(spec);
  if (!cfg) return cfg.status();
  if (exports_.count(cfg->id)) return error(-EEXIST, "an export with id {} already exists", cfg->id);
  auto dev = devices_.find(cfg->blockdev);
  if (dev == devices_.end()) return error(-ENOENT, "export {}: no device with id {}", cfg->id, cfg->blockdev);
  for (auto& [other, x] : exports_) {
    if (x.address == cfg->socket) return error(-EADDRINUSE, "export {}: {} is used by export {}", cfg->id, cfg->socket, other);
  }
  std::vector<Reactor*> rs;
  for (auto& r : reactors_) rs.push_back(r.get());
  auto exp = vhost_blk::VhostUserBlkExport::create(*cfg, *dev->second, rs);
  if (!exp) return error(exp.status().code(), "export {}: {}", cfg->id, exp.status().message());
  std::shared_ptr<vhost_blk::VhostUserBlkExport> e = std::move(exp.value());
  dev->second->users++;
  exports_[cfg->id] = Export{"vhost-user-blk", cfg->socket, cfg->blockdev, nullptr, nullptr, e};
  spdlog::info("daemon: export added id={} type=vhost-user-blk socket={} blockdev={} queues={} readonly={} features=0x{:x}",
               cfg->id, cfg->socket, cfg->blockdev, e->queue_requests().size(), e->read_only(), e->features());
  return {};
}

Status Daemon::add_export(KeyValueList spec) {
  if (spec.head == "ublk") return add_ublk_export(spec);
  if (spec.head == "vhost-user-blk") return add_vhost_user_blk_export(spec);
  if (spec.head != "nbd") return error(-EINVAL, "unknown export type '{}'", spec.head);
  auto cfg = nbd::parse_nbd_export(spec);
  if (!cfg) return cfg.status();
  if (exports_.count(cfg->id)) return error(-EEXIST, "an export with id {} already exists", cfg->id);
  auto dev = devices_.find(cfg->blockdev);
  if (dev == devices_.end()) return error(-ENOENT, "export {}: no device with id {}", cfg->id, cfg->blockdev);
  if (cfg->tls != nbd::TlsMode::kOff && !tls_) {
    return error(-EINVAL, "export {}: tls={} needs TLS credentials (--tls-creds or --tls-psk)", cfg->id,
                 cfg->tls == nbd::TlsMode::kOn ? "on" : "require");
  }
  std::string address;
  if (cfg->socket_path.empty() && cfg->tcp.empty()) {
    if (activated_fds_.empty()) return error(-EINVAL, "export {}: socket= or tcp= is required", cfg->id);
    address = "fd:" + std::to_string(activated_fds_.front());
  } else {
    address = nbd::listener_address(*cfg);
  }
  auto exp = std::make_shared<nbd::NbdExport>(*cfg, *dev->second, static_cast<unsigned>(reactors_.size()),
                                              cfg->tls == nbd::TlsMode::kOff ? nullptr : tls_);
  if (const char* problem = nbd::export_info_problem(exp->info())) {
    return error(-EINVAL, "export {}: {}", cfg->id, problem);
  }
  std::string id = cfg->id;
  if (Status s = attach_nbd(id, exp, address); !s) return s;
  dev->second->users++;
  spdlog::info("daemon: export added id={} type=nbd name=\"{}\" address={} blockdev={} readonly={} tls={}", id,
               cfg->name, address, cfg->blockdev, exp->info().read_only, static_cast<int>(cfg->tls));
  return {};
}

Status Daemon::attach_nbd(const std::string& id, std::shared_ptr<nbd::NbdExport> exp, const std::string& address) {
  auto lit = listeners_.find(address);
  if (lit == listeners_.end()) {
    std::unique_ptr<nbd::Listener> l;
    if (address.rfind("fd:", 0) == 0) {
      l = nbd::Listener::adopt(std::stoi(address.substr(3)), address);
    } else {
      auto opened = nbd::Listener::open(address);
      if (!opened) return error(opened.status().code(), "export {}: {}", id, opened.status().message());
      l = std::move(opened.value());
    }
    std::vector<Reactor*> rs;
    std::vector<nbd::ConnectionSet*> sets;
    for (size_t i = 0; i < reactors_.size(); i++) {
      rs.push_back(reactors_[i].get());
      sets.push_back(nbd_connections_[i].get());
    }
    lit = listeners_.emplace(address, std::move(l)).first;
    exports_[id] = Export{"nbd", address, exp->config().blockdev, exp, nullptr, nullptr};
    publish_catalog(*lit->second);
    lit->second->start(*reactors_[0], rs, sets);
    return {};
  }
  for (auto& [other_id, e] : exports_) {
    if (e.nbd && e.address == address && e.nbd->info().name == exp->info().name) {
      return error(-EEXIST, "export {}: {} already has an export named \"{}\"", id, address, exp->info().name);
    }
  }
  exports_[id] = Export{"nbd", address, exp->config().blockdev, exp, nullptr, nullptr};
  publish_catalog(*lit->second);
  return {};
}

void Daemon::publish_catalog(nbd::Listener& l) {
  std::vector<std::shared_ptr<nbd::NbdExport>> list;
  for (auto& [id, e] : exports_) {
    if (e.nbd && e.address == l.address()) list.push_back(e.nbd);
  }
  l.set_catalog(std::make_shared<nbd::Catalog>(std::move(list)));
}

void Daemon::close_connections(const std::function<bool(const nbd::Connection&)>& pred) {
  // Runs fn on each reactor's connections, on that reactor.
  auto on_every_set = [this](const std::function<void(nbd::ConnectionSet&)>& fn) {
    for (size_t i = 0; i < reactors_.size(); i++) {
      nbd::ConnectionSet* set = nbd_connections_[i].get();
      reactors_[i]->post([set, fn] { fn(*set); });
    }
  };
  on_every_set([pred](nbd::ConnectionSet& set) { set.shutdown_if(pred); });
  // Connections finish what is in flight and send their last replies; one
  // whose client does not read them is cut off after the drain timeout.
  const auto grace = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(config_.drain_timeout_s));
  const auto deadline = std::chrono::steady_clock::now() + grace;
  bool cut = false;
  for (;;) {
    size_t left = 0;
    for (size_t i = 0; i < reactors_.size(); i++) {
      nbd::ConnectionSet* set = nbd_connections_[i].get();
      run_on(*reactors_[i], [&] { left += set->count_if(pred); });
    }
    if (left == 0) return;
    if (!cut && std::chrono::steady_clock::now() >= deadline) {
      cut = true;
      spdlog::warn("daemon: {} NBD connection(s) still sending after {} s; closing them", left,
                   config_.drain_timeout_s);
      on_every_set([pred](nbd::ConnectionSet& set) {
        set.fail_if(pred, "closed: replies not taken within the drain timeout");
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Status Daemon::remove_export(const std::string& id) {
  auto it = exports_.find(id);
  if (it == exports_.end()) return error(-ENOENT, "no export with id {}", id);
  Export e = it->second;
  exports_.erase(it);
  if (e.vhost) {
    e.vhost.reset();  // ends the connection (rings drained) and removes the socket
    devices_.at(e.blockdev)->users--;
    spdlog::info("daemon: export removed id={}", id);
    return {};
  }
  if (e.ublk) {
    e.ublk.reset();  // stops and deletes the block device
    devices_.at(e.blockdev)->users--;
    spdlog::info("daemon: export removed id={}", id);
    return {};
  }
  auto lit = listeners_.find(e.address);
  bool last = true;
  for (auto& [other, x] : exports_) last &= x.address != e.address;
  if (last) {
    lit->second->stop();
  } else {
    publish_catalog(*lit->second);
  }
  // Connections using it, or still negotiating from a catalog that lists it.
  const nbd::NbdExport* gone = e.nbd.get();
  close_connections([gone](const nbd::Connection& c) {
    if (c.exported() == gone) return true;
    for (auto& x : c.catalog().exports()) {
      if (x.get() == gone) return !c.exported();
    }
    return false;
  });
  if (last) listeners_.erase(lit);
  devices_.at(e.nbd->config().blockdev)->users--;
  spdlog::info("daemon: export removed id={}", id);
  return {};
}

// ---- control socket ----

nlohmann::json Daemon::device_json(BlockDevice& d) {
  const DeviceInfo& i = d.device().info();
  return {{"id", d.id()},
          {"spec", d.spec()},
          {"capacity", i.capacity},
          {"read_only", d.device().read_only()},
          {"request_alignment", i.request_alignment},
          {"supports_fua_natively", i.supports_fua_natively},
          {"exports", d.users}};
}

nlohmann::json Daemon::export_json(const std::string& id, const Export& e) {
  auto stats_json = [](const StatsSnapshot& s, uint64_t heap) {
    return nlohmann::json{{"connections", s.connections},
                          {"requests", s.requests},
                          {"read_bytes", s.read_bytes},
                          {"write_bytes", s.write_bytes},
                          {"errors", s.errors},
                          {"fua_writes", s.fua_writes},
                          {"flushes", s.flushes},
                          {"layout_queries", s.layout_queries},
                          {"spliced_reads", s.spliced_reads},
                          {"heap_buffers", heap},
                          {"latency_ns",
                           {{"p50", s.percentile(0.50)},
                            {"p90", s.percentile(0.90)},
                            {"p99", s.percentile(0.99)},
                            {"p999", s.percentile(0.999)}}}};
  };
  if (e.ublk) {
    return {{"id", id}, {"type", "ublk"}, {"device", e.address}, {"blockdev", e.blockdev},
            {"dev_id", e.ublk->dev_id()}, {"recovered", e.ublk->recovered()}, {"stats", stats_json(e.ublk->snapshot(), 0)},
            {"queue_requests", e.ublk->queue_requests()}};
  }
  if (e.vhost) {
    return {{"id", id}, {"type", "vhost-user-blk"}, {"socket", e.address}, {"blockdev", e.blockdev},
            {"read_only", e.vhost->read_only()}, {"connected", e.vhost->connected()},
            {"stats", stats_json(e.vhost->snapshot(), 0)}, {"queue_requests", e.vhost->queue_requests()}};
  }
  const nbd::ExportInfo& info = e.nbd->info();
  StatsSnapshot s = e.nbd->snapshot();
  uint64_t heap = 0;
  for (size_t i = 0; i < reactors_.size(); i++) {
    BlockDevice::Lane& lane = e.nbd->device().lane(static_cast<unsigned>(i));
    run_on(*reactors_[i], [&] { heap += lane.pool.heap_allocs(); });
  }
  return {{"id", id},
          {"type", e.type},
          {"name", info.name},
          {"address", e.address},
          {"blockdev", e.nbd->config().blockdev},
          {"read_only", info.read_only},
          {"size", info.size},
          {"stats", stats_json(s, heap)}};
}

nlohmann::json Daemon::handle(const nlohmann::json& req) {
  auto fail = [](const Status& s) { return nlohmann::json{{"ok", false}, {"error", s.message()}, {"errno", -s.code()}}; };
  if (!req.is_object() || !req.contains("cmd") || !req["cmd"].is_string()) {
    return fail(error(-EINVAL, "expected {{\"cmd\": ...}}"));
  }
  std::string cmd = req["cmd"];
  auto str = [&](const char* k) -> std::string {
    return req.contains(k) && req[k].is_string() ? req[k].get<std::string>() : std::string();
  };
  if (cmd == "list-devices") {
    nlohmann::json list = nlohmann::json::array();
    for (auto& [id, d] : devices_) list.push_back(device_json(*d));
    return {{"ok", true}, {"devices", list}};
  }
  if (cmd == "list-exports" || cmd == "stats") {
    nlohmann::json list = nlohmann::json::array();
    std::string only = str("id");
    for (auto& [id, e] : exports_) {
      if (only.empty() || only == id) list.push_back(export_json(id, e));
    }
    if (!only.empty() && list.empty()) return fail(error(-ENOENT, "no export with id {}", only));
    return {{"ok", true}, {"exports", list}};
  }
  if (cmd == "add-device" || cmd == "add-export") {
    auto spec = parse_key_values(str("spec"));
    if (!spec) return fail(spec.status());
    Status s = cmd == "add-device" ? add_device(*spec) : add_export(*spec);
    return s ? nlohmann::json{{"ok", true}} : fail(s);
  }
  if (cmd == "remove-device" || cmd == "remove-export") {
    Status s = cmd == "remove-device" ? remove_device(str("id")) : remove_export(str("id"));
    return s ? nlohmann::json{{"ok", true}} : fail(s);
  }
  if (cmd == "shutdown") {
    shutdown_requested_ = true;
    return {{"ok", true}};
  }
  return fail(error(-EINVAL, "unknown command '{}'", cmd));
}

// ---- main loop ----

void Daemon::drain() {
  spdlog::info("daemon: draining");
  for (auto& [addr, l] : listeners_) l->stop();
  close_connections([](const nbd::Connection&) { return true; });
  // ublk devices: stop (the kernel lets in-flight requests finish) and
  // delete. vhost-user-blk: end the connection once its rings are drained.
  for (auto it = exports_.begin(); it != exports_.end();) {
    if (it->second.ublk || it->second.vhost) {
      std::string id = it->first;
      ++it;
      if (Status s = remove_export(id); !s) spdlog::warn("daemon: {}", s.message());
    } else {
      ++it;
    }
  }
  spdlog::info("daemon: drained");
}

int Daemon::run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  UniqueFd signals(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  auto handler = [this](const nlohmann::json& req) { return handle(req); };
  while (!shutdown_requested_) {
    std::vector<pollfd> fds;
    fds.push_back({signals.get(), POLLIN, 0});
    control_.add_poll_fds(fds);
    if (::poll(fds.data(), fds.size(), -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(signals.get(), &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
          logging_.reopen();
        } else {
          spdlog::info("daemon: signal {} received", strsignal(static_cast<int>(si.ssi_signo)));
          shutdown_requested_ = true;
        }
      }
    }
    control_.on_events(fds, 1, handler);
  }
  drain();
  return 0;
}

}  // namespace blkstack
