// The one monotonic clock of the project: nanoseconds since boot, and the
// conversions between those and timespecs that deadlines and latency
// statistics need.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <thread>

namespace blkstack {

inline constexpr uint64_t kNsPerSec = 1000000000ull;

inline uint64_t to_ns(const timespec& t) {
  return static_cast<uint64_t>(t.tv_sec) * kNsPerSec + static_cast<uint64_t>(t.tv_nsec);
}

inline timespec to_timespec(uint64_t ns) {
  return {static_cast<time_t>(ns / kNsPerSec), static_cast<long>(ns % kNsPerSec)};
}

inline uint64_t mono_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return to_ns(t);
}

// A point on the monotonic clock `timeout` from now, or never (nullptr).
class Deadline {
 public:
  explicit Deadline(const timespec* timeout) : at_(timeout ? mono_ns() + to_ns(*timeout) : kNever) {}
  bool never() const { return at_ == kNever; }
  // Time left, zero once passed. Only meaningful when !never().
  timespec left() const {
    uint64_t now = mono_ns();
    return to_timespec(at_ > now ? at_ - now : 0);
  }
  bool passed() const { return !never() && mono_ns() >= at_; }

 private:
  static constexpr uint64_t kNever = UINT64_MAX;
  uint64_t at_;
};

// Asks `ready` every `step` until it says yes or `limit` has passed, and
// returns its last answer. Only for control paths waiting on something that
// sends no event: a device node that udev has yet to create or hand over.
template <class Ready>
bool poll_until(Ready&& ready, std::chrono::milliseconds limit, std::chrono::milliseconds step) {
  const uint64_t end = mono_ns() + static_cast<uint64_t>(std::chrono::nanoseconds(limit).count());
  for (;;) {
    if (ready()) return true;
    if (mono_ns() >= end) return false;
    std::this_thread::sleep_for(step);
  }
}

}  // namespace blkstack
