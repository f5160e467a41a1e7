#include "daemon/block_device.hpp"

#include <future>

namespace blkstack {

void run_on(Reactor& r, const std::function<void()>& fn) {
  if (r.on_reactor_thread()) return fn();
  std::promise<void> done;
  r.post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

Result<std::unique_ptr<BlockDevice>> BlockDevice::open(std::string id, const KeyValueList& spec,
                                                      const std::vector<Reactor*>& reactors, size_t pool_bytes) {
  OpenOptions o;
  o.num_queues = static_cast<int>(reactors.size());
  auto dev = open_device(spec, o);
  if (!dev) return dev.status();
  std::unique_ptr<BlockDevice> bd(new BlockDevice);
  bd->id_ = std::move(id);
  bd->spec_text_ = spec.head;
  for (auto& [k, v] : spec.items) bd->spec_text_ += "," + k + "=" + v;
  bd->device_ = std::move(dev.value());
  bd->reactors_ = reactors;
  bd->lanes_.resize(reactors.size());
  Status failed;
  for (size_t i = 0; i < reactors.size(); i++) {
    Queue* q = bd->device_->queue(static_cast<int>(i));
    if (!q) return error(-EIO, "device has no queue {}", i);
    run_on(*reactors[i], [&] {
      auto lane = std::make_unique<Lane>(*reactors[i], *q);
      Status s = lane->pool.init(*bd->device_, pool_bytes);
      if (!s) failed = s;
      bd->lanes_[i] = std::move(lane);
    });
    if (!failed) return error(failed.code(), "buffers for reactor {}: {}", i, failed.message());
  }
  return bd;
}

BlockDevice::~BlockDevice() {
  // Lanes belong to their reactors: tear each down there.
  for (size_t i = 0; i < lanes_.size(); i++) {
    if (!lanes_[i]) continue;
    run_on(*reactors_[i], [&] { lanes_[i]->io.shutdown(); });
  }
  for (size_t i = 0; i < lanes_.size(); i++) {
    if (!lanes_[i]) continue;
    // The poll's final CQE names the IoQueue: wait for it before freeing.
    while (true) {
      bool closed = false;
      run_on(*reactors_[i], [&] { closed = lanes_[i]->io.closed(); });
      if (closed) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    run_on(*reactors_[i], [&] { lanes_[i].reset(); });
  }
}

}  // namespace blkstack
