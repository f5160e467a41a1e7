// RAII owners for librados/librbd handles. One RbdImage bundles the three a
// device needs (cluster connection, pool I/O context, open image), destroyed
// in reverse order; queues share it through a shared_ptr so that the image
// stays open until the last queue has waited for its in-flight requests.
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <memory>

namespace blkstack {

struct RadosCluster {
  rados_t h = nullptr;
  RadosCluster() = default;
  RadosCluster(const RadosCluster&) = delete;
  RadosCluster& operator=(const RadosCluster&) = delete;
  // rados_shutdown() also stops librados' threads: nothing of ours may run
  // on them afterwards, which the image's close (below, first) guarantees.
  ~RadosCluster() {
    if (h) rados_shutdown(h);
  }
};

struct RadosIoctx {
  rados_ioctx_t h = nullptr;
  RadosIoctx() = default;
  RadosIoctx(const RadosIoctx&) = delete;
  RadosIoctx& operator=(const RadosIoctx&) = delete;
  ~RadosIoctx() {
    if (h) rados_ioctx_destroy(h);
  }
};

struct RbdImageHandle {
  rbd_image_t h = nullptr;
  RbdImageHandle() = default;
  RbdImageHandle(const RbdImageHandle&) = delete;
  RbdImageHandle& operator=(const RbdImageHandle&) = delete;
  // rbd_close() flushes librbd's cache and waits for its own in-flight work.
  ~RbdImageHandle() {
    if (h) rbd_close(h);
  }
};

// Members are destroyed bottom-up: image, then pool context, then cluster.
struct RbdImage {
  RadosCluster cluster;
  RadosIoctx io;
  RbdImageHandle image;
};

}  // namespace blkstack
