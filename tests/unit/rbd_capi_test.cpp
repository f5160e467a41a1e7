// The rbd driver through libblkio.so.1, as applications (QEMU, nbdkit) use
// it: properties by name, connect errors in blkio_get_error_msg(), data with
// a mapped memory region, the completion fd. Needs the rbd_cluster fixture
// (BLKSTACK_RBD_CONF); the image is made with the `rbd` command.
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::wait_one;

namespace {

const char* conf_path() { return getenv("BLKSTACK_RBD_CONF"); }

int sh(const std::string& cmd) {
  std::string full = "CEPH_CONF='" + std::string(conf_path()) + "' " + cmd + " >/dev/null 2>&1";
  return system(full.c_str());
}

class RbdCapi : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(conf_path(), nullptr) << "BLKSTACK_RBD_CONF is not set: run through ctest (fixture rbd_cluster)";
    image_ = "capi-" + std::to_string(getpid());
    ASSERT_EQ(sh("rbd create --size 16M rbd/" + image_), 0) << "rbd create " << image_;
  }
  void TearDown() override { sh("rbd rm --no-progress rbd/" + image_); }
  std::string image_;
};


TEST_F(RbdCapi, PropertiesDataAndCompletionFd) {
  Blkio b("rbd");
  b.open({{"conf", conf_path()}, {"pool", "rbd"}, {"image", image_}, {"connect-timeout", "20"}});
  uint64_t cap = 0;
  ASSERT_EQ(blkio_get_uint64(b, "capacity", &cap), 0);
  EXPECT_EQ(cap, 16u << 20);
  char* s = nullptr;
  ASSERT_EQ(blkio_get_str(b, "image", &s), 0);
  EXPECT_EQ(std::string(s), image_);
  free(s);
  int v = 0;
  ASSERT_EQ(blkio_get_int(b, "op-timeout", &v), 0);
  EXPECT_EQ(v, 0);
  // Driver properties are fixed once connected.
  EXPECT_EQ(blkio_set_str(b, "pool", "other"), -EBUSY);

  blkio_mem_region r{};
  ASSERT_EQ(blkio_alloc_mem_region(b, &r, 1 << 20), 0);
  ASSERT_EQ(blkio_map_mem_region(b, &r), 0);
  char* buf = static_cast<char*>(r.addr);
  blkioq* q = blkio_get_queue(b, 0);
  int fd = blkioq_get_completion_fd(q);
  ASSERT_GE(fd, 0);
  blkioq_set_completion_fd_enabled(q, true);
  for (int i = 0; i < 1 << 20; i++) buf[i] = static_cast<char>(i * 7 + 1);
  blkioq_write(q, 3 << 20, buf, 1 << 20, nullptr, BLKIO_REQ_FUA);
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  uint64_t ev;
  (void)!read(fd, &ev, sizeof(ev));
  blkio_completion c{};
  int n = 0;
  timespec t{10, 0};
  n = blkioq_do_io(q, &c, 1, 1, &t);
  ASSERT_EQ(n, 1) << blkio_get_error_msg();
  EXPECT_EQ(c.ret, 0);
  memset(buf, 0, 1 << 20);
  blkioq_read(q, 3 << 20, buf, 1 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  for (int i = 0; i < 1 << 20; i++) ASSERT_EQ(buf[i], static_cast<char>(i * 7 + 1)) << "byte " << i;
  blkio_unmap_mem_region(b, &r);
  blkio_free_mem_region(b, &r);
}

TEST_F(RbdCapi, ConnectErrorsInErrorMessage) {
  {
    Blkio b("rbd");
    ASSERT_EQ(blkio_set_str(b, "conf", conf_path()), 0);
    ASSERT_EQ(blkio_set_str(b, "pool", "rbd"), 0);
    ASSERT_EQ(blkio_set_str(b, "image", "missing-image"), 0);
    EXPECT_EQ(blkio_connect(b), -ENOENT);
    EXPECT_NE(std::string(blkio_get_error_msg()).find("rbd/missing-image: no such image"), std::string::npos)
        << blkio_get_error_msg();
  }
  {
    Blkio b("rbd");
    ASSERT_EQ(blkio_set_str(b, "image", image_.c_str()), 0);
    EXPECT_EQ(blkio_connect(b), -EINVAL);
    EXPECT_NE(std::string(blkio_get_error_msg()).find("pool"), std::string::npos) << blkio_get_error_msg();
  }
  {
    Blkio b("rbd");
    EXPECT_EQ(blkio_set_int(b, "connect-timeout", -1), -EINVAL);
  }
}

}  // namespace
