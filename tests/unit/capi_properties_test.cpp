// blkio(3) PROPERTIES: types, per-state access, text conversion, errors.
#include <cerrno>
#include <cstring>
#include <thread>

#include "test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::TempFile;

TEST(Properties, CreateUnknownDriverFails) {
  blkio* b = nullptr;
  EXPECT_EQ(blkio_create("no-such-driver", &b), -ENOENT);
  EXPECT_EQ(b, nullptr);
  EXPECT_STRNE(blkio_get_error_msg(), "");
}

TEST(Properties, CreatedStateReadable) {
  Blkio b("io_uring");
  char* s = nullptr;
  ASSERT_EQ(blkio_get_str(b, "driver", &s), 0);
  EXPECT_STREQ(s, "io_uring");
  free(s);
  bool v = true;
  ASSERT_EQ(blkio_get_bool(b, "read-only", &v), 0);
  EXPECT_FALSE(v);
  ASSERT_EQ(blkio_get_bool(b, "can-add-queues", &v), 0);
  EXPECT_TRUE(v);
  int fd = 0;
  ASSERT_EQ(blkio_get_int(b, "fd", &fd), 0);
  EXPECT_EQ(fd, -1);
}

TEST(Properties, ConnectedPropertiesNeedConnect) {
  Blkio b("io_uring");
  uint64_t cap;
  EXPECT_EQ(blkio_get_uint64(b, "capacity", &cap), -ENODEV);
  EXPECT_STREQ(blkio_get_error_msg(), "Device must be connected");
  int n;
  EXPECT_EQ(blkio_get_int(b, "num-queues", &n), -ENODEV);
  EXPECT_EQ(blkio_set_int(b, "num-queues", 2), -ENODEV);
}

TEST(Properties, WrongTypeIsEnotty) {
  Blkio b("io_uring");
  int i;
  uint64_t u;
  bool v;
  EXPECT_EQ(blkio_get_int(b, "driver", &i), -ENOTTY);
  EXPECT_EQ(blkio_get_uint64(b, "read-only", &u), -ENOTTY);
  EXPECT_EQ(blkio_get_bool(b, "fd", &v), -ENOTTY);
  EXPECT_EQ(blkio_set_int(b, "direct", 1), -ENOTTY);
  EXPECT_EQ(blkio_set_bool(b, "path", true), -ENOTTY);
  // Type is checked before state: capacity is a uint64 even before connect.
  EXPECT_EQ(blkio_get_bool(b, "capacity", &v), -ENOTTY);
}

TEST(Properties, UnknownNameIsEnoent) {
  Blkio b("io_uring");
  bool v;
  char* s;
  EXPECT_EQ(blkio_get_bool(b, "bogus", &v), -ENOENT);
  EXPECT_EQ(blkio_get_str(b, "bogus", &s), -ENOENT);
  EXPECT_EQ(blkio_set_str(b, "bogus", "1"), -ENOENT);
}

TEST(Properties, ReadOnlyPropertyIsEacces) {
  Blkio b("io_uring");
  EXPECT_EQ(blkio_set_str(b, "driver", "null"), -EACCES);
  EXPECT_EQ(blkio_set_bool(b, "can-add-queues", false), -EACCES);
}

TEST(Properties, StringConversionBothWays) {
  Blkio b("io_uring");
  EXPECT_EQ(blkio_set_str(b, "direct", "true"), 0);
  bool v = false;
  ASSERT_EQ(blkio_get_bool(b, "direct", &v), 0);
  EXPECT_TRUE(v);
  for (const char* bad : {"1", "yes", "on", "TRUE", "", "true "}) {
    EXPECT_EQ(blkio_set_str(b, "direct", bad), -EINVAL) << bad;
  }
  EXPECT_EQ(blkio_set_str(b, "fd", "17"), 0);
  char* s = nullptr;
  ASSERT_EQ(blkio_get_str(b, "fd", &s), 0);
  EXPECT_STREQ(s, "17");
  free(s);
  for (const char* bad : {"0x2", " 2", "2 ", "+2", "", "99999999999", "2a"}) {
    EXPECT_EQ(blkio_set_str(b, "fd", bad), -EINVAL) << bad;
  }
  EXPECT_EQ(blkio_set_str(b, "fd", "-1"), 0);
  ASSERT_EQ(blkio_get_str(b, "direct", &s), 0);
  EXPECT_STREQ(s, "true");
  free(s);
}

TEST(Properties, Uint64Conversion) {
  Blkio b("null");
  EXPECT_EQ(blkio_set_str(b, "size", "18446744073709551615"), 0);
  uint64_t u = 0;
  ASSERT_EQ(blkio_get_uint64(b, "size", &u), 0);
  EXPECT_EQ(u, UINT64_MAX);
  EXPECT_EQ(blkio_set_str(b, "size", "18446744073709551616"), -EINVAL);
  EXPECT_EQ(blkio_set_str(b, "size", "-1"), -EINVAL);
}

TEST(Properties, PerStateWriteRules) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  ASSERT_EQ(blkio_set_str(b, "path", f.path().c_str()), 0);
  ASSERT_EQ(blkio_connect(b), 0);
  // rw created only
  EXPECT_EQ(blkio_set_str(b, "path", "/x"), -EBUSY);
  EXPECT_EQ(blkio_set_bool(b, "read-only", true), -EBUSY);
  // rw connected
  EXPECT_EQ(blkio_set_int(b, "num-queues", 3), 0);
  EXPECT_EQ(blkio_set_int(b, "num-queues", -1), -EINVAL);
  EXPECT_EQ(blkio_set_int(b, "num-entries", 0), -EINVAL);
  EXPECT_EQ(blkio_set_int(b, "num-entries", 64), 0);
  ASSERT_EQ(blkio_start(b), 0);
  // r started
  EXPECT_EQ(blkio_set_int(b, "num-queues", 2), -EBUSY);
  EXPECT_EQ(blkio_set_int(b, "num-entries", 32), -EBUSY);
  int n = 0;
  ASSERT_EQ(blkio_get_int(b, "num-queues", &n), 0);
  EXPECT_EQ(n, 3);
}

// Every common property of blkio(3) and every io_uring one exists with its
// documented type once connected.
TEST(Properties, AllCommonPropertiesWithTypes) {
  TempFile f(1 << 20);
  Blkio b("io_uring");
  ASSERT_EQ(blkio_set_str(b, "path", f.path().c_str()), 0);
  ASSERT_EQ(blkio_connect(b), 0);
  const char* bools[] = {"can-add-queues", "read-only", "supports-poll-queues", "may-pin-mem-regions",
                         "needs-mem-regions", "needs-mem-region-fd", "flush-needed", "can-grow",
                         "supports-fua-natively", "direct"};
  const char* ints[] = {"max-queues", "num-queues", "num-poll-queues", "optimal-io-alignment", "optimal-io-size",
                        "request-alignment", "buf-alignment", "max-segments", "max-segment-len", "max-transfer",
                        "optimal-buf-alignment", "discard-alignment", "discard-alignment-offset", "fd",
                        "num-entries"};
  const char* u64s[] = {"capacity", "max-mem-regions", "mem-region-alignment", "max-write-zeroes-len",
                        "max-discard-len"};
  const char* strs[] = {"driver", "path"};
  for (const char* p : bools) {
    bool v;
    EXPECT_EQ(blkio_get_bool(b, p, &v), 0) << p;
  }
  for (const char* p : ints) {
    int v;
    EXPECT_EQ(blkio_get_int(b, p, &v), 0) << p;
  }
  for (const char* p : u64s) {
    uint64_t v;
    EXPECT_EQ(blkio_get_uint64(b, p, &v), 0) << p;
  }
  for (const char* p : strs) {
    char* v;
    ASSERT_EQ(blkio_get_str(b, p, &v), 0) << p;
    free(v);
  }
  uint64_t cap = 0;
  ASSERT_EQ(blkio_get_uint64(b, "capacity", &cap), 0);
  EXPECT_EQ(cap, 1u << 20);
  int fd = -1;
  ASSERT_EQ(blkio_get_int(b, "fd", &fd), 0);
  EXPECT_GE(fd, 0);  // updated to the opened descriptor
  bool fua = false;
  ASSERT_EQ(blkio_get_bool(b, "supports-fua-natively", &fua), 0);
  EXPECT_TRUE(fua);
}

TEST(Properties, ErrorMessagesArePerThread) {
  Blkio b("io_uring");
  bool v;
  EXPECT_EQ(blkio_get_bool(b, "bogus", &v), -ENOENT);
  std::string main_msg = blkio_get_error_msg();
  std::string other_msg;
  std::thread t([&] {
    int i;
    EXPECT_EQ(blkio_get_int(b, "driver", &i), -ENOTTY);
    other_msg = blkio_get_error_msg();
  });
  t.join();
  EXPECT_EQ(blkio_get_error_msg(), main_msg);
  EXPECT_NE(main_msg, other_msg);
}
