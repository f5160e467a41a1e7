// An NBD connection on its reactor: its life (start, graceful and abrupt
// ends) and its input side (handshake, TLS, request parsing and dispatch).
// Requests are in connection_requests.cpp, replies in connection_replies.cpp.
#include "exports/nbd/nbd_connection.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/clock.hpp"
#include "core/driver.hpp"
#include "exports/nbd/connection_parts.hpp"

namespace blkstack::nbd {

// ---- lifetime ----

void Connection::start(Reactor& r, int fd, std::shared_ptr<const Catalog> catalog, ConnectionSet& set) {
  auto* c = new Connection(r, fd, std::move(catalog), set);
  set.add(c);
  c->process_input();  // sends the greeting
}

Connection::Connection(Reactor& r, int fd, std::shared_ptr<const Catalog> catalog, ConnectionSet& set)
    : reactor_(r), fd_(fd), catalog_(std::move(catalog)), set_(set) {
  handshake_ = std::make_unique<Handshake>(*catalog_, catalog_->tls_mode());
  in_cap_ = kInBufferSize;
  in_ = std::make_unique<uint8_t[]>(in_cap_);
  iov_.reserve(64);
}

Connection::~Connection() {
  for (Out& o : out_) {
    if (o.release) free_request(o.release);
  }
  if (payload_req_) free_request(payload_req_);
  if (stats_) StatsShard::add(stats_->connections, static_cast<uint64_t>(-1));
  ::close(fd_);
}

void Connection::shutdown() {
  if (stopping_) return;
  stopping_ = true;
  // A recv in flight ends (with 0) once reading is shut down.
  ::shutdown(fd_, SHUT_RD);
  maybe_destroy();
}

void Connection::fail(std::string_view why) {
  if (close_reason_.empty()) close_reason_ = why;
  dead_ = true;
  stopping_ = true;
  ::shutdown(fd_, SHUT_RDWR);
  maybe_destroy();
}

void Connection::maybe_destroy() {
  if (destroyed_) return;
  if (!stopping_ && !dead_) return;
  // A write still waiting for its payload is counted in flight, but once the
  // connection stops the payload will never come: it is not waited for (the
  // destructor frees it).
  const unsigned in_device = in_flight_ - (payload_req_ ? 1 : 0);
  if (in_device > 0 || recv_pending_ || send_pending_) return;
  if (!dead_ && (!out_.empty() || (tls_ && !tls_->ciphertext_out().empty()))) {
    reactor_.defer(*this);  // let the last replies go out first
    return;
  }
  // Deleted from run_deferred(), never here: callers up the stack (input
  // processing after decrypt_input() or fail(), say) still use the object,
  // and the reactor may hold it in its deferred list.
  destroyed_ = true;
  reactor_.defer(*this);
}

void ConnectionSet::remove(Connection* c) {
  auto it = std::find(all_.begin(), all_.end(), c);
  if (it != all_.end()) {
    *it = all_.back();
    all_.pop_back();
  }
}

// A copy: acting on a connection may remove it from all_.
std::vector<Connection*> ConnectionSet::matching(const std::function<bool(const Connection&)>& pred) const {
  std::vector<Connection*> now;
  for (Connection* c : all_) {
    if (pred(*c)) now.push_back(c);
  }
  return now;
}

void ConnectionSet::shutdown_if(const std::function<bool(const Connection&)>& pred) {
  for (Connection* c : matching(pred)) c->shutdown();
}

void ConnectionSet::fail_if(const std::function<bool(const Connection&)>& pred, std::string_view why) {
  for (Connection* c : matching(pred)) c->fail(why);
}

size_t ConnectionSet::count_if(const std::function<bool(const Connection&)>& pred) const {
  size_t n = 0;
  for (Connection* c : all_) n += pred(*c) ? 1 : 0;
  return n;
}

// ---- input ----

void Connection::arm_recv() {
  if (recv_pending_ || dead_ || stopping_ || blocked_) return;
  io_uring_sqe* s = reactor_.sqe();
  if (tls_) {
    io_uring_prep_recv(s, fd_, raw_.get(), kRawBufferSize, 0);
  } else if (payload_req_ && payload_req_->h.length - payload_done_ >= kDirectRecvMin) {
    // Large payloads land straight in their I/O buffer.
    direct_recv_ = true;
    io_uring_prep_recv(s, fd_, payload_req_->buf.data + payload_done_, payload_req_->h.length - payload_done_,
                       MSG_WAITALL);
  } else {
    if (rpos_ == wpos_) {
      rpos_ = wpos_ = 0;
    } else if (rpos_ > 0 && wpos_ > in_cap_ / 2) {
      std::memmove(in_.get(), in_.get() + rpos_, wpos_ - rpos_);
      wpos_ -= rpos_;
      rpos_ = 0;
    }
    io_uring_prep_recv(s, fd_, in_.get() + wpos_, in_cap_ - wpos_, 0);
  }
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(&recv_op_));
  recv_pending_ = true;
}

void Connection::on_recv(int res) {
  recv_pending_ = false;
  bool direct = direct_recv_;
  direct_recv_ = false;
  if (res <= 0) {
    if (res == 0 || res == -ECONNRESET || res == -EPIPE) {
      // The client is gone (or shutdown() stopped reading): finish what is
      // in flight; replies have no one to go to if the socket is dead.
      if (payload_req_ && !stopping_) close_reason_ = "client vanished in the middle of a write payload";
      stopping_ = true;
      if (res != 0) dead_ = true;
      return maybe_destroy();
    }
    if (res == -EINTR || res == -EAGAIN) return arm_recv();
    return fail(fmt::format("recv: {}", strerror(-res)));
  }
  if (direct) {
    payload_done_ += static_cast<uint64_t>(res);
  } else if (tls_) {
    tls_->feed(raw_.get(), static_cast<size_t>(res));
    if (tls_handshaking_) {
      if (!tls_handshake_step()) return;
    }
  } else {
    wpos_ += static_cast<size_t>(res);
  }
  process_input();
  // Input that arrives after the connection failed (bytes the client sent
  // before it vanished) is dropped; this recv may have been the last thing
  // keeping the connection alive.
  maybe_destroy();
}

// Everything that happens when input may have arrived: the state machines
// consume what they can, and the next recv is armed unless input is paused.
void Connection::process_input() {
  if (dead_ || destroyed_ || tls_pending_) return;
  if (tls_ && !tls_handshaking_) decrypt_input();
  if (dead_ || stopping_) return;
  // While TLS is being negotiated the handshake waits (in kAwaitTls) for
  // tls_started(); feeding it now would only repeat STARTTLS.
  if (handshake_ && !tls_handshaking_) {
    if (!handshake_input()) return;
  }
  if (!handshake_ && !tls_handshaking_) {
    if (!transmission_input()) return;
  }
  arm_recv();
}

// Returns false when input must not be read now.
bool Connection::handshake_input() {
  size_t consumed = 0;
  Handshake::Step step = handshake_->feed({in_.get() + rpos_, wpos_ - rpos_}, consumed);
  rpos_ += consumed;
  if (!handshake_->out().empty()) {
    reply_bytes(std::move(handshake_->out()));
    handshake_->out().clear();
  }
  switch (step) {
    case Handshake::Step::kNeedMore:
      return true;
    case Handshake::Step::kStartTls:
      return start_tls();
    case Handshake::Step::kClose:
      close_reason_ = handshake_->close_reason();
      stopping_ = true;
      maybe_destroy();
      return false;
    case Handshake::Step::kDone:
      break;
  }
  neg_ = handshake_->negotiated();
  export_.reset();
  for (auto& e : catalog_->exports()) {
    if (&e->info() == neg_.exp) export_ = e;
  }
  handshake_.reset();
  if (!export_) {
    fail("negotiated an unknown export");
    return false;
  }
  lane_ = &export_->device().lane(reactor_.index());
  stats_ = &export_->stats(reactor_.index());
  if (!tls_) splice_src_ = export_->device().device().memory_file();
  StatsShard::add(stats_->connections, 1);
  return true;
}

bool Connection::start_tls() {
  auto ctx = catalog_->tls();
  if (!ctx) {
    fail("STARTTLS without TLS credentials");
    return false;
  }
  auto session = TlsSession::create(*ctx);
  if (!session) {
    fail(session.status().message());
    return false;
  }
  // The STARTTLS acknowledgement is queued in plaintext and must leave
  // before the first TLS record: run_deferred() switches once it is out.
  // Until then input is held (it can only be the client's first TLS record).
  tls_pending_ = std::move(session.value());
  reactor_.defer(*this);
  return false;
}

bool Connection::tls_handshake_step() {
  int r = tls_->handshake();
  reactor_.defer(*this);  // handshake records to send
  if (r < 0) {
    fail("TLS handshake failed: " + tls_->error_text());
    return false;
  }
  if (r == 1) {
    tls_handshaking_ = false;
    if (handshake_) handshake_->tls_started();
  }
  return true;
}

void Connection::decrypt_input() {
  for (;;) {
    if (wpos_ == in_cap_) {
      if (rpos_ == 0) return;  // full of unread plaintext: consume first
      std::memmove(in_.get(), in_.get() + rpos_, wpos_ - rpos_);
      wpos_ -= rpos_;
      rpos_ = 0;
    }
    long n = tls_->read(in_.get() + wpos_, in_cap_ - wpos_);
    if (n == 0) return;
    if (n < 0) {
      if (n == -EPIPE) {
        stopping_ = true;
        maybe_destroy();
        return;
      }
      return fail("TLS: " + tls_->error_text());
    }
    wpos_ += static_cast<size_t>(n);
  }
}

// Copies payload bytes for the write in progress; true when it is complete.
bool Connection::take_payload() {
  Request* r = payload_req_;
  size_t n = std::min<uint64_t>(wpos_ - rpos_, r->h.length - payload_done_);
  std::memcpy(r->buf.data + payload_done_, in_.get() + rpos_, n);
  rpos_ += n;
  payload_done_ += n;
  if (payload_done_ < r->h.length) return false;
  payload_req_ = nullptr;
  start_write(r);
  return true;
}

// Returns false when input must not be read now.
bool Connection::transmission_input() {
  for (;;) {
    if (stopping_ || dead_) return false;
    if (tls_) decrypt_input();
    if (discard_left_) {
      size_t n = std::min<uint64_t>(wpos_ - rpos_, discard_left_);
      rpos_ += n;
      discard_left_ -= n;
      if (discard_left_) return true;
      continue;
    }
    if (payload_req_) {
      if (!take_payload()) return true;
      continue;
    }
    // A client that sends without reading its replies is not read either
    // (zero-copy read replies hold no buffer, so the pool does not stop it).
    if (in_flight_ >= kMaxInFlight || out_.size() >= kMaxQueuedReplies) {
      blocked_ = true;
      return false;
    }
    RequestHeader h;
    size_t consumed = 0;
    Parse p = parse_request({in_.get() + rpos_, wpos_ - rpos_}, neg_.extended_headers, h, consumed);
    if (p == Parse::kNeedMore) return true;
    if (p == Parse::kBadMagic) {
      fail("bad request magic");
      return false;
    }
    rpos_ += consumed;
    dispatch(h);
    if (blocked_) {
      return false;
    }
  }
}

void Connection::dispatch(const RequestHeader& h) {
  Verdict v = validate(h, neg_);
  if (v.disconnect) {
    close_reason_ = "client disconnected (NBD_CMD_DISC)";
    stopping_ = true;
    maybe_destroy();
    return;
  }
  Request* r = new_request(h);
  if (v.error || v.fatal) {
    if (v.payload_follows && !v.fatal) discard_left_ = v.payload_len;
    reply_error(r, v.error ? v.error : kEinval);
    if (v.fatal) {
      close_reason_ = "request cannot be resynchronised";
      stopping_ = true;
      ::shutdown(fd_, SHUT_RD);
    }
    return;
  }
  Queue& q = lane_->io.queue();
  switch (h.type) {
    case kCmdRead:
    case kCmdWrite:
      if (h.type == kCmdRead && splice_src_ >= 0 && h.length >= kSpliceReadMin && splice_read(r)) return;
      r->buf = lane_->pool.alloc(h.length);
      if (!r->buf) {
        // Out of buffers: answer later requests first, then try again. The
        // header is pushed back so nothing is lost.
        free_request(r);
        in_flight_--;
        rpos_ -= neg_.extended_headers ? kExtendedRequestSize : kCompactRequestSize;
        blocked_ = true;
        return;
      }
      if (h.type == kCmdRead) return start_read(r);
      payload_req_ = r;
      payload_done_ = 0;
      return;
    case kCmdFlush:
      StatsShard::add(stats_->flushes, 1);
      r->pending = 1;
      q.flush(r, 0);
      lane_->io.kick();
      return;
    case kCmdTrim:
      return start_trim(r);
    case kCmdWriteZeroes:
      return start_zeroes(r);
    case kCmdCache:
      return start_cache(r);
    case kCmdBlockStatus:
      return block_status(r);
    default:
      return reply_error(r, kEinval);
  }
}

}  // namespace blkstack::nbd
