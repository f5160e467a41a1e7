// Per-export statistics, sharded by reactor: each shard has one writer (its
// reactor), readers (the control socket) only load, so counting costs plain
// stores. Latencies go into log-spaced buckets (four per power of two) for
// percentiles within ~19%.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace blkstack {

struct StatsShard {
  static constexpr unsigned kBuckets = 4 * 40;  // 1 ns .. ~18 minutes

  std::atomic<uint64_t> requests{0}, read_bytes{0}, write_bytes{0}, errors{0}, connections{0};
  std::atomic<uint64_t> fua_writes{0}, flushes{0};
  std::atomic<uint64_t> layout_queries{0};  // allocation queries asked of the device (SEEK_DATA/SEEK_HOLE)
  std::atomic<uint64_t> spliced_reads{0};   // reads answered from the device's file without a copy
  std::array<std::atomic<uint64_t>, kBuckets> latency{};

  static void add(std::atomic<uint64_t>& c, uint64_t v) {
    c.store(c.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
  }
  static unsigned bucket(uint64_t ns) {
    if (ns < 4) return static_cast<unsigned>(ns);
    unsigned msb = 63u - static_cast<unsigned>(__builtin_clzll(ns));
    unsigned quarter = static_cast<unsigned>((ns >> (msb - 2)) & 3);
    unsigned b = (msb - 1) * 4 + quarter;
    return b < kBuckets ? b : kBuckets - 1;
  }
  // The smallest latency (ns) of bucket b.
  static uint64_t bucket_floor(unsigned b) {
    if (b < 4) return b;
    unsigned msb = b / 4 + 1;
    return (uint64_t{4} | (b & 3)) << (msb - 2);
  }
  void record(uint64_t ns) { add(latency[bucket(ns)], 1); }
};

struct StatsSnapshot {
  uint64_t requests = 0, read_bytes = 0, write_bytes = 0, errors = 0, connections = 0;
  uint64_t fua_writes = 0, flushes = 0, layout_queries = 0, spliced_reads = 0;
  std::array<uint64_t, StatsShard::kBuckets> latency{};

  void add(const StatsShard& s) {
    requests += s.requests.load(std::memory_order_relaxed);
    read_bytes += s.read_bytes.load(std::memory_order_relaxed);
    write_bytes += s.write_bytes.load(std::memory_order_relaxed);
    errors += s.errors.load(std::memory_order_relaxed);
    connections += s.connections.load(std::memory_order_relaxed);
    fua_writes += s.fua_writes.load(std::memory_order_relaxed);
    flushes += s.flushes.load(std::memory_order_relaxed);
    layout_queries += s.layout_queries.load(std::memory_order_relaxed);
    spliced_reads += s.spliced_reads.load(std::memory_order_relaxed);
    for (unsigned i = 0; i < StatsShard::kBuckets; i++) latency[i] += s.latency[i].load(std::memory_order_relaxed);
  }
  // Latency (ns) below which fraction p of the requests completed.
  uint64_t percentile(double p) const {
    uint64_t total = 0;
    for (uint64_t c : latency) total += c;
    if (total == 0) return 0;
    auto want = static_cast<uint64_t>(p * static_cast<double>(total));
    uint64_t seen = 0;
    for (unsigned i = 0; i < StatsShard::kBuckets; i++) {
      seen += latency[i];
      if (seen > want) return StatsShard::bucket_floor(i + 1);
    }
    return StatsShard::bucket_floor(StatsShard::kBuckets - 1);
  }
};

}  // namespace blkstack
