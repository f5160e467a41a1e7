// The driver interface: what a backend implements so that the contract layer
// (Device, Queue) can run requests on it. Drivers do not validate arguments or
// emulate features: the contract layer has done that before they are called.
#pragma once

#include <signal.h>
#include <time.h>

#include <cstdint>
#include <memory>
#include <span>

#include "blkstack/device_info.hpp"
#include "blkstack/property.hpp"
#include "blkstack/queue.hpp"
#include "blkstack/request.hpp"
#include "blkstack/status.hpp"
#include "core/region_table.hpp"

namespace blkstack {

class Driver;
using DriverProperty = Property<Driver>;

// Counters a driver queue keeps about itself, for tests and `blkstack info`.
struct DriverQueueStats {
  uint64_t submit_calls = 0;     // system calls that handed requests to the kernel
  uint64_t fixed_buffer_ops = 0; // data requests issued with registered buffers
  uint64_t plain_ops = 0;        // data requests issued without
  uint64_t inline_ops = 0;       // data requests done by the calling thread itself (memory-backed files)
  // System calls that only looked for work or signalled the queue's own
  // completion fd (non-blocking readiness polls, self-notifications): the
  // ones a caller that waits anyway does not need.
  uint64_t probe_calls = 0;
};

// The slot, operation and flags of a plain read or write, packed into one
// register for DriverQueue::enqueue_rw().
struct RwTag {
  uint64_t bits;
  static RwTag make(uint32_t slot, Op op, uint32_t flags) {
    return {slot | (static_cast<uint64_t>(op) << 32) | (static_cast<uint64_t>(flags & 0xff) << 40)};
  }
  uint32_t slot() const { return static_cast<uint32_t>(bits); }
  Op op() const { return static_cast<Op>((bits >> 32) & 0xff); }
  uint32_t flags() const { return static_cast<uint32_t>(bits >> 40) & 0xff; }
};

// One queue of a driver: one submission/completion channel.
class DriverQueue {
 public:
  virtual ~DriverQueue() = default;

  // The contract layer's fast path: a checked read or write (op kRead or
  // kWrite), its arguments in registers. Drivers that can do better than
  // building a Request override this.
  virtual void enqueue_rw(RwTag tag, uint64_t offset, void* buf, uint64_t len, const MappedRegion* region) {
    Request r{};
    r.op = tag.op();
    r.flags = tag.flags();
    r.offset = offset;
    r.len = len;
    r.buf = buf;
    r.region = region;
    enqueue(tag.slot(), r);
  }

  virtual DriverQueueStats stats() const { return {}; }

  // Whether enqueue() takes Op::kBlockStatus (req.offset, req.len, and
  // req.extent to write the answer to before completing with 0). Asked once,
  // when the contract layer's queue is made, and only for devices that
  // report holes (DeviceInfo::can_report_holes). Queues that say no never
  // see the op: the contract layer answers it inline from
  // Driver::extent_at(), which suits drivers whose answer is a cheap local
  // call. A driver that answers may report a shorter run than asked; the
  // contract layer clamps a longer one and turns a run of 0 bytes into
  // "data" (it cannot tell).
  virtual bool supports_block_status() const { return false; }

  // Queue `req` (a request, or one step of a multi-step one) for `slot`. The
  // driver reports its end through owner.complete(slot, res) from process().
  // `req` is only valid during the call: drivers copy what they need later.
  // A step that succeeds completely returns owner.expected(slot).
  virtual void enqueue(uint32_t slot, const Request& req) = 0;

  // Hand everything enqueued to the device, then reap at most `budget`
  // finished requests through owner.complete(). When wait_for > 0, first block
  // until that many requests have finished, `timeout` (relative) expires
  // (-ETIME), or a signal arrives (-EINTR; `sig` is the signal mask while
  // blocked). Returns the number reaped or a negative errno. Must return with
  // nothing left unsubmitted, follow-ups enqueued during reaping included, and
  // must re-signal the completion fd if it stops with finished requests left.
  virtual int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
                      const sigset_t* sig) = 0;

  // Event-driven mode. -1 for poll queues.
  virtual int completion_fd() const { return -1; }
  virtual void set_completion_fd_enabled(bool) {}
  // Make the completion fd readable (used when completions arise outside the
  // device, e.g. requests failed by the contract layer).
  virtual void notify() {}

  // Memory regions mapped on the device, told to every queue (existing ones at
  // map time, new ones at creation). At map time a queue that cannot use the
  // driver's handle sets r.driver_index to -1, so no queue uses it; at queue
  // creation it must fail instead.
  virtual Status map_region(MappedRegion&) { return {}; }
  virtual void unmap_region(const MappedRegion&) {}
};

// One instance of a driver.
class Driver {
 public:
  virtual ~Driver() = default;

  // Driver-specific properties (blkio(3) DRIVERS section).
  virtual std::span<const DriverProperty> properties() const = 0;
  virtual bool can_add_queues() const { return true; }

  // Open the device. May update read_only (e.g. from an fd's access mode).
  virtual Status connect(bool& read_only, DeviceInfo& info) = 0;
  // Called once before the first queue is created.
  virtual Status start(int num_queues, int num_poll_queues) {
    (void)num_queues;
    (void)num_poll_queues;
    return {};
  }
  // Called once start() succeeded, before the queues copy the limits: for
  // limits that depend on properties set after connect (virtio drivers:
  // queue-size bounds the segments per request).
  virtual void update_info(DeviceInfo&) const {}
  virtual Result<std::unique_ptr<DriverQueue>> create_queue(bool poll) = 0;

  // A region was mapped/unmapped on the device; the driver may attach its own
  // index to it (e.g. an io_uring fixed-buffer slot) before queues see it.
  virtual Status map_region(MappedRegion&) { return {}; }
  virtual void unmap_region(const MappedRegion&) {}

  // Allocation state of [offset, offset+len): how many bytes from offset are
  // data (hole false) or a hole that reads as zeroes (hole true). Drivers
  // that cannot tell report everything as data. Synchronous: the caller's
  // thread waits for the answer, so a driver for which this is a network
  // round trip bounds it by a timeout, and its queues answer the
  // asynchronous form (Op::kBlockStatus) instead. Called from any thread.
  virtual Result<AllocationExtent> extent_at(uint64_t /*offset*/, uint64_t len) {
    return AllocationExtent{len, false};
  }

  // The capacity now, for devices that can grow (can-grow): writes past the
  // end extend them, and the capacity property follows.
  virtual uint64_t current_capacity(uint64_t connected_capacity) { return connected_capacity; }

  // See Device::memory_file().
  virtual int memory_file() const { return -1; }
};

// Registry of driver factories, by name. Drivers with heavy dependencies
// (librbd, libnbd) live in loadable modules (drivers/driver_module.hpp), so
// their create() can fail: the module or its libraries may be missing.
struct DriverEntry {
  const char* name;
  Result<std::unique_ptr<Driver>> (*create)();
};
std::span<const DriverEntry> drivers();

}  // namespace blkstack
