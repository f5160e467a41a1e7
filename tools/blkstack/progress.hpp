// A one-line progress bar on stderr, redrawn at most ten times a second.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

namespace blkstack::cli {

class ProgressBar {
 public:
  ProgressBar(uint64_t total, bool enabled) : total_(total), enabled_(enabled), start_(Clock::now()), last_(start_) {}

  void update(uint64_t done, bool force = false) {
    if (!enabled_) return;
    auto now = Clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double pct = total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
    int filled = static_cast<int>(pct / 100.0 * kWidth);
    char bar[kWidth + 1];
    for (int i = 0; i < kWidth; i++) bar[i] = i < filled ? '#' : '.';
    bar[kWidth] = '\0';
    std::fprintf(stderr, "\r[%s] %5.1f%%  %.1f/%.1f MiB  %.1f MiB/s ", bar, pct, static_cast<double>(done) / 1048576.0,
                 static_cast<double>(total_) / 1048576.0,
                 secs > 0 ? static_cast<double>(done) / 1048576.0 / secs : 0.0);
    std::fflush(stderr);
  }
  void finish(uint64_t done) {
    if (!enabled_) return;
    update(done, true);
    std::fputc('\n', stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int kWidth = 30;
  uint64_t total_;
  bool enabled_;
  Clock::time_point start_, last_;
};

}  // namespace blkstack::cli
