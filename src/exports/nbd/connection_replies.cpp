// Replies: building them, and the socket's output side (batched sendmsg
// through the ring; zero-copy reads by splice).
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

// ---- replies ----

Connection::Out& Connection::push_out() {
  out_.emplace_back();
  reactor_.defer(*this);
  return out_.back();
}

void Connection::reply_bytes(std::vector<uint8_t> bytes) {
  Out& o = push_out();
  o.owned = std::move(bytes);
}

void Connection::reply_ok(Request* r) {
  Out& o = push_out();
  if (neg_.extended_headers) {
    o.hdr_len = static_cast<uint8_t>(encode_none(o.hdr, {r->h.cookie, r->h.offset, true}));
  } else {
    o.hdr_len = static_cast<uint8_t>(encode_simple_reply(o.hdr, r->h.cookie, 0));
  }
  finish_request(r, false);
}

void Connection::reply_error(Request* r, uint32_t nbd_error, std::string_view message) {
  Out& o = push_out();
  bool chunk = neg_.extended_headers ||
               (neg_.structured_replies && (r->h.type == kCmdRead || r->h.type == kCmdBlockStatus));
  if (chunk) {
    uint8_t buf[kExtendedChunkHeaderSize + 8 + 256];
    size_t n = encode_error(buf, {r->h.cookie, r->h.offset, neg_.extended_headers}, kReplyFlagDone, nbd_error,
                            message.substr(0, 200));
    o.owned.assign(buf, buf + n);
  } else {
    o.hdr_len = static_cast<uint8_t>(encode_simple_reply(o.hdr, r->h.cookie, nbd_error));
  }
  finish_request(r, true);
}

// The header of a read reply whose data follows in one piece: a simple
// reply, or one OFFSET_DATA chunk that ends the reply.
void Connection::read_header(Out& o, const RequestHeader& h) const {
  if (neg_.structured_replies) {
    o.hdr_len = static_cast<uint8_t>(encode_offset_data(o.hdr, {h.cookie, h.offset, neg_.extended_headers},
                                                        kReplyFlagDone, h.offset, h.length));
  } else {
    o.hdr_len = static_cast<uint8_t>(encode_simple_reply(o.hdr, h.cookie, 0));
  }
}

void Connection::reply_read(Request* r) {
  const RequestHeader& h = r->h;
  const auto* data = reinterpret_cast<const uint8_t*>(r->buf.data);
  ReplyTo to{h.cookie, h.offset, neg_.extended_headers};
  if (r->extents.empty()) {
    Out& o = push_out();
    read_header(o, h);
    o.data = data;
    o.data_len = h.length;
    o.release = r;
  } else {
    uint64_t pos = 0;
    for (size_t i = 0; i < r->extents.size(); i++) {
      const AllocationExtent& e = r->extents[i];
      uint16_t flags = i + 1 == r->extents.size() ? kReplyFlagDone : 0;
      Out& o = push_out();
      if (e.hole) {
        o.hdr_len = static_cast<uint8_t>(
            encode_offset_hole(o.hdr, to, flags, h.offset + pos, static_cast<uint32_t>(e.len)));
      } else {
        o.hdr_len = static_cast<uint8_t>(encode_offset_data(o.hdr, to, flags, h.offset + pos, e.len));
        o.data = data + pos;
        o.data_len = e.len;
      }
      if (flags) o.release = r;
      pos += e.len;
    }
  }
  // The buffer goes back once the data is on the wire.
  finish_request(r, false);
}

// A reply is queued: count the request, and free it now unless its buffer
// still feeds the reply.
void Connection::finish_request(Request* r, bool failed) {
  if (stats_) {
    StatsShard::add(stats_->requests, 1);
    if (failed) StatsShard::add(stats_->errors, 1);
    if (!failed && r->h.type == kCmdRead) StatsShard::add(stats_->read_bytes, r->h.length);
    if (!failed && r->h.type == kCmdWrite) StatsShard::add(stats_->write_bytes, r->h.length);
    stats_->record(mono_ns() - r->start_ns);
  }
  in_flight_--;
  bool held = !out_.empty() && out_.back().release == r;
  if (!held) free_request(r);
}

void Connection::run_deferred() {
  if (destroyed_) {
    set_.remove(this);
    delete this;
    return;
  }
  if (tls_pending_ && out_.empty() && !send_pending_) {
    // The STARTTLS acknowledgement has left in plaintext: TLS from here on.
    tls_ = std::move(tls_pending_);
    tls_handshaking_ = true;
    raw_ = std::make_unique<uint8_t[]>(kRawBufferSize);
    // Bytes the client sent after STARTTLS are already TLS records.
    if (wpos_ > rpos_) tls_->feed(in_.get() + rpos_, wpos_ - rpos_);
    rpos_ = wpos_ = 0;
    if (tls_handshake_step()) process_input();
    if (destroyed_) return;
  }
  flush_output();
  if (blocked_ && !dead_ && !stopping_) {
    blocked_ = false;
    process_input();
    if (destroyed_) return;
  }
  maybe_destroy();
}

void Connection::flush_output() {
  if (send_pending_ || dead_ || destroyed_) return;
  if (tls_) {
    // TLS starts only once out_ was empty (see run_deferred), so all of out_
    // is encrypted now and the ciphertext goes out as one buffer.
    if (!out_.empty()) {
      tls_->cork();
      while (!out_.empty()) {
        Out& o = out_.front();
        if (o.hdr_len) tls_->write(o.hdr, o.hdr_len);
        if (o.data_len) tls_->write(o.data, o.data_len);
        if (!o.owned.empty()) tls_->write(o.owned.data(), o.owned.size());
        if (o.release) free_request(o.release);
        out_.pop_front();
      }
      if (tls_->uncork() < 0) return fail("TLS: " + tls_->error_text());
    }
    auto& ct = tls_->ciphertext_out();
    if (ct.empty()) return;
    iov_.assign(1, iovec{ct.data(), ct.size()});
  } else {
    // A zero-copy read reply goes out by itself, header and data, with
    // plain non-blocking calls (no trip through the ring); the replies
    // after it wait for it.
    while (!out_.empty() && out_.front().spliced) {
      if (!splice_out()) return;
    }
    if (out_.empty()) return;
    iov_.clear();
    for (Out& o : out_) {
      if (iov_.size() + 3 > kMaxIov) break;
      uint64_t skip = o.sent;
      auto add = [&](const void* p, uint64_t len) {
        if (skip >= len) {
          skip -= len;
          return;
        }
        iov_.push_back({const_cast<uint8_t*>(static_cast<const uint8_t*>(p)) + skip, len - skip});
        skip = 0;
      };
      if (o.spliced) break;
      if (o.hdr_len) add(o.hdr, o.hdr_len);
      if (o.data_len) add(o.data, o.data_len);
      if (!o.owned.empty()) add(o.owned.data(), o.owned.size());
    }
  }
  msg_ = {};
  msg_.msg_iov = iov_.data();
  msg_.msg_iovlen = iov_.size();
  io_uring_sqe* s = reactor_.sqe();
  io_uring_prep_sendmsg(s, fd_, &msg_, MSG_NOSIGNAL);
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(&send_op_));
  send_pending_ = true;
}

void Connection::on_sent(int res) {
  send_pending_ = false;
  if (res < 0) {
    if (res == -EINTR || res == -EAGAIN) {
      flush_output();
      return;
    }
    return fail(fmt::format("send: {}", strerror(-res)));
  }
  auto n = static_cast<uint64_t>(res);
  if (tls_) {
    auto& ct = tls_->ciphertext_out();
    ct.erase(ct.begin(), ct.begin() + static_cast<ptrdiff_t>(std::min<uint64_t>(n, ct.size())));
  } else {
    while (n > 0 && !out_.empty()) {
      Out& o = out_.front();
      uint64_t left = o.size() - o.sent;
      if (n < left) {
        o.sent += n;
        break;
      }
      n -= left;
      if (o.release) free_request(o.release);
      out_.pop_front();
    }
  }
  after_output();
}

// The zero-copy read reply at the head: its header, then its data, file ->
// pipe -> socket, a pipeful at a time. True when it is all out; false when
// the socket is full (a poll for room is armed) or the connection failed.
bool Connection::splice_out() {
  Out& o = out_.front();
  while (o.sent < o.hdr_len) {
    ssize_t n = ::send(fd_, o.hdr + o.sent, o.hdr_len - o.sent, MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
    if (n > 0) {
      o.sent += static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return wait_writable();
    fail(fmt::format("send: {}", n == 0 ? "socket took nothing" : strerror(errno)));
    return false;
  }
  while (o.spliced) {
    if (o.in_pipe == 0) {
      auto off = static_cast<loff_t>(o.file_off);
      ssize_t n = ::splice(splice_src_, &off, pipe_w_.get(), nullptr, std::min(o.spliced, pipe_bytes_), SPLICE_F_NONBLOCK);
      if (n == 0) {
        // The file ends early (shrunk under us): zeroes, as a read past the
        // end gives.
        static const uint8_t kZeroes[kPage] = {};
        n = ::write(pipe_w_.get(), kZeroes, std::min<uint64_t>(kPage, o.spliced));
      }
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fail(fmt::format("zero-copy read of the device file: {}", n == 0 ? "no progress" : strerror(errno)));
        return false;
      }
      o.file_off += static_cast<uint64_t>(n);
      o.in_pipe = static_cast<uint64_t>(n);
    }
    ssize_t n = ::splice(pipe_r_.get(), nullptr, fd_, nullptr, o.in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      o.in_pipe -= static_cast<uint64_t>(n);
      o.spliced -= static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return wait_writable();
    fail(fmt::format("zero-copy send: {}", n == 0 ? "socket took nothing" : strerror(errno)));
    return false;
  }
  out_.pop_front();
  return true;
}

bool Connection::wait_writable() {
  io_uring_sqe* s = reactor_.sqe();
  io_uring_prep_poll_add(s, fd_, POLLOUT);
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(&writable_op_));
  send_pending_ = true;
  return false;
}

void Connection::on_writable(int res) {
  send_pending_ = false;
  if (res < 0 && res != -EINTR) return fail(fmt::format("poll for room to send: {}", strerror(-res)));
  after_output();
}

// Output made progress: send what is queued, and resume what waited for it.
void Connection::after_output() {
  flush_output();
  // The STARTTLS acknowledgement has left: run_deferred() switches to TLS.
  if (tls_pending_ && out_.empty() && !send_pending_) reactor_.defer(*this);
  if (blocked_ && !dead_) {
    blocked_ = false;
    process_input();
  }
  maybe_destroy();
}

}  // namespace blkstack::nbd
