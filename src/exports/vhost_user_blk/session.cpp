#include "exports/vhost_user_blk/session.hpp"

#include <linux/virtio_config.h>

#include <bit>
#include <cstddef>
#include <cstring>

#include <fmt/format.h>

namespace blkstack::vhost_blk {

using vhost::Message;
using vhost::Request;

// SET_VRING_ADDR flags bit 0 (VHOST_VRING_F_LOG): log used-ring writes.
constexpr uint32_t kVringFlagLog = 1u << 0;

Session::Session(SessionHost& host, const SessionConfig& config) : host_(host), cfg_(config) {
  vrings_.resize(cfg_.num_queues);
}

unsigned Session::running_vrings() const {
  unsigned n = 0;
  for (auto& v : vrings_) n += v.running;
  return n;
}

void Session::stop(unsigned i) {
  Vring& v = vrings_[i];
  if (!v.running) return;
  v.base = host_.stop_vring(i);
  v.running = false;
}

std::vector<unsigned> Session::stop_running() {
  std::vector<unsigned> was;
  for (unsigned i = 0; i < vrings_.size(); i++) {
    if (vrings_[i].running) {
      stop(i);
      was.push_back(i);
    }
  }
  return was;
}

const char* Session::restart(const std::vector<unsigned>& which) {
  for (unsigned i : which) {
    if (const char* e = maybe_start(i)) return e;
  }
  return nullptr;
}

const char* Session::maybe_start(unsigned i) {
  Vring& v = vrings_[i];
  if (v.running || !v.kick_set || !v.addr_set || !v.enabled || v.num == 0 || mem_.size() == 0) return nullptr;
  VringStart s;
  s.index = i;
  s.layout = v.layout;
  s.layout.num = v.num;
  s.last_avail = v.base;
  s.event_idx = acked_ & (1ull << vhost::kRingFEventIdx);
  s.indirect = acked_ & (1ull << vhost::kRingFIndirectDesc);
  s.kick_fd = v.kick.get();
  s.call_fd = v.call.get();
  s.mem = &mem_;
  if (const char* e = host_.start_vring(s)) return e;
  v.running = true;
  return nullptr;
}

const char* Session::add_region(const vhost::MemoryRegion& r, int fd) {
  // We map from offset 0 up to the region's end, as mmap offsets must be
  // page-aligned and the region's need not be.
  if (r.memory_size == 0) return "empty memory region";
  if (r.mmap_offset + r.memory_size < r.mmap_offset) return "memory region size overflows";
  uint64_t len = r.mmap_offset + r.memory_size;
  uint8_t* p = host_.map(fd, len);
  if (!p) return "cannot map a memory region";
  vhost::GuestRegion g{r.guest_phys_addr, r.memory_size, r.userspace_addr, p + r.mmap_offset};
  if (const char* e = mem_.add(g)) {
    host_.unmap(p, len);
    return e;
  }
  maps_.push_back({p, len});
  return nullptr;
}

void Session::unmap_all() {
  for (auto& m : maps_) host_.unmap(m.addr, m.len);
  maps_.clear();
  mem_.clear();
}

void Session::reset_vrings() {
  stop_running();
  for (auto& v : vrings_) v = Vring{};
}

void Session::close() {
  stop_running();
  unmap_all();
  for (auto& v : vrings_) v = Vring{};
}

Session::Outcome Session::handle(Message& m) {
  Outcome out;
  std::string bad = vhost::validate(m, false);
  if (!bad.empty()) {
    out.disconnect = true;
    out.why = "malformed message: " + bad;
    return out;
  }
  if (const char* e = apply(m, out)) {
    out.disconnect = true;
    out.why = fmt::format("{}: {}", vhost::request_name(m.request()), e);
    out.reply = false;
    return out;
  }
  // REPLY_ACK: requests without a reply of their own are acknowledged when
  // the front-end asks (0: success; failures above drop the connection).
  if (!out.reply && m.needs_reply()) {
    out.reply = true;
    out.msg = Message::reply_to(m, uint64_t{0});
  }
  return out;
}

const char* Session::apply(Message& m, Outcome& out) {
  auto reply_u64 = [&](uint64_t v) {
    out.reply = true;
    out.msg = Message::reply_to(m, v);
  };
  auto vring_index = [&](uint32_t index) -> Vring* { return index < vrings_.size() ? &vrings_[index] : nullptr; };
  // The fd a SET_VRING_KICK/CALL/ERR carries: -1 with the no-fd flag.
  auto vring_fd = [&](uint64_t v, Vring*& ring, UniqueFd& fd) -> const char* {
    ring = vring_index(static_cast<uint32_t>(v & vhost::kVringIndexMask));
    if (!ring) return "vring index out of range";
    if (v & ~(vhost::kVringIndexMask | vhost::kVringNoFd)) return "reserved bits set";
    if (v & vhost::kVringNoFd) {
      if (!m.fds.empty()) return "file descriptor sent with the no-fd flag";
      return nullptr;
    }
    if (m.fds.size() != 1) return "expected one file descriptor";
    fd = std::move(m.fds[0]);
    return nullptr;
  };

  switch (m.request()) {
    case Request::kGetFeatures:
      reply_u64(cfg_.features | vhost::kFeatureProtocolFeatures);
      return nullptr;
    case Request::kSetFeatures: {
      uint64_t f = m.u64();
      if (f & ~(cfg_.features | vhost::kFeatureProtocolFeatures)) return "features that were not offered";
      if (!(f & (1ull << VIRTIO_F_VERSION_1))) return "VIRTIO_F_VERSION_1 is required";
      acked_ = f;
      features_set_ = true;
      // Without protocol features there is no SET_VRING_ENABLE: rings are
      // enabled from the start.
      if (!(f & vhost::kFeatureProtocolFeatures)) {
        for (unsigned i = 0; i < vrings_.size(); i++) {
          vrings_[i].enabled = true;
          if (const char* e = maybe_start(i)) return e;
        }
      }
      return nullptr;
    }
    case Request::kGetProtocolFeatures:
      reply_u64(cfg_.protocol_features);
      return nullptr;
    case Request::kSetProtocolFeatures: {
      uint64_t f = m.u64();
      if (f & ~cfg_.protocol_features) return "protocol features that were not offered";
      protocol_ = f;
      return nullptr;
    }
    case Request::kSetOwner:
      return nullptr;
    case Request::kResetOwner:
    case Request::kResetDevice:
      // All device state goes; the memory table stays until replaced.
      reset_vrings();
      acked_ = 0;
      features_set_ = false;
      host_.set_writeback(true);
      return nullptr;
    case Request::kGetQueueNum:
      reply_u64(cfg_.num_queues);
      return nullptr;
    case Request::kGetMaxMemSlots:
      reply_u64(kMaxMemSlots);
      return nullptr;
    case Request::kSetMemTable: {
      auto t = m.as<vhost::MemoryTable>();
      std::vector<unsigned> was = stop_running();
      unmap_all();
      for (uint32_t i = 0; i < t.nregions; i++) {
        if (const char* e = add_region(t.regions[i], m.fds[i].get())) return e;
      }
      return restart(was);
    }
    case Request::kAddMemReg: {
      auto r = m.as<vhost::SingleMemoryRegion>();
      std::vector<unsigned> was = stop_running();
      if (const char* e = add_region(r.region, m.fds[0].get())) return e;
      return restart(was);
    }
    case Request::kRemMemReg: {
      auto r = m.as<vhost::SingleMemoryRegion>();
      size_t i = 0;
      while (i < mem_.size() && !(mem_.region(i).gpa == r.region.guest_phys_addr &&
                                  mem_.region(i).size == r.region.memory_size)) {
        i++;
      }
      if (i == mem_.size()) return "no such memory region";
      std::vector<unsigned> was = stop_running();
      mem_.remove(r.region.guest_phys_addr, r.region.memory_size);  // swaps the last into i, as below
      host_.unmap(maps_[i].addr, maps_[i].len);
      maps_[i] = maps_.back();
      maps_.pop_back();
      return restart(was);
    }
    case Request::kSetVringNum: {
      auto s = m.as<vhost::VringState>();
      Vring* v = vring_index(s.index);
      if (!v) return "vring index out of range";
      if (v->running) return "vring is running";
      if (s.num == 0 || s.num > cfg_.max_queue_size || !std::has_single_bit(s.num)) return "queue size is not a power of two up to the maximum";
      v->num = static_cast<uint16_t>(s.num);
      return nullptr;
    }
    case Request::kSetVringAddr: {
      auto a = m.as<vhost::VringAddr>();
      Vring* v = vring_index(a.index);
      if (!v) return "vring index out of range";
      vhost::RingLayout l{v->num, a.desc_user_addr, a.avail_user_addr, a.used_user_addr};
      if (v->running) {
        // Only the logging flag may change under a running ring (migration).
        if (l.desc != v->layout.desc || l.avail != v->layout.avail || l.used != v->layout.used) return "vring is running";
        return nullptr;
      }
      if (a.flags & kVringFlagLog) return "dirty logging was not offered";
      v->layout = l;
      v->addr_set = true;
      return maybe_start(a.index);
    }
    case Request::kSetVringBase: {
      auto s = m.as<vhost::VringState>();
      Vring* v = vring_index(s.index);
      if (!v) return "vring index out of range";
      if (v->running) return "vring is running";
      if (s.num > 0xffff) return "base beyond 16 bits";
      v->base = static_cast<uint16_t>(s.num);
      return nullptr;
    }
    case Request::kGetVringBase: {
      auto s = m.as<vhost::VringState>();
      Vring* v = vring_index(s.index);
      if (!v) return "vring index out of range";
      stop(s.index);
      // Stopped until the next SET_VRING_KICK, as libvhost-user does.
      v->kick.reset();
      v->call.reset();
      v->kick_set = false;
      out.reply = true;
      out.msg = Message::reply_to(m, vhost::VringState{s.index, v->base});
      return nullptr;
    }
    case Request::kSetVringKick: {
      Vring* v;
      UniqueFd fd;
      if (const char* e = vring_fd(m.u64(), v, fd)) return e;
      if (!fd.valid()) return "polling vrings (no kick fd) are not supported";
      unsigned i = static_cast<unsigned>(v - vrings_.data());
      stop(i);  // a new kick fd for a running ring: restart on it
      v->kick = std::move(fd);
      v->kick_set = true;
      if (!(acked_ & vhost::kFeatureProtocolFeatures)) v->enabled = true;
      return maybe_start(i);
    }
    case Request::kSetVringCall: {
      Vring* v;
      UniqueFd fd;
      if (const char* e = vring_fd(m.u64(), v, fd)) return e;
      unsigned i = static_cast<unsigned>(v - vrings_.data());
      if (v->running) host_.set_call_fd(i, fd.get());
      v->call = std::move(fd);  // closes the old one, no longer used
      return nullptr;
    }
    case Request::kSetVringErr: {
      Vring* v;
      UniqueFd fd;
      if (const char* e = vring_fd(m.u64(), v, fd)) return e;
      v->err = std::move(fd);  // we never report ring errors through it
      return nullptr;
    }
    case Request::kSetVringEnable: {
      auto s = m.as<vhost::VringState>();
      Vring* v = vring_index(s.index);
      if (!v) return "vring index out of range";
      if (s.num > 1) return "enable must be 0 or 1";
      v->enabled = s.num;
      if (!v->enabled) {
        stop(s.index);
        return nullptr;
      }
      return maybe_start(s.index);
    }
    case Request::kGetConfig: {
      auto c = m.as<vhost::ConfigSpace>();
      if (c.offset > vhost::kMaxConfigSize || c.size > vhost::kMaxConfigSize - c.offset) return "config range beyond 256 bytes";
      vhost::ConfigSpace r{};
      r.offset = c.offset;
      r.size = c.size;
      r.flags = c.flags;
      std::array<uint8_t, vhost::kMaxConfigSize> space{};
      std::memcpy(space.data(), &cfg_.config, sizeof(cfg_.config));
      std::memcpy(r.payload, space.data() + c.offset, c.size);
      out.reply = true;
      out.msg = Message::reply_to(m, r);
      out.msg.hdr.size = static_cast<uint32_t>(vhost::kConfigHeaderSize + c.size);
      return nullptr;
    }
    case Request::kSetConfig: {
      auto c = m.as<vhost::ConfigSpace>();
      // Only the writeback flag is writable, and only with CONFIG_WCE.
      bool ok = (cfg_.features & (1ull << VIRTIO_BLK_F_CONFIG_WCE)) && c.offset == offsetof(virtio_blk_config, wce) &&
                c.size == 1 && c.payload[0] <= 1;
      if (ok) {
        cfg_.config.wce = c.payload[0];
        host_.set_writeback(c.payload[0] == 1);
      }
      if (m.needs_reply()) reply_u64(ok ? 0 : 1);  // a refused write is not a reason to disconnect
      return nullptr;
    }
    default:
      return "unsupported request";
  }
}

}  // namespace blkstack::vhost_blk
