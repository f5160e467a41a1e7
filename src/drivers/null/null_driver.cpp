// The null driver: a device of `size` bytes that moves no data (reads leave
// buffers as they are), like Linux's null_blk. With latency-ns = 0 every
// request is finished by the next do_io(), which measures the per-request
// cost of everything above the driver; with a latency, requests finish that
// long after submission, which exercises waiting, timeouts and signals.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <vector>

#include "core/driver.hpp"
#include "core/clock.hpp"
#include "core/fd.hpp"

namespace blkstack {

namespace {

class NullQueue final : public DriverQueue {
 public:
  NullQueue(bool poll, uint64_t latency_ns) : latency_ns_(latency_ns) {
    if (!poll) {
      fd_.reset(latency_ns ? ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)
                           : ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    }
    pending_.reserve(64);
  }

  void enqueue(uint32_t slot, const Request&) override {
    pending_.push_back({slot, latency_ns_ ? mono_ns() + latency_ns_ : 0});
  }
  void enqueue_rw(RwTag tag, uint64_t, void*, uint64_t, const MappedRegion*) override {
    pending_.push_back({tag.slot(), latency_ns_ ? mono_ns() + latency_ns_ : 0});
  }

  int process(Queue& owner, unsigned budget, unsigned wait_for, const struct timespec* timeout,
              const sigset_t* sig) override {
    if (!latency_ns_) return finish_all(owner, budget);
    uint64_t now = mono_ns();
    uint64_t deadline = timeout ? now + static_cast<uint64_t>(timeout->tv_sec) * 1000000000ull +
                                      static_cast<uint64_t>(timeout->tv_nsec)
                                : UINT64_MAX;
    unsigned n = finish_due(owner, budget, now);
    int err = 0;
    while (n < wait_for && head_ < pending_.size()) {
      // Sleep until the oldest request is due, the deadline, or a signal.
      uint64_t until = std::min(pending_[head_].due, deadline);
      uint64_t rel = until > now ? until - now : 0;
      timespec ts{static_cast<time_t>(rel / 1000000000ull), static_cast<long>(rel % 1000000000ull)};
      if (::ppoll(nullptr, 0, &ts, sig) < 0 && errno == EINTR) {
        err = -EINTR;
        break;
      }
      now = mono_ns();
      n += finish_due(owner, budget - n, now);
      if (n < wait_for && now >= deadline) {
        err = -ETIME;
        break;
      }
    }
    if (head_ == pending_.size()) {
      pending_.clear();
      head_ = 0;
    }
    if (fd_enabled_ && head_ < pending_.size()) arm();
    return n > 0 ? static_cast<int>(n) : err;
  }

  int completion_fd() const override { return fd_.get(); }
  void set_completion_fd_enabled(bool enable) override {
    fd_enabled_ = enable;
    if (enable && head_ < pending_.size()) arm();
  }
  void notify() override {
    if (!fd_.valid()) return;
    if (latency_ns_) {
      itimerspec soon{{0, 0}, {0, 1}};
      ::timerfd_settime(fd_.get(), 0, &soon, nullptr);
    } else {
      eventfd_write(fd_.get(), 1);
    }
  }

 private:
  struct Pending {
    uint32_t slot;
    uint64_t due;  // CLOCK_MONOTONIC ns
  };

  // Without latency everything queued is done: complete it in one batch.
  int finish_all(Queue& owner, unsigned budget) {
    unsigned n = 0;
    {
      Queue::Completer fast(owner);
      while (n < budget && head_ < pending_.size()) {
        uint32_t slot = pending_[head_].slot;
        if (!fast.complete_ok(slot)) {
          fast.flush();
          owner.complete(slot, 0);
          fast.reload();
        }
        head_++;
        n++;
      }
    }
    if (head_ == pending_.size()) {
      pending_.clear();
      head_ = 0;
    } else if (fd_enabled_) {
      notify();
    }
    return static_cast<int>(n);
  }

  unsigned finish_due(Queue& owner, unsigned budget, uint64_t now) {
    unsigned n = 0;
    while (n < budget && head_ < pending_.size() && pending_[head_].due <= now) {
      owner.complete(pending_[head_++].slot, 0);
      n++;
    }
    return n;
  }

  // Makes the completion fd readable when the oldest request is due (now, for
  // latency 0).
  void arm() {
    if (!fd_.valid()) return;
    if (!latency_ns_) return notify();
    uint64_t due = std::max<uint64_t>(pending_[head_].due, 1);
    itimerspec at{{0, 0}, {static_cast<time_t>(due / 1000000000ull), static_cast<long>(due % 1000000000ull)}};
    ::timerfd_settime(fd_.get(), TFD_TIMER_ABSTIME, &at, nullptr);
  }

  uint64_t latency_ns_;
  UniqueFd fd_;  // eventfd, or timerfd when requests take time
  bool fd_enabled_ = false;
  std::vector<Pending> pending_;  // in submission order, hence in due order
  size_t head_ = 0;
};

class NullDriver final : public Driver {
 public:
  std::span<const DriverProperty> properties() const override {
    using namespace states;
    static const DriverProperty props[] = {
        {"size", PropType::kUint64, kAll, kCreated, [](const Driver& d) { return PropValue(self(d).size_); },
         [](Driver& d, const PropValue& v) {
           self(d).size_ = std::get<uint64_t>(v);
           return Status{};
         }},
        {"block-size", PropType::kInt, kAll, kCreated, [](const Driver& d) { return PropValue(self(d).align_); },
         [](Driver& d, const PropValue& v) {
           int a = std::get<int>(v);
           if (a <= 0 || !is_pow2(static_cast<uint64_t>(a))) return error(-EINVAL, "block-size must be a power of two");
           self(d).align_ = a;
           return Status{};
         }},
        {"latency-ns", PropType::kUint64, kAll, kCreated,
         [](const Driver& d) { return PropValue(self(d).latency_ns_); },
         [](Driver& d, const PropValue& v) {
           self(d).latency_ns_ = std::get<uint64_t>(v);
           return Status{};
         }},
    };
    return props;
  }

  Status connect(bool& read_only, DeviceInfo& info) override {
    (void)read_only;
    if (size_ % static_cast<uint64_t>(align_) != 0) {
      return error(-EINVAL, "size must be a multiple of block-size ({})", align_);
    }
    info.capacity = size_;
    info.request_alignment = align_;
    info.optimal_io_alignment = std::max(align_, 4096);
    info.buf_alignment = 1;
    info.mem_region_alignment = 1;
    info.flush_needed = false;
    info.supports_fua_natively = true;
    info.fua_native_write_zeroes = true;
    info.supports_poll_queues = true;
    return {};
  }

  Result<std::unique_ptr<DriverQueue>> create_queue(bool poll) override {
    return std::unique_ptr<DriverQueue>(std::make_unique<NullQueue>(poll, latency_ns_));
  }

 private:
  static NullDriver& self(Driver& d) { return static_cast<NullDriver&>(d); }
  static const NullDriver& self(const Driver& d) { return static_cast<const NullDriver&>(d); }

  uint64_t size_ = 1ull << 30;
  int align_ = 512;
  uint64_t latency_ns_ = 0;
};

}  // namespace

std::unique_ptr<Driver> make_null_driver() { return std::make_unique<NullDriver>(); }

}  // namespace blkstack
