// Device: one block device instance and its lifecycle
// (created -> connected -> started), properties, memory regions and queues.
//
// This is the native C++ API; libblkio.so.1's blkio_* functions are thin
// wrappers over it. Control-path calls (properties, regions, queues) are
// serialized internally; the data path (Queue) takes no locks.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "blkstack/device_info.hpp"
#include "blkstack/property.hpp"
#include "blkstack/request.hpp"
#include "blkstack/status.hpp"

namespace blkstack {

class Driver;
class Queue;
class RegionTable;

class Device {
 public:
  // Creates an instance of the named driver ("io_uring", "null", ...).
  static Result<std::unique_ptr<Device>> create(std::string_view driver);
  static std::vector<std::string_view> driver_names();

  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  State state() const { return state_; }
  const std::string& driver_name() const { return driver_name_; }
  Status connect();
  Status start();

  // Properties. get()/set() insist on the property's own type (-ENOTTY
  // otherwise); the _str forms convert.
  Result<PropValue> get(std::string_view name, PropType type) const;
  Result<std::string> get_str(std::string_view name) const;
  Status set(std::string_view name, const PropValue& value);
  Status set_str(std::string_view name, std::string_view text);
  // Every property name this instance knows, common ones first.
  std::vector<std::string_view> property_names() const;
  // The type of a property, or -ENOENT.
  Result<PropType> property_type(std::string_view name) const;
  // When a property may be read and written (masks of states::k*).
  struct PropertyAccess {
    PropType type;
    uint8_t readable;
    uint8_t writable;
  };
  Result<PropertyAccess> property_access(std::string_view name) const;

  // Allocation at offset (connected or started): the length of the run of
  // data or hole that starts there, at most len. Devices that cannot tell
  // report data.
  Result<AllocationExtent> extent_at(uint64_t offset, uint64_t len);

  // A file descriptor whose bytes at the device's offsets are the device's
  // data, in memory (a regular file on tmpfs or ramfs opened without
  // O_DIRECT), or -1. Reading it never waits for a disk, so an export may
  // splice(2) from it on its event loop and hand the kernel references to
  // the pages instead of copying them (zero-copy NBD reads). Such reads skip
  // this library's queues: only for range-checked reads, and only while the
  // device is connected. Owned by the device.
  int memory_file() const;

  // Valid once connected.
  const DeviceInfo& info() const { return info_; }
  bool read_only() const { return read_only_; }

  // Memory regions (started state only for alloc/free).
  Status alloc_mem_region(MemRegion& region, size_t len);
  void free_mem_region(const MemRegion& region);
  Status map_mem_region(const MemRegion& region);
  void unmap_mem_region(const MemRegion& region);

  // Queues. Indices stay stable when other queues are removed.
  Queue* queue(int index) { return find_queue(false, index); }
  Queue* poll_queue(int index) { return find_queue(true, index); }
  Result<int> add_queue(bool poll);
  Status remove_queue(bool poll, int index);

  // For queues and drivers: the current mapped-region snapshot (never null).
  const RegionTable& regions() const { return *regions_.load(std::memory_order_acquire); }
  const std::atomic<const RegionTable*>& regions_pointer() const { return regions_; }
  Driver& driver() { return *driver_; }
  // A zero-filled buffer of zero_buffer_len() bytes for the write-zeroes
  // fallback (allocated at start).
  const void* zero_buffer() const { return zero_buffer_; }
  size_t zero_buffer_len() const { return zero_buffer_len_; }

 private:
  friend struct DeviceProperties;
  Device(std::string name, std::unique_ptr<Driver> driver);
  Queue* find_queue(bool poll, int index);
  Result<std::unique_ptr<Queue>> make_queue(bool poll, int index);
  void publish_regions(std::unique_ptr<RegionTable> table);
  Status check_region(const MemRegion& r) const;
  void unmap_locked(const MemRegion& r);

  std::string driver_name_;
  std::unique_ptr<Driver> driver_;
  State state_ = State::kCreated;
  DeviceInfo info_;
  bool read_only_ = false;
  int num_queues_ = 1;
  int num_poll_queues_ = 0;

  mutable std::mutex control_;  // serializes control-path calls
  std::vector<std::unique_ptr<Queue>> queues_;
  std::vector<std::unique_ptr<Queue>> poll_queues_;
  std::vector<MemRegion> allocated_;
  // Region snapshots are immutable and kept until destruction, so a queue
  // thread may use one without locks while another thread maps or unmaps.
  std::atomic<const RegionTable*> regions_;
  std::vector<std::unique_ptr<RegionTable>> region_tables_;
  void* zero_buffer_ = nullptr;
  size_t zero_buffer_len_ = 0;
};

}  // namespace blkstack
