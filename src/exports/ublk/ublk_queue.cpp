#include "exports/ublk/ublk_queue.hpp"

#include <sys/mman.h>

#include <cstring>

#include "core/clock.hpp"
#include "core/fd.hpp"
#include "spdlog/spdlog.h"

namespace blkstack::ublk {

Queue::Queue(Reactor& reactor, BlockDevice::Lane& lane, Device& device, StatsShard& stats, const QueueSetup& setup)
    : reactor_(reactor), lane_(lane), device_(device), stats_(stats), setup_(setup), tags_(setup.depth) {
  for (uint16_t i = 0; i < setup.depth; i++) {
    tags_[i].q = this;
    tags_[i].tag = i;
  }
}

Queue::~Queue() {
  for (Tag& t : tags_) {
    if (t.pooled) lane_.pool.release(t.pooled);
  }
  if (descs_) ::munmap(const_cast<IoDesc*>(descs_), descs_len_);
  if (buffers_mapped_) device_.unmap_mem_region(buffers_);
  if (buffers_.addr) device_.free_mem_region(buffers_);
}

Status Queue::start() {
  // The driver's descriptor array for this queue, read-only to us.
  size_t per_queue = round_up(kMaxQueueDepth * sizeof(IoDesc), page_size());
  descs_len_ = round_up(setup_.depth * sizeof(IoDesc), page_size());
  void* p = ::mmap(nullptr, descs_len_, PROT_READ, MAP_SHARED | MAP_POPULATE, setup_.char_fd,
                   static_cast<off_t>(kCmdBufOffset + setup_.q_id * per_queue));
  if (p == MAP_FAILED) return errno_error("mmap ublk descriptors");
  descs_ = static_cast<const IoDesc*>(p);
  if (setup_.mode != CopyMode::kUser) {
    // One buffer per tag, in a region the device has mapped (fixed buffers
    // for the io_uring driver): the kernel copies straight into it.
    if (Status s = device_.alloc_mem_region(buffers_, static_cast<size_t>(setup_.depth) * setup_.max_io_bytes); !s) {
      return s;
    }
    if (Status s = device_.map_mem_region(buffers_); !s) return s;
    buffers_mapped_ = true;
    for (Tag& t : tags_) t.buf = static_cast<char*>(buffers_.addr) + static_cast<size_t>(t.tag) * setup_.max_io_bytes;
  }
  for (Tag& t : tags_) {
    t.state = State::kFetch;
    busy_++;
    uring_cmd(t, kUIoFetchReq, -1, reinterpret_cast<uint64_t>(t.buf));
  }
  return {};
}

void Queue::cancel_fetches() {
  for (Tag& t : tags_) {
    if (t.state != State::kFetch) continue;
    io_uring_sqe* s = reactor_.sqe();
    io_uring_prep_cancel(s, static_cast<Reactor::Op*>(&t), 0);
    io_uring_sqe_set_data(s, nullptr);
  }
}

void Queue::uring_cmd(Tag& t, uint32_t op, int32_t result, uint64_t addr) {
  io_uring_sqe* s = reactor_.sqe();
  std::memset(s, 0, sizeof(*s));
  s->opcode = IORING_OP_URING_CMD;
  s->fd = setup_.char_fd;
  s->off = op;  // cmd_op
  IoCmd cmd{setup_.q_id, t.tag, result, addr};
  std::memcpy(&s->addr3, &cmd, sizeof(cmd));
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(&t));
}

void Queue::finished(Tag& t) {
  t.state = State::kDone;
  busy_--;
  if (t.pooled) {
    lane_.pool.release(t.pooled);
    t.pooled = {};
  }
}

void Queue::on_cqe(Tag& t, int res, uint32_t) {
  switch (t.state) {
    case State::kFetch:
      if (res == kIoResOk) return handle_request(t);
      if (res == kIoResNeedGetData) {
        t.state = State::kGetData;
        return uring_cmd(t, kUIoNeedGetData, -1, reinterpret_cast<uint64_t>(t.buf));
      }
      // -ENODEV: the device is going away; -ECANCELED: we cancelled it;
      // anything else is fatal for the tag.
      if (res != -ENODEV && res != -ECANCELED) spdlog::warn("ublk: queue {} tag {}: fetch failed: {}", setup_.q_id, t.tag, strerror(-res));
      return finished(t);
    case State::kGetData:
      if (res < 0) return commit(t, res);
      return submit_io(t, descs_[t.tag]);
    case State::kCopyIn: {
      const IoDesc& d = descs_[t.tag];
      uint64_t want = static_cast<uint64_t>(d.nr_sectors) << 9;
      if (res < 0 || static_cast<uint64_t>(res) != want) return commit(t, res < 0 ? res : -EIO);
      return submit_io(t, d);
    }
    case State::kCopyOut: {
      const IoDesc& d = descs_[t.tag];
      uint64_t want = static_cast<uint64_t>(d.nr_sectors) << 9;
      return commit(t, res < 0 ? res : static_cast<uint64_t>(res) == want ? static_cast<int>(want) : -EIO);
    }
    default:
      spdlog::error("ublk: queue {} tag {}: unexpected completion in state {}", setup_.q_id, t.tag,
                    static_cast<int>(t.state));
      return;
  }
}

void Queue::handle_request(Tag& t) {
  const IoDesc& d = descs_[t.tag];
  t.start_ns = mono_ns();
  uint8_t op = d.op_flags & 0xff;
  uint64_t len = static_cast<uint64_t>(d.nr_sectors) << 9;
  if (setup_.mode == CopyMode::kUser && (op == kOpRead || op == kOpWrite)) {
    t.pooled = lane_.pool.alloc(len);
    if (!t.pooled) return commit(t, -ENOMEM);
    if (op == kOpWrite) return copy_user(t, false, d);
  }
  submit_io(t, d);
}

// User copy: move a request's data between our buffer and the kernel's.
void Queue::copy_user(Tag& t, bool to_kernel, const IoDesc& d) {
  t.state = to_kernel ? State::kCopyOut : State::kCopyIn;
  io_uring_sqe* s = reactor_.sqe();
  unsigned len = d.nr_sectors << 9;
  if (to_kernel) {
    io_uring_prep_write(s, setup_.char_fd, t.pooled.data, len, user_copy_pos(t.tag));
  } else {
    io_uring_prep_read(s, setup_.char_fd, t.pooled.data, len, user_copy_pos(t.tag));
  }
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(&t));
}

void Queue::submit_io(Tag& t, const IoDesc& d) {
  t.state = State::kIo;
  blkstack::Queue& q = lane_.io.queue();
  uint8_t op = d.op_flags & 0xff;
  uint32_t flags = d.op_flags >> 8;
  uint64_t off = d.start_sector << 9;
  uint64_t len = static_cast<uint64_t>(d.nr_sectors) << 9;
  char* buf = setup_.mode == CopyMode::kUser ? t.pooled.data : t.buf;
  // user_data must point at the IoDone part of the tag (IoQueue casts it back).
  void* ud = static_cast<IoDone*>(&t);
  switch (op) {
    case kOpRead:
      q.read(off, buf, len, ud, 0);
      break;
    case kOpWrite:
      if (flags & (kIoFFua >> 8)) StatsShard::add(stats_.fua_writes, 1);
      q.write(off, buf, len, ud, (flags & (kIoFFua >> 8)) ? kReqFua : 0);
      break;
    case kOpFlush:
      StatsShard::add(stats_.flushes, 1);
      q.flush(ud, 0);
      break;
    case kOpDiscard:
      q.discard(off, len, ud, 0);
      break;
    case kOpWriteZeroes: {
      uint32_t f = 0;
      if (flags & (kIoFNoUnmap >> 8)) f |= kReqNoUnmap;
      if (flags & (kIoFFua >> 8)) f |= kReqFua;
      q.write_zeroes(off, len, ud, f);
      break;
    }
    default:
      return commit(t, -EOPNOTSUPP);
  }
  lane_.io.kick();
}

void Queue::on_io(Tag& t, int ret) {
  const IoDesc& d = descs_[t.tag];
  uint8_t op = d.op_flags & 0xff;
  uint64_t len = static_cast<uint64_t>(d.nr_sectors) << 9;
  if (ret < 0) return commit(t, ret);
  if (op == kOpRead && setup_.mode == CopyMode::kUser) return copy_user(t, true, d);
  commit(t, (op == kOpRead || op == kOpWrite) ? static_cast<int>(len) : 0);
}

void Queue::commit(Tag& t, int result) {
  const IoDesc& d = descs_[t.tag];
  uint8_t op = d.op_flags & 0xff;
  StatsShard::add(stats_.requests, 1);
  if (result < 0) {
    StatsShard::add(stats_.errors, 1);
  } else if (op == kOpRead) {
    StatsShard::add(stats_.read_bytes, static_cast<uint64_t>(result));
  } else if (op == kOpWrite) {
    StatsShard::add(stats_.write_bytes, static_cast<uint64_t>(result));
  }
  stats_.record(mono_ns() - t.start_ns);
  if (t.pooled) {
    lane_.pool.release(t.pooled);
    t.pooled = {};
  }
  t.state = State::kFetch;
  uring_cmd(t, kUIoCommitAndFetchReq, result, reinterpret_cast<uint64_t>(t.buf));
}

}  // namespace blkstack::ublk
