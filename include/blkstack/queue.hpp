// Queue: the data path. Requests are checked against the device's contract
// (alignment, range, flags, read-only), kept in a slot table and handed to
// the driver; blkioq_do_io() semantics live in do_io(). A queue is used by one
// thread at a time; nothing here takes a lock.
#pragma once

#include <signal.h>
#include <sys/uio.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "blkstack/request.hpp"

namespace blkstack {

class Device;
class DriverQueue;
class RegionTable;

class Queue {
 public:
  Queue(Device& device, std::unique_ptr<DriverQueue> driver_queue, bool poll);
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  // ---- requests (blkioq_*) ----
  // read() and write() are the hottest code in the library: checks, region
  // lookup and slot allocation stay inline and branch-light, and anything
  // unusual goes to rw_slow(), which redoes the work with full care.
  void read(uint64_t offset, void* buf, size_t len, void* user_data, uint32_t flags);
  void write(uint64_t offset, const void* buf, size_t len, void* user_data, uint32_t flags);
  void readv(uint64_t offset, const struct iovec* iov, int iovcnt, void* user_data, uint32_t flags);
  void writev(uint64_t offset, const struct iovec* iov, int iovcnt, void* user_data, uint32_t flags);
  void write_zeroes(uint64_t offset, uint64_t len, void* user_data, uint32_t flags);
  void discard(uint64_t offset, uint64_t len, void* user_data, uint32_t flags);
  void flush(void* user_data, uint32_t flags);
  void report_zones(uint64_t offset, Zone* zones, uint32_t nr_zones, void* user_data, uint32_t flags);
  // op is one of the kZone* management operations.
  void zone_management(Op op, uint64_t offset, void* user_data, uint32_t flags);

  // Allocation query (native C++ API only: libblkio has no such request, and
  // the C shim never makes one). Asks whether the bytes at `offset` are data
  // or a hole that reads as zeroes, and how far that run goes: at most `len`
  // bytes (clamped to the end of the device). On success the request
  // completes with ret 0 and *out (owned by the caller, written only before
  // the completion is handed back) holds a run of 1 to len bytes; a device
  // that cannot tell (can_report_holes false) answers {len, data}.
  //
  // A queue request, not a call, because for a network driver the answer is
  // a round trip: asking synchronously would stall the thread, and everything
  // queued behind it, for that long (Device::extent_at() is the synchronous
  // form, for control paths and tools). Drivers whose queues can ask the
  // backend themselves (DriverQueue::supports_block_status(): nbd, with
  // NBD_CMD_BLOCK_STATUS on the queue's own connection) get it like a read;
  // for the others the contract layer asks Driver::extent_at() inline (cheap
  // where it is implemented at all: SEEK_DATA/SEEK_HOLE on a local file) and
  // the request completes at the next do_io(). Either way the result comes
  // through the normal completion path, in no particular order relative to
  // other requests in flight.
  //
  // Checks: flags must be 0, out must not be null, offset must be a multiple
  // of request-alignment and inside the device, len must not be 0.
  void block_status(uint64_t offset, uint64_t len, AllocationExtent* out, void* user_data, uint32_t flags);

  // ---- completion (blkioq_do_io and friends) ----
  // interruptible: return -EINTR when a signal arrives (sig, if given, is the
  // signal mask while waiting); otherwise signals are ridden out.
  int do_io(Completion* out, int min_completions, int max_completions, struct timespec* timeout,
            const sigset_t* sig = nullptr, bool interruptible = false);
  int completion_fd() const;
  void set_completion_fd_enabled(bool enable);
  bool is_poll() const { return poll_; }
  // Requests queued and not yet returned by do_io().
  unsigned outstanding() const { return static_cast<unsigned>(pending_); }
  // Why the last do_io() failed.
  const char* error_message() const { return last_error_; }

  // ---- device and driver side ----
  DriverQueue& driver_queue() { return *dq_; }
  // During do_io()'s first, non-waiting pass over the driver: how many more
  // completions the caller needs than were ready before it (0: none). If the
  // pass reaps fewer, a waiting pass follows; a driver whose readiness check
  // costs a system call can leave it to that pass, whose wait says readiness
  // anyway.
  unsigned caller_waits_for() const { return waits_for_; }

 private:
  // One request from enqueue until do_io() hands its completion back. A
  // plain read or write stores only what completing it needs; multi-step
  // requests also keep the request itself.
  struct Slot {
    void* user_data;
    uint64_t expected;  // the result a fully successful step returns (bytes moved, or 0)
    uint8_t stage;      // see queue.cpp; 0 for free slots and single-step requests
    bool flush_after;   // FUA emulation: flush once the data steps succeed
    uint32_t next_free;
    uint64_t pad_;      // keeps a slot 32 bytes: indexing is a shift
  };
  // What multi-step requests need besides their Slot (same index).
  struct Staged {
    Request req;    // the request as the application made it
    uint64_t done;  // bytes finished by the zero-write fallback
  };

 public:
  // The driver finished the step in flight for `slot` with `res` (>= 0
  // success, negative errno failure). A failure may carry a message for the
  // completion's error_msg (a string that outlives the queue's use of it);
  // multi-step requests keep only the error code.
  void complete(uint32_t slot, int res, const char* msg = nullptr) {
    Slot& s = slots_[slot];
    if (s.stage == 0) [[likely]] {
      emit(s.user_data, res < 0 ? res : 0, res < 0 ? msg : nullptr);
      release(slot);
    } else {
      advance(slot, res);
    }
  }
  // What a fully successful step in flight for `slot` returns: its length
  // for reads and writes (vectored too), 0 for everything else.
  uint64_t expected(uint32_t slot) const { return slots_[slot].expected; }

  // A driver's completion loop: the queue's completion state held in locals
  // (registers) for one batch. complete_ok() finishes a step that returned
  // expected(); when it returns false, or for anything else, call flush(),
  // then Queue::complete() or other queue methods, then reload().
  class Completer {
   public:
    explicit Completer(Queue& q) : q_(q) { reload(); }
    ~Completer() { flush(); }
    Completer(const Completer&) = delete;
    Completer& operator=(const Completer&) = delete;

    uint64_t expected(uint32_t slot) const { return slots_[slot].expected; }
    bool complete_ok(uint32_t slot) {
      Slot& s = slots_[slot];
      if (s.stage != 0 || n_ >= max_) [[unlikely]] return false;
      Completion& c = out_[n_++];
      c.user_data = s.user_data;
      c.error_msg = nullptr;
      c.ret = 0;
      s.next_free = static_cast<uint32_t>(free_);
      free_ = slot;
      return true;
    }
    void flush() {
      q_.out_n_ = n_;
      q_.free_head_ = free_;
    }
    void reload() {
      slots_ = q_.slots_.data();
      out_ = q_.out_;
      n_ = q_.out_n_;
      max_ = q_.out_max_;
      free_ = q_.free_head_;
    }

   private:
    Queue& q_;
    Slot* slots_;
    Completion* out_;
    uint64_t n_, max_, free_;
  };

 private:
  struct Limits {
    uint64_t req_mask;    // request-alignment - 1
    uint64_t buf_mask;    // buf-alignment - 1
    uint64_t max_len;     // max-transfer, or UINT64_MAX
    uint64_t end;         // capacity, or UINT64_MAX when the device can grow
    uint64_t capacity;
    uint64_t max_write_zeroes;  // 0: none
    uint64_t max_discard;       // 0: none
    uint64_t max_segment_len;   // 0: none
    uint64_t discard_align;
    uint64_t discard_align_offset;
    int max_segments;
    bool read_only;
    bool fua_native;
    bool fua_native_zeroes;
    bool supports_write_zeroes;
    bool supports_discard;
    bool needs_regions;
    bool zoned;
    bool can_report_holes;
    bool driver_block_status;  // the driver queue answers kBlockStatus itself
  };

  void rw_fast(Op op, uint64_t offset, void* buf, uint64_t len, void* user_data, uint32_t flags);
  [[gnu::noinline]] void rw_slow(Op op, uint64_t offset, void* buf, uint64_t len, void* user_data, uint32_t flags);

  bool rw_ok(uint64_t offset, const void* buf, uint64_t len) const {
    return ((offset | len) & lim_.req_mask) == 0 && ((reinterpret_cast<uintptr_t>(buf) | len) & lim_.buf_mask) == 0 &&
           len <= lim_.max_len && offset <= lim_.end && len <= lim_.end - offset;
  }
  // Why a read or write failed rw_ok(), for its error completion.
  const char* rw_error(uint64_t offset, const void* buf, uint64_t len) const;
  const char* check_range(uint64_t offset, uint64_t len) const;
  const char* check_iov(uint64_t offset, const struct iovec* iov, int iovcnt, uint64_t& len);
  // The mapped region holding [buf, buf+len), or nullptr.
  const MappedRegion* lookup_region(const void* buf, size_t len) {
    const RegionTable* t = regions_->load(std::memory_order_acquire);
    uintptr_t a = reinterpret_cast<uintptr_t>(buf);
    if (t == hint_table_ && a - hint_begin_ <= hint_len_ && len <= hint_len_ - (a - hint_begin_)) return hint_;
    return lookup_region_slow(t, a, len);
  }
  const MappedRegion* lookup_region_slow(const RegionTable* t, uintptr_t addr, size_t len);

  // Takes a free slot (stage 0) for a new request and counts it as
  // outstanding.
  Slot& start_request(uint32_t& index) {
    auto i = static_cast<uint32_t>(free_head_);
    if (i == UINT32_MAX) [[unlikely]] i = grow();
    Slot& s = slots_[i];
    free_head_ = s.next_free;
    ++pending_;
    index = i;
    return s;
  }
  uint32_t grow();
  void submit(const Request& req, uint8_t stage, bool flush_after);
  // Requests the contract layer answers itself (rejected, or nothing left
  // to do): counted as outstanding, handed back by the next do_io().
  void settle(void* user_data, int ret, const char* msg);
  void fail(void* user_data, int err, const char* msg) { settle(user_data, err, msg); }
  void succeed(void* user_data) { settle(user_data, 0, nullptr); }
  void emit(void* user_data, int ret, const char* msg) {
    if (out_n_ < out_max_) [[likely]] {
      Completion& c = out_[out_n_++];
      c.user_data = user_data;
      c.error_msg = msg;
      c.ret = ret;
    } else {
      defer(user_data, ret, msg);
    }
  }
  void defer(void* user_data, int ret, const char* msg);
  void advance(uint32_t slot, int res);
  void issue_zero_chunk(uint32_t slot);
  void issue_flush_step(uint32_t slot);
  // Free slots always have stage 0, so single-step requests need not set it.
  void release(uint32_t slot) {
    slots_[slot].next_free = static_cast<uint32_t>(free_head_);
    free_head_ = slot;
  }
  void drain_ready();
  void unget(int n);

  Device& device_;
  std::unique_ptr<DriverQueue> dq_;
  // The counters below are 64-bit on purpose: stores to the int fields of
  // Completion and Slot cannot alias them, so the compiler keeps them in
  // registers across a completion loop.
  std::vector<Slot> slots_;
  std::vector<Staged> staged_;  // grows with slots_
  uint64_t free_head_ = UINT32_MAX;
  uint64_t pending_ = 0;
  Limits lim_;
  const std::atomic<const RegionTable*>* regions_;

  // Where emit() writes while do_io() runs.
  Completion* out_ = nullptr;
  uint64_t out_n_ = 0;
  uint64_t out_max_ = 0;

  // The last region a buffer was found in, valid while hint_table_ is current.
  const RegionTable* hint_table_ = nullptr;
  const MappedRegion* hint_ = nullptr;
  uintptr_t hint_begin_ = 0;
  uintptr_t hint_len_ = 0;

  uint32_t fast_write_flags_ = 0;  // kReqFua when the driver does FUA itself
  bool poll_;
  bool fd_enabled_ = false;
  bool in_do_io_ = false;
  unsigned waits_for_ = 0;
  const char* last_error_ = "";
  uint64_t zero_chunk_ = 0;  // bytes per write of the write-zeroes fallback

  // Completions that could not be handed out yet (errors found at enqueue,
  // or more completions than the caller had room for), oldest first.
  std::vector<Completion> ready_;
  size_t ready_head_ = 0;
};

}  // namespace blkstack
