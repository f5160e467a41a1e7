// The virtio-blk-vhost-user driver: a vhost-user-blk back-end (e.g.
// qemu-storage-daemon's vhost-user-blk export) as a library device. We are
// the vhost-user front-end: connect negotiates features and reads the
// virtio-blk config space; start shares our memory (rings, request headers)
// with the back-end; every mapped memory region is added to the back-end's
// memory table; each queue is one virtqueue.
//
// Addresses: identity. A region's guest physical address is our own virtual
// address, so descriptors carry plain pointers and nothing is translated on
// the data path.
#include <fcntl.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <vector>

#include "core/driver.hpp"
#include "drivers/common/driver_properties.hpp"
#include "drivers/virtio_blk_vhost_user/backend_watch.hpp"
#include "drivers/virtio_blk_vhost_user/blk_config.hpp"
#include "drivers/virtio_blk_vhost_user/shared_memory.hpp"
#include "drivers/virtio_blk_vhost_user/vhost_user_client.hpp"
#include "drivers/virtio_blk_vhost_user/virtio_blk_queue.hpp"
#include "vhost/virtqueue_driver.hpp"

namespace blkstack {

namespace {

using vhost::VirtqueueDriver;

// The largest virtqueue the common back-ends accept (QEMU's libvhost-user
// and vhost-user-blk: VIRTQUEUE_MAX_SIZE). The protocol itself has no way to
// ask.
constexpr int kMaxQueueSize = 1024;
constexpr int kDefaultQueueSize = 256;  // blkio(3)
// The contract layer's write-zeroes fallback writes at most 1 MiB at a time;
// our zero area covers one such chunk per descriptor.
constexpr uint32_t kZeroAreaLen = 1u << 20;

// Protocol features we use when offered.
constexpr uint64_t kWantedProtocol = vhost::kProtoMq | vhost::kProtoReplyAck | vhost::kProtoConfig |
                                     vhost::kProtoConfigureMemSlots;

struct AppRegion {
  vhost::MemoryRegion desc;
  UniqueFd fd;  // our own copy: the application may close its fd after mapping
};

class VirtioBlkVhostUserDriver final : public Driver {
 public:
  ~VirtioBlkVhostUserDriver() override {
    // The watcher polls the socket: stop it before the socket closes.
    watch_.stop();
  }
  std::span<const DriverProperty> properties() const override;
  bool can_add_queues() const override { return false; }
  Status connect(bool& read_only, DeviceInfo& info) override;
  Status start(int num_queues, int num_poll_queues) override;
  void update_info(DeviceInfo& info) const override;
  Result<std::unique_ptr<DriverQueue>> create_queue(bool poll) override;
  Status map_region(MappedRegion& r) override;
  void unmap_region(const MappedRegion& r) override;

 private:
  static VirtioBlkVhostUserDriver& self(Driver& d) { return static_cast<VirtioBlkVhostUserDriver&>(d); }
  static const VirtioBlkVhostUserDriver& self(const Driver& d) {
    return static_cast<const VirtioBlkVhostUserDriver&>(d);
  }
  Status negotiate(bool& read_only, DeviceInfo& info);
  Status send_mem_table();
  size_t queue_bytes() const;
  Status control_failed(Status s);

  // Properties.
  std::string path_;
  int connect_timeout_s_ = 5;
  int queue_size_ = kDefaultQueueSize;

  // After connect.
  std::optional<VhostUserClient> client_;
  uint64_t features_ = 0;
  uint64_t protocol_ = 0;
  bool mem_slots_ = false;  // ADD/REM_MEM_REG instead of whole tables
  uint64_t max_regions_ = 0;
  int backend_queues_ = 1;
  virtio_blk_config config_{};
  VirtioBlkCaps caps_;
  BackendWatch watch_;
  bool backend_read_only_ = false;   // VIRTIO_BLK_F_RO
  bool instance_read_only_ = false;  // the read-only property, fixed at connect

  // After start.
  SharedMemory shared_;
  int total_queues_ = 0;
  int next_queue_ = 0;
  std::vector<AppRegion> regions_;
};

std::span<const DriverProperty> VirtioBlkVhostUserDriver::properties() const {
  using namespace states;
  static const DriverProperty props[] = {
      str_property<VirtioBlkVhostUserDriver, &VirtioBlkVhostUserDriver::path_>("path"),
      // Beyond blkio(3), as for the nbd driver: bounds connecting and every
      // control-path reply, so a mute back-end is an error, not a hang.
      seconds_property<VirtioBlkVhostUserDriver, &VirtioBlkVhostUserDriver::connect_timeout_s_>("connect-timeout"),
      {"max-queue-size", PropType::kInt, kAfterConnect, kNone, [](const Driver&) { return PropValue(kMaxQueueSize); },
       nullptr},
      {"queue-size", PropType::kInt, kAfterConnect, kConnected,
       [](const Driver& d) { return PropValue(self(d).queue_size_); },
       [](Driver& d, const PropValue& v) {
         int n = std::get<int>(v);
         // Split virtqueues are a power of two in size; 4 leaves room for a
         // header, two data segments and a status byte.
         if (n < 4 || n > kMaxQueueSize || (n & (n - 1)) != 0) {
           return error(-EINVAL, "queue-size must be a power of two from 4 to max-queue-size ({})", kMaxQueueSize);
         }
         self(d).queue_size_ = n;
         return Status{};
       }},
  };
  return props;
}

Status VirtioBlkVhostUserDriver::control_failed(Status s) {
  if (s.code() == -ENOTCONN || s.code() == -EPIPE) watch_.mark_dead();
  return s;
}

Status VirtioBlkVhostUserDriver::connect(bool& read_only, DeviceInfo& info) {
  auto c = VhostUserClient::connect(path_, connect_timeout_s_);
  if (!c) return c.status();
  client_.emplace(std::move(c.value()));
  if (Status s = negotiate(read_only, info); !s) {
    client_.reset();
    return s;
  }
  if (!watch_.start(client_->fd())) return errno_error("eventfd");
  return {};
}

Status VirtioBlkVhostUserDriver::negotiate(bool& read_only, DeviceInfo& info) {
  VhostUserClient& c = *client_;
  auto offered = c.get_features();
  if (!offered) return offered.status();
  if (!(*offered & (1ull << VIRTIO_F_VERSION_1))) {
    return error(-ENOTSUP, "vhost-user back-end {} does not offer VIRTIO_F_VERSION_1 (legacy devices are not supported)",
                 path_);
  }
  features_ = *offered & virtio_blk_wanted_features();
  if (*offered & vhost::kFeatureProtocolFeatures) {
    features_ |= vhost::kFeatureProtocolFeatures;
    auto p = c.get_protocol_features();
    if (!p) return p.status();
    protocol_ = *p & kWantedProtocol;
    if (Status s = c.set_protocol_features(protocol_); !s) return s;
  }
  if (Status s = c.set_owner(); !s) return s;

  if (!(protocol_ & vhost::kProtoConfig)) {
    return error(-ENOTSUP, "vhost-user back-end {} does not offer its config space (VHOST_USER_PROTOCOL_F_CONFIG), "
                 "so its capacity is unknown", path_);
  }
  config_ = {};
  if (Status s = c.get_config(&config_, kVirtioBlkConfigLen); !s) return s;

  backend_queues_ = 1;
  auto g = virtio_blk_geometry(features_, config_, static_cast<uint16_t>(queue_size_));
  if (!g) return g.status();
  backend_queues_ = g->num_queues;
  if (protocol_ & vhost::kProtoMq) {
    auto n = c.get_u64(vhost::Request::kGetQueueNum);
    if (!n) return n.status();
    if (*n == 0) return error(-EPROTO, "vhost-user back-end {} has no queues", path_);
    backend_queues_ = static_cast<int>(std::min<uint64_t>({*n, static_cast<uint64_t>(backend_queues_), 256}));
  } else {
    backend_queues_ = 1;
  }

  mem_slots_ = protocol_ & vhost::kProtoConfigureMemSlots;
  if (mem_slots_) {
    auto slots = c.get_u64(vhost::Request::kGetMaxMemSlots);
    if (!slots) return slots.status();
    max_regions_ = *slots;
  } else {
    max_regions_ = vhost::kMaxMemTableRegions;
  }
  if (max_regions_ < 2) return error(-ENOTSUP, "vhost-user back-end {} takes fewer than two memory regions", path_);

  if (Status s = c.set_features(features_); !s) return s;

  info = g->info;
  caps_ = g->caps;
  info.max_queues = backend_queues_;
  info.supports_poll_queues = true;  // blkio(3): always, for the virtio-blk drivers
  info.needs_mem_regions = true;
  info.needs_mem_region_fd = true;
  info.may_pin_mem_regions = false;
  info.mem_region_alignment = page_size();
  info.max_mem_regions = max_regions_ - 1;  // one is ours: the rings
  // A read-only back-end (VIRTIO_BLK_F_RO) does not make the instance
  // read-only: as in libblkio, the property stays as the application set
  // it, and a writable instance is refused at blkio_start().
  backend_read_only_ = g->read_only;
  instance_read_only_ = read_only;
  return {};
}

void VirtioBlkVhostUserDriver::update_info(DeviceInfo& info) const {
  // queue-size may have changed since connect: it bounds segments per chain.
  auto g = virtio_blk_geometry(features_, config_, static_cast<uint16_t>(queue_size_));
  if (g) {
    info.max_segments = g->info.max_segments;
    info.max_transfer = g->info.max_transfer;
  }
}

size_t VirtioBlkVhostUserDriver::queue_bytes() const {
  size_t ring = VirtqueueDriver::layout(static_cast<uint16_t>(queue_size_)).bytes;
  return round_up(ring + sizeof(VirtioBlkReqHeader) * static_cast<size_t>(queue_size_), page_size());
}

Status VirtioBlkVhostUserDriver::start(int num_queues, int num_poll_queues) {
  if (backend_read_only_ && !instance_read_only_) return error(-EROFS, "Device is read-only");
  if (shared_.size() != 0) {
    // The back-end already holds our rings from a start that failed later
    // on: its vrings are half set up. A fresh connection is the clean way.
    return error(-EIO, "virtio-blk-vhost-user: start after a failed start; destroy the device and connect again");
  }
  total_queues_ = num_queues + num_poll_queues;
  if (total_queues_ > backend_queues_) {
    return error(-EINVAL, "{} queues asked for; the back-end has {}", total_queues_, backend_queues_);
  }
  auto mem = SharedMemory::create("blkstack-virtio-blk-rings", queue_bytes() * static_cast<size_t>(total_queues_) +
                                                                  kZeroAreaLen);
  if (!mem) return mem.status();
  shared_ = std::move(mem.value());
  if (mem_slots_) {
    vhost::MemoryRegion r{};
    r.guest_phys_addr = r.userspace_addr = reinterpret_cast<uintptr_t>(shared_.data());
    r.memory_size = shared_.size();
    r.mmap_offset = 0;
    return control_failed(client_->add_mem_reg(r, shared_.fd()));
  }
  return control_failed(send_mem_table());
}

Status VirtioBlkVhostUserDriver::send_mem_table() {
  std::vector<vhost::MemoryRegion> table;
  std::vector<int> fds;
  vhost::MemoryRegion r{};
  r.guest_phys_addr = r.userspace_addr = reinterpret_cast<uintptr_t>(shared_.data());
  r.memory_size = shared_.size();
  table.push_back(r);
  fds.push_back(shared_.fd());
  for (const AppRegion& a : regions_) {
    table.push_back(a.desc);
    fds.push_back(a.fd.get());
  }
  return client_->set_mem_table(table, fds);
}

Result<std::unique_ptr<DriverQueue>> VirtioBlkVhostUserDriver::create_queue(bool poll) {
  if (next_queue_ >= total_queues_) return error(-EINVAL, "no virtqueue left for another queue");
  if (watch_.dead()) return error(-ENOTCONN, "vhost-user back-end {} has gone away", path_);
  const uint32_t index = static_cast<uint32_t>(next_queue_++);
  const uint16_t size = static_cast<uint16_t>(queue_size_);
  char* base = shared_.data() + queue_bytes() * index;
  const auto layout = VirtqueueDriver::layout(size);
  VirtioBlkQueueMemory mem{};
  mem.ring = base;
  mem.headers = reinterpret_cast<VirtioBlkReqHeader*>(base + layout.bytes);
  mem.zero_addr = reinterpret_cast<uintptr_t>(shared_.data() + queue_bytes() * static_cast<size_t>(total_queues_));
  mem.zero_len = kZeroAreaLen;

  UniqueFd kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  UniqueFd call(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!kick.valid() || !call.valid()) return errno_error("eventfd");

  VhostUserClient& c = *client_;
  vhost::VringAddr a{};
  a.index = index;
  a.flags = 0;
  a.desc_user_addr = reinterpret_cast<uintptr_t>(base + layout.desc);
  a.avail_user_addr = reinterpret_cast<uintptr_t>(base + layout.avail);
  a.used_user_addr = reinterpret_cast<uintptr_t>(base + layout.used);
  // Call before kick: the back-end starts the ring when it gets the kick fd.
  if (Status s = c.set_vring_num(index, size); !s) return control_failed(s);
  if (Status s = c.set_vring_base(index, 0); !s) return control_failed(s);
  if (Status s = c.set_vring_addr(a); !s) return control_failed(s);
  if (Status s = c.set_vring_call(index, call.get()); !s) return control_failed(s);
  if (Status s = c.set_vring_kick(index, kick.get()); !s) return control_failed(s);
  // With protocol features the ring starts disabled.
  if (features_ & vhost::kFeatureProtocolFeatures) {
    if (Status s = c.set_vring_enable(index, true); !s) return control_failed(s);
  }
  if (Status s = c.sync(); !s) return control_failed(s);
  const bool event_idx = features_ & (1ull << VIRTIO_RING_F_EVENT_IDX);
  return std::unique_ptr<DriverQueue>(
      std::make_unique<VirtioBlkQueue>(mem, size, event_idx, poll, caps_, watch_, client_->fd(), std::move(kick),
                                       std::move(call)));
}

Status VirtioBlkVhostUserDriver::map_region(MappedRegion& r) {
  if (watch_.dead()) return error(-ENOTCONN, "vhost-user back-end {} has gone away", path_);
  AppRegion a;
  a.desc.guest_phys_addr = a.desc.userspace_addr = r.begin;
  a.desc.memory_size = r.end - r.begin;
  a.desc.mmap_offset = static_cast<uint64_t>(r.desc.fd_offset);
  a.fd.reset(::fcntl(r.desc.fd, F_DUPFD_CLOEXEC, 0));
  if (!a.fd.valid()) return errno_error("dup memory region fd");
  if (mem_slots_) {
    if (Status s = client_->add_mem_reg(a.desc, a.fd.get()); !s) return control_failed(s);
    if (Status s = client_->sync(); !s) return control_failed(s);
    regions_.push_back(std::move(a));
  } else {
    regions_.push_back(std::move(a));
    Status s = send_mem_table();
    if (s) s = client_->sync();
    if (!s) {
      regions_.pop_back();
      return control_failed(s);
    }
  }
  r.driver_addr = r.begin;  // identity addressing
  return {};
}

void VirtioBlkVhostUserDriver::unmap_region(const MappedRegion& r) {
  auto it = std::find_if(regions_.begin(), regions_.end(), [&](const AppRegion& a) {
    return a.desc.userspace_addr == r.begin && a.desc.memory_size == r.end - r.begin;
  });
  if (it == regions_.end()) return;
  AppRegion gone = std::move(*it);
  regions_.erase(it);
  // A back-end that is gone has nothing to forget; one that refuses leaves
  // a stale mapping of memory the application still owns: harmless to us.
  if (watch_.dead()) return;
  Status s = mem_slots_ ? client_->rem_mem_reg(gone.desc, gone.fd.get()) : send_mem_table();
  (void)control_failed(s);
}

}  // namespace

std::unique_ptr<Driver> make_virtio_blk_vhost_user_driver() { return std::make_unique<VirtioBlkVhostUserDriver>(); }

}  // namespace blkstack
