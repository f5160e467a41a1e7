// The drivers built into this library, by the name blkio_create() takes.
#include "core/driver.hpp"
#include "drivers/io_uring/io_uring_driver.hpp"
#include "drivers/rbd/rbd_driver.hpp"

namespace blkstack {

std::unique_ptr<Driver> make_nbd_driver();
std::unique_ptr<Driver> make_null_driver();
std::unique_ptr<Driver> make_virtio_blk_vhost_user_driver();

std::span<const DriverEntry> drivers() {
  static const DriverEntry entries[] = {
      {"io_uring", &IoUringDriver::create},
      {"nbd", &make_nbd_driver},
      {"null", &make_null_driver},
      {"rbd", &RbdDriver::create},
      {"virtio-blk-vhost-user", &make_virtio_blk_vhost_user_driver},
  };
  return entries;
}

}  // namespace blkstack
