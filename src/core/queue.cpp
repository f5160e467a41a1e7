// The data path of the contract layer: every request is checked here once, so
// drivers never see a malformed one, and features a driver lacks (FUA,
// write-zeroes) are emulated here.
#include "blkstack/queue.hpp"

#include <algorithm>
#include <cstring>

#include "blkstack/device.hpp"
#include "core/clock.hpp"
#include "core/driver.hpp"

namespace blkstack {

namespace {

// What the step in flight for a slot is (Slot::stage). kDirect requests go
// straight back to the application when the driver completes them.
enum Stage : uint8_t {
  kDirect = 0,
  kDataStep,      // a write whose success leads to the FUA-emulating flush
  kNativeZeroes,  // the driver's write-zeroes; -ENOTSUP may fall back to writes
  kZeroWrite,     // one chunk of the write-zeroes fallback
  kFinalFlush,    // the flush that emulates FUA
  kReportZones,   // ret is the number of zones, passed through
  kBlockStatus,   // the driver's answer is checked before the caller sees it
};

constexpr const char* kErrFlags = "unsupported bits in request flags";
constexpr const char* kErrFua = "BLKIO_REQ_FUA is invalid for this request type";
constexpr const char* kErrZeroFlags = "BLKIO_REQ_NO_UNMAP and BLKIO_REQ_NO_FALLBACK are only valid for write zeroes";
constexpr const char* kErrReadOnly = "the device is read-only";

inline bool misaligned(uint64_t v, uint64_t align) { return (v & (align - 1)) != 0; }


}  // namespace

const char* op_name(Op op) {
  static const char* const names[] = {"read",       "write",     "readv",       "writev",
                                      "write-zeroes", "discard", "flush",       "report-zones",
                                      "zone-open",  "zone-close", "zone-finish", "zone-reset",
                                      "zone-open-all", "zone-close-all", "zone-finish-all", "zone-reset-all",
                                      "block-status"};
  return names[static_cast<int>(op)];
}

Queue::Queue(Device& device, std::unique_ptr<DriverQueue> driver_queue, bool poll)
    : device_(device), dq_(std::move(driver_queue)), regions_(&device.regions_pointer()), poll_(poll) {
  const DeviceInfo& i = device.info();
  lim_.req_mask = static_cast<uint64_t>(i.request_alignment) - 1;
  lim_.buf_mask = static_cast<uint64_t>(i.buf_alignment) - 1;
  lim_.max_len = i.max_transfer > 0 ? static_cast<uint64_t>(i.max_transfer) : UINT64_MAX;
  lim_.end = i.can_grow ? UINT64_MAX : i.capacity;
  lim_.capacity = i.capacity;
  lim_.max_write_zeroes = i.max_write_zeroes_len;
  lim_.max_discard = i.max_discard_len;
  lim_.max_segment_len = static_cast<uint64_t>(i.max_segment_len);
  lim_.discard_align = static_cast<uint64_t>(std::max(i.discard_alignment, 1));
  lim_.discard_align_offset = static_cast<uint64_t>(i.discard_alignment_offset);
  lim_.max_segments = i.max_segments;
  lim_.read_only = device.read_only();
  lim_.fua_native = i.supports_fua_natively;
  lim_.fua_native_zeroes = i.fua_native_write_zeroes;
  lim_.supports_write_zeroes = i.supports_write_zeroes;
  lim_.supports_discard = i.supports_discard;
  lim_.needs_regions = i.needs_mem_regions;
  lim_.zoned = i.zoned;
  lim_.can_report_holes = i.can_report_holes;
  lim_.driver_block_status = i.can_report_holes && dq_->supports_block_status();
  fast_write_flags_ = i.supports_fua_natively ? kReqFua : 0;

  zero_chunk_ = device.zero_buffer_len();
  if (i.max_transfer > 0) zero_chunk_ = std::min<uint64_t>(zero_chunk_, static_cast<uint64_t>(i.max_transfer));
  zero_chunk_ -= zero_chunk_ % static_cast<uint64_t>(i.request_alignment);

  static_assert(sizeof(Slot) == 32);
  slots_.resize(128);
  staged_.resize(128);
  for (uint32_t k = 0; k < slots_.size(); k++) slots_[k].next_free = k + 1 < slots_.size() ? k + 1 : UINT32_MAX;
  free_head_ = 0;
  ready_.reserve(16);
}

Queue::~Queue() = default;

// ---- slots and completions ----

uint32_t Queue::grow() {
  // Indices stay valid across growth; references do not (see request()).
  uint32_t old = static_cast<uint32_t>(slots_.size());
  slots_.resize(old * 2);
  staged_.resize(old * 2);
  for (uint32_t k = old; k < slots_.size(); k++) slots_[k].next_free = k + 1 < slots_.size() ? k + 1 : UINT32_MAX;
  free_head_ = old;
  return old;
}

void Queue::defer(void* user_data, int ret, const char* msg) {
  Completion c{};
  c.user_data = user_data;
  c.error_msg = msg;
  c.ret = ret;
  ready_.push_back(c);
  // Outside do_io() nobody else will tell an event-driven caller.
  if (!in_do_io_ && fd_enabled_) dq_->notify();
}

void Queue::settle(void* user_data, int ret, const char* msg) {
  ++pending_;
  defer(user_data, ret, msg);
}

void Queue::drain_ready() {
  while (ready_head_ < ready_.size() && out_n_ < out_max_) out_[out_n_++] = ready_[ready_head_++];
  if (ready_head_ == ready_.size()) {
    ready_.clear();
    ready_head_ = 0;
  }
}

// Puts completions already copied to the caller's array back in front of the
// ready list, for a do_io() that ends in an error and so hands nothing out.
void Queue::unget(int n) {
  if (n == 0) return;
  std::vector<Completion> merged(out_, out_ + n);
  merged.insert(merged.end(), ready_.begin() + static_cast<ptrdiff_t>(ready_head_), ready_.end());
  ready_ = std::move(merged);
  ready_head_ = 0;
}

void Queue::submit(const Request& req, uint8_t stage, bool flush_after) {
  uint32_t slot;
  Slot& s = start_request(slot);
  s.user_data = req.user_data;
  s.expected = req.op <= Op::kWritev ? req.len : 0;
  s.stage = stage;
  s.flush_after = flush_after;
  staged_[slot] = Staged{req, 0};
  if (stage == kZeroWrite) {
    issue_zero_chunk(slot);
  } else {
    dq_->enqueue(slot, req);
  }
}

void Queue::issue_zero_chunk(uint32_t slot) {
  Slot& s = slots_[slot];
  const Staged& st = staged_[slot];
  Request w{};
  w.op = Op::kWrite;
  w.offset = st.req.offset + st.done;
  w.len = std::min<uint64_t>(zero_chunk_, st.req.len - st.done);
  w.buf = const_cast<void*>(device_.zero_buffer());
  w.user_data = s.user_data;
  s.expected = w.len;
  dq_->enqueue(slot, w);
}

void Queue::issue_flush_step(uint32_t slot) {
  Slot& s = slots_[slot];
  s.stage = kFinalFlush;
  s.expected = 0;
  Request f{};
  f.op = Op::kFlush;
  f.user_data = s.user_data;
  dq_->enqueue(slot, f);
}

// A multi-step request finished one step.
void Queue::advance(uint32_t slot, int res) {
  Slot& s = slots_[slot];
  Staged& st = staged_[slot];
  auto finish = [&](int ret) {
    emit(s.user_data, ret, nullptr);
    s.stage = 0;
    release(slot);
  };
  switch (s.stage) {
    case kReportZones:
      return finish(res);
    case kBlockStatus: {
      // The driver wrote its answer to the caller's struct; hold it to the
      // contract: 1 to len bytes, and "data" when the driver said nothing.
      AllocationExtent* e = st.req.extent;
      if (res >= 0 && (e->len == 0 || e->len > st.req.len)) {
        if (e->len == 0) e->hole = false;
        e->len = st.req.len;
      }
      return finish(res < 0 ? res : 0);
    }
    case kFinalFlush:
      return finish(res < 0 ? res : 0);
    case kNativeZeroes:
      if (res == -EOPNOTSUPP && !(st.req.flags & kReqNoFallback)) {
        s.stage = kZeroWrite;
        st.done = 0;
        return issue_zero_chunk(slot);
      }
      break;
    case kZeroWrite:
      if (res >= 0) {
        st.done += std::min<uint64_t>(zero_chunk_, st.req.len - st.done);
        if (st.done < st.req.len) return issue_zero_chunk(slot);
      }
      break;
    default:
      break;
  }
  // The data steps are over.
  if (res < 0 || !s.flush_after) return finish(res < 0 ? res : 0);
  issue_flush_step(slot);
}

// ---- checks ----

const char* Queue::rw_error(uint64_t offset, const void* buf, uint64_t len) const {
  if ((offset | len) & lim_.req_mask) return "request start and length must be multiples of request-alignment";
  if ((reinterpret_cast<uintptr_t>(buf) | len) & lim_.buf_mask) {
    return "buffer address and length must be multiples of buf-alignment";
  }
  if (len > lim_.max_len) return "request length exceeds max-transfer";
  return "request is beyond the end of the device";
}

const char* Queue::check_range(uint64_t offset, uint64_t len) const {
  if ((offset | len) & lim_.req_mask) return "request start and length must be multiples of request-alignment";
  if (offset > lim_.end || len > lim_.end - offset) return "request is beyond the end of the device";
  return nullptr;
}

const char* Queue::check_iov(uint64_t offset, const struct iovec* iov, int iovcnt, uint64_t& len) {
  if (iovcnt < 0) return "iovcnt must be non-negative";
  if (iovcnt > lim_.max_segments) return "iovcnt exceeds max-segments";
  if (iovcnt > 0 && !iov) return "iovec must not be NULL";
  len = 0;
  for (int i = 0; i < iovcnt; i++) {
    if ((reinterpret_cast<uintptr_t>(iov[i].iov_base) | iov[i].iov_len) & lim_.buf_mask) {
      return "buffer address and length must be multiples of buf-alignment";
    }
    if (lim_.max_segment_len && iov[i].iov_len > lim_.max_segment_len) return "iovec exceeds max-segment-len";
    if (lim_.needs_regions && !lookup_region(iov[i].iov_base, iov[i].iov_len)) {
      return "buffer is not inside a mapped memory region";
    }
    len += iov[i].iov_len;
    if (len < iov[i].iov_len) return "request length overflows";
  }
  if (!rw_ok(offset, nullptr, len)) return rw_error(offset, nullptr, len);
  return nullptr;
}

const MappedRegion* Queue::lookup_region_slow(const RegionTable* t, uintptr_t addr, size_t len) {
  if (t->empty() && !lim_.needs_regions) {
    // Nothing is mapped: remember that, for every address.
    hint_table_ = t;
    hint_ = nullptr;
    hint_begin_ = 0;
    hint_len_ = UINTPTR_MAX;
    return nullptr;
  }
  const MappedRegion* r = t->find(addr, len);
  if (r) {
    hint_table_ = t;
    hint_ = r;
    hint_begin_ = r->begin;
    hint_len_ = r->end - r->begin;
  }
  return r;
}

namespace {
inline const char* flags_error(uint32_t flags) {
  return (flags & ~kReqAllFlags) ? kErrFlags : (flags & kReqFua) ? kErrFua : kErrZeroFlags;
}
}  // namespace

// ---- requests ----

inline void Queue::rw_fast(Op op, uint64_t offset, void* buf, uint64_t len, void* user_data, uint32_t flags) {
  const RegionTable* t = regions_->load(std::memory_order_acquire);
  const uintptr_t a = reinterpret_cast<uintptr_t>(buf);
  const uint64_t slot = free_head_;
  // Flags other than FUA-on-a-native-FUA-write, a write to a read-only
  // device, a buffer outside the region hint, or no free slot: all take the
  // slow path.
  const uint32_t allowed = op == Op::kWrite ? fast_write_flags_ : 0;
  if ((flags & ~allowed) || (op == Op::kWrite && lim_.read_only) || !rw_ok(offset, buf, len) || t != hint_table_ ||
      a - hint_begin_ > hint_len_ || len > hint_len_ - (a - hint_begin_) || slot == UINT32_MAX) [[unlikely]] {
    return rw_slow(op, offset, buf, len, user_data, flags);
  }
  Slot& s = slots_[slot];
  free_head_ = s.next_free;
  ++pending_;
  s.user_data = user_data;
  s.expected = len;
  dq_->enqueue_rw(RwTag::make(static_cast<uint32_t>(slot), op, flags), offset, buf, len, hint_);
}

void Queue::read(uint64_t offset, void* buf, size_t len, void* user_data, uint32_t flags) {
  rw_fast(Op::kRead, offset, buf, len, user_data, flags);
}

void Queue::write(uint64_t offset, const void* buf, size_t len, void* user_data, uint32_t flags) {
  rw_fast(Op::kWrite, offset, const_cast<void*>(buf), len, user_data, flags);
}

void Queue::rw_slow(Op op, uint64_t offset, void* buf, uint64_t len, void* user_data, uint32_t flags) {
  const bool write = op == Op::kWrite;
  if (write && lim_.read_only) return fail(user_data, -EBADF, kErrReadOnly);
  const uint32_t allowed = write ? kReqFua : 0;
  if (flags & ~allowed) return fail(user_data, -EINVAL, flags_error(flags & ~allowed));
  if (!rw_ok(offset, buf, len)) return fail(user_data, -EINVAL, rw_error(offset, buf, len));
  const MappedRegion* region = lookup_region(buf, len);
  if (lim_.needs_regions && !region) return fail(user_data, -EFAULT, "buffer is not inside a mapped memory region");
  Request r;
  r.op = op;
  r.flags = flags;
  r.offset = offset;
  r.len = len;
  r.buf = buf;
  r.iovcnt = 0;
  r.region = region;
  r.user_data = user_data;
  if (write && (flags & kReqFua) && !lim_.fua_native) {
    r.flags = 0;
    return submit(r, kDataStep, true);
  }
  submit(r, kDirect, false);
}

void Queue::readv(uint64_t offset, const struct iovec* iov, int iovcnt, void* user_data, uint32_t flags) {
  if (flags) [[unlikely]] return fail(user_data, -EINVAL, flags_error(flags));
  uint64_t len;
  if (const char* e = check_iov(offset, iov, iovcnt, len)) [[unlikely]] return fail(user_data, -EINVAL, e);
  Request r{};
  r.op = Op::kReadv;
  r.offset = offset;
  r.len = len;
  r.iov = iov;
  r.iovcnt = iovcnt;
  r.user_data = user_data;
  submit(r, kDirect, false);
}

void Queue::writev(uint64_t offset, const struct iovec* iov, int iovcnt, void* user_data, uint32_t flags) {
  if (lim_.read_only) [[unlikely]] return fail(user_data, -EBADF, kErrReadOnly);
  if (flags & ~kReqFua) [[unlikely]] return fail(user_data, -EINVAL, flags_error(flags & ~kReqFua));
  uint64_t len;
  if (const char* e = check_iov(offset, iov, iovcnt, len)) [[unlikely]] return fail(user_data, -EINVAL, e);
  bool emulate = (flags & kReqFua) && !lim_.fua_native;
  Request r{};
  r.op = Op::kWritev;
  r.flags = emulate ? 0 : flags;
  r.offset = offset;
  r.len = len;
  r.iov = iov;
  r.iovcnt = iovcnt;
  r.user_data = user_data;
  submit(r, emulate ? kDataStep : kDirect, emulate);
}

void Queue::write_zeroes(uint64_t offset, uint64_t len, void* user_data, uint32_t flags) {
  if (lim_.read_only) return fail(user_data, -EBADF, kErrReadOnly);
  if (flags & ~kReqAllFlags) return fail(user_data, -EINVAL, kErrFlags);
  if (const char* e = check_range(offset, len)) return fail(user_data, -EINVAL, e);
  if (lim_.max_write_zeroes && len > lim_.max_write_zeroes) {
    return fail(user_data, -EINVAL, "request length exceeds max-write-zeroes-len");
  }
  bool emulate_fua = (flags & kReqFua) && !lim_.fua_native_zeroes;
  if (len == 0 && !emulate_fua) return succeed(user_data);
  Request r{};
  r.op = Op::kWriteZeroes;
  r.flags = emulate_fua ? (flags & ~kReqFua) : flags;
  r.offset = offset;
  r.len = len;
  r.user_data = user_data;
  if (len == 0) return flush(user_data, 0);  // nothing to zero, but FUA still means a flush
  if (!lim_.supports_write_zeroes) {
    if (flags & kReqNoFallback) {
      return fail(user_data, -ENOTSUP, "write zeroes is not supported natively (BLKIO_REQ_NO_FALLBACK)");
    }
    return submit(r, kZeroWrite, emulate_fua);
  }
  submit(r, kNativeZeroes, emulate_fua);
}

void Queue::discard(uint64_t offset, uint64_t len, void* user_data, uint32_t flags) {
  if (lim_.read_only) return fail(user_data, -EBADF, kErrReadOnly);
  if (flags) return fail(user_data, -EINVAL, flags_error(flags));
  if (!lim_.supports_discard) return fail(user_data, -ENOTSUP, "discard is not supported by this device");
  if (const char* e = check_range(offset, len)) return fail(user_data, -EINVAL, e);
  if (lim_.discard_align > 1 &&
      (offset < lim_.discard_align_offset || (offset - lim_.discard_align_offset) % lim_.discard_align != 0 ||
       len % lim_.discard_align != 0)) {
    return fail(user_data, -EINVAL, "discard start and length must follow discard-alignment");
  }
  if (lim_.max_discard && len > lim_.max_discard) return fail(user_data, -EINVAL, "request length exceeds max-discard-len");
  if (len == 0) return succeed(user_data);
  Request r{};
  r.op = Op::kDiscard;
  r.offset = offset;
  r.len = len;
  r.user_data = user_data;
  submit(r, kDirect, false);
}

void Queue::flush(void* user_data, uint32_t flags) {
  if (flags) return fail(user_data, -EINVAL, flags_error(flags));
  Request r{};
  r.op = Op::kFlush;
  r.user_data = user_data;
  submit(r, kDirect, false);
}

void Queue::report_zones(uint64_t offset, Zone* zones, uint32_t nr_zones, void* user_data, uint32_t flags) {
  if (!lim_.zoned) return fail(user_data, -ENOTSUP, "zoned storage is not supported by this device");
  if (flags) return fail(user_data, -EINVAL, kErrFlags);
  if (offset >= lim_.capacity) return fail(user_data, -EINVAL, "request is beyond the end of the device");
  Request r{};
  r.op = Op::kReportZones;
  r.offset = offset;
  r.len = nr_zones;
  r.zones = zones;
  r.user_data = user_data;
  submit(r, kReportZones, false);
}

void Queue::zone_management(Op op, uint64_t offset, void* user_data, uint32_t flags) {
  if (!lim_.zoned) return fail(user_data, -ENOTSUP, "zoned storage is not supported by this device");
  if (lim_.read_only) return fail(user_data, -EBADF, kErrReadOnly);
  if (flags) return fail(user_data, -EINVAL, kErrFlags);
  bool all = op >= Op::kZoneOpenAll;
  if (!all && offset >= lim_.capacity) return fail(user_data, -EINVAL, "request is beyond the end of the device");
  Request r{};
  r.op = op;
  r.offset = all ? 0 : offset;
  r.user_data = user_data;
  submit(r, kDirect, false);
}

void Queue::block_status(uint64_t offset, uint64_t len, AllocationExtent* out, void* user_data, uint32_t flags) {
  if (flags) return fail(user_data, -EINVAL, kErrFlags);
  if (!out) return fail(user_data, -EINVAL, "the extent to fill in must not be NULL");
  if (len == 0) return fail(user_data, -EINVAL, "block status length must not be zero");
  if (offset & lim_.req_mask) return fail(user_data, -EINVAL, "request start must be a multiple of request-alignment");
  if (offset >= lim_.capacity) return fail(user_data, -EINVAL, "request is beyond the end of the device");
  len = std::min(len, lim_.capacity - offset);
  if (!lim_.can_report_holes) {
    *out = AllocationExtent{len, false};
    return succeed(user_data);  // completes, with 0, at the next do_io()
  }
  if (!lim_.driver_block_status) {
    // The driver answers synchronously, and cheaply (see driver.hpp).
    auto e = device_.extent_at(offset, len);
    if (!e) return fail(user_data, e.status().code() < 0 ? e.status().code() : -EIO, "block status query failed");
    *out = *e;
    return succeed(user_data);
  }
  Request r{};
  r.op = Op::kBlockStatus;
  r.offset = offset;
  r.len = len;
  r.extent = out;
  r.user_data = user_data;
  *out = AllocationExtent{0, false};  // what the driver leaves unset reads as "cannot tell"
  submit(r, kBlockStatus, false);
}

// ---- completion ----

int Queue::completion_fd() const { return dq_->completion_fd(); }

void Queue::set_completion_fd_enabled(bool enable) {
  if (poll_) return;
  fd_enabled_ = enable;
  dq_->set_completion_fd_enabled(enable);
  if (enable && ready_head_ < ready_.size()) dq_->notify();
}

int Queue::do_io(Completion* out, int min_completions, int max_completions, struct timespec* timeout,
                 const sigset_t* sig, bool interruptible) {
  if (min_completions < 0) return last_error_ = "min_completions cannot be negative", -EINVAL;
  if (max_completions < 0) return last_error_ = "max_completions cannot be negative", -EINVAL;
  if (min_completions > max_completions) {
    return last_error_ = "min_completions must be less than or equal to max_completions", -EINVAL;
  }
  if (static_cast<uint64_t>(min_completions) > pending_) {
    return last_error_ = "min_completions is larger than total outstanding requests", -EINVAL;
  }
  if (max_completions > 0 && !out) return last_error_ = "completions must not be NULL", -EINVAL;

  if (timeout) {
    if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000) {
      return last_error_ = "invalid timeout", -EINVAL;
    }
  }
  Deadline deadline(timeout);

  out_ = out;
  out_n_ = 0;
  out_max_ = static_cast<uint64_t>(max_completions);
  in_do_io_ = true;
  drain_ready();
  const auto min_n = static_cast<uint64_t>(min_completions);
  waits_for_ = out_n_ < min_n ? static_cast<unsigned>(min_n - out_n_) : 0;
  int r = dq_->process(*this, static_cast<unsigned>(out_max_ - out_n_), 0, nullptr, nullptr);
  waits_for_ = 0;
  for (;;) {
    if (r < 0) break;
    drain_ready();
    if (out_n_ >= min_n) break;
    timespec rel{};
    if (timeout) {
      rel = deadline.left();
      if (to_ns(rel) == 0) {
        r = -ETIME;
        break;
      }
    }
    r = dq_->process(*this, static_cast<unsigned>(out_max_ - out_n_), static_cast<unsigned>(min_n - out_n_),
                     timeout ? &rel : nullptr, sig);
    if (r == -EINTR && !interruptible) r = 0;
  }
  in_do_io_ = false;
  out_max_ = 0;

  if (timeout) {
    *timeout = deadline.left();
  }
  if (r < 0) {
    unget(static_cast<int>(out_n_));
    out_n_ = 0;
    last_error_ = r == -ETIME ? "timed out waiting for completions"
                  : r == -EINTR ? "interrupted by a signal"
                                : "the driver failed to process requests";
    if (fd_enabled_ && ready_head_ < ready_.size()) dq_->notify();
    return r;
  }
  pending_ -= out_n_;
  if (fd_enabled_ && ready_head_ < ready_.size()) dq_->notify();
  return static_cast<int>(out_n_);
}

}  // namespace blkstack
