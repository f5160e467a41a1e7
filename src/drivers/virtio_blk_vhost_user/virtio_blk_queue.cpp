#include "drivers/virtio_blk_vhost_user/virtio_blk_queue.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>

#include <algorithm>
#include <cerrno>

#include "core/clock.hpp"

namespace blkstack {

namespace {

constexpr uint8_t kStatusUnset = 0xff;  // a device that never wrote it: -EIO
constexpr unsigned kSectorShift = 9;    // virtio-blk sectors are 512 bytes, whatever blk_size says

uint64_t addr_of(const void* p) { return reinterpret_cast<uintptr_t>(p); }

int status_to_errno(uint8_t status) {
  switch (status) {
    case VIRTIO_BLK_S_OK: return 0;
    case VIRTIO_BLK_S_UNSUPP: return -ENOTSUP;
    default: return -EIO;
  }
}

}  // namespace

VirtioBlkQueue::VirtioBlkQueue(const VirtioBlkQueueMemory& mem, uint16_t size, bool event_idx, bool poll,
                               const VirtioBlkCaps& caps, BackendWatch& watch, int sock, UniqueFd kick,
                               UniqueFd call)
    : vq_(mem.ring, size, event_idx),
      headers_(mem.headers),
      zero_addr_(mem.zero_addr),
      zero_len_(mem.zero_len),
      poll_(poll),
      caps_(caps),
      watch_(watch),
      sock_(sock),
      kick_(std::move(kick)),
      call_(std::move(call)),
      inflight_(size),
      segs_(size) {
  pending_.reserve(size);
  failed_.reserve(size);
  // Poll queues reap by looking at the used ring: the back-end need not
  // signal them at all (it still has a call fd, unused, so a back-end that
  // signals anyway has somewhere to write).
  if (poll_) {
    vq_.suppress_notifications();
  } else {
    vq_.arm_notifications();
    watch_.add_wake_fd(call_.get());
  }
}

VirtioBlkQueue::~VirtioBlkQueue() {
  if (!poll_) watch_.remove_wake_fd(call_.get());
}

void VirtioBlkQueue::notify() { eventfd_write(call_.get(), 1); }

void VirtioBlkQueue::set_completion_fd_enabled(bool on) {
  if (poll_) return;
  fd_enabled_ = on;
  // blkio(3): the change covers requests already in flight, so the back-end
  // must signal from now on, and what it finished meanwhile counts too.
  if (on && vq_.arm_notifications()) notify();
}

void VirtioBlkQueue::defer(uint32_t slot, int res) {
  failed_.push_back({slot, res});
  // Outside process() nobody else would tell an event-driven caller.
  if (fd_enabled_) notify();
}

unsigned VirtioBlkQueue::descriptors_for(const Request& req) const {
  const uint64_t seg = caps_.max_segment_len;
  switch (req.op) {
    case Op::kRead:
    case Op::kWrite: {
      if (req.len == 0) return 0;
      // A buffer outside every mapped region can only be the contract
      // layer's zero buffer (write-zeroes fallback): it comes from our own
      // zero area, in pieces no bigger than that area.
      uint64_t piece = req.region ? seg : std::min<uint64_t>(seg, zero_len_);
      return static_cast<unsigned>(2 + (req.len + piece - 1) / piece);
    }
    case Op::kReadv:
    case Op::kWritev: {
      unsigned n = 2;
      for (int i = 0; i < req.iovcnt; i++) {
        n += static_cast<unsigned>((req.iov[i].iov_len + seg - 1) / seg);
      }
      return n == 2 ? 0 : n;
    }
    case Op::kFlush:
      return caps_.flush ? 2 : 0;
    case Op::kDiscard:
    case Op::kWriteZeroes:
      return 3;
    default:
      return 0;
  }
}

void VirtioBlkQueue::enqueue_rw(RwTag tag, uint64_t offset, void* buf, uint64_t len, const MappedRegion* region) {
  // The fast path: room in the ring, nothing queued ahead, one segment.
  const Op op = tag.op();
  if (!dead_ && pending_head_ == pending_.size() && region && len - 1 < caps_.max_segment_len &&
      vq_.free_descriptors() >= 3) [[likely]] {
    stats_.plain_ops++;
    return issue_rw(tag.slot(), op, offset, static_cast<char*>(buf), len, false);
  }
  Request r{};
  r.op = op;
  r.flags = tag.flags();
  r.offset = offset;
  r.len = len;
  r.buf = buf;
  r.region = region;
  enqueue(tag.slot(), r);
}

void VirtioBlkQueue::enqueue(uint32_t slot, const Request& req) {
  if (dead_ || watch_.dead()) return defer(slot, -EIO);
  unsigned need = descriptors_for(req);
  if (need == 0) {
    // Nothing for the device: empty transfers, or a flush on a device
    // without a volatile cache (flush-needed is false).
    if (req.op <= Op::kFlush) return defer(slot, 0);
    return defer(slot, -ENOTSUP);
  }
  // The contract layer has checked every buffer against the mapped regions;
  // a read into unknown memory is refused all the same.
  if (req.op == Op::kRead && !req.region) return defer(slot, -EFAULT);
  if (need > vq_.size()) return defer(slot, -EINVAL);
  stats_.plain_ops++;
  if (pending_head_ != pending_.size() || need > vq_.free_descriptors()) {
    // Full ring: wait for completions, in order.
    pending_.push_back({slot, req});
    return;
  }
  issue(slot, req);
}

unsigned VirtioBlkQueue::add_data(unsigned n, uint64_t addr, uint64_t len, bool device_writes, bool same_addr) {
  const uint64_t piece = same_addr ? std::min<uint64_t>(caps_.max_segment_len, zero_len_) : caps_.max_segment_len;
  while (len > 0) {
    uint64_t l = std::min(len, piece);
    segs_[n++] = {addr, static_cast<uint32_t>(l), device_writes};
    if (!same_addr) addr += l;
    len -= l;
  }
  return n;
}

void VirtioBlkQueue::issue_rw(uint32_t slot, Op op, uint64_t offset, char* buf, uint64_t len, bool zero_fill) {
  const bool write = op == Op::kWrite;
  unsigned n = 1;
  if (zero_fill) {
    n = add_data(n, zero_addr_, len, false, true);
  } else if (len - 1 < caps_.max_segment_len) {
    segs_[n++] = {addr_of(buf), static_cast<uint32_t>(len), !write};
  } else {
    n = add_data(n, addr_of(buf), len, !write, false);
  }
  finish_chain(slot, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, offset >> kSectorShift, n, nullptr);
}

// The header entry of a chain is indexed by its head descriptor, the first
// free one, which add() is about to take: fill it in, then add the chain.
// The device sees neither before publish().
void VirtioBlkQueue::finish_chain(uint32_t slot, uint32_t type, uint64_t sector, unsigned n,
                                  const virtio_blk_discard_write_zeroes* range) {
  const uint16_t head = vq_.next_head();
  VirtioBlkReqHeader& h = headers_[head];
  h.out.type = type;
  h.out.ioprio = 0;
  h.out.sector = sector;
  h.status = kStatusUnset;
  segs_[0] = {addr_of(&h.out), sizeof(virtio_blk_outhdr), false};
  if (range) {
    h.range = *range;
    segs_[1] = {addr_of(&h.range), sizeof(virtio_blk_discard_write_zeroes), false};
  }
  segs_[n] = {addr_of(&h.status), 1, true};
  vq_.add(segs_.data(), n + 1);
  inflight_[head] = {slot, true};
  active_++;
}

void VirtioBlkQueue::issue(uint32_t slot, const Request& req) {
  switch (req.op) {
    case Op::kRead:
    case Op::kWrite:
      return issue_rw(slot, req.op, req.offset, static_cast<char*>(req.buf), req.len, !req.region);
    case Op::kReadv:
    case Op::kWritev: {
      const bool write = req.op == Op::kWritev;
      unsigned n = 1;
      for (int i = 0; i < req.iovcnt; i++) {
        n = add_data(n, addr_of(req.iov[i].iov_base), req.iov[i].iov_len, !write, false);
      }
      return finish_chain(slot, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, req.offset >> kSectorShift, n, nullptr);
    }
    case Op::kFlush:
      return finish_chain(slot, VIRTIO_BLK_T_FLUSH, 0, 1, nullptr);
    case Op::kDiscard:
    case Op::kWriteZeroes: {
      const bool zeroes = req.op == Op::kWriteZeroes;
      virtio_blk_discard_write_zeroes range{};
      range.sector = req.offset >> kSectorShift;
      range.num_sectors = static_cast<uint32_t>(req.len >> kSectorShift);
      // Write zeroes may deallocate unless the caller said NO_UNMAP, and
      // only if the device said it can.
      if (zeroes && !(req.flags & kReqNoUnmap) && caps_.write_zeroes_may_unmap) {
        range.flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
      }
      return finish_chain(slot, zeroes ? VIRTIO_BLK_T_WRITE_ZEROES : VIRTIO_BLK_T_DISCARD, 0, 2, &range);
    }
    default:
      return defer(slot, -ENOTSUP);
  }
}

void VirtioBlkQueue::submit() {
  while (pending_head_ < pending_.size()) {
    const Pending& p = pending_[pending_head_];
    if (descriptors_for(p.req) > vq_.free_descriptors()) break;
    pending_head_++;
    issue(p.slot, p.req);
  }
  if (pending_head_ == pending_.size()) {
    pending_.clear();
    pending_head_ = 0;
  }
  if (vq_.publish()) {
    eventfd_write(kick_.get(), 1);
    stats_.submit_calls++;
  }
}

unsigned VirtioBlkQueue::reap(Queue& owner, unsigned budget) {
  unsigned n = 0;
  while (n < budget && failed_head_ < failed_.size()) {
    Failed f = failed_[failed_head_++];
    owner.complete(f.slot, f.res < 0 ? f.res : static_cast<int>(owner.expected(f.slot)));
    n++;
  }
  if (failed_head_ == failed_.size()) {
    failed_.clear();
    failed_head_ = 0;
  }
  uint16_t head;
  uint32_t written;
  while (n < budget && vq_.pop_used(head, written)) {
    InFlight& f = inflight_[head];
    f.active = false;
    active_--;
    int err = status_to_errno(headers_[head].status);
    owner.complete(f.slot, err ? err : static_cast<int>(owner.expected(f.slot)));
    n++;
  }
  return n;
}

unsigned VirtioBlkQueue::fail_everything(Queue& owner, unsigned budget) {
  dead_ = true;
  unsigned n = 0;
  for (uint16_t h = 0; h < vq_.size() && n < budget; h++) {
    if (!inflight_[h].active) continue;
    inflight_[h].active = false;
    active_--;
    owner.complete(inflight_[h].slot, -EIO);
    n++;
  }
  while (n < budget && pending_head_ < pending_.size()) {
    owner.complete(pending_[pending_head_++].slot, -EIO);
    n++;
  }
  return n;
}

int VirtioBlkQueue::wait(const struct timespec* timeout, const sigset_t* sig) {
  // The socket too (hang-up only: its replies belong to the control path),
  // so a dead back-end wakes us even before the watcher thread runs.
  pollfd fds[2] = {{call_.get(), POLLIN, 0}, {sock_, POLLRDHUP, 0}};
  int r = ::ppoll(fds, 2, timeout, sig);
  if (r < 0) return errno == EINTR ? -EINTR : -errno;
  if (r == 0) return -ETIME;
  if (fds[1].revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) watch_.mark_dead();
  if (!(fds[0].revents & POLLIN)) return 0;
  // Reset the signal we were woken by (only then: a read that finds
  // nothing is a wasted system call).
  eventfd_t v;
  eventfd_read(call_.get(), &v);
  return 0;
}

// Completions that come faster than a sleep and a wakeup cost (many
// requests in flight) are cheaper to wait for on the CPU: no ppoll() and
// eventfd read here, no eventfd write in the back-end. Only tried while the
// last sleep was that short, so a slow device (or depth 1 on a slow one)
// costs no spinning.
bool VirtioBlkQueue::spin_for_used() {
  const uint64_t t0 = mono_ns();
  for (unsigned i = 1;; i++) {
    if (vq_.has_used()) {
      last_wait_ns_ = 0;
      return true;
    }
    if ((i & 63) == 0 && mono_ns() - t0 >= kSpinNs) {
      last_wait_ns_ = kSpinNs;  // and the sleep that follows says more
      return false;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

int VirtioBlkQueue::process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
                            const sigset_t* sig) {
  submit();
  unsigned n = reap(owner, budget);
  int err = 0;
  const Deadline deadline(timeout);
  for (unsigned spins = 0; n < wait_for;) {
    if (watch_.dead()) {
      // What the back-end finished before it went away is reaped above;
      // the rest never will be.
      n += reap(owner, budget - n);
      n += fail_everything(owner, budget - n);
      if (n >= wait_for) break;
      err = -EIO;  // nothing left that could finish
      break;
    }
    if (poll_) {
      // Poll queues busy-wait on the used ring; the clock only now and then.
      if (!vq_.has_used()) {
        if ((++spins & 1023) == 0 && deadline.passed()) {
          err = -ETIME;
          break;
        }
        continue;
      }
    } else if (last_wait_ns_ < kSpinNs && spin_for_used()) {
      // Arrived while we spun: no sleep, and no signal asked of the back-end.
    } else if (!vq_.arm_notifications()) {
      // Armed, and nothing arrived meanwhile: sleep until the back-end
      // signals. A signal left over from earlier wakes us once for nothing.
      timespec left = deadline.never() ? timespec{} : deadline.left();
      const uint64_t t0 = mono_ns();
      err = wait(deadline.never() ? nullptr : &left, sig);
      last_wait_ns_ = mono_ns() - t0;
    }
    n += reap(owner, budget - n);
    submit();  // completions freed descriptors, and may have queued follow-ups
    if (err < 0) break;
  }
  if (n >= wait_for) err = 0;
  // Also for callers that do not wait (event-driven ones), and for what an
  // earlier call left over for lack of budget.
  if (watch_.dead()) n += fail_everything(owner, budget - n);
  submit();
  if (!poll_) {
    if (fd_enabled_) {
      // Event-driven caller: re-arm, and if completions are already waiting
      // (budget used up, or they raced the re-arm), say so through the
      // completion fd.
      if (vq_.arm_notifications() || failed_head_ < failed_.size() ||
          (dead_ && (active_ > 0 || pending_head_ < pending_.size()))) {
        notify();
      }
    } else {
      // Nobody listens between calls: the back-end need not signal (one
      // eventfd write less per batch on its side). We arm before sleeping.
      vq_.disarm_notifications();
    }
  }
  return n > 0 ? static_cast<int>(n) : err;
}

}  // namespace blkstack
