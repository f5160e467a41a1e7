// BufferPool: I/O buffers for one device on one reactor, carved out of one
// memory region mapped on that device, so exports never bounce data (the
// io_uring driver turns region buffers into fixed-buffer I/O; virtio drivers
// can hand them to the device). Power-of-two size classes with free lists:
// allocation and release are a few instructions, no locks (one reactor).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "blkstack/device.hpp"
#include "blkstack/status.hpp"

namespace blkstack {

class BufferPool {
 public:
  static constexpr unsigned kMinShift = 12;  // 4 KiB
  static constexpr unsigned kMaxShift = 25;  // 32 MiB

  struct Buffer {
    char* data = nullptr;
    uint8_t cls = 0;
    explicit operator bool() const { return data != nullptr; }
  };

  BufferPool() = default;
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // Allocates `bytes` of memory (a memory region mapped on dev).
  Status init(Device& dev, size_t bytes);
  // A buffer of at least `len` bytes. When the region is exhausted (or too
  // fragmented), and the device does not insist on mapped memory, the buffer
  // comes from the heap instead (counted in heap_allocs()); otherwise an
  // empty buffer means: wait for buffers to come back.
  Buffer alloc(uint64_t len);
  void release(Buffer b);
  size_t capacity() const { return size_; }
  uint64_t heap_allocs() const { return heap_allocs_; }
  uint64_t max_alloc() const { return uint64_t{1} << max_shift_; }

 private:
  Device* dev_ = nullptr;
  MemRegion region_{};
  char* base_ = nullptr;
  size_t size_ = 0;
  size_t carved_ = 0;  // bytes handed out from the top at least once
  unsigned max_shift_ = kMaxShift;
  bool heap_ok_ = false;
  uint64_t heap_allocs_ = 0;
  static constexpr uint8_t kHeap = 0xff;
  std::array<std::vector<char*>, kMaxShift + 1> free_;
};

}  // namespace blkstack
