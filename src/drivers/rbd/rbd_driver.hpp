// The rbd driver: a Ceph RBD image through librbd (blkio(3) has no rbd
// driver; the properties follow QEMU's and libvirt's names where they exist).
// See docs/rbd-driver.md.
#pragma once

#include <memory>
#include <string>

#include "core/driver.hpp"
#include "drivers/rbd/rbd_handles.hpp"

namespace blkstack {

class RbdDriver final : public Driver {
 public:
  static std::unique_ptr<Driver> create();

  std::span<const DriverProperty> properties() const override;
  Status connect(bool& read_only, DeviceInfo& info) override;
  Result<std::unique_ptr<DriverQueue>> create_queue(bool poll) override;

 private:
  // Connects to the cluster and opens the image into img; errors name what
  // failed (conf, monitor, pool, image, snapshot).
  Status open(const std::shared_ptr<RbdImage>& img, bool read_only);
  // rbd_aio_open within connect-timeout: 0 or a negative errno.
  int open_image(const std::shared_ptr<RbdImage>& img, bool read_only, const char* snap);

  // Properties.
  std::string pool_;
  std::string image_name_;
  std::string namespace_;
  std::string snapshot_;
  std::string conf_;
  std::string user_ = "admin";
  std::string keyring_;
  int connect_timeout_ = 30;  // seconds: monitor connection and monitor commands
  int op_timeout_ = 0;        // seconds, 0: wait for the cluster (librados' default)

  std::shared_ptr<RbdImage> image_;
};

}  // namespace blkstack
