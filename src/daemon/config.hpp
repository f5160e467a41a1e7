// What `blkstack serve` is asked to do, from the command line or a config
// file (TOML or JSON). Devices and exports stay in their text form
// (KeyValueList) until the daemon opens them, so every source shares one
// parser.
#pragma once

#include <string>
#include <vector>

#include "blkstack/device_spec.hpp"
#include "exports/nbd/tls.hpp"

namespace blkstack {

struct DaemonConfig {
  std::vector<KeyValueList> blockdevs;  // head: driver; must have id=
  std::vector<KeyValueList> exports;    // head: export type (nbd, ...)
  unsigned threads = 0;                 // reactors; 0: one per CPU
  std::string control_socket;
  int ready_fd = -1;
  nbd::TlsOptions tls;
  std::string log_file;   // empty: stderr
  std::string log_level = "info";
  uint64_t pool_bytes = 64ull << 20;  // I/O buffers per device per reactor
  // How long removing an NBD export (or SIGTERM) lets its connections send
  // their last replies before it cuts them off: a client that stops reading
  // must not hold the control socket or the shutdown forever.
  double drain_timeout_s = 5.0;
};

// Reads a TOML (.toml) or JSON (.json) file into `config` (appending devices
// and exports, overriding settings it names).
Status load_config_file(const std::string& path, DaemonConfig& config);

// "on/off/true/false/yes/no/1/0".
Result<bool> parse_switch(std::string_view key, std::string_view value);

}  // namespace blkstack
