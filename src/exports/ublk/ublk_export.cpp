#include "exports/ublk/ublk_export.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <thread>

#include "core/clock.hpp"
#include "daemon/config.hpp"
#include "spdlog/spdlog.h"

namespace blkstack::ublk {

Result<UblkExportConfig> parse_ublk_export(const KeyValueList& spec) {
  UblkExportConfig c;
  auto number = [](const std::string& k, const std::string& v, uint64_t min, uint64_t max) -> Result<uint64_t> {
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end || errno || n < min || n > max) {
      return error(-EINVAL, "ublk export: {}={} must be a number from {} to {}", k, v, min, max);
    }
    return static_cast<uint64_t>(n);
  };
  bool recovery_set = false;
  for (auto& [k, v] : spec.items) {
    if (k == "blockdev") {
      c.blockdev = v;
    } else if (k == "queues") {
      auto n = number(k, v, 1, kMaxNrQueues);
      if (!n) return n.status();
      c.queues = static_cast<unsigned>(*n);
    } else if (k == "depth") {
      auto n = number(k, v, 1, kMaxQueueDepth);
      if (!n) return n.status();
      c.depth = static_cast<unsigned>(*n);
    } else if (k == "id") {
      auto n = number(k, v, 0, (1u << 20) - 1);
      if (!n) return n.status();
      c.dev_id = static_cast<int>(*n);
    } else if (k == "name") {
      c.id = v;
    } else if (k == "max-io") {
      auto n = number(k, v, 4096, 1u << kIoBufBits);
      if (!n) return n.status();
      if (*n % 4096) return error(-EINVAL, "ublk export: max-io must be a multiple of 4096");
      c.max_io_bytes = static_cast<uint32_t>(*n);
    } else if (k == "copy") {
      if (v == "kernel") c.mode = CopyMode::kKernel;
      else if (v == "get-data") c.mode = CopyMode::kGetData;
      else if (v == "user") c.mode = CopyMode::kUser;
      else return error(-EINVAL, "ublk export: copy={}: expected kernel, get-data or user", v);
    } else if (k == "recovery" || k == "unprivileged") {
      auto b = parse_switch(k, v);
      if (!b) return error(-EINVAL, "ublk export: {}", b.status().message());
      (k == "recovery" ? c.recovery : c.unprivileged) = *b;
      recovery_set |= k == "recovery";
    } else {
      return error(-EINVAL, "ublk export: unknown option '{}'", k);
    }
  }
  if (c.blockdev.empty()) return error(-EINVAL, "ublk export: blockdev= is required");
  if (c.unprivileged && c.mode == CopyMode::kUser) {
    return error(-EINVAL, "ublk export: copy=user is not available to unprivileged devices");
  }
  // The kernel refuses recovery to unprivileged devices (it could stall
  // error handling): off by default there, an error when asked for.
  if (c.unprivileged && c.recovery) {
    if (recovery_set) return error(-EINVAL, "ublk export: recovery is not available to unprivileged devices");
    c.recovery = false;
  }
  if (c.id.empty()) c.id = c.dev_id >= 0 ? "ublk" + std::to_string(c.dev_id) : "ublk-" + c.blockdev;
  return c;
}

Status UblkExport::check_features(uint64_t f) const {
  auto need = [&](uint64_t flag, const char* what) -> Status {
    if (f & flag) return {};
    return error(-ENOTSUP, "this kernel's ublk driver lacks {} (features 0x{:x})", what, f);
  };
  if (Status s = need(kFCmdIoctlEncode, "ioctl-encoded commands (UBLK_F_CMD_IOCTL_ENCODE)"); !s) return s;
  if (config_.mode == CopyMode::kUser) {
    if (Status s = need(kFUserCopy, "user copy (UBLK_F_USER_COPY): use copy=kernel"); !s) return s;
  }
  if (config_.mode == CopyMode::kGetData) {
    if (Status s = need(kFNeedGetData, "UBLK_F_NEED_GET_DATA: use copy=kernel"); !s) return s;
  }
  if (config_.recovery) {
    if (Status s = need(kFUserRecovery | kFUserRecoveryReissue, "user recovery: use recovery=off"); !s) return s;
  }
  if (config_.unprivileged) {
    if (Status s = need(kFUnprivilegedDev, "unprivileged devices"); !s) return s;
  }
  return {};
}

Params UblkExport::params() const {
  const Device& dev = device_.device();
  const DeviceInfo& d = dev.info();
  Params p{};
  p.types = kParamTypeBasic;
  ParamBasic& b = p.basic;
  // Block sizes: at least a sector; the device's request alignment decides.
  uint32_t logical = std::max<uint32_t>(512, static_cast<uint32_t>(d.request_alignment));
  uint32_t physical = std::max<uint32_t>(logical, static_cast<uint32_t>(d.optimal_io_alignment));
  b.logical_bs_shift = static_cast<uint8_t>(std::countr_zero(logical));
  b.physical_bs_shift = static_cast<uint8_t>(std::countr_zero(std::bit_floor(physical)));
  b.io_min_shift = b.logical_bs_shift;
  b.io_opt_shift = d.optimal_io_size > 0 ? static_cast<uint8_t>(std::countr_zero(std::bit_floor(
                                               static_cast<uint32_t>(d.optimal_io_size))))
                                         : b.physical_bs_shift;
  uint64_t max_bytes = max_io_bytes_;
  if (d.max_transfer > 0) max_bytes = std::min<uint64_t>(max_bytes, static_cast<uint64_t>(d.max_transfer));
  b.max_sectors = static_cast<uint32_t>(max_bytes >> 9);
  b.dev_sectors = d.capacity >> 9;
  if (dev.read_only()) b.attrs |= kAttrReadOnly;
  if (d.rotational) b.attrs |= kAttrRotational;
  if (d.flush_needed) b.attrs |= kAttrVolatileCache;
  // FUA only when the device does it natively; otherwise the block layer
  // turns FUA writes into write + flush itself.
  if (d.supports_fua_natively && d.flush_needed) b.attrs |= kAttrFua;
  if (!dev.read_only()) {
    p.types |= kParamTypeDiscard;
    ParamDiscard& dc = p.discard;
    uint32_t gran = std::max<uint32_t>(logical, static_cast<uint32_t>(std::max(d.discard_alignment, 1)));
    if (d.supports_discard) {
      dc.discard_granularity = gran;
      dc.discard_alignment = static_cast<uint32_t>(d.discard_alignment_offset);
      dc.max_discard_sectors = d.max_discard_len ? static_cast<uint32_t>(std::min<uint64_t>(d.max_discard_len >> 9, UINT32_MAX >> 1))
                                                 : UINT32_MAX >> 9;
      dc.max_discard_segments = 1;
    }
    dc.max_write_zeroes_sectors = d.max_write_zeroes_len
                                      ? static_cast<uint32_t>(std::min<uint64_t>(d.max_write_zeroes_len >> 9, UINT32_MAX >> 1))
                                      : UINT32_MAX >> 9;
  }
  return p;
}

Status UblkExport::open_queues(const std::vector<Reactor*>& reactors, unsigned nr_queues, unsigned depth,
                               uint32_t max_io_bytes) {
  std::string path = char_dev_path(dev_id_);
  // The node may appear a little after ADD_DEV.
  const bool opened = poll_until(
      [&] {
        char_fd_.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
        return char_fd_.valid();
      },
      std::chrono::seconds(1), std::chrono::milliseconds(10));
  if (!opened) return errno_error(path);
  queues_.resize(nr_queues);
  for (unsigned q = 0; q < nr_queues; q++) {
    Reactor& r = *reactors[q % reactors.size()];
    queue_reactor_.push_back(&r);
    stats_.push_back(std::make_unique<StatsShard>());
    QueueSetup setup{static_cast<uint16_t>(q), static_cast<uint16_t>(depth), max_io_bytes, char_fd_.get(), config_.mode};
    Status st;
    run_on(r, [&] {
      queues_[q] = std::make_unique<Queue>(r, device_.lane(r.index()), device_.device(), *stats_[q], setup);
      st = queues_[q]->start();
    });
    if (!st) return error(st.code(), "ublk queue {}: {}", q, st.message());
  }
  return {};
}

void UblkExport::close_queues() {
  for (size_t q = 0; q < queues_.size(); q++) {
    if (!queues_[q]) continue;
    // Every tag's command must be back before its memory goes; fetches that
    // a stop did not end are cancelled after a moment.
    for (int i = 0;; i++) {
      unsigned busy = 0;
      run_on(*queue_reactor_[q], [&] { busy = queues_[q]->busy_tags(); });
      if (busy == 0) break;
      if (i == 500) run_on(*queue_reactor_[q], [&] { queues_[q]->cancel_fetches(); });
      if (i == 5000) {
        spdlog::error("ublk: device {} queue {}: {} tags still busy; leaking the queue", dev_id_, q, busy);
        queues_[q].release();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (queues_[q]) run_on(*queue_reactor_[q], [&] { queues_[q].reset(); });
  }
  queues_.clear();
}

namespace {
// An unprivileged device's commands are checked against the permissions of
// its char device, which the kernel creates root-owned: udev (ublksrv's rule)
// gives it to the user who added it. Wait for that, as ublksrv does.
Status wait_for_char_dev_access(uint32_t dev_id) {
  std::string path = char_dev_path(dev_id);
  if (poll_until([&] { return ::access(path.c_str(), R_OK | W_OK) == 0; }, std::chrono::seconds(3),
                 std::chrono::milliseconds(10))) {
    return {};
  }
  return error(-EACCES,
               "ublk: {} is not accessible to this user after 3 s: unprivileged devices need a udev rule that "
               "gives new ublk devices to their owner (as ublksrv's)",
               path);
}
}  // namespace

Result<std::unique_ptr<UblkExport>> UblkExport::create(const UblkExportConfig& config, BlockDevice& device,
                                                       const std::vector<Reactor*>& reactors) {
  std::unique_ptr<UblkExport> e(new UblkExport(config, device));
  unsigned nr_queues = config.queues ? config.queues : static_cast<unsigned>(reactors.size());
  if (nr_queues > kMaxNrQueues) return error(-EINVAL, "ublk export: at most {} queues", kMaxNrQueues);
  auto control = Control::open();
  if (!control) return control.status();
  e->control_ = std::move(control.value());
  e->control_->set_unprivileged(config.unprivileged);
  auto features = e->control_->get_features();
  if (!features) return error(features.status().code(), "ublk: GET_FEATURES failed (kernel too old?): {}",
                              features.status().message());
  if (Status s = e->check_features(*features); !s) return s;

  // A device left behind by a daemon that died: take it over (user recovery).
  if (config.dev_id >= 0) {
    auto info = e->control_->get_dev_info(static_cast<uint32_t>(config.dev_id));
    if (info) {
      DevInfo i = *info;
      bool recoverable = i.flags & kFUserRecovery;
      for (int tries = 0; recoverable && i.state == kStateLive && tries < 100; tries++) {
        if (i.ublksrv_pid > 0 && ::kill(i.ublksrv_pid, 0) == 0 && i.ublksrv_pid != getpid()) {
          return error(-EBUSY, "ublk device {} is served by running process {}", config.dev_id, i.ublksrv_pid);
        }
        // Its server is gone; the kernel quiesces it shortly.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        auto again = e->control_->get_dev_info(static_cast<uint32_t>(config.dev_id));
        if (!again) break;
        i = *again;
      }
      if (recoverable && i.state == kStateQuiesced) {
        e->dev_id_ = i.dev_id;
        e->added_ = true;
        if (Status s = e->control_->start_user_recovery(e->dev_id_); !s) return s;
        if (Status s = e->open_queues(reactors, i.nr_hw_queues, i.queue_depth, i.max_io_buf_bytes); !s) return s;
        if (Status s = e->control_->end_user_recovery(e->dev_id_, getpid()); !s) return s;
        e->started_ = true;
        e->recovered_ = true;
        return e;
      }
      // Not recoverable: start afresh.
      (void)e->control_->stop_dev(static_cast<uint32_t>(config.dev_id));
      if (Status s = e->control_->del_dev(static_cast<uint32_t>(config.dev_id)); !s) return s;
    }
  }

  DevInfo info{};
  info.nr_hw_queues = static_cast<uint16_t>(nr_queues);
  info.queue_depth = static_cast<uint16_t>(config.depth);
  info.max_io_buf_bytes = config.max_io_bytes;
  info.dev_id = config.dev_id >= 0 ? static_cast<uint32_t>(config.dev_id) : UINT32_MAX;
  info.ublksrv_pid = getpid();
  info.flags = kFCmdIoctlEncode;
  if (config.mode == CopyMode::kUser) info.flags |= kFUserCopy;
  if (config.mode == CopyMode::kGetData) info.flags |= kFNeedGetData;
  if (config.recovery) info.flags |= kFUserRecovery | kFUserRecoveryReissue;
  if (config.unprivileged) info.flags |= kFUnprivilegedDev;
  if (Status s = e->control_->add_dev(info); !s) {
    if (s.code() == -EPERM && !config.unprivileged) {
      return error(-EPERM, "{}: without CAP_SYS_ADMIN only unprivileged devices (unprivileged=on) may be added",
                   s.message());
    }
    return s;
  }
  e->dev_id_ = info.dev_id;
  e->added_ = true;
  // ADD_DEV answers with what the kernel made: at most one queue per CPU, an
  // I/O size rounded to what it can map. Build on that, not on what we asked.
  if (info.nr_hw_queues != nr_queues) {
    spdlog::info("ublk: device {} has {} queues (asked for {}; the kernel allows one per CPU)", info.dev_id,
                 info.nr_hw_queues, nr_queues);
  }
  e->max_io_bytes_ = info.max_io_buf_bytes;
  // The kernel makes root's devices privileged whatever was asked, and the
  // path prefix of later commands depends on what it made.
  bool unprivileged = info.flags & kFUnprivilegedDev;
  e->control_->set_unprivileged(unprivileged);
  if (unprivileged) {
    if (Status s = wait_for_char_dev_access(e->dev_id_); !s) return s;
  }
  const Params params = e->params();
  if (Status s = e->control_->set_params(e->dev_id_, params); !s) {
    return error(s.code(), "{} (logical block {} bytes, physical {}, max {} sectors per request; the kernel takes blocks "
                 "of 512 bytes up to a page)", s.message(), 1u << params.basic.logical_bs_shift,
                 1u << params.basic.physical_bs_shift, params.basic.max_sectors);
  }
  if (Status s = e->open_queues(reactors, info.nr_hw_queues, info.queue_depth, info.max_io_buf_bytes); !s) return s;
  if (Status s = e->control_->start_dev(e->dev_id_, getpid()); !s) return s;
  e->started_ = true;
  return e;
}

UblkExport::~UblkExport() {
  if (added_ && control_) {
    if (started_ || !queues_.empty()) {
      if (Status s = control_->stop_dev(dev_id_); !s) spdlog::warn("ublk: {}", s.message());
    }
  }
  close_queues();
  char_fd_.reset();
  if (added_ && control_) {
    if (Status s = control_->del_dev(dev_id_); !s) spdlog::warn("ublk: {}", s.message());
  }
}

StatsSnapshot UblkExport::snapshot() const {
  StatsSnapshot s;
  for (auto& shard : stats_) s.add(*shard);
  return s;
}

std::vector<uint64_t> UblkExport::queue_requests() const {
  std::vector<uint64_t> n;
  for (auto& shard : stats_) n.push_back(shard->requests.load(std::memory_order_relaxed));
  return n;
}

}  // namespace blkstack::ublk
