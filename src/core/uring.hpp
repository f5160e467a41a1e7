// RAII ownership of a liburing ring, shared by the io_uring driver and the
// daemon's reactors.
#pragma once

#include <liburing.h>

#include "blkstack/status.hpp"

namespace blkstack {

class Ring {
 public:
  Ring() = default;
  ~Ring() {
    if (live_) io_uring_queue_exit(&ring_);
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Sets the ring up with `entries` SQ entries and params.flags, dropping the
  // optional flags (optional_flags) when the kernel refuses them.
  Status init(unsigned entries, io_uring_params params, unsigned optional_flags) {
    io_uring_params p = params;
    p.flags |= optional_flags;
    int r = io_uring_queue_init_params(entries, &ring_, &p);
    if (r == -EINVAL && optional_flags) {
      p = params;
      r = io_uring_queue_init_params(entries, &ring_, &p);
    }
    if (r < 0) return Status(r, fmt::format("io_uring_queue_init({} entries): {}", entries, strerror(-r)));
    flags_ = p.flags;
    features_ = p.features;
    live_ = true;
    return {};
  }

  io_uring* get() { return &ring_; }
  const io_uring* get() const { return &ring_; }
  unsigned flags() const { return flags_; }
  unsigned features() const { return features_; }

 private:
  io_uring ring_{};
  unsigned flags_ = 0;
  unsigned features_ = 0;
  bool live_ = false;
};

}  // namespace blkstack
