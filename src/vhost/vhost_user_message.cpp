#include "vhost/vhost_user_message.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>

#include <fmt/format.h>

namespace blkstack::vhost {

const char* request_name(Request r) {
  switch (r) {
    case Request::kNone: return "NONE";
    case Request::kGetFeatures: return "GET_FEATURES";
    case Request::kSetFeatures: return "SET_FEATURES";
    case Request::kSetOwner: return "SET_OWNER";
    case Request::kResetOwner: return "RESET_OWNER";
    case Request::kSetMemTable: return "SET_MEM_TABLE";
    case Request::kSetLogBase: return "SET_LOG_BASE";
    case Request::kSetLogFd: return "SET_LOG_FD";
    case Request::kSetVringNum: return "SET_VRING_NUM";
    case Request::kSetVringAddr: return "SET_VRING_ADDR";
    case Request::kSetVringBase: return "SET_VRING_BASE";
    case Request::kGetVringBase: return "GET_VRING_BASE";
    case Request::kSetVringKick: return "SET_VRING_KICK";
    case Request::kSetVringCall: return "SET_VRING_CALL";
    case Request::kSetVringErr: return "SET_VRING_ERR";
    case Request::kGetProtocolFeatures: return "GET_PROTOCOL_FEATURES";
    case Request::kSetProtocolFeatures: return "SET_PROTOCOL_FEATURES";
    case Request::kGetQueueNum: return "GET_QUEUE_NUM";
    case Request::kSetVringEnable: return "SET_VRING_ENABLE";
    case Request::kSendRarp: return "SEND_RARP";
    case Request::kNetSetMtu: return "NET_SET_MTU";
    case Request::kSetBackendReqFd: return "SET_BACKEND_REQ_FD";
    case Request::kIotlbMsg: return "IOTLB_MSG";
    case Request::kSetVringEndian: return "SET_VRING_ENDIAN";
    case Request::kGetConfig: return "GET_CONFIG";
    case Request::kSetConfig: return "SET_CONFIG";
    case Request::kCreateCryptoSession: return "CREATE_CRYPTO_SESSION";
    case Request::kCloseCryptoSession: return "CLOSE_CRYPTO_SESSION";
    case Request::kPostcopyAdvise: return "POSTCOPY_ADVISE";
    case Request::kPostcopyListen: return "POSTCOPY_LISTEN";
    case Request::kPostcopyEnd: return "POSTCOPY_END";
    case Request::kGetInflightFd: return "GET_INFLIGHT_FD";
    case Request::kSetInflightFd: return "SET_INFLIGHT_FD";
    case Request::kGpuSetSocket: return "GPU_SET_SOCKET";
    case Request::kResetDevice: return "RESET_DEVICE";
    case Request::kVringKick: return "VRING_KICK";
    case Request::kGetMaxMemSlots: return "GET_MAX_MEM_SLOTS";
    case Request::kAddMemReg: return "ADD_MEM_REG";
    case Request::kRemMemReg: return "REM_MEM_REG";
    case Request::kSetStatus: return "SET_STATUS";
    case Request::kGetStatus: return "GET_STATUS";
  }
  return "UNKNOWN";
}

Message Message::make(Request r, uint32_t flags) {
  Message m;
  m.hdr.request = static_cast<uint32_t>(r);
  m.hdr.flags = flags ? flags : kVersion;
  m.hdr.size = 0;
  return m;
}

namespace {

// Payload size rules: exact sizes, or a minimum for variable-size bodies.
struct SizeRule {
  size_t min;
  size_t max;
};

SizeRule request_size(Request r, size_t fds) {
  switch (r) {
    case Request::kGetFeatures:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kGetMaxMemSlots:
    case Request::kSetOwner:
    case Request::kResetOwner:
    case Request::kResetDevice:
    case Request::kGetStatus:
      // No body, though some front-ends send a zero u64 along.
      return {0, sizeof(uint64_t)};
    case Request::kSetFeatures:
    case Request::kSetProtocolFeatures:
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
    case Request::kSetLogBase:
    case Request::kSetStatus:
      return {sizeof(uint64_t), sizeof(uint64_t)};
    case Request::kSetVringNum:
    case Request::kSetVringBase:
    case Request::kGetVringBase:
    case Request::kSetVringEnable:
    case Request::kSetVringEndian:
    case Request::kVringKick:
      return {sizeof(VringState), sizeof(VringState)};
    case Request::kSetVringAddr:
      return {sizeof(VringAddr), sizeof(VringAddr)};
    case Request::kSetMemTable:
      return {memory_table_size(static_cast<uint32_t>(fds)), sizeof(MemoryTable)};
    case Request::kAddMemReg:
    case Request::kRemMemReg:
      return {sizeof(SingleMemoryRegion), sizeof(SingleMemoryRegion)};
    case Request::kGetConfig:
    case Request::kSetConfig:
      return {kConfigHeaderSize, sizeof(ConfigSpace)};
    case Request::kGetInflightFd:
    case Request::kSetInflightFd:
      return {sizeof(InflightDesc), sizeof(InflightDesc)};
    default:
      return {0, kMaxPayload};
  }
}

}  // namespace

std::string validate(const Message& m, bool is_reply) {
  const Header& hdr = m.hdr;
  size_t fds = m.fds.size();
  if ((hdr.flags & kVersionMask) != kVersion) return fmt::format("unsupported version {}", hdr.flags & kVersionMask);
  if (bool(hdr.flags & kFlagReply) != is_reply)
    return is_reply ? "expected a reply, got a request" : "got a reply where a request was expected";
  if (hdr.size > kMaxPayload) return fmt::format("payload of {} bytes exceeds {}", hdr.size, kMaxPayload);
  if (fds > kMaxFds) return fmt::format("{} file descriptors attached", fds);
  auto r = static_cast<Request>(hdr.request);
  if (is_reply) return {};  // the front-end checks reply bodies where it reads them
  SizeRule rule = request_size(r, fds);
  if (hdr.size < rule.min || hdr.size > rule.max)
    return fmt::format("{}: payload of {} bytes (expected {}..{})", request_name(r), hdr.size, rule.min, rule.max);
  if (r == Request::kSetMemTable) {
    uint32_t n = m.as<uint32_t>();
    if (n == 0 || n > kMaxMemTableRegions || n != fds)
      return fmt::format("SET_MEM_TABLE: {} regions with {} file descriptors", n, fds);
  }
  if (r == Request::kAddMemReg && fds != 1) return fmt::format("ADD_MEM_REG: {} file descriptors", fds);
  if (r == Request::kGetConfig || r == Request::kSetConfig) {
    auto c = m.as<ConfigSpace>();
    if (c.size > kMaxConfigSize || hdr.size < kConfigHeaderSize + c.size)
      return fmt::format("{}: {} config bytes in a {}-byte payload", request_name(r), c.size, hdr.size);
  }
  return {};
}

namespace {

int send_all(int sock, const void* data, size_t len, std::span<const int> fds) {
  const char* p = static_cast<const char*>(data);
  bool fds_sent = fds.empty();
  while (len > 0) {
    iovec iov{const_cast<char*>(p), len};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    if (!fds_sent) {
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    fds_sent = true;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return 0;
}

// Reads exactly len bytes, collecting descriptors from control messages.
int recv_all(int sock, void* data, size_t len, std::vector<UniqueFd>* fds, bool at_start) {
  char* p = static_cast<char*>(data);
  size_t got = 0;
  while (got < len) {
    iovec iov{p + got, len - got};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    if (fds) {
      mh.msg_control = control;
      mh.msg_controllen = sizeof(control);
    }
    ssize_t n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    bool truncated = mh.msg_flags & MSG_CTRUNC;
    if (fds) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds->emplace_back(fd);  // owned, so closed even when rejected
        }
      }
    }
    if (truncated) return -EPROTO;
    if (n == 0) return (got == 0 && at_start) ? -ECONNRESET : -EPROTO;
    got += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

int send_message(int sock, const Message& m, std::span<const int> fds) {
  if (fds.size() > kMaxFds || m.hdr.size > kMaxPayload) return -EINVAL;
  // Header and payload in one buffer: one sendmsg in the common case.
  alignas(8) uint8_t buf[sizeof(Header) + kMaxPayload];
  std::memcpy(buf, &m.hdr, sizeof(Header));
  std::memcpy(buf + sizeof(Header), m.payload.data(), m.hdr.size);
  return send_all(sock, buf, sizeof(Header) + m.hdr.size, fds);
}

int recv_message(int sock, Message& m) {
  m.fds.clear();
  int r = recv_all(sock, &m.hdr, sizeof(Header), &m.fds, true);
  if (r < 0) return r;
  if (m.hdr.size > kMaxPayload) return -EPROTO;
  if (m.hdr.size > 0) {
    r = recv_all(sock, m.payload.data(), m.hdr.size, &m.fds, false);
    if (r < 0) return r == -ECONNRESET ? -EPROTO : r;
  }
  if (m.fds.size() > kMaxFds) return -EPROTO;
  return 0;
}

}  // namespace blkstack::vhost
