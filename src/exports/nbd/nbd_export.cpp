#include "exports/nbd/nbd_export.hpp"

#include <algorithm>

#include "daemon/config.hpp"
#include "exports/nbd/protocol.hpp"

namespace blkstack::nbd {

Result<NbdExportConfig> parse_nbd_export(const KeyValueList& spec) {
  NbdExportConfig c;
  bool have_name = false;
  for (auto& [k, v] : spec.items) {
    if (k == "blockdev") {
      c.blockdev = v;
    } else if (k == "name") {
      c.name = v;
      have_name = true;
    } else if (k == "description") {
      c.description = v;
    } else if (k == "socket") {
      c.socket_path = v;
    } else if (k == "tcp") {
      c.tcp = v;
    } else if (k == "id") {
      c.id = v;
    } else if (k == "readonly") {
      auto b = parse_switch(k, v);
      if (!b) return error(-EINVAL, "nbd export: {}", b.status().message());
      c.read_only = *b;
    } else if (k == "tls") {
      if (v == "off") c.tls = TlsMode::kOff;
      else if (v == "on") c.tls = TlsMode::kOn;
      else if (v == "require") c.tls = TlsMode::kRequire;
      else return error(-EINVAL, "nbd export: tls={}: expected off, on or require", v);
    } else {
      return error(-EINVAL, "nbd export: unknown option '{}'", k);
    }
  }
  if (c.blockdev.empty()) return error(-EINVAL, "nbd export: blockdev= is required");
  if (!c.socket_path.empty() && !c.tcp.empty()) return error(-EINVAL, "nbd export: socket= and tcp= exclude each other");
  if (c.name.size() > kMaxString || c.description.size() > kMaxString) {
    return error(-EINVAL, "nbd export: name and description are limited to {} bytes", kMaxString);
  }
  if (c.id.empty()) c.id = have_name && !c.name.empty() ? c.name : "nbd-" + c.blockdev;
  return c;
}

NbdExport::NbdExport(NbdExportConfig config, BlockDevice& device, unsigned reactors, std::shared_ptr<TlsContext> tls)
    : config_(std::move(config)), device_(device), tls_(std::move(tls)) {
  const Device& dev = device.device();
  const DeviceInfo& d = dev.info();
  info_.name = config_.name;
  info_.description = config_.description;
  info_.size = d.capacity;
  info_.read_only = config_.read_only || dev.read_only();
  // Flags say only what the device can honour. FUA is always honoured: the
  // library does it natively or by a flush after the write.
  info_.can_flush = true;
  info_.can_fua = true;
  info_.can_trim = !info_.read_only && d.supports_discard;
  info_.can_write_zeroes = !info_.read_only;
  // Fast zeroes are possible only where the device zeroes without writing.
  info_.can_fast_zero = !info_.read_only && d.supports_write_zeroes;
  info_.can_cache = true;
  // A flush on one queue persists writes completed on every queue of the
  // device (fdatasync on the shared file, a device-wide cache flush), so
  // several connections may be used as one.
  info_.can_multi_conn = true;
  info_.rotational = d.rotational;
  info_.can_block_status = true;
  info_.min_block = static_cast<uint32_t>(std::max(d.request_alignment, 1));
  uint32_t preferred = static_cast<uint32_t>(std::max(d.optimal_io_size, d.optimal_io_alignment));
  info_.preferred_block = std::max(info_.min_block, std::min<uint32_t>(preferred ? preferred : 4096, 32u << 20));
  uint64_t max = device.lane(0).pool.max_alloc();
  if (d.max_transfer > 0) max = std::min<uint64_t>(max, static_cast<uint64_t>(d.max_transfer));
  max = std::min<uint64_t>(max, 32u << 20);
  max -= max % info_.min_block;
  info_.max_block = static_cast<uint32_t>(std::max<uint64_t>(max, info_.preferred_block));
  for (unsigned i = 0; i < reactors; i++) stats_.push_back(std::make_unique<StatsShard>());
}

StatsSnapshot NbdExport::snapshot() const {
  StatsSnapshot s;
  for (auto& shard : stats_) s.add(*shard);
  return s;
}

const ExportInfo* Catalog::find(std::string_view name) const {
  for (auto& e : exports_) {
    if (e->info().name == name) return &e->info();
  }
  return nullptr;
}

std::vector<const ExportInfo*> Catalog::list() const {
  std::vector<const ExportInfo*> v;
  for (auto& e : exports_) v.push_back(&e->info());
  return v;
}

NbdExport* Catalog::by_info(const ExportInfo* info) const {
  for (auto& e : exports_) {
    if (&e->info() == info) return e.get();
  }
  return nullptr;
}

TlsMode Catalog::tls_mode() const {
  TlsMode m = TlsMode::kOff;
  for (auto& e : exports_) {
    if (e->config().tls == TlsMode::kRequire) return TlsMode::kRequire;
    if (e->config().tls == TlsMode::kOn) m = TlsMode::kOn;
  }
  return m;
}

std::shared_ptr<TlsContext> Catalog::tls() const {
  for (auto& e : exports_) {
    if (e->tls()) return e->tls();
  }
  return nullptr;
}

}  // namespace blkstack::nbd
