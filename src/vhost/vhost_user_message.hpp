// One vhost-user message: header, payload and attached file descriptors, with
// a pure validity check (fuzzable without sockets) and the socket I/O that
// both the front-end (driver) and the back-end (export) use.
#pragma once

#include <array>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "core/fd.hpp"
#include "vhost/vhost_user_protocol.hpp"

namespace blkstack::vhost {

struct Message {
  Header hdr{};
  std::array<uint8_t, kMaxPayload> payload{};
  std::vector<UniqueFd> fds;

  Request request() const { return static_cast<Request>(hdr.request); }
  bool needs_reply() const { return hdr.flags & kFlagNeedReply; }

  // The payload as T; only valid after validate() accepted the message (which
  // guarantees hdr.size covers T) or for messages built locally.
  template <typename T>
  T as() const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    std::memcpy(&v, payload.data(), std::min<size_t>(sizeof(T), hdr.size));
    return v;
  }
  uint64_t u64() const { return as<uint64_t>(); }

  // Builders for requests and replies.
  static Message make(Request r, uint32_t flags = 0);
  template <typename T>
  static Message make(Request r, const T& body, uint32_t flags = 0) {
    static_assert(std::is_trivially_copyable_v<T>);
    static_assert(sizeof(T) <= kMaxPayload);
    Message m = make(r, flags);
    std::memcpy(m.payload.data(), &body, sizeof(T));
    m.hdr.size = sizeof(T);
    return m;
  }
  // A reply to `req` carrying `body`.
  template <typename T>
  static Message reply_to(const Message& req, const T& body) {
    return make(req.request(), body, kVersion | kFlagReply);
  }
};

// Why a message is malformed, or empty when it is acceptable: version bits,
// the reply flag, payload size against what the request carries, descriptor
// counts (SET_MEM_TABLE: one per region). Used by the back-end on requests
// and by the front-end on replies (`is_reply`, which checks only the header:
// the front-end checks reply bodies where it reads them).
std::string validate(const Message& m, bool is_reply);

// Sends `m` with `fds` attached. Returns 0 or a negative errno (-EPIPE when
// the peer is gone). Retries short writes and EINTR; blocking socket.
int send_message(int sock, const Message& m, std::span<const int> fds = {});

// Receives one whole message. Returns 0, -ECONNRESET when the peer closed
// the socket cleanly before a header, -EPROTO on a truncated or oversized
// message, or another negative errno. Descriptors beyond kMaxFds, or that
// arrive with a truncated control message, make it fail with -EPROTO.
int recv_message(int sock, Message& m);

}  // namespace blkstack::vhost
