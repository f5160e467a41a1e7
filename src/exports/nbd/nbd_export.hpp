// An NBD export as the daemon runs it: what clients are told about it (built
// honestly from the device's properties), the device lanes that serve it, and
// its statistics. Shared by the listener's catalog and by every connection.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "blkstack/device_spec.hpp"
#include "daemon/block_device.hpp"
#include "daemon/stats.hpp"
#include "exports/nbd/handshake.hpp"

namespace blkstack::nbd {

class TlsContext;

struct NbdExportConfig {
  std::string id;           // for the control socket and logs
  std::string name;         // the NBD export name ("" = default export)
  std::string description;
  std::string blockdev;     // the BlockDevice id
  std::string socket_path;  // Unix socket, or
  std::string tcp;          // HOST:PORT (IPv6 as [addr]:port)
  bool read_only = false;
  TlsMode tls = TlsMode::kOff;
};

// Reads "nbd,blockdev=ID[,name=NAME][,description=TEXT][,socket=PATH|,tcp=HOST:PORT]
// [,readonly=on][,tls=off|on|require][,id=ID]".
Result<NbdExportConfig> parse_nbd_export(const KeyValueList& spec);

class NbdExport {
 public:
  NbdExport(NbdExportConfig config, BlockDevice& device, unsigned reactors, std::shared_ptr<TlsContext> tls);

  const NbdExportConfig& config() const { return config_; }
  const ExportInfo& info() const { return info_; }
  BlockDevice& device() { return device_; }
  StatsShard& stats(unsigned reactor) { return *stats_[reactor]; }
  StatsSnapshot snapshot() const;
  const std::shared_ptr<TlsContext>& tls() const { return tls_; }
  // Requests larger than this are refused (the buffer pool's largest buffer).
  uint64_t max_payload() const { return info_.max_block; }
  // Whether block status can say anything useful (the device reports holes).
  bool reports_holes() const { return device_.device().info().can_report_holes; }

 private:
  NbdExportConfig config_;
  BlockDevice& device_;
  ExportInfo info_;
  std::vector<std::unique_ptr<StatsShard>> stats_;
  std::shared_ptr<TlsContext> tls_;
};

// The exports one listener offers, as an immutable snapshot: connections keep
// the snapshot they started with while exports come and go.
class Catalog final : public ExportCatalog {
 public:
  explicit Catalog(std::vector<std::shared_ptr<NbdExport>> exports) : exports_(std::move(exports)) {}
  const ExportInfo* find(std::string_view name) const override;
  std::vector<const ExportInfo*> list() const override;
  NbdExport* by_info(const ExportInfo* info) const;
  const std::vector<std::shared_ptr<NbdExport>>& exports() const { return exports_; }
  // The strictest TLS policy among the exports (the listener's policy).
  TlsMode tls_mode() const;
  std::shared_ptr<TlsContext> tls() const;

 private:
  std::vector<std::shared_ptr<NbdExport>> exports_;
};

}  // namespace blkstack::nbd
