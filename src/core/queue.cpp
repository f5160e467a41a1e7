// The data path of the contract layer: every request is checked here once, so
// drivers never see a malformed one, and features a driver lacks (FUA,
// write-zeroes) are emulated here.
#include "blkstack/queue.hpp"

#include <algorithm>
#include <cstring>

#include "blkstack/device.hpp"
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
};

constexpr const char* kErrFlags = "unsupported bits in request flags";
constexpr const char* kErrFua = "BLKIO_REQ_FUA is invalid for this request type";
constexpr const char* kErrZeroFlags = "BLKIO_REQ_NO_UNMAP and BLKIO_REQ_NO_FALLBACK are only valid for write zeroes";
constexpr const char* kErrReadOnly = "the device is read-only";

inline bool misaligned(uint64_t v, uint64_t align) { return (v & (align - 1)) != 0; }

inline timespec ts_sub(const timespec& a, const timespec& b) {
  timespec r{a.tv_sec - b.tv_sec, a.tv_nsec - b.tv_nsec};
  if (r.tv_nsec < 0) {
    r.tv_nsec += 1000000000;
    r.tv_sec--;
  }
  return r;
}
inline timespec ts_add(const timespec& a, const timespec& b) {
  timespec r{a.tv_sec + b.tv_sec, a.tv_nsec + b.tv_nsec};
  if (r.tv_nsec >= 1000000000) {
    r.tv_nsec -= 1000000000;
    r.tv_sec++;
  }
  return r;
}
inline bool ts_positive(const timespec& t) { return t.tv_sec > 0 || (t.tv_sec == 0 && t.tv_nsec > 0); }

}  // namespace

const char* op_name(Op op) {
  static const char* const names[] = {"read",       "write",     "readv",       "writev",
                                      "write-zeroes", "discard", "flush",       "report-zones",
                                      "zone-open",  "zone-close", "zone-finish", "zone-reset",
                                      "zone-open-all", "zone-close-all", "zone-finish-all", "zone-reset-all"};
  return names[static_cast<int>(op)];
}

Queue::Queue(Device& device, std::unique_ptr<DriverQueue> driver_queue, bool poll)
    : device_(device), dq_(std::move(driver_queue)), poll_(poll) {
  const DeviceInfo& i = device.info();
  lim_.capacity = i.capacity;
  lim_.request_align = static_cast<uint64_t>(i.request_alignment);
  lim_.buf_align = static_cast<uint64_t>(i.buf_alignment);
  lim_.max_transfer = static_cast<uint64_t>(i.max_transfer);
  lim_.max_write_zeroes = i.max_write_zeroes_len;
  lim_.max_discard = i.max_discard_len;
  lim_.max_segment_len = static_cast<uint64_t>(i.max_segment_len);
  lim_.discard_align = static_cast<uint64_t>(std::max(i.discard_alignment, 1));
  lim_.discard_align_offset = static_cast<uint64_t>(i.discard_alignment_offset);
  lim_.max_segments = i.max_segments;
  lim_.read_only = device.read_only();
  lim_.can_grow = i.can_grow;
  lim_.fua_native = i.supports_fua_natively;
  lim_.fua_native_zeroes = i.fua_native_write_zeroes;
  lim_.supports_write_zeroes = i.supports_write_zeroes;
  lim_.supports_discard = i.supports_discard;
  lim_.needs_regions = i.needs_mem_regions;
  lim_.zoned = i.zoned;

  zero_chunk_ = device.zero_buffer_len();
  if (lim_.max_transfer) zero_chunk_ = std::min(zero_chunk_, lim_.max_transfer);
  zero_chunk_ -= zero_chunk_ % lim_.request_align;

  slots_.resize(64);
  for (uint32_t i = 0; i < slots_.size(); i++) slots_[i].next_free = i + 1 < slots_.size() ? i + 1 : UINT32_MAX;
  free_head_ = 0;
  ready_.reserve(16);
}

Queue::~Queue() = default;

// ---- slots and completions ----

uint32_t Queue::acquire() {
  if (free_head_ == UINT32_MAX) [[unlikely]] {
    // Grow: slot indices stay valid, so drivers holding indices are unaffected.
    uint32_t old = static_cast<uint32_t>(slots_.size());
    slots_.resize(old * 2);
    for (uint32_t i = old; i < slots_.size(); i++) slots_[i].next_free = i + 1 < slots_.size() ? i + 1 : UINT32_MAX;
    free_head_ = old;
  }
  uint32_t slot = free_head_;
  free_head_ = slots_[slot].next_free;
  return slot;
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

void Queue::fail(void* user_data, int err, const char* msg) {
  ++pending_;
  defer(user_data, err, msg);
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
  uint32_t slot = acquire();
  Slot& s = slots_[slot];
  s.req = req;
  s.stage = stage;
  s.flush_after = flush_after;
  s.driver_state = 0;
  s.done = 0;
  ++pending_;
  if (stage == kZeroWrite) {
    issue_zero_chunk(slot);
  } else {
    dq_->enqueue(slot, req);
  }
}

void Queue::issue_zero_chunk(uint32_t slot) {
  const Slot& s = slots_[slot];
  Request w{};
  w.op = Op::kWrite;
  w.offset = s.req.offset + s.done;
  w.len = std::min<uint64_t>(zero_chunk_, s.req.len - s.done);
  w.buf = const_cast<void*>(device_.zero_buffer());
  w.region = nullptr;
  w.user_data = s.req.user_data;
  dq_->enqueue(slot, w);
}

void Queue::issue_flush_step(uint32_t slot) {
  Slot& s = slots_[slot];
  s.stage = kFinalFlush;
  Request f{};
  f.op = Op::kFlush;
  f.user_data = s.req.user_data;
  dq_->enqueue(slot, f);
}

// A multi-step request finished one step.
void Queue::advance(uint32_t slot, int res) {
  Slot& s = slots_[slot];
  switch (s.stage) {
    case kReportZones:
      emit(s.req.user_data, res, nullptr);
      release(slot);
      return;
    case kFinalFlush:
      emit(s.req.user_data, res < 0 ? res : 0, nullptr);
      release(slot);
      return;
    case kNativeZeroes:
      if (res == -EOPNOTSUPP && !(s.req.flags & kReqNoFallback)) {
        s.stage = kZeroWrite;
        s.done = 0;
        issue_zero_chunk(slot);
        return;
      }
      break;
    case kZeroWrite:
      if (res >= 0) {
        s.done += std::min<uint64_t>(zero_chunk_, s.req.len - s.done);
        if (s.done < s.req.len) {
          issue_zero_chunk(slot);
          return;
        }
      }
      break;
    default:
      break;
  }
  // The data steps are over.
  if (res < 0 || !s.flush_after) {
    emit(s.req.user_data, res < 0 ? res : 0, nullptr);
    release(slot);
    return;
  }
  issue_flush_step(slot);
}

// ---- checks ----

const char* Queue::check_range(uint64_t offset, uint64_t len) const {
  if (misaligned(offset | len, lim_.request_align)) {
    return "request start and length must be multiples of request-alignment";
  }
  if (offset > lim_.capacity || len > lim_.capacity - offset) return "request is beyond the end of the device";
  return nullptr;
}

const char* Queue::check_rw(uint64_t offset, const void* buf, size_t len) const {
  if (misaligned(offset | len, lim_.request_align)) {
    return "request start and length must be multiples of request-alignment";
  }
  if (misaligned(reinterpret_cast<uintptr_t>(buf) | len, lim_.buf_align)) {
    return "buffer address and length must be multiples of buf-alignment";
  }
  if (lim_.max_transfer && len > lim_.max_transfer) return "request length exceeds max-transfer";
  if (!lim_.can_grow && (offset > lim_.capacity || len > lim_.capacity - offset)) {
    return "request is beyond the end of the device";
  }
  return nullptr;
}

const char* Queue::check_iov(uint64_t offset, const struct iovec* iov, int iovcnt, uint64_t& len) const {
  if (iovcnt < 0) return "iovcnt must be non-negative";
  if (iovcnt > lim_.max_segments) return "iovcnt exceeds max-segments";
  if (iovcnt > 0 && !iov) return "iovec must not be NULL";
  len = 0;
  for (int i = 0; i < iovcnt; i++) {
    if (misaligned(reinterpret_cast<uintptr_t>(iov[i].iov_base) | iov[i].iov_len, lim_.buf_align)) {
      return "buffer address and length must be multiples of buf-alignment";
    }
    if (lim_.max_segment_len && iov[i].iov_len > lim_.max_segment_len) return "iovec exceeds max-segment-len";
    if (lim_.needs_regions && !device_.regions().find(reinterpret_cast<uintptr_t>(iov[i].iov_base), iov[i].iov_len)) {
      return "buffer is not inside a mapped memory region";
    }
    len += iov[i].iov_len;
    if (len < iov[i].iov_len) return "request length overflows";
  }
  if (misaligned(offset | len, lim_.request_align)) {
    return "request start and length must be multiples of request-alignment";
  }
  if (lim_.max_transfer && len > lim_.max_transfer) return "request length exceeds max-transfer";
  if (!lim_.can_grow && (offset > lim_.capacity || len > lim_.capacity - offset)) {
    return "request is beyond the end of the device";
  }
  return nullptr;
}

const char* Queue::check_write_flags(uint32_t flags) const {
  if (flags & ~kReqAllFlags) return kErrFlags;
  if (flags & (kReqNoUnmap | kReqNoFallback)) return kErrZeroFlags;
  return nullptr;
}

const MappedRegion* Queue::lookup_region(const void* buf, size_t len, bool* missing) const {
  const RegionTable& t = device_.regions();
  if (t.empty()) {
    *missing = lim_.needs_regions;
    return nullptr;
  }
  const MappedRegion* r = t.find(reinterpret_cast<uintptr_t>(buf), len);
  *missing = !r && lim_.needs_regions;
  return r;
}

// ---- requests ----

void Queue::read(uint64_t offset, void* buf, size_t len, void* user_data, uint32_t flags) {
  if (flags) [[unlikely]] return fail(user_data, -EINVAL, (flags & ~kReqAllFlags) ? kErrFlags : (flags & kReqFua) ? kErrFua : kErrZeroFlags);
  if (const char* e = check_rw(offset, buf, len)) [[unlikely]] return fail(user_data, -EINVAL, e);
  bool missing;
  const MappedRegion* region = lookup_region(buf, len, &missing);
  if (missing) [[unlikely]] return fail(user_data, -EFAULT, "buffer is not inside a mapped memory region");
  Request r;
  r.op = Op::kRead;
  r.flags = 0;
  r.offset = offset;
  r.len = len;
  r.buf = buf;
  r.iovcnt = 0;
  r.region = region;
  r.user_data = user_data;
  submit(r, kDirect, false);
}

void Queue::write(uint64_t offset, const void* buf, size_t len, void* user_data, uint32_t flags) {
  if (lim_.read_only) [[unlikely]] return fail(user_data, -EBADF, kErrReadOnly);
  if (flags & ~kReqFua) [[unlikely]] return fail(user_data, -EINVAL, check_write_flags(flags));
  if (const char* e = check_rw(offset, buf, len)) [[unlikely]] return fail(user_data, -EINVAL, e);
  bool missing;
  const MappedRegion* region = lookup_region(buf, len, &missing);
  if (missing) [[unlikely]] return fail(user_data, -EFAULT, "buffer is not inside a mapped memory region");
  bool emulate = (flags & kReqFua) && !lim_.fua_native;
  Request r;
  r.op = Op::kWrite;
  r.flags = emulate ? 0 : flags;
  r.offset = offset;
  r.len = len;
  r.buf = const_cast<void*>(buf);
  r.iovcnt = 0;
  r.region = region;
  r.user_data = user_data;
  submit(r, emulate ? kDataStep : kDirect, emulate);
}

void Queue::readv(uint64_t offset, const struct iovec* iov, int iovcnt, void* user_data, uint32_t flags) {
  if (flags) [[unlikely]] return fail(user_data, -EINVAL, (flags & ~kReqAllFlags) ? kErrFlags : (flags & kReqFua) ? kErrFua : kErrZeroFlags);
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
  if (flags & ~kReqFua) [[unlikely]] return fail(user_data, -EINVAL, check_write_flags(flags));
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
  if (len == 0 && !emulate_fua) return fail(user_data, 0, nullptr);
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
  if (flags) return fail(user_data, -EINVAL, (flags & ~kReqAllFlags) ? kErrFlags : (flags & kReqFua) ? kErrFua : kErrZeroFlags);
  if (!lim_.supports_discard) return fail(user_data, -ENOTSUP, "discard is not supported by this device");
  if (const char* e = check_range(offset, len)) return fail(user_data, -EINVAL, e);
  if (lim_.discard_align > 1 &&
      (offset < lim_.discard_align_offset || (offset - lim_.discard_align_offset) % lim_.discard_align != 0 ||
       len % lim_.discard_align != 0)) {
    return fail(user_data, -EINVAL, "discard start and length must follow discard-alignment");
  }
  if (lim_.max_discard && len > lim_.max_discard) return fail(user_data, -EINVAL, "request length exceeds max-discard-len");
  if (len == 0) return fail(user_data, 0, nullptr);
  Request r{};
  r.op = Op::kDiscard;
  r.offset = offset;
  r.len = len;
  r.user_data = user_data;
  submit(r, kDirect, false);
}

void Queue::flush(void* user_data, uint32_t flags) {
  if (flags) return fail(user_data, -EINVAL, (flags & ~kReqAllFlags) ? kErrFlags : (flags & kReqFua) ? kErrFua : kErrZeroFlags);
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
  if (static_cast<unsigned>(min_completions) > pending_) {
    return last_error_ = "min_completions is larger than total outstanding requests", -EINVAL;
  }
  if (max_completions > 0 && !out) return last_error_ = "completions must not be NULL", -EINVAL;

  timespec start{}, deadline{};
  if (timeout) {
    if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000) {
      return last_error_ = "invalid timeout", -EINVAL;
    }
    clock_gettime(CLOCK_MONOTONIC, &start);
    deadline = ts_add(start, *timeout);
  }

  out_ = out;
  out_n_ = 0;
  out_max_ = max_completions;
  in_do_io_ = true;
  drain_ready();
  int r = dq_->process(*this, static_cast<unsigned>(max_completions - out_n_), 0, nullptr, nullptr);
  for (;;) {
    if (r < 0) break;
    drain_ready();
    if (out_n_ >= min_completions) break;
    timespec rel{};
    if (timeout) {
      timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      rel = ts_sub(deadline, now);
      if (!ts_positive(rel)) {
        r = -ETIME;
        break;
      }
    }
    r = dq_->process(*this, static_cast<unsigned>(max_completions - out_n_),
                     static_cast<unsigned>(min_completions - out_n_), timeout ? &rel : nullptr, sig);
    if (r == -EINTR && !interruptible) r = 0;
  }
  in_do_io_ = false;
  out_max_ = 0;

  if (timeout) {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    timespec left = ts_sub(deadline, now);
    *timeout = ts_positive(left) ? left : timespec{0, 0};
  }
  if (r < 0) {
    unget(out_n_);
    out_n_ = 0;
    last_error_ = r == -ETIME ? "timed out waiting for completions"
                  : r == -EINTR ? "interrupted by a signal"
                                : "the driver failed to process requests";
    if (fd_enabled_ && ready_head_ < ready_.size()) dq_->notify();
    return r;
  }
  pending_ -= static_cast<unsigned>(out_n_);
  if (fd_enabled_ && ready_head_ < ready_.size()) dq_->notify();
  return out_n_;
}

}  // namespace blkstack
