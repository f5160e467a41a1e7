#include "drivers/rbd/rbd_driver.hpp"

#include <chrono>
#include <climits>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cstring>
#include <string>

#include "drivers/common/driver_properties.hpp"
#include "drivers/driver_module.hpp"
#include "drivers/rbd/rbd_queue.hpp"

namespace blkstack {

std::unique_ptr<Driver> RbdDriver::create() { return std::make_unique<RbdDriver>(); }

std::span<const DriverProperty> RbdDriver::properties() const {
  static const DriverProperty props[] = {
      str_property<RbdDriver, &RbdDriver::conf_>("conf"),
      seconds_property<RbdDriver, &RbdDriver::connect_timeout_>("connect-timeout"),
      str_property<RbdDriver, &RbdDriver::image_name_>("image"),
      str_property<RbdDriver, &RbdDriver::keyring_>("keyring"),
      str_property<RbdDriver, &RbdDriver::namespace_>("namespace"),
      seconds_property<RbdDriver, &RbdDriver::op_timeout_>("op-timeout"),
      str_property<RbdDriver, &RbdDriver::pool_>("pool"),
      str_property<RbdDriver, &RbdDriver::snapshot_>("snapshot"),
      str_property<RbdDriver, &RbdDriver::user_>("user"),
  };
  return props;
}

Status RbdDriver::open(const std::shared_ptr<RbdImage>& imgp, bool read_only) {
  RbdImage& img = *imgp;
  const std::string where = fmt::format("rbd image {}/{}{}{}{}", pool_, namespace_.empty() ? "" : namespace_ + "/",
                                        image_name_, snapshot_.empty() ? "" : "@", snapshot_);
  int r = rados_create(&img.cluster.h, user_.c_str());
  if (r < 0) return error(r, "{}: rados_create for user '{}' failed: {}", where, user_, strerror(-r));

  // The conf file first, then CEPH_ARGS, then our properties on top.
  if (!conf_.empty()) {
    r = rados_conf_read_file(img.cluster.h, conf_.c_str());
    if (r < 0) return error(r, "{}: cannot read Ceph configuration '{}': {}", where, conf_, strerror(-r));
  } else {
    // The default search path ($CEPH_CONF, /etc/ceph/ceph.conf, ...): no
    // file is fine when CEPH_ARGS says where the monitors are.
    (void)rados_conf_read_file(img.cluster.h, nullptr);
  }
  (void)rados_conf_parse_env(img.cluster.h, nullptr);
  auto set = [&](const char* opt, const std::string& val) -> Status {
    int e = rados_conf_set(img.cluster.h, opt, val.c_str());
    if (e < 0) return error(e, "{}: cannot set Ceph option {}={}: {}", where, opt, val, strerror(-e));
    return {};
  };
  if (!keyring_.empty()) {
    if (Status s = set("keyring", keyring_); !s) return s;
  }
  if (connect_timeout_ > 0) {
    // client_mount_timeout bounds rados_connect() (finding a monitor and
    // authenticating); rados_mon_op_timeout bounds later monitor commands.
    if (Status s = set("client_mount_timeout", std::to_string(connect_timeout_)); !s) return s;
    if (Status s = set("rados_mon_op_timeout", std::to_string(connect_timeout_)); !s) return s;
  }
  if (op_timeout_ > 0) {
    // Requests to OSDs that do not answer fail with -ETIMEDOUT instead of
    // waiting for the cluster to heal.
    if (Status s = set("rados_osd_op_timeout", std::to_string(op_timeout_)); !s) return s;
  }

  r = rados_connect(img.cluster.h);
  if (r < 0) {
    char mons[256] = "";
    (void)rados_conf_get(img.cluster.h, "mon_host", mons, sizeof(mons));
    return error(r, "{}: cannot connect to the Ceph cluster (monitors '{}', conf '{}', user '{}', connect-timeout {} s): {}",
                 where, mons, conf_.empty() ? "default" : conf_, user_, connect_timeout_, strerror(-r));
  }
  r = rados_ioctx_create(img.cluster.h, pool_.c_str(), &img.io.h);
  if (r < 0) {
    return error(r, "{}: cannot open pool '{}': {}", where, pool_,
                 r == -ENOENT ? "no such pool" : strerror(-r));
  }
  rados_ioctx_set_namespace(img.io.h, namespace_.empty() ? nullptr : namespace_.c_str());

  const char* snap = snapshot_.empty() ? nullptr : snapshot_.c_str();
  r = open_image(imgp, read_only, snap);
  if (r < 0) {
    if (r == -ETIMEDOUT) {
      return error(r, "{}: no answer from the OSDs within connect-timeout ({} s) while opening the image", where,
                   connect_timeout_);
    }
    if (r == -ENOENT) {
      return error(r, "{}: {}", where, snap ? "no such image or snapshot" : "no such image");
    }
    return error(r, "{}: cannot open: {}", where, strerror(-r));
  }
  return {};
}

namespace {

// Completion of rbd_aio_open(), shared by the waiting thread and librbd's
// callback (which may come after the waiter gave up).
struct OpenWaiter {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
};

void on_open_done(rbd_completion_t, void* arg) {
  auto* ref = static_cast<std::shared_ptr<OpenWaiter>*>(arg);
  {
    std::lock_guard<std::mutex> lock((*ref)->m);
    (*ref)->done = true;
  }
  (*ref)->cv.notify_all();
  delete ref;
}

}  // namespace

// Opening reads the image's header objects from the OSDs, which
// connect-timeout does not bound (it covers the monitors) and op-timeout may
// leave unbounded: open asynchronously and stop waiting after
// connect-timeout. librbd cannot cancel the open, so on a timeout the
// half-open image goes to a thread that waits for it and then closes
// everything (img is shared with it).
int RbdDriver::open_image(const std::shared_ptr<RbdImage>& img, bool read_only, const char* snap) {
  auto waiter = std::make_shared<OpenWaiter>();
  auto* arg = new std::shared_ptr<OpenWaiter>(waiter);
  rbd_completion_t c = nullptr;
  int r = rbd_aio_create_completion(arg, on_open_done, &c);
  if (r < 0) {
    delete arg;
    return r;
  }
  r = read_only ? rbd_aio_open_read_only(img->io.h, image_name_.c_str(), &img->image.h, snap, c)
                : rbd_aio_open(img->io.h, image_name_.c_str(), &img->image.h, snap, c);
  if (r < 0) {
    rbd_aio_release(c);
    delete arg;
    img->image.h = nullptr;
    return r;
  }
  bool done = true;
  {
    std::unique_lock<std::mutex> lock(waiter->m);
    if (connect_timeout_ > 0) {
      done = waiter->cv.wait_for(lock, std::chrono::seconds(connect_timeout_), [&] { return waiter->done; });
    } else {
      waiter->cv.wait(lock, [&] { return waiter->done; });
    }
  }
  if (!done) {
    std::thread([img, c] {
      rbd_aio_wait_for_complete(c);
      if (rbd_aio_get_return_value(c) < 0) img->image.h = nullptr;
      rbd_aio_release(c);
      // The last reference to img goes here: close, pool context, cluster.
    }).detach();
    return -ETIMEDOUT;
  }
  rbd_aio_wait_for_complete(c);  // the callback ran; the completion may still be finishing
  r = static_cast<int>(rbd_aio_get_return_value(c));
  rbd_aio_release(c);
  if (r < 0) img->image.h = nullptr;  // librbd freed what it had opened
  return r < 0 ? r : 0;
}

Status RbdDriver::connect(bool& read_only, DeviceInfo& info) {
  if (pool_.empty()) return error(-EINVAL, "rbd: the pool property must be set");
  if (image_name_.empty()) return error(-EINVAL, "rbd: the image property must be set");
  if (user_.empty()) return error(-EINVAL, "rbd: user must not be empty");

  // A snapshot is immutable: open it read-only whatever was asked.
  bool ro = read_only || !snapshot_.empty();
  auto img = std::make_shared<RbdImage>();
  if (Status s = open(img, ro); !s) return s;

  rbd_image_info_t st{};
  int r = rbd_stat(img->image.h, &st, sizeof(st));
  if (r < 0) return error(r, "rbd image {}/{}: rbd_stat failed: {}", pool_, image_name_, strerror(-r));

  DeviceInfo i;
  i.capacity = st.size;
  i.max_queues = INT_MAX;
  i.supports_poll_queues = false;  // completions come from librbd's threads
  i.may_pin_mem_regions = false;
  // librbd addresses bytes: RADOS objects take writes at any offset and
  // length, so there is no sector to align to (a 512-byte alignment would
  // only be a lie that makes callers split or pad for nothing).
  i.request_alignment = 1;
  i.buf_alignment = 1;
  i.mem_region_alignment = 1;
  i.optimal_buf_alignment = 4096;
  i.optimal_io_alignment = 4096;
  // Requests that cover whole objects avoid librbd's partial-object work.
  i.optimal_io_size = st.obj_size <= static_cast<uint64_t>(INT_MAX) ? static_cast<int>(st.obj_size) : 0;
  // librbd refuses vectors longer than IOV_MAX.
  i.max_segments = IOV_MAX;
  i.max_segment_len = 0;
  // Results travel as int through the contract layer: keep one request's
  // bytes within it.
  i.max_transfer = 1 << 30;
  // librbd caches writes (rbd cache, write-back once the first flush came):
  // only a flush makes them durable, and there is no FUA; the contract layer
  // emulates FUA as write-then-flush.
  i.flush_needed = true;
  i.supports_fua_natively = false;
  i.fua_native_write_zeroes = false;
  // Discard and write-zeroes take any range; librbd splits by object.
  i.supports_discard = true;
  i.supports_write_zeroes = true;
  i.discard_alignment = 1;
  i.discard_alignment_offset = 0;
  i.max_discard_len = 0;
  i.max_write_zeroes_len = 0;
  i.can_grow = false;
  i.rotational = false;
  i.can_report_holes = false;

  image_ = std::move(img);
  read_only = ro;
  info = i;
  return {};
}

Result<std::unique_ptr<DriverQueue>> RbdDriver::create_queue(bool poll) {
  if (poll) return error(-ENOTSUP, "rbd: poll queues are not supported");
  auto q = std::make_unique<RbdQueue>(image_);
  if (Status s = q->init(); !s) return s;
  return std::unique_ptr<DriverQueue>(std::move(q));
}

BLKSTACK_DRIVER_MODULE("rbd", &RbdDriver::create)

}  // namespace blkstack
