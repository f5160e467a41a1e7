#include "exports/vhost_user_blk/vhost_user_blk_export.hpp"

#include <linux/virtio_config.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>

#include "daemon/config.hpp"
#include "daemon/unix_listen.hpp"
#include "spdlog/spdlog.h"

namespace blkstack::vhost_blk {

using vhost::Message;

Result<VhostUserBlkConfig> parse_vhost_user_blk_export(const KeyValueList& spec) {
  VhostUserBlkConfig c;
  auto number = [](const std::string& k, const std::string& v, uint64_t min, uint64_t max) -> Result<uint64_t> {
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end || errno || n < min || n > max) {
      return error(-EINVAL, "vhost-user-blk export: {}={} must be a number from {} to {}", k, v, min, max);
    }
    return static_cast<uint64_t>(n);
  };
  for (auto& [k, v] : spec.items) {
    if (k == "blockdev") {
      c.blockdev = v;
    } else if (k == "socket") {
      c.socket = v;
    } else if (k == "id" || k == "name") {
      c.id = v;
    } else if (k == "serial") {
      c.serial = v;
    } else if (k == "queues" || k == "num-queues") {
      auto n = number(k, v, 1, 256);
      if (!n) return n.status();
      c.queues = static_cast<unsigned>(*n);
    } else if (k == "queue-size") {
      auto n = number(k, v, 2, 1024);
      if (!n) return n.status();
      if (!std::has_single_bit(*n)) return error(-EINVAL, "vhost-user-blk export: queue-size must be a power of two");
      c.queue_size = static_cast<uint16_t>(*n);
    } else if (k == "readonly" || k == "read-only") {
      auto b = parse_switch(k, v);
      if (!b) return error(-EINVAL, "vhost-user-blk export: {}", b.status().message());
      c.readonly = *b;
    } else {
      return error(-EINVAL, "vhost-user-blk export: unknown option '{}'", k);
    }
  }
  if (c.blockdev.empty()) return error(-EINVAL, "vhost-user-blk export: blockdev= is required");
  if (c.socket.empty()) return error(-EINVAL, "vhost-user-blk export: socket= is required");
  if (c.socket.size() >= sizeof(sockaddr_un::sun_path)) return error(-ENAMETOOLONG, "vhost-user-blk export: socket path too long");
  if (c.id.empty()) c.id = "vhost-" + c.blockdev;
  if (c.serial.empty()) c.serial = c.id;
  return c;
}

// What we offer follows what the device can do: FLUSH only when it has a
// cache to flush, DISCARD only when it discards, no write features when
// read-only.
void VhostUserBlkExport::build_session_config(unsigned queues) {
  Device& dev = dev_.device();
  const DeviceInfo& d = dev.info();
  bool ro = cfg_.readonly || dev.read_only();
  uint32_t blk = std::max<uint32_t>(512, static_cast<uint32_t>(d.request_alignment));
  uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << vhost::kRingFEventIdx) | (1ull << vhost::kRingFIndirectDesc) |
               (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
               (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_MQ);
  if (d.flush_needed) f |= (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_CONFIG_WCE);
  if (ro) f |= 1ull << VIRTIO_BLK_F_RO;
  bool discard = !ro && d.supports_discard;
  bool zeroes = !ro;  // the library falls back to writing zeroes when the driver cannot
  if (discard) f |= 1ull << VIRTIO_BLK_F_DISCARD;
  if (zeroes) f |= 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
  scfg_.features = f;
  scfg_.protocol_features = vhost::kProtoMq | vhost::kProtoReplyAck | vhost::kProtoConfig |
                            vhost::kProtoConfigureMemSlots | vhost::kProtoResetDevice;
  scfg_.num_queues = queues;
  scfg_.max_queue_size = cfg_.queue_size;

  virtio_blk_config& c = scfg_.config;
  c = {};
  c.capacity = d.capacity >> 9;
  // One segment may be as large as a request; a sane cap when unlimited.
  c.size_max = d.max_segment_len > 0 ? static_cast<uint32_t>(d.max_segment_len) : (1u << 30);
  // Header and status need descriptors too, and a segment may be split in
  // two where guest memory regions meet.
  c.seg_max = static_cast<uint32_t>(std::min(std::max(d.max_segments, 1), 126));
  c.blk_size = blk;
  uint32_t phys = std::max<uint32_t>(blk, std::bit_floor(static_cast<uint32_t>(std::max(d.optimal_io_alignment, 1))));
  c.physical_block_exp = static_cast<uint8_t>(std::countr_zero(phys / blk));
  c.alignment_offset = 0;
  c.min_io_size = 1;
  c.opt_io_size = d.optimal_io_size > 0 ? static_cast<uint32_t>(d.optimal_io_size) / blk : 0;
  c.wce = 1;
  c.num_queues = static_cast<uint16_t>(queues);
  uint32_t max_sectors = UINT32_MAX >> 9;  // keeps byte counts below 4 GiB
  if (discard) {
    c.max_discard_sectors = d.max_discard_len ? static_cast<uint32_t>(std::min<uint64_t>(d.max_discard_len >> 9, max_sectors))
                                              : max_sectors;
    c.max_discard_seg = 1;
    c.discard_sector_alignment = std::max<uint32_t>(blk, static_cast<uint32_t>(std::max(d.discard_alignment, 1))) >> 9;
  }
  if (zeroes) {
    c.max_write_zeroes_sectors = d.max_write_zeroes_len
                                     ? static_cast<uint32_t>(std::min<uint64_t>(d.max_write_zeroes_len >> 9, max_sectors))
                                     : max_sectors;
    c.max_write_zeroes_seg = 1;
    c.write_zeroes_may_unmap = d.supports_discard ? 1 : 0;
  }

  BlkLimits& l = shared_.limits;
  l.capacity = d.capacity;
  l.block_size = blk;
  l.read_only = ro;
  l.flush = f & (1ull << VIRTIO_BLK_F_FLUSH);
  l.discard = discard;
  l.write_zeroes = zeroes;
  l.max_discard_sectors = c.max_discard_sectors;
  l.max_write_zeroes_sectors = c.max_write_zeroes_sectors;
  l.discard_sector_alignment = std::max<uint32_t>(c.discard_sector_alignment, 1);
  shared_.device = &dev_;
  shared_.id = cfg_.serial;
}

Result<std::unique_ptr<VhostUserBlkExport>> VhostUserBlkExport::create(const VhostUserBlkConfig& config,
                                                                      BlockDevice& device,
                                                                      const std::vector<Reactor*>& reactors) {
  std::unique_ptr<VhostUserBlkExport> e(new VhostUserBlkExport(config, device));
  unsigned queues = config.queues ? config.queues : static_cast<unsigned>(reactors.size());
  e->build_session_config(queues);
  for (unsigned q = 0; q < queues; q++) {
    e->vring_reactor_.push_back(reactors[q % reactors.size()]);
    e->stats_.push_back(std::make_unique<StatsShard>());
    e->workers_.push_back(nullptr);
  }
  e->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!e->stop_fd_.valid()) return errno_error("eventfd");
  auto listening = listen_unix(config.socket, 1);
  if (!listening) return listening.status();
  e->listen_fd_ = std::move(*listening);
  VhostUserBlkExport* self = e.get();
  e->thread_ = std::thread([self] { self->serve(); });
  return e;
}

VhostUserBlkExport::~VhostUserBlkExport() {
  if (thread_.joinable()) {
    eventfd_write(stop_fd_.get(), 1);
    {
      // Wakes a control thread blocked in the middle of a message.
      std::lock_guard lock(conn_mutex_);
      if (conn_fd_ >= 0) ::shutdown(conn_fd_, SHUT_RDWR);
    }
    thread_.join();
  }
  // Every ring was stopped and drained with its connection; the workers
  // belong to their reactors.
  for (size_t i = 0; i < workers_.size(); i++) {
    if (workers_[i]) run_on(*vring_reactor_[i], [&] { workers_[i].reset(); });
  }
  if (listen_fd_.valid()) ::unlink(cfg_.socket.c_str());
}

void VhostUserBlkExport::serve() {
  for (;;) {
    pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) continue;
    if (p[1].revents) return;
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    {
      std::lock_guard lock(conn_mutex_);
      conn_fd_ = fd;
    }
    serve_connection(fd);
    std::lock_guard lock(conn_mutex_);
    ::close(fd);
    conn_fd_ = -1;
  }
}

void VhostUserBlkExport::serve_connection(int fd) {
  // A front-end that stalls in the middle of a message is dropped.
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  StatsShard::add(control_stats_.connections, 1);
  connected_ = true;
  spdlog::info("vhost-user-blk {}: front-end connected", cfg_.id);
  Session session(*this, scfg_);
  auto msg = std::make_unique<Message>();
  std::string why = "front-end disconnected";
  for (;;) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) continue;
    if (p[1].revents) {
      why = "export removed";
      break;
    }
    int r = vhost::recv_message(fd, *msg);
    if (r < 0) {
      if (r != -ECONNRESET) why = fmt::format("receive failed: {}", strerror(-r));
      break;
    }
    spdlog::debug("vhost-user-blk {}: {} flags=0x{:x} size={} fds={}", cfg_.id, vhost::request_name(msg->request()),
                  msg->hdr.flags, msg->hdr.size, msg->fds.size());
    Session::Outcome out = session.handle(*msg);
    msg->fds.clear();
    if (out.reply) {
      if (int s = vhost::send_message(fd, out.msg); s < 0) {
        why = fmt::format("send failed: {}", strerror(-s));
        break;
      }
    }
    if (out.disconnect) {
      why = out.why;
      spdlog::warn("vhost-user-blk {}: dropping the front-end: {}", cfg_.id, why);
      break;
    }
  }
  session.close();
  connected_ = false;
  spdlog::info("vhost-user-blk {}: front-end gone ({})", cfg_.id, why);
}

// ---- SessionHost ----

uint8_t* VhostUserBlkExport::map(int fd, uint64_t len) {
  // A mapping past the end of the file would SIGBUS the daemon on first
  // touch: refuse regions the file (memfd, hugetlbfs, shm) does not cover.
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    spdlog::warn("vhost-user-blk {}: memory fd: {}", cfg_.id, strerror(errno));
    return nullptr;
  }
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < len) {
    spdlog::warn("vhost-user-blk {}: memory region of {} bytes but its file has {}", cfg_.id, len, st.st_size);
    return nullptr;
  }
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) {
    spdlog::warn("vhost-user-blk {}: cannot map {} bytes of front-end memory: {}", cfg_.id, len, strerror(errno));
    return nullptr;
  }
  return static_cast<uint8_t*>(p);
}

void VhostUserBlkExport::unmap(uint8_t* addr, uint64_t len) { ::munmap(addr, len); }

const char* VhostUserBlkExport::start_vring(const VringStart& s) {
  Reactor& r = *vring_reactor_[s.index];
  const char* err = nullptr;
  run_on(r, [&] {
    if (!workers_[s.index]) {
      workers_[s.index] = std::make_unique<VringWorker>(r, dev_.lane(r.index()), shared_, *stats_[s.index]);
    }
    err = workers_[s.index]->start(s);
  });
  if (!err) spdlog::debug("vhost-user-blk {}: vring {} started on reactor {} (size {}, base {})", cfg_.id, s.index, r.index(),
                          s.layout.num, s.last_avail);
  return err;
}

uint16_t VhostUserBlkExport::stop_vring(unsigned index) {
  Reactor& r = *vring_reactor_[index];
  VringWorker& w = *workers_[index];
  run_on(r, [&] { w.request_stop(); });
  // Requests in flight write into front-end memory: wait for them before
  // the session may unmap it or reply with the ring's base.
  uint16_t base = 0;
  for (;;) {
    bool idle = false;
    run_on(r, [&] {
      idle = w.idle();
      base = w.last_avail();
    });
    if (idle) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  spdlog::debug("vhost-user-blk {}: vring {} stopped at {}", cfg_.id, index, base);
  return base;
}

void VhostUserBlkExport::set_call_fd(unsigned index, int fd) {
  VringWorker* w = workers_[index].get();
  if (w) run_on(*vring_reactor_[index], [&] { w->set_call_fd(fd); });
}

void VhostUserBlkExport::set_writeback(bool on) { shared_.writeback.store(on, std::memory_order_relaxed); }

StatsSnapshot VhostUserBlkExport::snapshot() const {
  StatsSnapshot s;
  s.add(control_stats_);
  for (auto& shard : stats_) s.add(*shard);
  return s;
}

std::vector<uint64_t> VhostUserBlkExport::queue_requests() const {
  std::vector<uint64_t> n;
  for (auto& shard : stats_) n.push_back(shard->requests.load(std::memory_order_relaxed));
  return n;
}

}  // namespace blkstack::vhost_blk
