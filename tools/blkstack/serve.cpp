// `blkstack serve`: the storage daemon.
//   blkstack serve --blockdev DRIVER,id=ID[,PROPERTY=VALUE...]
//                  --export nbd,blockdev=ID[,name=NAME][,socket=PATH|,tcp=HOST:PORT][,readonly=on][,tls=off|on|require]
//                  [--config FILE] [--threads N] [--control PATH] [--ready-fd N] [TLS and log options]
#include <iostream>

#include "commands.hpp"
#include "daemon/daemon.hpp"

namespace blkstack::cli {

namespace {

struct ServeOptions {
  std::vector<std::string> blockdevs, exports;
  std::string config_file;
  DaemonConfig config;
};

int run_serve(ServeOptions& o) {
  DaemonConfig& c = o.config;
  if (!o.config_file.empty()) {
    if (Status s = load_config_file(o.config_file, c); !s) {
      std::cerr << "blkstack serve: " << s.message() << "\n";
      return 2;
    }
  }
  for (auto& text : o.blockdevs) {
    auto kv = parse_key_values(text);
    if (!kv) {
      std::cerr << "blkstack serve: --blockdev: " << kv.status().message() << "\n";
      return 2;
    }
    c.blockdevs.push_back(std::move(*kv));
  }
  for (auto& text : o.exports) {
    auto kv = parse_key_values(text);
    if (!kv) {
      std::cerr << "blkstack serve: --export: " << kv.status().message() << "\n";
      return 2;
    }
    c.exports.push_back(std::move(*kv));
  }
  if (c.exports.empty()) {
    std::cerr << "blkstack serve: nothing to serve: give at least one --export (or a config file)\n";
    return 2;
  }
  Daemon daemon(c);
  if (Status s = daemon.start(); !s) {
    std::cerr << "blkstack serve: " << s.message() << "\n";
    return 1;
  }
  return daemon.run();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Run the storage daemon: serve devices over NBD");
  static ServeOptions o;
  cmd->add_option("--blockdev", o.blockdevs, "DRIVER,id=ID[,PROPERTY=VALUE...] (repeatable)");
  cmd->add_option("--export", o.exports,
                  "nbd,blockdev=ID[,name=NAME][,socket=PATH|,tcp=HOST:PORT][,readonly=on][,tls=off|on|require]"
                  " (repeatable)");
  cmd->add_option("--config", o.config_file, "TOML (.toml) or JSON (.json) configuration file");
  cmd->add_option("--threads", o.config.threads, "reactor threads (default: one per CPU)");
  cmd->add_option("--control", o.config.control_socket, "control socket (JSON lines)");
  cmd->add_option("--ready-fd", o.config.ready_fd, "write READY=1 to this fd once listening");
  cmd->add_option("--tls-creds", o.config.tls.creds_dir, "directory with server-cert.pem, server-key.pem [, ca-cert.pem]");
  cmd->add_option("--tls-cert", o.config.tls.cert_file, "server certificate (PEM)");
  cmd->add_option("--tls-key", o.config.tls.key_file, "server key (PEM)");
  cmd->add_option("--tls-ca", o.config.tls.ca_file, "CA certificate for client certificates (PEM)");
  cmd->add_option("--tls-psk", o.config.tls.psk_file, "pre-shared keys file (psktool format)");
  cmd->add_flag("--tls-verify-peer", o.config.tls.verify_peer, "require client certificates signed by the CA");
  cmd->add_option("--log-file", o.config.log_file, "log to this file (reopened on SIGHUP) instead of stderr");
  cmd->add_option("--log-level", o.config.log_level, "trace, debug, info, warn, error");
  cmd->add_option("--pool-size", o.config.pool_bytes, "I/O buffer bytes per device per reactor");
  cmd->add_option("--drain-timeout", o.config.drain_timeout_s,
                  "seconds an NBD connection being closed may take to send its last replies (default 5)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([] { std::exit(run_serve(o)); });
}

}  // namespace blkstack::cli
