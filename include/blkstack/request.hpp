// The vocabulary of the request path: operations, flags, completions, memory
// regions and zones. The plain structs are layout-identical to their
// counterparts in <blkio.h> (checked by static_assert in the C shim), so the
// shim passes them through without copying.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace blkstack {

enum class Op : uint8_t {
  kRead,
  kWrite,
  kReadv,
  kWritev,
  kWriteZeroes,
  kDiscard,
  kFlush,
  kReportZones,
  kZoneOpen,
  kZoneClose,
  kZoneFinish,
  kZoneReset,
  kZoneOpenAll,
  kZoneCloseAll,
  kZoneFinishAll,
  kZoneResetAll,
  // Native C++ API only (Queue::block_status); libblkio has no such request
  // and the C shim has no way to make one.
  kBlockStatus,
};

const char* op_name(Op op);

inline bool op_writes(Op op) {
  return op == Op::kWrite || op == Op::kWritev || op == Op::kWriteZeroes || op == Op::kDiscard ||
         (op >= Op::kZoneOpen && op <= Op::kZoneResetAll);
}
inline bool op_is_zone(Op op) { return op >= Op::kReportZones && op <= Op::kZoneResetAll; }

// Request flags (values are ABI: they equal BLKIO_REQ_*).
inline constexpr uint32_t kReqFua = 1u << 0;
inline constexpr uint32_t kReqNoUnmap = 1u << 1;
inline constexpr uint32_t kReqNoFallback = 1u << 2;
inline constexpr uint32_t kReqAllFlags = kReqFua | kReqNoUnmap | kReqNoFallback;

struct Completion {
  void* user_data;
  const char* error_msg;
  int ret;
  uint8_t reserved[12];
};

struct MemRegion {
  void* addr;
  size_t len;
  uint64_t iova;
  int64_t fd_offset;
  int fd;
  uint32_t flags;

  bool same_as(const MemRegion& o) const {
    return addr == o.addr && len == o.len && iova == o.iova && fd_offset == o.fd_offset &&
           fd == o.fd && flags == o.flags;
  }
};

struct Zone {
  uint64_t start;
  uint64_t len;
  uint64_t capacity;
  uint64_t write_pointer;
  uint8_t zone_type;
  uint8_t zone_state;
  uint8_t reset;
  uint8_t reserved[29];
};

// A run of bytes that is all data or all hole (reads as zeroes; a hole need
// not be unallocated, only known to read as zeroes). The answer of an
// allocation query: Device::extent_at() and Queue::block_status().
struct AllocationExtent {
  uint64_t len;
  bool hole;
};

struct MappedRegion;  // a region as the device knows it (core/region_table.hpp)

// A request as the contract layer hands it to a driver. Drivers read it
// during DriverQueue::enqueue() only; the queue keeps the original in its slot
// table until the completion is handed back to the application.
struct Request {
  Op op;
  uint32_t flags;
  uint64_t offset;
  uint64_t len;  // bytes (read/write/zeroes/discard/block status), zone count (report zones)
  union {
    void* buf;
    const struct iovec* iov;
    Zone* zones;
    AllocationExtent* extent;  // block status: where the answer goes
  };
  int iovcnt;
  const MappedRegion* region;  // the mapped region that holds buf, or nullptr
  void* user_data;
};

}  // namespace blkstack
