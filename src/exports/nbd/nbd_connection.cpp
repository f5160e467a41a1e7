#include "exports/nbd/nbd_connection.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/clock.hpp"
#include "core/driver.hpp"

namespace blkstack::nbd {

namespace {

constexpr size_t kInBufferSize = 32 << 10;
constexpr size_t kRawBufferSize = 32 << 10;
constexpr unsigned kMaxInFlight = 512;          // requests per connection before input pauses
constexpr size_t kMaxQueuedReplies = 4096;       // replies waiting for the socket before input pauses
constexpr uint64_t kDirectRecvMin = 16 << 10;    // payloads this big are received in place
constexpr uint64_t kHoleAwareReadMin = 64 << 10; // reads this big report holes as holes
constexpr size_t kMaxIov = 1024;
constexpr uint64_t kSpliceReadMin = 64 << 10;  // reads this big from an in-memory file are spliced
constexpr int kPipeBytes = 1 << 20;            // asked of F_SETPIPE_SZ (the default limit for users)
constexpr uint64_t kPage = 4096;

}  // namespace

struct Connection::Request final : IoDone {
  Connection* conn = nullptr;
  RequestHeader h{};
  BufferPool::Buffer buf;
  uint64_t start_ns = 0;
  int pending = 0;          // library requests outstanding (a chain of status queries counts once)
  int result = 0;           // the first error among them
  bool then_flush = false;  // TRIM with FUA: a flush follows the discard
  std::vector<AllocationExtent> extents;  // hole-aware reads: the layout of the range

  // Allocation queries (Queue::block_status), one at a time: each answer
  // says where the next one starts. They complete through `status_done`, so
  // a hole-aware read tells its query's completion from its data's.
  struct StatusDone final : IoDone {
    Request* r = nullptr;
    void io_done(int ret) override { r->conn->status_done(r, ret); }
  } status_done;
  AllocationExtent answer{};     // the query in flight writes here
  uint64_t scan = 0, scan_end = 0;  // [scan, scan_end): what is left to learn
  uint64_t holes_gen = 0;        // hole-aware reads: the holes generation when the scan began
  bool any_hole = false;
  std::vector<Extent> status;    // NBD_CMD_BLOCK_STATUS: the reply's extents

  Request() { status_done.r = this; }
  void io_done(int ret) override { conn->request_done(this, ret); }
};

struct Connection::Out {
  uint8_t hdr[kMaxReplyHeaderSize];
  uint8_t hdr_len = 0;
  const uint8_t* data = nullptr;
  uint64_t data_len = 0;
  std::vector<uint8_t> owned;  // negotiation replies, block status payloads
  Request* release = nullptr;  // returned to the pool once sent
  uint64_t spliced = 0;        // zero-copy read: data bytes still to go, from the device file ...
  uint64_t file_off = 0;       // ... at this offset, after the header
  uint64_t in_pipe = 0;        // of which this many are in the pipe
  uint64_t sent = 0;
  uint64_t size() const { return hdr_len + data_len + owned.size(); }
};

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

void ConnectionSet::shutdown_all() {
  std::vector<Connection*> now = all_;
  for (Connection* c : now) c->shutdown();
}

void ConnectionSet::shutdown_if(const std::function<bool(const Connection&)>& pred) {
  std::vector<Connection*> now;
  for (Connection* c : all_) {
    if (pred(*c)) now.push_back(c);
  }
  for (Connection* c : now) c->shutdown();
}

void ConnectionSet::fail_if(const std::function<bool(const Connection&)>& pred, std::string_view why) {
  std::vector<Connection*> now;
  for (Connection* c : all_) {
    if (pred(*c)) now.push_back(c);
  }
  for (Connection* c : now) c->fail(why);
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

// ---- requests ----

Connection::Request* Connection::new_request(const RequestHeader& h) {
  std::unique_ptr<Request> r;
  if (!free_requests_.empty()) {
    r = std::move(free_requests_.back());
    free_requests_.pop_back();
  } else {
    r = std::make_unique<Request>();
    r->conn = this;
  }
  r->h = h;
  r->pending = 0;
  r->result = 0;
  r->then_flush = false;
  r->extents.clear();
  r->status.clear();
  r->any_hole = false;
  r->start_ns = mono_ns();
  in_flight_++;
  return r.release();
}

void Connection::free_request(Request* r) {
  if (r->buf && lane_) {
    lane_->pool.release(r->buf);
    r->buf = {};
  }
  free_requests_.emplace_back(r);
  // Input paused for want of a buffer or a request slot: try again at the
  // end of this iteration.
  if (blocked_) reactor_.defer(*this);
}

// Whether the reply to read h may have to send holes as holes: structured
// replies, no DF, a large read of a device that can tell, and not all data
// by an earlier answer (under holes generation holes_gen).
bool Connection::may_report_holes(const RequestHeader& h, uint64_t holes_gen) const {
  return neg_.structured_replies && !(h.flags & kCmdFlagDf) && h.length >= kHoleAwareReadMin &&
         export_->reports_holes() && lane_->known_data.data_from(h.offset, holes_gen) < h.length;
}

void Connection::start_read(Request* r) {
  const RequestHeader& h = r->h;
  const uint64_t gen = export_->device().holes_generation();
  if (may_report_holes(h, gen)) {
    // Learn the layout, so holes can be sent as holes: allocation queries
    // on the lane's queue, next to the read (not before it: for a network
    // device each is a round trip). The reply goes out once both are done.
    r->scan = h.offset;
    r->scan_end = h.offset + h.length;
    r->holes_gen = gen;
    r->pending++;
    // The first query asks up to the end of the device (the kernel scans
    // as far as the next hole whatever length is asked): a data extent
    // found is remembered for the requests that follow.
    ask_layout(r, export_->device().device().info().capacity - h.offset);
  }
  r->pending++;
  lane_->io.queue().read(h.offset, r->buf.data, h.length, r, 0);
  lane_->io.kick();
}

// A large read of a device that lives in a file in memory is answered
// without a copy in the daemon: when its turn to be sent comes, the file's
// pages go into the connection's pipe by reference and from there into the
// socket (splice_out); the client's receive is the only copy. Returns false,
// having changed nothing, when the read must take the ordinary path: a
// reply that may have to report holes (structured replies, no DF, and no
// knowledge that the range is all data), or no pipe to be had.
//
// The data is taken from the file as it is sent, as with any read whose
// reply is still on its way: a write that lands before then can show
// through. Only requests in flight at the same time can see that, and NBD
// leaves their order open.
bool Connection::splice_read(Request* r) {
  const RequestHeader& h = r->h;
  if (may_report_holes(h, export_->device().holes_generation())) return false;
  if (!pipe_r_.valid() && !open_pipe()) {
    splice_src_ = -1;
    return false;
  }
  Out& o = push_out();
  read_header(o, h);
  o.spliced = h.length;
  o.file_off = h.offset;
  StatsShard::add(stats_->spliced_reads, 1);
  finish_request(r, false);
  return true;
}

// The pipe for zero-copy reads, as large as the kernel allows us (the
// default 64 KiB otherwise). The socket becomes non-blocking: splice(2)
// into a socket waits for room unless the socket itself says not to (before
// Linux 6.5 SPLICE_F_NONBLOCK only covers the pipe). The ring's socket
// operations do not depend on it.
bool Connection::open_pipe() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  UniqueFd r(p[0]), w(p[1]);
  int size = ::fcntl(w.get(), F_SETPIPE_SZ, kPipeBytes);
  if (size < 0) size = ::fcntl(w.get(), F_GETPIPE_SZ);
  const int fl = ::fcntl(fd_, F_GETFL);
  if (size <= 0 || fl < 0 || ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK) != 0) return false;
  pipe_r_ = std::move(r);
  pipe_w_ = std::move(w);
  pipe_bytes_ = static_cast<uint64_t>(size);
  return true;
}

// One allocation query of a hole-aware read is answered: add it to the
// layout and ask the next, until the range is known (or 64 extents, the rest
// then sent as data). A failed query only ends the scan: the read itself
// decides the reply.
void Connection::read_layout_step(Request* r, int ret) {
  const uint64_t end = r->scan_end;
  bool more = false;
  if (ret >= 0 && r->answer.len > 0) {
    if (!r->answer.hole) lane_->known_data.learn(r->scan, r->scan + r->answer.len, r->holes_gen);
    AllocationExtent x = r->answer;
    x.len = std::min(x.len, end - r->scan);
    x.len -= x.len % export_->info().min_block;
    if (x.len > 0) {
      r->any_hole |= x.hole;
      if (!r->extents.empty() && r->extents.back().hole == x.hole) {
        r->extents.back().len += x.len;
      } else {
        r->extents.push_back(x);
      }
      r->scan += x.len;
      more = r->scan < end && r->extents.size() < 64;
    }
  }
  if (more && !dead_) return ask_layout(r, end - r->scan);
  if (r->scan < end) r->extents.push_back({end - r->scan, false});
  if (!r->any_hole) r->extents.clear();
  request_done(r, 0);
}

void Connection::start_write(Request* r) {
  if (r->h.flags & kCmdFlagFua) StatsShard::add(stats_->fua_writes, 1);
  r->pending = 1;
  lane_->io.queue().write(r->h.offset, r->buf.data, r->h.length, r, (r->h.flags & kCmdFlagFua) ? kReqFua : 0);
  lane_->io.kick();
}

void Connection::start_trim(Request* r) {
  // Trim is advisory: discard the part the device's alignment allows.
  const DeviceInfo& d = export_->device().device().info();
  uint64_t align = static_cast<uint64_t>(std::max(d.discard_alignment, 1));
  uint64_t base = static_cast<uint64_t>(d.discard_alignment_offset);
  uint64_t start = r->h.offset, end = r->h.offset + r->h.length;
  if (start > base) start = base + (start - base + align - 1) / align * align;
  if (end > base) end = base + (end - base) / align * align;
  r->then_flush = r->h.flags & kCmdFlagFua;
  if (start < end) export_->device().holes_may_appear();
  Queue& q = lane_->io.queue();
  for (uint64_t off = start; off < end;) {
    uint64_t len = end - off;
    if (d.max_discard_len) len = std::min(len, d.max_discard_len - d.max_discard_len % align);
    r->pending++;
    q.discard(off, len, r, 0);
    off += len;
  }
  if (r->pending == 0) {
    if (!r->then_flush) return reply_ok(r);
    r->then_flush = false;
    r->pending = 1;
    q.flush(r, 0);
  }
  lane_->io.kick();
}

void Connection::start_zeroes(Request* r) {
  const DeviceInfo& d = export_->device().device().info();
  uint32_t flags = 0;
  if (r->h.flags & kCmdFlagFua) flags |= kReqFua;
  if (r->h.flags & kCmdFlagNoHole) flags |= kReqNoUnmap;
  if (r->h.flags & kCmdFlagFastZero) flags |= kReqNoFallback;
  Queue& q = lane_->io.queue();
  uint64_t max = d.max_write_zeroes_len ? d.max_write_zeroes_len : r->h.length;
  max -= max % export_->info().min_block;
  if (max == 0) max = r->h.length;
  export_->device().holes_may_appear();  // even NO_HOLE: some file systems report zeroed ranges as holes
  for (uint64_t off = r->h.offset, end = off + r->h.length; off < end;) {
    uint64_t len = std::min(max, end - off);
    r->pending++;
    q.write_zeroes(off, len, r, flags);
    off += len;
  }
  if (r->pending == 0) return reply_ok(r);
  lane_->io.kick();
}

void Connection::start_cache(Request* r) {
  // Emulated as nbdkit does: read the range (into one scratch buffer) so the
  // device's cache holds it.
  uint64_t chunk = std::min<uint64_t>(r->h.length, 1 << 20);
  if (chunk == 0) return reply_ok(r);
  r->buf = lane_->pool.alloc(chunk);
  if (!r->buf) return reply_ok(r);  // advisory: nothing lost by skipping it
  Queue& q = lane_->io.queue();
  for (uint64_t off = r->h.offset, end = off + r->h.length; off < end; off += chunk) {
    r->pending++;
    q.read(off, r->buf.data, std::min(chunk, end - off), r, 0);
  }
  lane_->io.kick();
}

void Connection::block_status(Request* r) {
  // Asked of the device one extent at a time, asynchronously (for a network
  // device each answer is a round trip, and the reactor serves everyone
  // else meanwhile); the reply goes out from reply_block_status().
  r->scan = r->h.offset;
  r->scan_end = r->h.offset + r->h.length;
  r->holes_gen = export_->device().holes_generation();
  r->pending = 1;
  next_status_query(r);
}

// The extent at r->scan: from what this reactor already knows when it is
// data, else from the device, asked up to the end of the device so that the
// whole data extent is learnt (the kernel scans that far anyway).
void Connection::next_status_query(Request* r) {
  if (uint64_t known = lane_->known_data.data_from(r->scan, r->holes_gen)) {
    r->answer = {known, false};
    return block_status_step(r, 0);  // ends, or asks the device: the known extent is used up
  }
  ask_layout(r, export_->device().device().info().capacity - r->scan);
}

void Connection::ask_layout(Request* r, uint64_t len) {
  StatsShard::add(stats_->layout_queries, 1);
  lane_->io.queue().block_status(r->scan, len, &r->answer, &r->status_done, 0);
  lane_->io.kick();
}

void Connection::block_status_step(Request* r, int ret) {
  if (ret < 0) return request_done(r, ret);
  const size_t max_ext = (r->h.flags & kCmdFlagReqOne) ? 1 : 1024;
  const AllocationExtent& e = r->answer;
  if (e.len == 0) return request_done(r, 0);
  if (!e.hole) lane_->known_data.learn(r->scan, r->scan + e.len, r->holes_gen);
  const uint64_t len = std::min(e.len, r->scan_end - r->scan);
  uint32_t flags = e.hole ? (kStateHole | kStateZero) : 0;
  if (!r->status.empty() && r->status.back().flags == flags) {
    r->status.back().length += len;
  } else {
    r->status.push_back({len, flags});
  }
  r->scan += len;
  // A reply may cover less than asked (the client asks again): stop at an
  // extent the device ended off the block size, where no query may start.
  if (r->scan < r->scan_end && r->status.size() < max_ext && r->scan % export_->info().min_block == 0 && !dead_) {
    return next_status_query(r);
  }
  request_done(r, 0);
}

void Connection::status_done(Request* r, int ret) {
  if (r->h.type == kCmdRead) return read_layout_step(r, ret);
  block_status_step(r, ret);
}

void Connection::reply_block_status(Request* r) {
  const RequestHeader& h = r->h;
  BlockStatusQuery q;
  q.length = h.length;
  q.req_one = h.flags & kCmdFlagReqOne;
  q.align = export_->info().min_block;
  q.context_id = neg_.base_allocation_id;
  std::vector<uint8_t> bytes(kExtendedChunkHeaderSize + 16 + r->status.size() * 16 * 2);
  ReplyTo to{h.cookie, h.offset, neg_.extended_headers};
  BlockStatusResult res = encode_block_status(bytes, to, q, r->status);
  if (res.bytes == 0) return reply_error(r, kEinval, "no block status to report");
  bytes.resize(res.bytes);
  Out& o = push_out();
  o.owned = std::move(bytes);
  finish_request(r, false);
}

void Connection::request_done(Request* r, int ret) {
  if (ret < 0 && r->result == 0) r->result = ret;
  if (--r->pending > 0) return;
  if (dead_) {
    free_request(r);
    in_flight_--;
    return maybe_destroy();
  }
  if (r->then_flush && r->result == 0) {
    r->then_flush = false;
    r->pending = 1;
    lane_->io.queue().flush(r, 0);
    lane_->io.kick();
    return;
  }
  if (r->result < 0) {
    reply_error(r, errno_to_nbd(r->result));
  } else if (r->h.type == kCmdRead) {
    reply_read(r);
  } else if (r->h.type == kCmdBlockStatus) {
    reply_block_status(r);
  } else {
    reply_ok(r);
  }
  if (stopping_) maybe_destroy();
}

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
