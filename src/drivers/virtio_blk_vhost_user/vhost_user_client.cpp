#include "drivers/virtio_blk_vhost_user/vhost_user_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <cstring>

namespace blkstack {

using vhost::Message;

namespace {

uint64_t now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1000 + static_cast<uint64_t>(t.tv_nsec) / 1000000;
}

}  // namespace

Result<VhostUserClient> VhostUserClient::connect(const std::string& path, int timeout_s) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) return error(-EINVAL, "path must be set (the vhost-user socket to connect to)");
  if (path.size() >= sizeof(addr.sun_path)) {
    return error(-ENAMETOOLONG, "path {}: longer than a Unix socket address allows ({} bytes)", path,
                 sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  // Non-blocking, so a back-end whose listen backlog is full cannot hold us
  // past the timeout.
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock.valid()) return errno_error("socket");
  const uint64_t deadline = timeout_s > 0 ? now_ms() + static_cast<uint64_t>(timeout_s) * 1000 : UINT64_MAX;
  for (;;) {
    if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) break;
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EINPROGRESS) {
      // Unix sockets say EAGAIN while the backlog is full: try again soon.
      if (now_ms() >= deadline) {
        return error(-ETIMEDOUT, "connect to {}: no answer within connect-timeout ({} s)", path, timeout_s);
      }
      pollfd p{sock.get(), POLLOUT, 0};
      ::poll(&p, 1, 10);
      continue;
    }
    if (e == EISCONN) break;
    return error(-e, "connect to vhost-user socket {}: {}", path, std::strerror(e));
  }
  int fl = ::fcntl(sock.get(), F_GETFL);
  if (fl < 0 || ::fcntl(sock.get(), F_SETFL, fl & ~O_NONBLOCK) < 0) return errno_error("fcntl");
  if (timeout_s > 0) {
    // Every reply the control path waits for is bounded by the same timeout:
    // a back-end that accepted but never answers (or serves another client)
    // gives a clear error, not a hang.
    timeval tv{timeout_s, 0};
    ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  return VhostUserClient(std::move(sock), path);
}

Status VhostUserClient::io_error(const char* what, vhost::Request req, int err) const {
  if (err == -EAGAIN || err == -EWOULDBLOCK) err = -ETIMEDOUT;
  const char* why = err == -ETIMEDOUT    ? "no reply within connect-timeout"
                    : err == -ECONNRESET ? "the back-end closed the connection"
                                         : std::strerror(-err);
  return error(err == -ECONNRESET || err == -EPIPE ? -ENOTCONN : err, "vhost-user {} {} on {}: {}", what,
               vhost::request_name(req), path_, why);
}

Status VhostUserClient::send(const Message& m, std::span<const int> fds) {
  int r = vhost::send_message(sock_.get(), m, fds);
  if (r < 0) return io_error("sending", m.request(), r);
  return {};
}

Status VhostUserClient::recv_reply(vhost::Request req, Message& out) {
  int r = vhost::recv_message(sock_.get(), out);
  if (r < 0) return io_error("waiting for the reply to", req, r);
  if (std::string why = vhost::validate(out, true); !why.empty()) {
    return error(-EPROTO, "vhost-user reply to {} from {}: {}", vhost::request_name(req), path_, why);
  }
  if (out.request() != req) {
    return error(-EPROTO, "vhost-user: {} answered {} with {}", path_, vhost::request_name(req),
                 vhost::request_name(out.request()));
  }
  return {};
}

Status VhostUserClient::send_acked(Message& m, std::span<const int> fds) {
  if (reply_ack_) m.hdr.flags |= vhost::kFlagNeedReply;
  if (Status s = send(m, fds); !s) return s;
  if (!reply_ack_) return {};
  Message reply;
  if (Status s = recv_reply(m.request(), reply); !s) return s;
  if (reply.hdr.size < sizeof(uint64_t)) {
    return error(-EPROTO, "vhost-user: {} acknowledged {} without a status", path_, vhost::request_name(m.request()));
  }
  if (reply.u64() != 0) {
    return error(-EIO, "vhost-user back-end {} refused {} (status {})", path_, vhost::request_name(m.request()),
                 reply.u64());
  }
  return {};
}

Result<uint64_t> VhostUserClient::get_u64(vhost::Request r) {
  if (Status s = send(Message::make(r)); !s) return s;
  Message reply;
  if (Status s = recv_reply(r, reply); !s) return s;
  if (reply.hdr.size != sizeof(uint64_t)) {
    return error(-EPROTO, "vhost-user: {} answered {} with {} bytes", path_, vhost::request_name(r), reply.hdr.size);
  }
  return reply.u64();
}

Result<uint64_t> VhostUserClient::get_features() { return get_u64(vhost::Request::kGetFeatures); }
Result<uint64_t> VhostUserClient::get_protocol_features() { return get_u64(vhost::Request::kGetProtocolFeatures); }

Status VhostUserClient::set_features(uint64_t features) {
  Message m = Message::make(vhost::Request::kSetFeatures, features);
  return send_acked(m);
}

Status VhostUserClient::set_protocol_features(uint64_t features) {
  // Not acknowledged: REPLY_ACK only exists once this message is handled.
  if (Status s = send(Message::make(vhost::Request::kSetProtocolFeatures, features)); !s) return s;
  reply_ack_ = features & vhost::kProtoReplyAck;
  return {};
}

Status VhostUserClient::set_owner() {
  Message m = Message::make(vhost::Request::kSetOwner);
  return send_acked(m);
}

Status VhostUserClient::get_config(void* out, uint32_t len) {
  if (len > vhost::kMaxConfigSize) return error(-EINVAL, "config space read of {} bytes", len);
  vhost::ConfigSpace c{};
  c.offset = 0;
  c.size = len;
  c.flags = 0;
  Message m = Message::make(vhost::Request::kGetConfig);
  std::memcpy(m.payload.data(), &c, vhost::kConfigHeaderSize + len);
  m.hdr.size = static_cast<uint32_t>(vhost::kConfigHeaderSize + len);
  if (Status s = send(m); !s) return s;
  Message reply;
  if (Status s = recv_reply(vhost::Request::kGetConfig, reply); !s) return s;
  // A back-end that cannot answer replies with an empty payload.
  auto got = reply.as<vhost::ConfigSpace>();
  if (reply.hdr.size < vhost::kConfigHeaderSize + len || got.size < len) {
    return error(-EIO, "vhost-user back-end {} did not return its config space ({} bytes asked, {} received)", path_,
                 len, reply.hdr.size > vhost::kConfigHeaderSize ? reply.hdr.size - vhost::kConfigHeaderSize : 0);
  }
  std::memcpy(out, reply.payload.data() + vhost::kConfigHeaderSize, len);
  return {};
}

Status VhostUserClient::add_mem_reg(const vhost::MemoryRegion& r, int fd) {
  vhost::SingleMemoryRegion body{};
  body.region = r;
  Message m = Message::make(vhost::Request::kAddMemReg, body);
  const int fds[] = {fd};
  return send_acked(m, fds);
}

Status VhostUserClient::rem_mem_reg(const vhost::MemoryRegion& r, int fd) {
  vhost::SingleMemoryRegion body{};
  body.region = r;
  Message m = Message::make(vhost::Request::kRemMemReg, body);
  // The spec leaves the descriptor optional; back-ends built on QEMU's
  // libvhost-user insist on exactly one.
  const int fds[] = {fd};
  return send_acked(m, fds);
}

Status VhostUserClient::set_mem_table(std::span<const vhost::MemoryRegion> regions, std::span<const int> fds) {
  if (regions.empty() || regions.size() > vhost::kMaxMemTableRegions || regions.size() != fds.size()) {
    return error(-EINVAL, "memory table of {} regions", regions.size());
  }
  vhost::MemoryTable t{};
  t.nregions = static_cast<uint32_t>(regions.size());
  for (size_t i = 0; i < regions.size(); i++) t.regions[i] = regions[i];
  Message m = Message::make(vhost::Request::kSetMemTable, t);
  m.hdr.size = static_cast<uint32_t>(vhost::memory_table_size(t.nregions));
  return send_acked(m, fds);
}

Status VhostUserClient::set_vring_num(uint32_t index, uint32_t num) {
  Message m = Message::make(vhost::Request::kSetVringNum, vhost::VringState{index, num});
  return send_acked(m);
}

Status VhostUserClient::set_vring_base(uint32_t index, uint32_t base) {
  Message m = Message::make(vhost::Request::kSetVringBase, vhost::VringState{index, base});
  return send_acked(m);
}

Status VhostUserClient::set_vring_addr(const vhost::VringAddr& a) {
  Message m = Message::make(vhost::Request::kSetVringAddr, a);
  return send_acked(m);
}

Status VhostUserClient::set_vring_kick(uint32_t index, int fd) {
  Message m = Message::make(vhost::Request::kSetVringKick, uint64_t{index});
  const int fds[] = {fd};
  return send_acked(m, fds);
}

Status VhostUserClient::set_vring_call(uint32_t index, int fd) {
  Message m = Message::make(vhost::Request::kSetVringCall, uint64_t{index});
  const int fds[] = {fd};
  return send_acked(m, fds);
}

Status VhostUserClient::set_vring_enable(uint32_t index, bool enable) {
  Message m = Message::make(vhost::Request::kSetVringEnable, vhost::VringState{index, enable ? 1u : 0u});
  return send_acked(m);
}

Status VhostUserClient::sync() {
  if (reply_ack_) return {};  // every change was acknowledged already
  auto f = get_features();
  return f ? Status{} : f.status();
}

}  // namespace blkstack
