// The drivers this library offers, by the name blkio_create() takes. Built-in
// drivers need nothing beyond libc and liburing; the network drivers come from
// modules loaded on first use, so that programs which never open an rbd or nbd
// device neither load nor need librbd and libnbd (about 25 million
// instructions of dynamic linking at every start when they were linked in).
#include "core/driver.hpp"
#include "drivers/driver_module.hpp"
#include "drivers/io_uring/io_uring_driver.hpp"

namespace blkstack {

std::unique_ptr<Driver> make_null_driver();
std::unique_ptr<Driver> make_virtio_blk_vhost_user_driver();

namespace {

template <std::unique_ptr<Driver> (*Make)()>
Result<std::unique_ptr<Driver>> builtin() {
  return Make();
}

template <const char* Name>
Result<std::unique_ptr<Driver>> from_module() {
  return load_driver_module(Name);
}

constexpr char kNbd[] = "nbd";
constexpr char kRbd[] = "rbd";

}  // namespace

std::span<const DriverEntry> drivers() {
  static const DriverEntry entries[] = {
      {"io_uring", &builtin<&IoUringDriver::create>},
      {kNbd, &from_module<kNbd>},
      {"null", &builtin<&make_null_driver>},
      {kRbd, &from_module<kRbd>},
      {"virtio-blk-vhost-user", &builtin<&make_virtio_blk_vhost_user_driver>},
  };
  return entries;
}

}  // namespace blkstack
