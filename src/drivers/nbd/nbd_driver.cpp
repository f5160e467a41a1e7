// The nbd driver: a remote NBD export as a library device, through libnbd.
// Connecting is synchronous and bounded by connect-timeout; the data path is
// libnbd's asynchronous API, one connection per queue when the server allows
// it (NBD_FLAG_CAN_MULTI_CONN, or a read-only export). Allocation queries
// (base:allocation) go out asynchronously on the queues' own connections; the
// synchronous Driver::extent_at() has a connection of its own.
#include <algorithm>
#include <climits>
#include <mutex>
#include <vector>

#include "core/driver.hpp"
#include "drivers/common/driver_properties.hpp"
#include "drivers/driver_module.hpp"
#include "drivers/nbd/nbd_connection.hpp"
#include "drivers/nbd/nbd_queue.hpp"

namespace blkstack {

namespace {

class NbdDriver final : public Driver {
 public:
  std::span<const DriverProperty> properties() const override;
  Status connect(bool& read_only, DeviceInfo& info) override;
  Status start(int num_queues, int num_poll_queues) override;
  Result<std::unique_ptr<DriverQueue>> create_queue(bool poll) override;
  Result<AllocationExtent> extent_at(uint64_t offset, uint64_t len) override;

 private:
  static NbdDriver& self(Driver& d) { return static_cast<NbdDriver&>(d); }
  static const NbdDriver& self(const Driver& d) { return static_cast<const NbdDriver&>(d); }
  Result<std::shared_ptr<NbdLink>> open_connection() const;

  std::string uri_;
  std::string export_;
  int connections_ = 0;  // 0: one per queue when safe, else 1
  int connect_timeout_s_ = 30;
  int reconnect_delay_s_ = 0;  // how long requests wait for a reconnection

  std::string full_uri_;
  bool read_only_ = false;
  bool multi_conn_ = false;
  uint64_t size_ = 0;
  NbdCaps caps_;
  std::shared_ptr<NbdReconnectParams> reconnect_;  // what every connection must negotiate again
  std::shared_ptr<NbdLink> first_;  // from connect until start
  std::vector<std::shared_ptr<NbdLink>> conns_;
  size_t next_conn_ = 0;

  // Driver::extent_at(): a connection of its own, made at the first query,
  // so that a synchronous query never waits behind (or steals replies from)
  // a queue's traffic. Only used where a second connection's view is
  // consistent with the queues' (multi-conn or read-only).
  std::mutex control_mu_;
  NbdHandle control_;
};

std::span<const DriverProperty> NbdDriver::properties() const {
  using namespace states;
  static const DriverProperty props[] = {
      str_property<NbdDriver, &NbdDriver::uri_>("uri"),
      str_property<NbdDriver, &NbdDriver::export_>("export"),
      // Before start: what was asked (0 = automatic). After: what was made.
      {"connections", PropType::kInt, kAll, kCreated | kConnected,
       [](const Driver& d) {
         const NbdDriver& n = self(d);
         return PropValue(n.conns_.empty() ? n.connections_ : static_cast<int>(n.conns_.size()));
       },
       [](Driver& d, const PropValue& v) {
         int n = std::get<int>(v);
         if (n < 0) return error(-EINVAL, "connections must be 0 (one per queue) or more");
         self(d).connections_ = n;
         return Status{};
       }},
      seconds_property<NbdDriver, &NbdDriver::connect_timeout_s_>("connect-timeout"),
      // Read by the queues when they are made.
      seconds_property<NbdDriver, &NbdDriver::reconnect_delay_s_, states::kCreated | states::kConnected>(
          "reconnect-delay"),
      {"can-multi-conn", PropType::kBool, kAfterConnect, kNone,
       [](const Driver& d) { return PropValue(self(d).multi_conn_); }, nullptr},
  };
  return props;
}

Result<std::shared_ptr<NbdLink>> NbdDriver::open_connection() const {
  auto h = nbd_connect_within(full_uri_, connect_timeout_s_);
  if (!h) return h.status();
  return std::make_shared<NbdLink>(std::move(h.value()), reconnect_);
}

Status NbdDriver::connect(bool& read_only, DeviceInfo& info) {
  if (uri_.empty()) return error(-EINVAL, "uri must be set (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH)");
  auto full = uri_with_export(uri_, export_);
  if (!full) return full.status();
  full_uri_ = *full;
  auto h0 = nbd_connect_within(full_uri_, connect_timeout_s_);
  if (!h0) return h0.status();
  nbd_handle* h = h0->get();
  reconnect_ = std::make_shared<NbdReconnectParams>();
  reconnect_->uri = full_uri_;
  reconnect_->connect_timeout_s = connect_timeout_s_;
  reconnect_->expected = nbd_negotiated(h);

  int64_t size = nbd_get_size(h);
  if (size < 0) return nbd_error("export size");
  size_ = static_cast<uint64_t>(size);
  read_only_ = read_only || nbd_is_read_only(h) == 1;
  read_only = read_only_;
  multi_conn_ = nbd_can_multi_conn(h) == 1;
  caps_.can_flush = nbd_can_flush(h) == 1;
  caps_.can_fua = nbd_can_fua(h) == 1;
  caps_.can_fast_zero = nbd_can_fast_zero(h) == 1;
  caps_.can_block_status = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;

  // Block sizes the server asked for (NBD_INFO_BLOCK_SIZE); without them the
  // protocol allows any alignment and 32 MiB per request.
  int64_t min_bs = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  int64_t pref_bs = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  int64_t max_bs = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  int align = min_bs > 0 ? static_cast<int>(min_bs) : 1;
  uint64_t max_len = max_bs > 0 ? static_cast<uint64_t>(max_bs) : (32u << 20);
  max_len = std::min<uint64_t>(max_len, INT_MAX);
  max_len -= max_len % static_cast<uint64_t>(align);
  // Commands carry 32-bit lengths: zero and trim go up to that, aligned.
  uint64_t max_range = 0xffffffffull - 0xffffffffull % static_cast<uint64_t>(align);
  caps_.max_status_len = max_range;

  info.capacity = size_;
  info.request_alignment = align;
  info.optimal_io_size = pref_bs > 0 ? static_cast<int>(pref_bs) : 0;
  info.optimal_io_alignment = std::max(align, pref_bs > 0 ? static_cast<int>(pref_bs) : 4096);
  info.max_transfer = static_cast<int>(max_len);
  info.buf_alignment = 1;
  info.mem_region_alignment = 1;
  info.supports_poll_queues = false;
  info.flush_needed = caps_.can_flush;
  info.supports_fua_natively = caps_.can_fua;
  info.fua_native_write_zeroes = caps_.can_fua;
  info.supports_write_zeroes = nbd_can_zero(h) == 1;
  info.max_write_zeroes_len = max_range;
  info.supports_discard = nbd_can_trim(h) == 1;
  info.max_discard_len = max_range;
  info.discard_alignment = align;
  info.rotational = nbd_is_rotational(h) == 1;
  // Holes only from a server that speaks base:allocation. The queues ask on
  // their own connection, consistent with their own writes whatever the
  // server promises; and the driver makes several connections only where
  // they see one another's writes (multi-conn, or read-only), so any queue's
  // answer holds for all. A server without the context: everything is data.
  info.can_report_holes = caps_.can_block_status;
  conns_.clear();
  first_ = std::make_shared<NbdLink>(std::move(h0.value()), reconnect_);
  return {};
}

Status NbdDriver::start(int num_queues, int num_poll_queues) {
  (void)num_poll_queues;  // rejected by the contract layer: no poll queues
  int want = connections_ > 0 ? connections_ : std::max(num_queues, 1);
  bool safe = multi_conn_ || read_only_;
  if (want > 1 && !safe) {
    if (connections_ > 1) {
      return error(-EINVAL,
                   "connections={}: the server does not advertise multi-conn, so a flush on one connection "
                   "would not cover writes on the others; use connections=1 or a read-only device",
                   connections_);
    }
    want = 1;
  }
  conns_.push_back(std::move(first_));
  while (static_cast<int>(conns_.size()) < want) {
    auto c = open_connection();
    if (!c) return c.status();
    std::string diff = nbd_negotiated_diff(reconnect_->expected, nbd_negotiated((*c)->get()));
    if (!diff.empty()) {
      return error(-EIO, "connection {} to {}: the export is not the one connected to ({})", conns_.size(),
                   full_uri_, diff);
    }
    conns_.push_back(std::move(c.value()));
  }
  return {};
}

Result<std::unique_ptr<DriverQueue>> NbdDriver::create_queue(bool poll) {
  if (poll) return error(-ENOTSUP, "the nbd driver has no poll queues");
  if (conns_.empty()) return error(-EIO, "nbd driver: no connection");
  auto q = std::make_unique<NbdQueue>(conns_[next_conn_++ % conns_.size()], caps_, reconnect_delay_s_);
  if (!q->ok()) return errno_error("nbd queue: eventfd, timerfd or io_uring");
  return std::unique_ptr<DriverQueue>(std::move(q));
}

Result<AllocationExtent> NbdDriver::extent_at(uint64_t offset, uint64_t len) {
  // The synchronous form, for control paths and tools (blkstack copy); the
  // data path asks through the queues (Op::kBlockStatus). It asks on a
  // connection of its own, whose view of the export may lag writes made on
  // the queues' connections unless the server promises multi-conn
  // consistency (or nothing writes: read-only). Where neither holds, the
  // honest answer is "data" (reading it costs time, never correctness).
  if (!caps_.can_block_status || !(multi_conn_ || read_only_)) return AllocationExtent{len, false};
  std::lock_guard lock(control_mu_);
  // Bounded like connecting: a server that stops answering fails the query
  // (and the connection is made again next time) instead of hanging.
  const int timeout_s = connect_timeout_s_ > 0 ? connect_timeout_s_ : 30;
  if (!control_) {
    auto h = nbd_connect_within(full_uri_, timeout_s);
    if (!h) return h.status();
    if (nbd_can_meta_context(h->get(), LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) return AllocationExtent{len, false};
    control_ = std::move(h.value());
  }
  AllocationExtent e{};
  if (Status st = nbd_block_status_within(control_.get(), offset, std::min(len, caps_.max_status_len), timeout_s, e);
      !st) {
    // A command may still be in flight, its callbacks pointing at this
    // call's frame: the connection goes.
    control_.reset();
    return st;
  }
  if (e.len == 0 || e.len > len) return AllocationExtent{len, false};
  return e;
}

}  // namespace

BLKSTACK_DRIVER_MODULE("nbd", [] { return std::unique_ptr<Driver>(std::make_unique<NbdDriver>()); })

}  // namespace blkstack
