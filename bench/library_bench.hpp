// The library benchmark engine: one workload loop, run against any libblkio
// ABI implementation loaded with dlopen (ours, real libblkio), so both are
// measured by exactly the same code. fio runs beside them as the reference
// for what the kernel can do.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace blkstack::bench {

struct Workload {
  std::string name;          // e.g. "randread-4k-qd32"
  bool write = false;
  bool random = true;
  uint32_t block_size = 4096;
  uint32_t depth = 1;
  // At most this many completions per blkioq_do_io() (fio's
  // iodepth_batch_complete_max); 0: the queue depth. Reaping fewer hands
  // each freed slot back to the device sooner, which pays on a device with
  // long latency and costs calls on a fast one.
  uint32_t reap_max = 0;
};

// What to open: a libblkio driver and its properties.
struct Target {
  std::string name;  // for reports: "tmpfs", "disk", "null"
  std::string driver;
  std::vector<std::pair<std::string, std::string>> props;
  std::string path;  // the file, for fio (empty: fio cannot run it)
  bool direct = false;
};

struct Measurement {
  bool ok = false;
  std::string error;
  uint64_t ios = 0;
  double seconds = 0;
  double iops() const { return seconds > 0 ? static_cast<double>(ios) / seconds : 0; }
  double mbps(uint32_t bs) const { return iops() * bs / 1e6; }
};

// Runs the workload through the libblkio ABI found in `library` (a path to a
// libblkio.so.1) for `seconds`, or for exactly `count` requests when count > 0.
// In a child process unless in_process (callgrind runs need one process).
Measurement run_library(const std::string& library, const Target& target, const Workload& w, double seconds,
                        uint64_t count = 0, bool in_process = false);

// The same workload through fio's io_uring engine.
Measurement run_fio(const Target& target, const Workload& w, double seconds);

// Self instructions (Ir) per object file in a callgrind output file.
std::vector<std::pair<std::string, uint64_t>> callgrind_cost_by_object(const std::string& file);

}  // namespace blkstack::bench
