// Queue: the data path. Requests are checked against the device's contract
// (alignment, range, flags, read-only), kept in a slot table sized to the
// queue's depth and handed to the driver; blkioq_do_io() semantics live in
// do_io(). One queue is meant to be used by one thread at a time; nothing
// here takes a lock.
#pragma once

#include <signal.h>
#include <sys/uio.h>
#include <time.h>

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

  // ---- completion (blkioq_do_io and friends) ----
  // interruptible: return -EINTR when a signal arrives (sig, if given, is the
  // signal mask while waiting); otherwise signals are ridden out.
  int do_io(Completion* out, int min_completions, int max_completions, struct timespec* timeout,
            const sigset_t* sig = nullptr, bool interruptible = false);
  int completion_fd() const;
  void set_completion_fd_enabled(bool enable);
  bool is_poll() const { return poll_; }
  // Requests queued and not yet returned by do_io().
  unsigned outstanding() const { return pending_; }
  // Why the last do_io() failed.
  const char* error_message() const { return last_error_; }

  // ---- device and driver side ----
  DriverQueue& driver_queue() { return *dq_; }

  // The driver finished (one step of) the request in `slot` with `res`
  // (>= 0 success, negative errno failure).
  void complete(uint32_t slot, int res) {
    Slot& s = slots_[slot];
    if (s.stage == 0) [[likely]] {
      emit(s.req.user_data, res < 0 ? res : 0, nullptr);
      release(slot);
    } else {
      advance(slot, res);
    }
  }
  // The logical request held in `slot`, and a byte the driver may use to
  // remember its own progress on it (0 when the request is first enqueued).
  const Request& request(uint32_t slot) const { return slots_[slot].req; }
  uint8_t& driver_state(uint32_t slot) { return slots_[slot].driver_state; }

 private:
  struct Slot {
    Request req;
    uint64_t done;         // bytes finished by the zero-write fallback
    uint8_t stage;         // see queue.cpp: what the step in flight is
    bool flush_after;      // FUA emulation: flush once the data steps succeed
    uint8_t driver_state;  // owned by the driver
    uint32_t next_free;
  };
  struct Limits {
    uint64_t capacity;
    uint64_t request_align;
    uint64_t buf_align;
    uint64_t max_transfer;        // 0: none
    uint64_t max_write_zeroes;    // 0: none
    uint64_t max_discard;         // 0: none
    uint64_t max_segment_len;     // 0: none
    uint64_t discard_align;
    uint64_t discard_align_offset;
    int max_segments;
    bool read_only;
    bool can_grow;
    bool fua_native;
    bool fua_native_zeroes;
    bool supports_write_zeroes;
    bool supports_discard;
    bool needs_regions;
    bool zoned;
  };

  // Checks shared by the request types; each returns an error message or
  // nullptr (the errno is EINVAL unless stated).
  const char* check_range(uint64_t offset, uint64_t len) const;
  const char* check_rw(uint64_t offset, const void* buf, size_t len) const;
  const char* check_iov(uint64_t offset, const struct iovec* iov, int iovcnt, uint64_t& len) const;
  const char* check_write_flags(uint32_t flags) const;
  // The mapped region holding the buffer; sets *missing when the device
  // needs one and there is none.
  const MappedRegion* lookup_region(const void* buf, size_t len, bool* missing) const;

  void submit(const Request& req, uint8_t stage, bool flush_after);
  void fail(void* user_data, int err, const char* msg);
  void emit(void* user_data, int ret, const char* msg) {
    if (out_n_ < out_max_) [[likely]] {
      Completion& c = out_[out_n_++];
      c.user_data = user_data;
      c.error_msg = msg;
      c.ret = ret;
      for (auto& b : c.reserved) b = 0;
    } else {
      defer(user_data, ret, msg);
    }
  }
  void defer(void* user_data, int ret, const char* msg);
  void advance(uint32_t slot, int res);
  void issue_zero_chunk(uint32_t slot);
  void issue_flush_step(uint32_t slot);
  uint32_t acquire();
  void release(uint32_t slot) {
    slots_[slot].next_free = free_head_;
    free_head_ = slot;
  }
  void drain_ready();
  void unget(int n);

  Device& device_;
  std::unique_ptr<DriverQueue> dq_;
  bool poll_;
  bool fd_enabled_ = false;
  bool in_do_io_ = false;
  const char* last_error_ = "";
  uint64_t zero_chunk_ = 0;  // bytes per write of the write-zeroes fallback
  Limits lim_;
  std::vector<Slot> slots_;
  uint32_t free_head_ = UINT32_MAX;
  unsigned pending_ = 0;

  // Completions that could not be handed out yet (errors found at enqueue,
  // or more completions than the caller had room for), oldest first.
  std::vector<Completion> ready_;
  size_t ready_head_ = 0;

  // Where emit() writes while do_io() runs.
  Completion* out_ = nullptr;
  int out_n_ = 0;
  int out_max_ = 0;
};

}  // namespace blkstack
