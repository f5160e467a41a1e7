#include "drivers/nbd/nbd_connection.hpp"

#include <poll.h>
#include <time.h>

#include <algorithm>
#include <cerrno>

#include "core/clock.hpp"

namespace blkstack {

Status nbd_error(std::string_view what) {
  int e = nbd_get_errno();
  const char* msg = nbd_get_error();
  return error(-(e > 0 ? e : EIO), "{}: {}", what, msg ? msg : "unknown libnbd error");
}

namespace {

bool unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

}  // namespace

Result<std::string> uri_with_export(const std::string& uri, const std::string& export_name) {
  if (export_name.empty()) return uri;
  // nbd[s][+unix|+vsock]://authority/export?query#fragment
  size_t scheme_end = uri.find("://");
  if (scheme_end == std::string::npos) return error(-EINVAL, "uri {}: not an NBD URI (nbd://...)", uri);
  size_t path = uri.find_first_of("/?#", scheme_end + 3);
  size_t rest = path == std::string::npos ? uri.size() : uri.find_first_of("?#", path);
  if (rest == std::string::npos) rest = uri.size();
  std::string existing = path == std::string::npos ? "" : uri.substr(path, rest - path);
  if (existing.size() > 1) return error(-EINVAL, "uri {} already names an export; do not also set export", uri);
  std::string encoded = "/";
  for (unsigned char c : export_name) {
    if (unreserved(c)) {
      encoded += static_cast<char>(c);
    } else {
      encoded += fmt::format("%{:02X}", c);
    }
  }
  size_t cut = path == std::string::npos ? uri.size() : path;
  return uri.substr(0, cut) + encoded + uri.substr(rest);
}

Result<NbdHandle> nbd_connect_within(const std::string& uri, int timeout_s) {
  NbdHandle h(nbd_create());
  if (!h) return nbd_error("nbd_create");
  // nbds+unix URIs name their PSK/certificate files in the query string.
  if (nbd_set_uri_allow_local_file(h.get(), true) < 0) return nbd_error("nbd_set_uri_allow_local_file");
  // libnbd zeroes every read buffer before the read by default, so that an
  // application that ignores a failed read does not see old heap contents: a
  // memset of the whole request, over half of all user-space instructions at
  // 4 KiB. As with every driver, a failed read's buffer is undefined
  // (blkio(3)); a read that succeeds has been written by the reply.
  if (nbd_set_pread_initialize(h.get(), false) < 0) return nbd_error("nbd_set_pread_initialize");
  if (nbd_aio_connect_uri(h.get(), uri.c_str()) < 0) return nbd_error(fmt::format("connect to {}", uri));
  timespec limit{timeout_s, 0};
  Deadline deadline(timeout_s > 0 ? &limit : nullptr);
  while (nbd_aio_is_connecting(h.get())) {
    unsigned dir = nbd_aio_get_direction(h.get());
    pollfd p{nbd_aio_get_fd(h.get()), 0, 0};
    if (dir & LIBNBD_AIO_DIRECTION_READ) p.events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE) p.events |= POLLOUT;
    if (deadline.passed()) {
      return error(-ETIMEDOUT, "connect to {}: no answer within connect-timeout ({} s)", uri, timeout_s);
    }
    int wait = deadline.never() ? -1 : static_cast<int>(std::min<uint64_t>(to_ns(deadline.left()) / 1000000 + 1, 1000));
    if (p.fd < 0) break;
    int r = ::poll(&p, 1, wait);
    if (r < 0 && errno != EINTR) return errno_error("poll");
    if (r <= 0) continue;
    int rc = 0;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      rc = nbd_aio_notify_read(h.get());
    } else if (p.revents & POLLOUT) {
      rc = nbd_aio_notify_write(h.get());
    }
    if (rc < 0) return nbd_error(fmt::format("connect to {}", uri));
  }
  if (!nbd_aio_is_ready(h.get())) {
    const char* msg = nbd_get_error();
    return error(-ECONNREFUSED, "connect to {}: {}", uri, msg ? msg : "the handshake did not complete");
  }
  return h;
}

}  // namespace blkstack
