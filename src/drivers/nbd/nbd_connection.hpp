// One NBD connection made with libnbd: the handle, and connecting to a URI
// within a deadline. libnbd's own nbd_connect_uri() blocks without a bound,
// so a server that accepts and then says nothing would hang blkio_connect();
// we drive the asynchronous connect ourselves and give up when time is up.
#pragma once

#include <libnbd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "blkstack/request.hpp"
#include "blkstack/status.hpp"

namespace blkstack {

// A handle whose connection is over: dead (a failure) or closed (the
// server hung up with nothing in flight). It takes no more commands.
inline bool nbd_handle_gone(nbd_handle* h) { return nbd_aio_is_dead(h) || nbd_aio_is_closed(h); }

struct NbdHandleCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using NbdHandle = std::unique_ptr<nbd_handle, NbdHandleCloser>;

// What a connection negotiated, as far as the device's properties depend on
// it: a reconnection must find the same, or the device would silently serve
// a different export.
struct NbdNegotiated {
  int64_t size = 0;
  bool read_only = false;
  bool can_flush = false;
  bool can_fua = false;
  bool can_zero = false;
  bool can_fast_zero = false;
  bool can_trim = false;
  bool can_multi_conn = false;
  bool base_allocation = false;
  int64_t min_block = 0, pref_block = 0, max_block = 0;
};
NbdNegotiated nbd_negotiated(nbd_handle* h);
// "" when equal, else what changed ("size 16777216 -> 8388608, ...").
std::string nbd_negotiated_diff(const NbdNegotiated& was, const NbdNegotiated& now);

// How a device's connections are made again: the same URI (TLS and export
// included), bounded like the first, and checked against what was
// negotiated at blkio_connect().
struct NbdReconnectParams {
  std::string uri;
  int connect_timeout_s = 30;  // 0: none (a reconnection then gives up after 30 s and tries again)
  NbdNegotiated expected;
};

// A connection as the queues share it. When the server goes away the handle
// dies (libnbd fails every command in flight); poke() then makes the
// connection again, once, under the link's lock, with libnbd's asynchronous
// connect driven a little at a time, never blocking longer than it is told.
// Old handles are kept (dead, their sockets closed) until the link goes:
// another queue may still hold a pointer to one.
class NbdLink {
 public:
  enum class State { kUp, kDown, kFailed };

  NbdLink(NbdHandle h, std::shared_ptr<const NbdReconnectParams> params);
  // The current handle (possibly dead). Never dangles while the link lives.
  nbd_handle* get() const { return cur_.load(std::memory_order_acquire); }
  // Bumped each time a new handle replaces the old one.
  uint64_t generation() const { return gen_.load(std::memory_order_acquire); }
  bool alive() const { return !nbd_handle_gone(get()); }
  State state() const { return state_.load(std::memory_order_acquire); }
  // A hint that the handle may have died, so that the request path need
  // not ask libnbd on every request: set by whoever sees a sign of it (a
  // command failed with ENOTCONN, an nbd_aio_* call or a notification
  // refused, the handle found dead), cleared when a new handle goes in.
  void suspect() { suspect_.store(true); }
  bool suspected() const { return suspect_.load(std::memory_order_relaxed); }
  // Clears the hint of a handle found alive (and sets it again should it
  // have died meanwhile).
  void unsuspect() {
    suspect_.store(false);
    if (!alive()) suspect_.store(true);
  }
  // Why the device stays failed (kFailed only; stable once set).
  const char* failure() const { return failure_.c_str(); }

  // Looks at the connection; when it is gone, starts or continues making it
  // again (an attempt at most every 100 ms, growing to 2 s while the server
  // stays away), waiting up to wait_ms for the server's answers. Returns
  // kUp only when the current handle is alive. Never waits for another
  // thread that is already reconnecting.
  State poke(int wait_ms);

  // libnbd may be told of a read only when the socket is readable; told
  // otherwise it stops sending until a reply comes, which may never come.
  // Queues that share the connection hold this from the readiness check to
  // the end of the read, so no other one empties the socket in between.
  std::mutex reading;
  std::atomic<int> queues{0};  // queues using it: > 1 means shared

 private:
  void schedule_retry(uint64_t now);

  std::shared_ptr<const NbdReconnectParams> params_;
  std::atomic<nbd_handle*> cur_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<State> state_{State::kUp};
  std::atomic<bool> suspect_{false};
  std::mutex mu_;  // everything below
  std::vector<NbdHandle> handles_;  // every handle made; the last one is cur_
  NbdHandle connecting_;            // an attempt under way
  uint64_t attempt_deadline_ns_ = 0;
  uint64_t next_attempt_ns_ = 0;
  uint64_t backoff_ns_ = 0;
  std::string failure_;
};

// The last libnbd error as a Status (libnbd keeps it per thread).
Status nbd_error(std::string_view what);

// The errno for an nbd_aio_* call on `h` that just refused a command.
// libnbd refuses commands on a handle that died with EINVAL ("invalid
// state"), which would read as a bad request: that is ENOTCONN here, so the
// caller treats it as the lost connection it is.
// (Inline: the driver is a module, and the tests check this against libnbd.)
inline int nbd_refusal_errno(nbd_handle* h) {
  if (nbd_handle_gone(h)) return ENOTCONN;
  int e = nbd_get_errno();
  return e > 0 ? e : EIO;
}

// The URI with `export_name` as its path (percent-encoded). Fails when the
// URI already names an export: two names for one export is a mistake.
Result<std::string> uri_with_export(const std::string& uri, const std::string& export_name);

// Starts connecting to `uri` (libnbd's asynchronous connect) with the
// driver's handle settings.
Result<NbdHandle> nbd_start_connect(const std::string& uri);
// Drives a connection started by nbd_start_connect(), waiting up to wait_ms
// for the server: true once the handshake is done, false while it is still
// under way, an error when it failed.
Result<bool> nbd_drive_connect(nbd_handle* h, const std::string& uri, int wait_ms);

// Connects to `uri` and completes the handshake (NBD_OPT_GO) within
// `timeout_s` seconds (0: no bound).
// Also asks for the base:allocation meta context (nbd_can_meta_context()
// says whether the server agreed).
Result<NbdHandle> nbd_connect_within(const std::string& uri, int timeout_s);

// An extent callback's answer (base:allocation, asked at `asked`) as ours:
// fills `out` from the first extent when out.len is still 0. STATE_ZERO is a
// hole; STATE_HOLE without STATE_ZERO is data.
void nbd_extent_to_allocation(const char* metacontext, uint64_t asked, uint64_t offset, const uint32_t* entries,
                              size_t nr_entries, AllocationExtent& out);

// One block status query (REQ_ONE) on a handle that nothing else drives,
// answered within `timeout_s` seconds (0: no bound). out.len 0: the server
// said nothing about the offset.
Status nbd_block_status_within(nbd_handle* h, uint64_t offset, uint64_t len, int timeout_s, AllocationExtent& out);

}  // namespace blkstack
