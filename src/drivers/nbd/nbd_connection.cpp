#include "drivers/nbd/nbd_connection.hpp"

#include <poll.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

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

Result<NbdHandle> nbd_start_connect(const std::string& uri) {
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
  // Allocation (holes that read as zeroes) for block status queries. Asked
  // for on every connection; whether the server agreed is
  // nbd_can_meta_context() once connected. A server without structured
  // replies or without the context simply does not agree.
  if (nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION) < 0) return nbd_error("nbd_add_meta_context");
  if (nbd_aio_connect_uri(h.get(), uri.c_str()) < 0) return nbd_error(fmt::format("connect to {}", uri));
  return h;
}

Result<bool> nbd_drive_connect(nbd_handle* h, const std::string& uri, int wait_ms) {
  uint64_t until = mono_ns() + static_cast<uint64_t>(std::max(wait_ms, 0)) * 1000000;
  while (nbd_aio_is_connecting(h)) {
    unsigned dir = nbd_aio_get_direction(h);
    pollfd p{nbd_aio_get_fd(h), 0, 0};
    if (p.fd < 0) break;
    if (dir & LIBNBD_AIO_DIRECTION_READ) p.events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE) p.events |= POLLOUT;
    uint64_t now = mono_ns();
    int wait = now >= until ? 0 : static_cast<int>((until - now + 999999) / 1000000);
    int r = ::poll(&p, 1, wait);
    if (r < 0 && errno != EINTR) return errno_error("poll");
    if (r == 0) return false;  // nothing yet; call again
    if (r < 0) continue;
    int rc = 0;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      rc = nbd_aio_notify_read(h);
    } else if (p.revents & POLLOUT) {
      rc = nbd_aio_notify_write(h);
    }
    if (rc < 0) return nbd_error(fmt::format("connect to {}", uri));
  }
  if (!nbd_aio_is_ready(h)) {
    const char* msg = nbd_get_error();
    return error(-ECONNREFUSED, "connect to {}: {}", uri, msg ? msg : "the handshake did not complete");
  }
  return true;
}

Result<NbdHandle> nbd_connect_within(const std::string& uri, int timeout_s) {
  auto h = nbd_start_connect(uri);
  if (!h) return h.status();
  timespec limit{timeout_s, 0};
  Deadline deadline(timeout_s > 0 ? &limit : nullptr);
  while (true) {
    int wait = deadline.never() ? 1000 : static_cast<int>(std::min<uint64_t>(to_ns(deadline.left()) / 1000000 + 1, 1000));
    auto r = nbd_drive_connect(h->get(), uri, wait);
    if (!r) return r.status();
    if (*r) return h;
    if (deadline.passed()) {
      return error(-ETIMEDOUT, "connect to {}: no answer within connect-timeout ({} s)", uri, timeout_s);
    }
  }
}

NbdNegotiated nbd_negotiated(nbd_handle* h) {
  NbdNegotiated n;
  n.size = nbd_get_size(h);
  n.read_only = nbd_is_read_only(h) == 1;
  n.can_flush = nbd_can_flush(h) == 1;
  n.can_fua = nbd_can_fua(h) == 1;
  n.can_zero = nbd_can_zero(h) == 1;
  n.can_fast_zero = nbd_can_fast_zero(h) == 1;
  n.can_trim = nbd_can_trim(h) == 1;
  n.can_multi_conn = nbd_can_multi_conn(h) == 1;
  n.base_allocation = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  n.min_block = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  n.pref_block = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  n.max_block = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  return n;
}

std::string nbd_negotiated_diff(const NbdNegotiated& was, const NbdNegotiated& now) {
  std::string out;
  auto add = [&](const char* what, auto a, auto b) {
    if (a == b) return;
    if (!out.empty()) out += ", ";
    out += fmt::format("{} {} -> {}", what, a, b);
  };
  add("size", was.size, now.size);
  add("read-only", was.read_only, now.read_only);
  add("flush", was.can_flush, now.can_flush);
  add("fua", was.can_fua, now.can_fua);
  add("write-zeroes", was.can_zero, now.can_zero);
  add("fast-zero", was.can_fast_zero, now.can_fast_zero);
  add("trim", was.can_trim, now.can_trim);
  add("multi-conn", was.can_multi_conn, now.can_multi_conn);
  add("base:allocation", was.base_allocation, now.base_allocation);
  add("minimum block size", was.min_block, now.min_block);
  add("preferred block size", was.pref_block, now.pref_block);
  add("maximum block size", was.max_block, now.max_block);
  return out;
}

NbdLink::NbdLink(NbdHandle h, std::shared_ptr<const NbdReconnectParams> params)
    : params_(std::move(params)), cur_(h.get()) {
  handles_.push_back(std::move(h));
}

void NbdLink::schedule_retry(uint64_t now) {
  constexpr uint64_t kFirst = 100'000'000, kMost = 2'000'000'000;
  backoff_ns_ = backoff_ns_ == 0 ? kFirst : std::min(backoff_ns_ * 2, kMost);
  next_attempt_ns_ = now + backoff_ns_;
}

NbdLink::State NbdLink::poke(int wait_ms) {
  State s = state();
  if (s == State::kFailed) return s;
  if (s == State::kUp && alive()) return s;
  std::unique_lock lock(mu_, std::try_to_lock);
  if (!lock) return state() == State::kUp && alive() ? State::kUp : state() == State::kFailed ? State::kFailed : State::kDown;
  uint64_t now = mono_ns();
  s = state();
  if (s == State::kFailed) return s;
  if (s == State::kUp) {
    if (alive()) return s;
    // Found dead: the first attempt at once, then with a growing back-off.
    state_.store(State::kDown, std::memory_order_release);
    next_attempt_ns_ = now;
    backoff_ns_ = 0;
  }
  if (!connecting_) {
    if (now < next_attempt_ns_) return State::kDown;
    auto h = nbd_start_connect(params_->uri);
    if (!h) {
      schedule_retry(now);
      return State::kDown;
    }
    connecting_ = std::move(h.value());
    int t = params_->connect_timeout_s > 0 ? params_->connect_timeout_s : 30;
    attempt_deadline_ns_ = now + static_cast<uint64_t>(t) * 1'000'000'000;
  }
  auto r = nbd_drive_connect(connecting_.get(), params_->uri, wait_ms);
  if (r && !*r) {
    if (mono_ns() < attempt_deadline_ns_) return State::kDown;
    r = error(-ETIMEDOUT, "no answer within connect-timeout");
  }
  if (!r) {
    connecting_.reset();
    schedule_retry(mono_ns());
    return State::kDown;
  }
  NbdNegotiated now_n = nbd_negotiated(connecting_.get());
  std::string diff = nbd_negotiated_diff(params_->expected, now_n);
  if (!diff.empty()) {
    failure_ = fmt::format("nbd: reconnected to {}, but the export is not the one connected to ({}); the device "
                           "stays failed",
                           params_->uri, diff);
    connecting_.reset();
    state_.store(State::kFailed, std::memory_order_release);
    return State::kFailed;
  }
  handles_.push_back(std::move(connecting_));
  // Cleared before the new handle is seen: its own death cannot be missed.
  suspect_.store(false, std::memory_order_relaxed);
  cur_.store(handles_.back().get(), std::memory_order_release);
  gen_.fetch_add(1, std::memory_order_acq_rel);
  backoff_ns_ = 0;
  state_.store(State::kUp, std::memory_order_release);
  return State::kUp;
}

namespace {

struct SyncStatus {
  AllocationExtent* out;
  uint64_t offset;
  bool done = false;
  int err = 0;
};

int sync_status_extent(void* user_data, const char* metacontext, uint64_t offset, uint32_t* entries,
                       size_t nr_entries, int* /*error*/) {
  auto* s = static_cast<SyncStatus*>(user_data);
  nbd_extent_to_allocation(metacontext, s->offset, offset, entries, nr_entries, *s->out);
  return 0;
}

int sync_status_done(void* user_data, int* error) {
  auto* s = static_cast<SyncStatus*>(user_data);
  s->done = true;
  s->err = *error;
  return 1;
}

}  // namespace

void nbd_extent_to_allocation(const char* metacontext, uint64_t asked, uint64_t offset, const uint32_t* entries,
                              size_t nr_entries, AllocationExtent& out) {
  // Only the first extent of base:allocation at the offset asked is ours
  // (REQ_ONE: servers send one; a second would be for later bytes). A hole
  // is what reads as zeroes: NBD_STATE_ZERO. NBD_STATE_HOLE alone
  // (unallocated, contents unspecified) is data to us.
  if (std::strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return;
  if (offset != asked || nr_entries < 2 || out.len != 0) return;
  out.len = entries[0];
  out.hole = (entries[1] & LIBNBD_STATE_ZERO) != 0;
}

Status nbd_block_status_within(nbd_handle* h, uint64_t offset, uint64_t len, int timeout_s, AllocationExtent& out) {
  out = AllocationExtent{0, false};
  SyncStatus s{&out, offset};
  nbd_extent_callback ext{.callback = &sync_status_extent, .user_data = &s, .free = nullptr};
  nbd_completion_callback done{.callback = &sync_status_done, .user_data = &s, .free = nullptr};
  if (nbd_aio_block_status(h, len, offset, ext, done, LIBNBD_CMD_FLAG_REQ_ONE) < 0) {
    return nbd_error("block status");
  }
  timespec limit{timeout_s, 0};
  Deadline deadline(timeout_s > 0 ? &limit : nullptr);
  while (!s.done) {
    if (nbd_handle_gone(h)) return error(-ENOTCONN, "block status: the connection is gone");
    if (deadline.passed()) return error(-ETIMEDOUT, "block status: no answer within {} s", timeout_s);
    unsigned dir = nbd_aio_get_direction(h);
    pollfd p{nbd_aio_get_fd(h), 0, 0};
    // As on the data path: libnbd is told of a read only when the socket
    // is readable (docs/nbd-driver.md).
    p.events = POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE) p.events |= POLLOUT;
    int wait = deadline.never() ? -1 : static_cast<int>(std::min<uint64_t>(to_ns(deadline.left()) / 1000000 + 1, 1000));
    int r = ::poll(&p, 1, wait);
    if (r < 0 && errno != EINTR) return errno_error("poll");
    if (r <= 0) continue;
    int rc = 0;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      rc = nbd_aio_notify_read(h);
    } else if (p.revents & POLLOUT) {
      rc = nbd_aio_notify_write(h);
    }
    if (rc < 0 && !s.done) return nbd_error("block status");
  }
  if (s.err) return error(-s.err, "block status: {}", strerror(s.err));
  return {};
}

}  // namespace blkstack
