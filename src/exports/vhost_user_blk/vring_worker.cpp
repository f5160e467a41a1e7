#include "exports/vhost_user_blk/vring_worker.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/clock.hpp"
#include "spdlog/spdlog.h"

namespace blkstack::vhost_blk {

VringWorker::VringWorker(Reactor& reactor, BlockDevice::Lane& lane, WorkerShared& shared, StatsShard& stats)
    : reactor_(reactor), lane_(lane), shared_(shared), stats_(stats) {}

VringWorker::~VringWorker() = default;

const char* VringWorker::start(const VringStart& s) {
  mem_ = *s.mem;
  if (const char* e = vq_.attach(mem_, s.layout, s.last_avail, s.event_idx, s.indirect)) return e;
  index_ = s.index;
  kick_fd_ = s.kick_fd;
  call_fd_ = s.call_fd;
  stopping_ = false;
  logged_broken_ = false;
  // A request slot per ring entry: the front-end cannot have more in flight.
  if (reqs_.size() < s.layout.num) {
    reqs_.reserve(s.layout.num);
    while (reqs_.size() < s.layout.num) {
      reqs_.push_back(std::make_unique<Req>());
      reqs_.back()->w = this;
      reqs_.back()->slot = static_cast<uint32_t>(reqs_.size() - 1);
    }
  }
  free_head_ = UINT32_MAX;
  for (uint32_t i = static_cast<uint32_t>(reqs_.size()); i-- > 0;) {
    reqs_[i]->next_free = free_head_;
    free_head_ = i;
  }
  arm_kick();
  // Requests made before we started (or while the ring was stopped) come
  // with no kick of their own.
  process();
  return nullptr;
}

void VringWorker::request_stop() {
  stopping_ = true;
  if (kick_armed_) {
    io_uring_sqe* s = reactor_.sqe();
    io_uring_prep_cancel(s, static_cast<Reactor::Op*>(this), 0);
    io_uring_sqe_set_data(s, nullptr);
  }
}

void VringWorker::arm_kick() {
  io_uring_sqe* s = reactor_.sqe();
  if (poll_mode_) {
    io_uring_prep_poll_add(s, kick_fd_, POLLIN);
  } else {
    // A read per wakeup: it resets the eventfd and wakes us in one CQE.
    io_uring_prep_read(s, kick_fd_, &kick_value_, sizeof(kick_value_), 0);
  }
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(this));
  kick_armed_ = true;
}

void VringWorker::complete(int res, uint32_t) {
  kick_armed_ = false;
  if (stopping_) return;
  if (res == -EAGAIN && !poll_mode_) {
    // A non-blocking kick eventfd (QEMU's are) on a kernel that will not
    // wait for it in a read: poll for it instead.
    poll_mode_ = true;
  } else if (res < 0) {
    spdlog::warn("vhost-user-blk {}: vring {}: kick fd failed: {}; ring stalled", shared_.id, index_, strerror(-res));
    return;
  } else if (poll_mode_) {
    uint64_t v;
    (void)!::read(kick_fd_, &v, sizeof(v));  // readable: does not block
  }
  process();
  arm_kick();
}

void VringWorker::process() {
  if (stopping_) return;
  starved_ = false;
  bool queued = false;
  for (;;) {
    while (free_head_ != UINT32_MAX) {
      Req& r = *reqs_[free_head_];
      vhost::PopResult p = vq_.pop(r.chain);
      if (p == vhost::PopResult::kEmpty) break;
      if (p == vhost::PopResult::kBroken) {
        if (!logged_broken_) {
          spdlog::warn("vhost-user-blk {}: vring {}: the front-end's ring is inconsistent; not processing it until it is reset",
                       shared_.id, index_);
          logged_broken_ = true;
        }
        if (queued) lane_.io.kick();
        return;
      }
      free_head_ = r.next_free;
      inflight_++;
      r.start_ns = mono_ns();
      if (p == vhost::PopResult::kBadChain) {
        spdlog::debug("vhost-user-blk {}: vring {}: bad descriptor chain {}: {}", shared_.id, index_, r.chain.head,
                      r.chain.error);
        r.blk = BlkRequest{};  // no status byte we can trust
        put_used(r, VIRTIO_BLK_S_IOERR, 0);
        continue;
      }
      r.blk = parse_request(r.chain, shared_.limits);
      if (r.blk.op == BlkOp::kDone) {
        if (r.blk.why) spdlog::debug("vhost-user-blk {}: vring {}: request type {}: {}", shared_.id, index_, r.blk.type, r.blk.why);
        put_used(r, r.blk.status, r.blk.status == VIRTIO_BLK_S_OK ? r.blk.used_len_ok : (r.blk.status_byte ? 1 : 0));
        continue;
      }
      queued |= r.blk.op != BlkOp::kGetId;
      submit(r);
    }
    // Out of slots: completions free them and process again. Otherwise
    // tell the front-end where we are and look once more.
    if (free_head_ == UINT32_MAX) {
      starved_ = true;  // only a front-end that reuses heads gets here
      break;
    }
    if (!vq_.arm_kick()) break;
  }
  if (queued) lane_.io.kick();
}

void VringWorker::submit(Req& r) {
  blkstack::Queue& q = lane_.io.queue();
  void* ud = static_cast<IoDone*>(&r);
  const BlkRequest& b = r.blk;
  switch (b.op) {
    case BlkOp::kRead:
      q.readv(b.offset, b.iov, b.iovcnt, ud, 0);
      break;
    case BlkOp::kWrite: {
      // Write-through (the driver cleared wce): every write is durable.
      bool fua = !shared_.writeback.load(std::memory_order_relaxed);
      if (fua) StatsShard::add(stats_.fua_writes, 1);
      q.writev(b.offset, b.iov, b.iovcnt, ud, fua ? kReqFua : 0);
      break;
    }
    case BlkOp::kFlush:
      StatsShard::add(stats_.flushes, 1);
      q.flush(ud, 0);
      break;
    case BlkOp::kDiscard:
      shared_.device->holes_may_appear();
      q.discard(b.offset, b.len, ud, 0);
      break;
    case BlkOp::kWriteZeroes:
      shared_.device->holes_may_appear();
      q.write_zeroes(b.offset, b.len, ud, b.unmap ? 0 : kReqNoUnmap);
      break;
    case BlkOp::kGetId: {
      char id[VIRTIO_BLK_ID_BYTES] = {};
      std::memcpy(id, shared_.id.data(), std::min<size_t>(shared_.id.size(), sizeof(id)));
      scatter(b.iov, b.iovcnt, id, b.len);
      put_used(r, VIRTIO_BLK_S_OK, b.used_len_ok);
      break;
    }
    case BlkOp::kDone:
      break;
  }
}

void VringWorker::finish(Req& r, int ret) {
  if (ret >= 0) {
    if (r.blk.op == BlkOp::kRead) StatsShard::add(stats_.read_bytes, r.blk.len);
    if (r.blk.op == BlkOp::kWrite) StatsShard::add(stats_.write_bytes, r.blk.len);
  }
  put_used(r, ret < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK, ret < 0 ? 1 : r.blk.used_len_ok);
  // A slot came free: requests left in the ring for lack of one go now.
  if (starved_) process();
}

void VringWorker::put_used(Req& r, uint8_t status, uint32_t used_len) {
  if (r.blk.status_byte) *r.blk.status_byte = status;
  vq_.push(r.chain.head, used_len);
  StatsShard::add(stats_.requests, 1);
  if (status != VIRTIO_BLK_S_OK) StatsShard::add(stats_.errors, 1);
  stats_.record(mono_ns() - r.start_ns);
  inflight_--;
  r.next_free = free_head_;
  free_head_ = r.slot;
  notify_pending_ = true;
  reactor_.defer(*this);
}

void VringWorker::run_deferred() {
  if (!notify_pending_) return;
  notify_pending_ = false;
  if (vq_.should_notify() && call_fd_ >= 0) eventfd_write(call_fd_, 1);
}

}  // namespace blkstack::vhost_blk
