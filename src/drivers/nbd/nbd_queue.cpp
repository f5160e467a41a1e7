#include "drivers/nbd/nbd_queue.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>

#include "core/clock.hpp"

namespace blkstack {

namespace {

// While requests are parked, the completion fd ticks this often: event
// loops come back to do_io(), which drives the reconnection and fails
// requests whose reconnect-delay ran out.
constexpr long kTickNs = 50'000'000;
// How long do_io() that waits may wait for the server's answers while
// connecting again, in one go.
constexpr int kConnectWaitMs = 20;

const char kDownMsg[] = "nbd: the connection to the server is gone; reconnecting (reconnect-delay=0)";
const char kDelayMsg[] = "nbd: the server did not come back within reconnect-delay";

// How libnbd fails the commands of a connection that died.
bool connection_error(int e) { return e == ENOTCONN || e == ESHUTDOWN || e == ECONNRESET || e == EPIPE; }

}  // namespace

// Marks the calling thread as the one driving `q` for the scope (nests).
struct Driving {
  NbdQueue& q;
  std::thread::id saved;
  explicit Driving(NbdQueue* queue)
      : q(*queue), saved(q.driving_.exchange(std::this_thread::get_id(), std::memory_order_relaxed)) {}
  ~Driving() { q.driving_.store(saved, std::memory_order_relaxed); }
};

NbdQueue::NbdQueue(std::shared_ptr<NbdLink> conn, NbdCaps caps, int reconnect_delay_s)
    : conn_(std::move(conn)), caps_(caps), reconnect_delay_s_(reconnect_delay_s) {
  conn_->queues++;
  // blkio(3): the completion fd is non-blocking (applications may read it).
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  gen_seen_ = conn_->generation();
  int sock = nbd_aio_get_fd(conn_->get());
  if (sock >= 0) sock_fd_ = sock;
  if (!wake_.valid() || !timer_.valid()) return;
  // No COOP/DEFER_TASKRUN: a poll's completion must interrupt the driving
  // thread even while it sleeps in a read() of the completion fd.
  // Every wakeup of the socket posts a CQE, reaped only by process(): room
  // for many, as a multishot poll that finds the CQ full ends.
  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = 4096;
  if (!bridge_.init(4, p, 0)) return;
  bridge_ok_ = io_uring_register_eventfd(bridge_.get(), wake_.get()) == 0;
  ready_.reserve(64);
}

NbdQueue::~NbdQueue() {
  // libnbd holds pointers to our Cmds until it calls back: wait for every
  // request in flight (a dead connection has already called back for all).
  Driving d(this);
  const timespec tick{0, 100 * 1000 * 1000};
  while (true) {
    collect();
    if (in_flight_ == 0 || !connection_alive()) break;
    int err;
    pump(wait(&tick, nullptr, err));
  }
  conn_->queues--;
}

bool NbdQueue::connection_alive() const {
  if (conn_->alive()) return true;
  conn_->suspect();
  return false;
}

bool NbdQueue::link_needs_care() const {
  return conn_->suspected() || conn_->generation() != gen_seen_ || !parked_.empty();
}

void NbdQueue::sync_socket() {
  uint64_t g = conn_->generation();
  bool alive = connection_alive();
  if (g == gen_seen_ && (alive || sock_fd_ < 0)) return;
  // A dead handle's socket is closed, or about to be: forget it.
  sock_fd_ = -1;
  if (g != gen_seen_) {
    gen_seen_ = g;
    int sock = alive ? nbd_aio_get_fd(conn_->get()) : -1;
    if (sock >= 0) sock_fd_ = sock;
  }
  // At once, not at the next process(): the bridge drops the old socket's
  // poll (a hang-up could keep signalling) and polls the new one, whose
  // replies to the requests sent on reconnection an event loop waits for.
  if (fd_wanted_) arm_bridge();
}

namespace {
// Bridge ring user_data: the timer's poll, or a socket's poll by generation.
constexpr uint64_t kTimerPoll = 1;
uint64_t socket_poll(uint64_t generation) { return (generation + 1) << 1; }
}  // namespace

void NbdQueue::set_completion_fd_enabled(bool enable) {
  // Disabling may leave events coming (blkio(3) allows it): the polls stay,
  // so an event loop that toggles around its processing pays no system call.
  // They are armed by the next process(), on the thread that drives us.
  if (enable) fd_wanted_ = true;
}

void NbdQueue::arm_bridge() {
  io_uring* ring = bridge_.get();
  bool sqes = false;
  auto poll = [&](int fd, uint64_t tag) {
    io_uring_sqe* s = io_uring_get_sqe(ring);
    io_uring_prep_poll_multishot(s, fd, POLLIN);
    io_uring_sqe_set_data64(s, tag);
    sqes = true;
  };
  const bool want_sock = sock_fd_ >= 0;
  if (sock_polled_ && (!want_sock || sock_poll_gen_ != gen_seen_)) {
    io_uring_sqe* s = io_uring_get_sqe(ring);
    io_uring_prep_poll_remove(s, socket_poll(sock_poll_gen_));
    io_uring_sqe_set_data64(s, 0);
    sock_polled_ = false;
    sqes = true;
  }
  if (want_sock && !sock_polled_) {
    poll(sock_fd_, socket_poll(gen_seen_));
    sock_polled_ = true;
    sock_poll_gen_ = gen_seen_;
  }
  if (!timer_polled_) {
    poll(timer_.get(), kTimerPoll);
    timer_polled_ = true;
  }
  if (sqes) io_uring_submit(ring);
}

void NbdQueue::reap_bridge() {
  io_uring* ring = bridge_.get();
  unsigned head, seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(ring, head, cqe) {
    seen++;
    if (cqe->flags & IORING_CQE_F_MORE) continue;
    // A poll the kernel ended: arm_bridge() arms it again.
    if (cqe->user_data == kTimerPoll) {
      timer_polled_ = false;
    } else if (sock_polled_ && cqe->user_data == socket_poll(sock_poll_gen_)) {
      sock_polled_ = false;
    }
  }
  io_uring_cq_advance(ring, seen);
}

void NbdQueue::arm_timer(bool on) {
  if (on == timer_armed_) return;
  itimerspec its{};
  if (on) {
    its.it_value = {0, kTickNs};
    its.it_interval = {0, kTickNs};
  }
  ::timerfd_settime(timer_.get(), 0, &its, nullptr);
  if (!on) {
    uint64_t ticks;  // an expiry not yet read would keep the completion fd readable
    (void)!::read(timer_.get(), &ticks, sizeof ticks);
  }
  timer_armed_ = on;
}

void NbdQueue::park(uint32_t slot, const Request& req, uint64_t deadline_ns) {
  if (deadline_ns == 0) deadline_ns = mono_ns() + static_cast<uint64_t>(reconnect_delay_s_) * 1'000'000'000;
  Parked p{slot, req, {}, deadline_ns};
  if (req.op == Op::kReadv || req.op == Op::kWritev) {
    p.iov.assign(req.iov, req.iov + req.iovcnt);
  }
  parked_.push_back(std::move(p));
  // (buf and iov share their storage in Request: only vectored ones.)
  if (req.op == Op::kReadv || req.op == Op::kWritev) parked_.back().req.iov = parked_.back().iov.data();
  arm_timer(true);
}

void NbdQueue::fail_now(uint32_t slot, const char* msg) {
  Cmd* c = new_cmd(slot, 1);
  c->msg = msg;
  fail_part(c, EIO);
}

void NbdQueue::service_link(int wait_ms) {
  if (timer_armed_) {
    uint64_t ticks;
    (void)!::read(timer_.get(), &ticks, sizeof ticks);
  }
  NbdLink::State st = NbdLink::State::kUp;
  if (!connection_alive() || conn_->generation() != gen_seen_) {
    st = conn_->poke(wait_ms);
    sync_socket();
  } else if (conn_->suspected() && conn_->state() == NbdLink::State::kUp) {
    conn_->unsuspect();  // a false alarm: the handle is alive
  }
  if (!parked_.empty()) {
    if (st == NbdLink::State::kUp) {
      // Back: send what waited, in the order it came. (A move first:
      // submitting may run callbacks, never park(), but keep it simple.)
      std::vector<Parked> go;
      go.swap(parked_);
      for (Parked& p : go) {
        if (p.req.op == Op::kReadv || p.req.op == Op::kWritev) p.req.iov = p.iov.data();
        submit_now(p.slot, p.req, p.deadline_ns);
      }
    } else if (st == NbdLink::State::kFailed) {
      for (Parked& p : parked_) fail_now(p.slot, conn_->failure());
      parked_.clear();
    } else {
      uint64_t now = mono_ns();
      size_t keep = 0;
      for (size_t i = 0; i < parked_.size(); i++) {
        if (parked_[i].deadline_ns <= now) {
          fail_now(parked_[i].slot, kDelayMsg);
        } else {
          if (keep != i) parked_[keep] = std::move(parked_[i]);
          keep++;
        }
      }
      parked_.resize(keep);
      for (Parked& p : parked_) {
        if (p.req.op == Op::kReadv || p.req.op == Op::kWritev) p.req.iov = p.iov.data();
      }
    }
  }
  arm_timer(!parked_.empty());
}

void NbdQueue::notify() { eventfd_write(wake_.get(), 1); }

NbdQueue::Cmd* NbdQueue::new_cmd(uint32_t slot, uint32_t parts) {
  Cmd* c;
  if (!free_.empty()) {
    c = free_.back();
    free_.pop_back();
  } else {
    cmds_.push_back(std::make_unique<Cmd>());
    c = cmds_.back().get();
  }
  c->queue = this;
  c->slot = slot;
  c->parts.store(parts, std::memory_order_relaxed);
  c->err.store(0, std::memory_order_relaxed);
  c->msg = nullptr;
  in_flight_++;
  return c;
}

int NbdQueue::on_command_done(void* user_data, int* error) {
  Cmd* c = static_cast<Cmd*>(user_data);
  if (*error) {
    int expected = 0;
    c->err.compare_exchange_strong(expected, *error);
    // libnbd fails the commands of a connection that died with ENOTCONN.
    if (connection_error(*error)) {
      c->queue->conn_->suspect();
    }
  }
  c->queue->release_parts(c, 1);
  return 1;  // retire the command: we never ask libnbd about it again
}

int NbdQueue::on_extent(void* user_data, const char* metacontext, uint64_t offset, uint32_t* entries,
                        size_t nr_entries, int* /*error*/) {
  Cmd* c = static_cast<Cmd*>(user_data);
  nbd_extent_to_allocation(metacontext, c->offset, offset, entries, nr_entries, *c->extent);
  return 0;
}

void NbdQueue::release_parts(Cmd* c, uint32_t n) {
  if (c->parts.fetch_sub(n, std::memory_order_acq_rel) == n) finish(c);
}

void NbdQueue::finish(Cmd* c) {
  if (driving_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
    ready_.push_back(c);
    in_flight_--;
    return;
  }
  {
    std::lock_guard lock(inbox_mu_);
    inbox_.push_back(c);
  }
  notify();
}

void NbdQueue::fail_part(Cmd* c, int err) {
  int expected = 0;
  c->err.compare_exchange_strong(expected, err);
  release_parts(c, 1);
}

void NbdQueue::enqueue(uint32_t slot, const Request& req) {
  Driving d(this);
  stats_.plain_ops++;
  if (link_needs_care()) [[unlikely]] {
    service_link(0);
    if (!connection_alive() || !parked_.empty()) {
      NbdLink::State st = conn_->state();
      if (st == NbdLink::State::kFailed) {
        fail_now(slot, conn_->failure());
      } else if (reconnect_delay_s_ == 0) {
        fail_now(slot, kDownMsg);
      } else {
        park(slot, req);
      }
      if (ready_head_ < ready_.size()) notify();
      return;
    }
  }
  submit_now(slot, req);
}

void NbdQueue::submit_now(uint32_t slot, const Request& req, uint64_t deadline_ns) {
  uint32_t parts = 1;
  if (req.op == Op::kReadv || req.op == Op::kWritev) {
    parts = 0;
    for (int i = 0; i < req.iovcnt; i++) parts += req.iov[i].iov_len > 0;
  }
  // One extra part held while issuing: a reply read by another thread must
  // not finish the request before every command of it is issued.
  Cmd* c = new_cmd(slot, parts + 1);
  // The handle is read once: another queue on a shared connection may put
  // a new one in meanwhile, and what matters below is whether the one we
  // used died.
  nbd_handle* h = conn_->get();
  issue(c, req, h);
  if (reconnect_delay_s_ > 0 && c->parts.load(std::memory_order_acquire) == 1 &&
      connection_error(c->err.load(std::memory_order_relaxed)) && nbd_handle_gone(h)) [[unlikely]] {
    // Every command of it failed while being issued, on a connection that
    // turned out dead (nobody had read the hang-up yet): it waits for the
    // reconnection like a request made a moment later. (Reads and writes
    // may be sent twice; both are idempotent.)
    in_flight_--;
    free_.push_back(c);
    park(slot, req, deadline_ns);
    return;
  }
  release_parts(c, 1);
  // Issuing runs libnbd's state machine, which may read replies (it reads
  // while a send would block, against deadlock) or fail the request at once:
  // those wait in ready_, and the completion fd must say so.
  if (ready_head_ < ready_.size()) notify();
}

void NbdQueue::issue(Cmd* c, const Request& req, nbd_handle* h) {
  nbd_completion_callback done{.callback = &NbdQueue::on_command_done, .user_data = c, .free = nullptr};
  auto check = [&](int64_t cookie) {
    if (cookie < 0) {
      conn_->suspect();  // most likely a dead handle; service_link() will look
      fail_part(c, nbd_refusal_errno(h));
    }
  };
  uint32_t fua = (req.flags & kReqFua) ? LIBNBD_CMD_FLAG_FUA : 0;
  switch (req.op) {
    case Op::kRead:
      return check(nbd_aio_pread(h, req.buf, req.len, req.offset, done, 0));
    case Op::kWrite:
      return check(nbd_aio_pwrite(h, req.buf, req.len, req.offset, done, fua));
    case Op::kReadv:
    case Op::kWritev: {
      // NBD has no vectored commands: one per segment, at consecutive offsets.
      uint64_t off = req.offset;
      for (int i = 0; i < req.iovcnt; i++) {
        const iovec& v = req.iov[i];
        if (v.iov_len == 0) continue;
        check(req.op == Op::kReadv ? nbd_aio_pread(h, v.iov_base, v.iov_len, off, done, 0)
                                   : nbd_aio_pwrite(h, v.iov_base, v.iov_len, off, done, fua));
        off += v.iov_len;
      }
      return;
    }
    case Op::kWriteZeroes: {
      uint32_t flags = fua;
      if (req.flags & kReqNoUnmap) flags |= LIBNBD_CMD_FLAG_NO_HOLE;
      if (req.flags & kReqNoFallback) {
        // Without NBD_FLAG_SEND_FAST_ZERO the server may zero slowly: say
        // so, and the contract layer leaves the fallback to the caller.
        if (!caps_.can_fast_zero) return fail_part(c, EOPNOTSUPP);
        flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
      }
      return check(nbd_aio_zero(h, req.len, req.offset, done, flags));
    }
    case Op::kDiscard:
      return check(nbd_aio_trim(h, req.len, req.offset, done, 0));
    case Op::kBlockStatus: {
      // Only asked when base:allocation was negotiated (supports_block_status).
      // On this queue's own connection, so the answer is consistent with
      // every write this queue has seen complete, whatever the server's
      // multi-conn promises (docs/nbd-driver.md). REQ_ONE: one extent, one
      // round trip, nothing parsed that we would throw away. The contract
      // layer turns an answer that never came (extent->len still 0) into
      // "data".
      c->extent = req.extent;
      c->offset = req.offset;
      uint64_t len = std::min(req.len, caps_.max_status_len);
      nbd_extent_callback ext{.callback = &NbdQueue::on_extent, .user_data = c, .free = nullptr};
      return check(nbd_aio_block_status(h, len, req.offset, ext, done, LIBNBD_CMD_FLAG_REQ_ONE));
    }
    case Op::kFlush:
      // A server without NBD_FLAG_SEND_FLUSH has nothing to flush
      // (flush-needed is false).
      if (!caps_.can_flush) return release_parts(c, 1);
      return check(nbd_aio_flush(h, done, 0));
    default:
      return fail_part(c, EOPNOTSUPP);
  }
}

namespace {
// libnbd is part way through reading a reply (not sending a request).
bool mid_reply(nbd_handle* h) {
  return nbd_aio_is_processing(h) && !(nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE);
}
}  // namespace

bool NbdQueue::socket_readable() {
  stats_.probe_calls++;
  pollfd p{nbd_aio_get_fd(conn_->get()), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

void NbdQueue::pump(Read read) {
  nbd_handle* h = conn_->get();
  if (!connection_alive()) return;
  bool shared = conn_->queues.load(std::memory_order_relaxed) > 1;
  std::unique_lock lock(conn_->reading, std::defer_lock);
  if (shared) lock.lock();
  if (read != Read::kNo) {
    read_since_wait_ = true;
    // Told of a read early, libnbd pauses a half-sent write to wait for a
    // reply that cannot come (see NbdLink::reading): only when readable. And
    // it reads one reply (or chunk) per notification, then waits in READY
    // with more replies in the socket, where an edge-style waiter (io_uring's
    // multishot poll on our completion fd) would never hear of them: read
    // until the socket is empty. A hang-up reads as readable too, so a server
    // that went away is noticed (and its poll ends). On a
    // shared connection another queue may have emptied the socket since
    // poll() said readable: look again.
    bool readable = (read == Read::kReadable && !shared) || socket_readable();
    while (readable && (nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_READ)) {
      if (nbd_aio_notify_read(h) < 0) {
        conn_->suspect();
        return;
      }
      if (!connection_alive()) return;
      // With nothing in flight no reply can follow (a hang-up will wake the
      // completion fd by itself): spare the poll(), one system call in four
      // per request at depth 1. Nor when libnbd stopped in the middle of a
      // reply: it stops there only because the socket ran dry (servers send
      // a reply's header and data separately), and what comes next wakes
      // the completion fd anew.
      readable = nbd_aio_in_flight(h) > 0 && !mid_reply(h) && socket_readable();
    }
  }
  if ((nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE) && nbd_aio_notify_write(h) < 0) conn_->suspect();
}

NbdQueue::Read NbdQueue::wait(const struct timespec* timeout, const sigset_t* sig, int& err) {
  pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {-1, 0, 0}};
  if (connection_alive()) {
    unsigned dir = nbd_aio_get_direction(conn_->get());
    fds[1].fd = nbd_aio_get_fd(conn_->get());
    fds[1].events = POLLIN | ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
  }
  err = 0;
  // Requests parked for a reconnection: come back every tick to drive it
  // and to fail those whose reconnect-delay ran out.
  timespec tick{0, kTickNs};
  bool capped = false;
  if (!parked_.empty() && (!timeout || to_ns(*timeout) > static_cast<uint64_t>(kTickNs))) {
    timeout = &tick;
    capped = true;
  }
  int r = ::ppoll(fds, 2, timeout, sig);
  if (r < 0) {
    err = errno == EINTR ? -EINTR : -errno;
    return Read::kNo;
  }
  if (r == 0) {
    err = capped ? 0 : -ETIME;
    return Read::kNo;
  }
  if (fds[0].revents & POLLIN) {
    eventfd_t v;
    eventfd_read(wake_.get(), &v);
  }
  return (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) ? Read::kReadable : Read::kNo;
}

void NbdQueue::collect() {
  std::lock_guard lock(inbox_mu_);
  if (inbox_.empty()) return;
  in_flight_ -= inbox_.size();
  ready_.insert(ready_.end(), inbox_.begin(), inbox_.end());
  inbox_.clear();
}

unsigned NbdQueue::reap(Queue& owner, unsigned budget) {
  unsigned n = 0;
  while (n < budget && ready_head_ < ready_.size()) {
    Cmd* c = ready_[ready_head_++];
    int err = c->err.load(std::memory_order_acquire);
    uint32_t slot = c->slot;
    free_.push_back(c);
    if (err) [[unlikely]] {
      owner.complete(slot, -err, c->msg);
    } else {
      owner.complete(slot, static_cast<int>(owner.expected(slot)));
    }
    n++;
  }
  if (ready_head_ == ready_.size()) {
    ready_.clear();
    ready_head_ = 0;
  }
  return n;
}

int NbdQueue::process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
                      const sigset_t* sig) {
  Driving d(this);
  if (fd_wanted_) {
    reap_bridge();
    arm_bridge();
  }
  // A caller that will wait goes to ppoll() first: a read now would mostly
  // find nothing (two system calls for no reply at depth 1), and the ppoll()
  // returns at once if a reply is there. That includes do_io()'s first,
  // non-waiting pass when a waiting one follows. A caller that will not wait
  // was most likely woken by the completion fd: read.
  read_since_wait_ = false;
  // (Non-zero only in do_io()'s first pass, where wait_for is 0.)
  const unsigned caller_waits_for = owner.caller_waits_for();
  pump(wait_for == 0 && caller_waits_for == 0 ? Read::kIfReadable : Read::kNo);
  // After the read: a hang-up read just now has made the handle dead.
  if (link_needs_care()) [[unlikely]] {
    service_link(wait_for == 0 ? 0 : kConnectWaitMs);
  }
  collect();
  unsigned n = reap(owner, budget);
  int err = 0;
  if (n < wait_for) {
    Deadline deadline(timeout);
    while (n < wait_for) {
      timespec left = deadline.never() ? timespec{} : deadline.left();
      pump(wait(deadline.never() ? nullptr : &left, sig, err));
      if (link_needs_care()) [[unlikely]] {
        int ms = kConnectWaitMs;
        if (!deadline.never()) ms = static_cast<int>(std::min<uint64_t>(to_ns(deadline.left()) / 1000000, ms));
        service_link(ms);
      }
      collect();
      n += reap(owner, budget - n);
      if (err < 0) break;
    }
    if (n >= wait_for) err = 0;
  }
  // Nothing may stay unsent: a request half-written into a full socket would
  // wait for a wakeup that only its own reply could bring.
  while (connection_alive() && (nbd_aio_get_direction(conn_->get()) & LIBNBD_AIO_DIRECTION_WRITE)) {
    pollfd p{nbd_aio_get_fd(conn_->get()), POLLIN | POLLOUT, 0};
    if (::poll(&p, 1, -1) < 0 && errno != EINTR) break;
    pump((p.revents & (POLLIN | POLLHUP | POLLERR)) ? Read::kReadable : Read::kNo);
  }
  collect();
  // More finished than the budget allowed, or finished while sending; or
  // replies may sit unread in the socket with their wakeup already spent
  // (unless do_io() goes on to wait for them).
  const bool wait_follows = n < caller_waits_for;
  if (ready_head_ < ready_.size() || (!read_since_wait_ && in_flight_ > 0 && !wait_follows)) {
    stats_.probe_calls++;
    notify();
  }
  return n > 0 ? static_cast<int>(n) : err;
}

}  // namespace blkstack
