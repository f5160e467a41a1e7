// BlockDevice: a library device the daemon serves, with one lane per
// reactor: that reactor's queue on the device and its buffer pool. Exports
// use the lane of the reactor their connection lives on.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blkstack/device.hpp"
#include "blkstack/device_spec.hpp"
#include "daemon/buffer_pool.hpp"
#include "daemon/io_queue.hpp"
#include "daemon/known_data.hpp"
#include "daemon/reactor.hpp"

namespace blkstack {

class BlockDevice {
 public:
  struct Lane {
    Lane(Reactor& r, Queue& q) : io(r, q) {}
    IoQueue io;
    BufferPool pool;
    KnownData known_data;  // where this reactor has learnt the device has data
  };

  // Opens the device described by spec with one queue per reactor and sets up
  // every lane on its reactor.
  static Result<std::unique_ptr<BlockDevice>> open(std::string id, const KeyValueList& spec,
                                                  const std::vector<Reactor*>& reactors, size_t pool_bytes);
  ~BlockDevice();

  const std::string& id() const { return id_; }
  const std::string& spec() const { return spec_text_; }
  Device& device() { return *device_; }
  Lane& lane(unsigned reactor) { return *lanes_[reactor]; }
  // Exports attached to this device (control path only).
  int users = 0;

  // Bumped (any reactor) before every request that may turn data into holes
  // (discard, write-zeroes): what an export learnt earlier about where the
  // device has data is only reused while this has not moved.
  uint64_t holes_generation() const { return holes_gen_.load(std::memory_order_acquire); }
  void holes_may_appear() { holes_gen_.fetch_add(1, std::memory_order_acq_rel); }

 private:
  BlockDevice() = default;
  std::string id_, spec_text_;
  std::unique_ptr<Device> device_;
  std::vector<Reactor*> reactors_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::atomic<uint64_t> holes_gen_{0};
};

// Runs fn on the reactor's thread and waits for it (control path).
void run_on(Reactor& r, const std::function<void()>& fn);

}  // namespace blkstack
