// blkio(3) lifecycle (created -> connected -> started), queues, read-only.
#include <cerrno>

#include "test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::TempFile;
using blkstack::test::wait_one;

TEST(Lifecycle, StartBeforeConnectFails) {
  Blkio b("io_uring");
  EXPECT_EQ(blkio_start(b), -ENODEV);
}

TEST(Lifecycle, ConnectNeedsPathOrFd) {
  Blkio b("io_uring");
  EXPECT_EQ(blkio_connect(b), -EINVAL);
  EXPECT_NE(std::string(blkio_get_error_msg()).find("path"), std::string::npos);
}

TEST(Lifecycle, PathAndFdTogetherFail) {
  TempFile f(4096);
  Blkio b("io_uring");
  int fd = open(f.path().c_str(), O_RDWR);
  ASSERT_EQ(blkio_set_str(b, "path", f.path().c_str()), 0);
  ASSERT_EQ(blkio_set_int(b, "fd", fd), 0);
  EXPECT_EQ(blkio_connect(b), -EINVAL);
  // A failed connect does not take the descriptor.
  EXPECT_GE(fcntl(fd, F_GETFD), 0);
  close(fd);
}

TEST(Lifecycle, MissingFileFails) {
  Blkio b("io_uring");
  ASSERT_EQ(blkio_set_str(b, "path", "/nonexistent/blkstack"), 0);
  EXPECT_EQ(blkio_connect(b), -ENOENT);
  EXPECT_NE(std::string(blkio_get_error_msg()).find("/nonexistent/blkstack"), std::string::npos);
}

TEST(Lifecycle, NotAFileOrBlockDeviceFails) {
  Blkio b("io_uring");
  ASSERT_EQ(blkio_set_str(b, "path", "/dev/null"), 0);
  EXPECT_EQ(blkio_connect(b), -EINVAL);
}

TEST(Lifecycle, ConnectAndStartAreIdempotent) {
  TempFile f(4096);
  Blkio b("io_uring");
  ASSERT_EQ(blkio_set_str(b, "path", f.path().c_str()), 0);
  EXPECT_EQ(blkio_connect(b), 0);
  EXPECT_EQ(blkio_connect(b), 0);
  EXPECT_EQ(blkio_start(b), 0);
  EXPECT_EQ(blkio_start(b), 0);
  EXPECT_EQ(blkio_connect(b), -EBUSY);
}

TEST(Lifecycle, FdOwnershipPassesOnConnect) {
  TempFile f(8192);
  int fd = open(f.path().c_str(), O_RDONLY);
  {
    Blkio b("io_uring");
    ASSERT_EQ(blkio_set_int(b, "fd", fd), 0);
    ASSERT_EQ(blkio_connect(b), 0);
    bool ro = false;
    ASSERT_EQ(blkio_get_bool(b, "read-only", &ro), 0);
    EXPECT_TRUE(ro);  // updated from the descriptor's access mode
  }
  EXPECT_LT(fcntl(fd, F_GETFD), 0);  // closed by blkio_destroy
}

TEST(Lifecycle, DestroyNullIsHarmless) {
  blkio* b = nullptr;
  blkio_destroy(&b);
  blkio_destroy(nullptr);
}

TEST(Queues, GetQueueIndices) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  b.open({{"path", f.path()}}, 2);
  EXPECT_NE(blkio_get_queue(b, 0), nullptr);
  EXPECT_NE(blkio_get_queue(b, 1), nullptr);
  EXPECT_EQ(blkio_get_queue(b, 2), nullptr);
  EXPECT_EQ(blkio_get_queue(b, -1), nullptr);
  EXPECT_EQ(blkio_get_poll_queue(b, 0), nullptr);
}

TEST(Queues, AddAndRemoveKeepIndices) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  b.open({{"path", f.path()}}, 2);
  blkioq* q1 = blkio_get_queue(b, 1);
  EXPECT_EQ(blkio_remove_queue(b, 0), 0);
  EXPECT_EQ(blkio_get_queue(b, 0), nullptr);
  EXPECT_EQ(blkio_get_queue(b, 1), q1);
  EXPECT_EQ(blkio_remove_queue(b, 0), -ENOENT);
  int idx = blkio_add_queue(b);
  EXPECT_EQ(idx, 2);
  blkioq* q2 = blkio_get_queue(b, idx);
  ASSERT_NE(q2, nullptr);
  // The new queue works.
  std::vector<char> buf(4096);
  blkioq_read(q2, 0, buf.data(), buf.size(), nullptr, 0);
  EXPECT_EQ(wait_one(q2).ret, 0);
  EXPECT_EQ(blkio_remove_poll_queue(b, 0), -ENOENT);
}

TEST(Queues, ZeroQueuesThenAdd) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  b.open({{"path", f.path()}}, 0);
  EXPECT_EQ(blkio_get_queue(b, 0), nullptr);
  EXPECT_EQ(blkio_add_queue(b), 0);
  EXPECT_NE(blkio_get_queue(b, 0), nullptr);
}

TEST(Queues, AddQueueBeforeStartFails) {
  Blkio b("io_uring");
  EXPECT_LT(blkio_add_queue(b), 0);
}

// Poll queues need polled I/O, which a buffered file cannot do.
TEST(Queues, PollQueuesUnsupportedFailStartCleanly) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  ASSERT_EQ(blkio_set_str(b, "path", f.path().c_str()), 0);
  ASSERT_EQ(blkio_connect(b), 0);
  bool sup = true;
  ASSERT_EQ(blkio_get_bool(b, "supports-poll-queues", &sup), 0);
  EXPECT_FALSE(sup);
  ASSERT_EQ(blkio_set_int(b, "num-poll-queues", 1), 0);
  EXPECT_EQ(blkio_start(b), -EINVAL);
  EXPECT_NE(std::string(blkio_get_error_msg()).find("oll"), std::string::npos);
  // Fixable without recreating the instance.
  ASSERT_EQ(blkio_set_int(b, "num-poll-queues", 0), 0);
  EXPECT_EQ(blkio_start(b), 0);
  EXPECT_LT(blkio_add_poll_queue(b), 0);
}

TEST(Queues, NullDriverPollQueues) {
  Blkio b("null");
  ASSERT_EQ(blkio_connect(b), 0);
  ASSERT_EQ(blkio_set_int(b, "num-queues", 0), 0);
  ASSERT_EQ(blkio_set_int(b, "num-poll-queues", 1), 0);
  ASSERT_EQ(blkio_start(b), 0);
  blkioq* pq = blkio_get_poll_queue(b, 0);
  ASSERT_NE(pq, nullptr);
  EXPECT_EQ(blkioq_get_completion_fd(pq), -1);
  blkioq_read(pq, 0, nullptr, 0, nullptr, 0);
  EXPECT_EQ(wait_one(pq).ret, 0);
}

TEST(ReadOnly, WritesFailWithEbadf) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  b.open({{"path", f.path()}, {"read-only", "true"}});
  blkioq* q = blkio_get_queue(b, 0);
  std::vector<char> buf(4096);
  struct iovec iov = {buf.data(), buf.size()};
  blkioq_write(q, 0, buf.data(), buf.size(), nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  blkioq_writev(q, 0, &iov, 1, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  blkioq_write_zeroes(q, 0, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  blkioq_discard(q, 0, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  // Reads and flushes still work.
  blkioq_read(q, 0, buf.data(), buf.size(), nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
  blkioq_flush(q, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
}
