// From what a virtio-blk device offers (negotiated feature bits and its
// config space) to what the library says about the device (DeviceInfo) and
// what the queues need (VirtioBlkCaps). A pure function: no I/O.
#pragma once

#include <linux/virtio_blk.h>

#include <cstddef>
#include <cstdint>

#include "blkstack/device_info.hpp"
#include "blkstack/status.hpp"
#include "drivers/virtio_blk_vhost_user/virtio_blk_queue.hpp"

namespace blkstack {

// The config-space bytes we read: everything up to the write-zeroes fields.
// Newer fields (secure erase, zoned) are left out, so back-ends built on
// older headers answer too.
inline constexpr uint32_t kVirtioBlkConfigLen = offsetof(virtio_blk_config, unused1) + 3;

// The virtio-blk feature bits the driver understands and accepts.
uint64_t virtio_blk_wanted_features();

struct VirtioBlkGeometry {
  DeviceInfo info;
  VirtioBlkCaps caps;
  bool read_only = false;
  int num_queues = 1;  // the device's queue count (MQ), before GET_QUEUE_NUM
};

// `features`: negotiated bits; `cfg`: config space as read (little-endian);
// `queue_size`: the configured virtqueue size (limits segments per request).
Result<VirtioBlkGeometry> virtio_blk_geometry(uint64_t features, const virtio_blk_config& cfg, uint16_t queue_size);

}  // namespace blkstack
