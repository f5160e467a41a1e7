// The virtio-blk-vhost-user driver through libblkio.so.1, as applications
// (QEMU's blkio driver, blkio-bench) use it: properties by name, a region
// from blkio_alloc_mem_region() (memfd-backed: the back-end maps it), data
// round trips checked against the exported file, the completion fd, and
// connect errors in blkio_get_error_msg().
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "test_util.hpp"
#include "vhost_user_test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::Qsd;
using blkstack::test::wait_one;

TEST(VhostUserCapi, PropertiesDataAndCompletionFd) {
  Qsd qsd;
  Blkio b("virtio-blk-vhost-user");
  ASSERT_EQ(blkio_set_str(b, "path", qsd.sock().c_str()), 0) << blkio_get_error_msg();
  ASSERT_EQ(blkio_connect(b), 0) << blkio_get_error_msg();
  int qs = 0;
  ASSERT_EQ(blkio_get_int(b, "queue-size", &qs), 0);
  EXPECT_EQ(qs, 256);
  ASSERT_EQ(blkio_set_int(b, "queue-size", 128), 0) << blkio_get_error_msg();
  bool needs = false;
  ASSERT_EQ(blkio_get_bool(b, "needs-mem-regions", &needs), 0);
  EXPECT_TRUE(needs);
  ASSERT_EQ(blkio_get_bool(b, "needs-mem-region-fd", &needs), 0);
  EXPECT_TRUE(needs);
  uint64_t cap = 0;
  ASSERT_EQ(blkio_get_uint64(b, "capacity", &cap), 0);
  EXPECT_EQ(cap, 64u << 20);
  EXPECT_EQ(blkio_set_str(b, "path", "/elsewhere"), -EBUSY);  // fixed once connected
  ASSERT_EQ(blkio_set_int(b, "num-queues", 1), 0);
  ASSERT_EQ(blkio_start(b), 0) << blkio_get_error_msg();

  blkio_mem_region r{};
  ASSERT_EQ(blkio_alloc_mem_region(b, &r, 1 << 20), 0) << blkio_get_error_msg();
  EXPECT_GE(r.fd, 0);  // memfd: the back-end maps it through this fd
  ASSERT_EQ(blkio_map_mem_region(b, &r), 0) << blkio_get_error_msg();
  char* buf = static_cast<char*>(r.addr);
  blkioq* q = blkio_get_queue(b, 0);
  int fd = blkioq_get_completion_fd(q);
  ASSERT_GE(fd, 0);
  blkioq_set_completion_fd_enabled(q, true);
  for (int i = 0; i < 1 << 20; i++) buf[i] = static_cast<char>(i * 7 + 1);
  blkioq_write(q, 3 << 20, buf, 1 << 20, nullptr, BLKIO_REQ_FUA);
  blkio_completion c{};
  ASSERT_EQ(blkioq_do_io(q, &c, 0, 1, nullptr), 0);  // submits
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  uint64_t ev;
  (void)!read(fd, &ev, sizeof(ev));
  timespec t{10, 0};
  ASSERT_EQ(blkioq_do_io(q, &c, 1, 1, &t), 1) << blkio_get_error_msg();
  EXPECT_EQ(c.ret, 0);
  std::string img = qsd.read_img(3 << 20, 1 << 20);
  EXPECT_EQ(memcmp(img.data(), buf, 1 << 20), 0);
  memset(buf, 0, 1 << 20);
  blkioq_read(q, 3 << 20, buf, 1 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  for (int i = 0; i < 1 << 20; i++) ASSERT_EQ(buf[i], static_cast<char>(i * 7 + 1)) << "byte " << i;

  // A buffer the application never mapped: an error completion.
  std::string heap(4096, '\0');
  blkioq_read(q, 0, heap.data(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EFAULT);

  blkio_unmap_mem_region(b, &r);
  blkio_free_mem_region(b, &r);
}

TEST(VhostUserCapi, ConnectErrorInErrorMessage) {
  Blkio b("virtio-blk-vhost-user");
  ASSERT_EQ(blkio_set_str(b, "path", "/nonexistent/vhost.sock"), 0);
  EXPECT_EQ(blkio_connect(b), -ENOENT);
  EXPECT_NE(std::string(blkio_get_error_msg()).find("/nonexistent/vhost.sock"), std::string::npos)
      << blkio_get_error_msg();
}
