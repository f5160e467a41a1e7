// blkio(3) "Request types" and "Request flags": every malformed request
// completes with an error completion, never reaching the device.
#include <cerrno>
#include <cstring>

#include "test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::TempFile;
using blkstack::test::wait_one;

namespace {

class Requests : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::make_unique<TempFile>(1 << 20);
    file_->write_at(0, std::string(8192, 'x'));
    b_ = std::make_unique<Blkio>("io_uring");
    b_->open({{"path", file_->path()}, {"direct", "true"}});
    q_ = blkio_get_queue(*b_, 0);
    ASSERT_EQ(blkio_get_int(*b_, "request-alignment", &align_), 0);
    ASSERT_EQ(blkio_get_uint64(*b_, "capacity", &cap_), 0);
    ASSERT_EQ(posix_memalign(&buf_, 4096, 1 << 16), 0);
  }
  void TearDown() override { free(buf_); }

  blkio_completion expect_error(int err) {
    blkio_completion c = wait_one(q_);
    EXPECT_EQ(c.ret, err);
    if (err != 0) {
      EXPECT_NE(c.error_msg, nullptr);
    }
    return c;
  }

  std::unique_ptr<TempFile> file_;
  std::unique_ptr<Blkio> b_;
  blkioq* q_ = nullptr;
  int align_ = 0;
  uint64_t cap_ = 0;
  void* buf_ = nullptr;
};


TEST_F(Requests, MisalignedOffsetAndLength) {
  ASSERT_GT(align_, 1);
  blkioq_read(q_, 1, buf_, 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_read(q_, 0, buf_, static_cast<size_t>(align_) - 1, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_write(q_, static_cast<uint64_t>(align_) / 2, buf_, 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_write_zeroes(q_, 1, 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_discard(q_, 0, 1, nullptr, 0);
  expect_error(-EINVAL);
}

TEST_F(Requests, MisalignedBuffer) {
  int balign = 0;
  ASSERT_EQ(blkio_get_int(*b_, "buf-alignment", &balign), 0);
  ASSERT_GT(balign, 1);
  blkioq_read(q_, 0, static_cast<char*>(buf_) + 1, 4096, nullptr, 0);
  expect_error(-EINVAL);
  struct iovec iov[2] = {{buf_, 4096}, {static_cast<char*>(buf_) + 4097, 4096}};
  blkioq_readv(q_, 0, iov, 2, nullptr, 0);
  expect_error(-EINVAL);
}

// Devices of fixed size (here: null) refuse requests past their end.
TEST(RequestsFixedSize, OutOfRange) {
  Blkio b("null");
  const uint64_t cap = 1 << 20;
  b.open({{"size", std::to_string(cap)}});
  blkioq* q = blkio_get_queue(b, 0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 8192), 0);
  auto expect = [&](int err) {
    blkio_completion c = wait_one(q);
    EXPECT_EQ(c.ret, err);
    if (err != 0) {
      EXPECT_NE(c.error_msg, nullptr);
    }
  };
  bool grows = true;
  ASSERT_EQ(blkio_get_bool(b, "can-grow", &grows), 0);
  EXPECT_FALSE(grows);
  blkioq_read(q, cap, buf, 4096, nullptr, 0);
  expect(-EINVAL);
  blkioq_read(q, cap - 4096, buf, 8192, nullptr, 0);
  expect(-EINVAL);
  blkioq_write(q, cap, buf, 4096, nullptr, 0);
  expect(-EINVAL);
  blkioq_write(q, UINT64_MAX - 4095, buf, 4096, nullptr, 0);  // wraps around
  expect(-EINVAL);
  blkioq_write_zeroes(q, cap, 4096, nullptr, 0);
  expect(-EINVAL);
  blkioq_discard(q, 0, cap + 4096, nullptr, 0);
  expect(-EINVAL);
  // The last block is fine.
  blkioq_read(q, cap - 4096, buf, 4096, nullptr, 0);
  expect(0);
  free(buf);
}

// Regular files can grow, as with libblkio's io_uring driver: reads past the
// end read zeroes, writes past it extend the file and capacity follows.
// Requests that wrap around the 64-bit offset space are still refused.
TEST_F(Requests, RegularFileGrows) {
  bool grows = false;
  ASSERT_EQ(blkio_get_bool(*b_, "can-grow", &grows), 0);
  EXPECT_TRUE(grows);
  // A read straddling the end: the file's tail, then zeroes.
  file_->write_at(cap_ - 4096, std::string(4096, 't'));
  memset(buf_, 0x55, 8192);
  blkioq_read(q_, cap_ - 4096, buf_, 8192, nullptr, 0);
  expect_error(0);
  EXPECT_EQ(std::string(static_cast<char*>(buf_), 4096), std::string(4096, 't'));
  EXPECT_EQ(std::string(static_cast<char*>(buf_) + 4096, 4096), std::string(4096, '\0'));
  // A vectored read wholly past the end: zeroes.
  memset(buf_, 0x55, 8192);
  struct iovec iov[2] = {{buf_, 4096}, {static_cast<char*>(buf_) + 4096, 4096}};
  blkioq_readv(q_, cap_ + 65536, iov, 2, nullptr, 0);
  expect_error(0);
  EXPECT_EQ(std::string(static_cast<char*>(buf_), 8192), std::string(8192, '\0'));
  // A write past the end extends the file; capacity follows; it reads back
  // through the same queue (whose idea of the size was stale).
  memset(buf_, 'w', 4096);
  blkioq_write(q_, cap_ + 8192, buf_, 4096, nullptr, 0);
  expect_error(0);
  uint64_t now = 0;
  ASSERT_EQ(blkio_get_uint64(*b_, "capacity", &now), 0);
  EXPECT_EQ(now, cap_ + 12288);
  memset(buf_, 0, 12288);
  blkioq_read(q_, cap_, buf_, 12288, nullptr, 0);
  expect_error(0);
  EXPECT_EQ(std::string(static_cast<char*>(buf_), 8192), std::string(8192, '\0'));
  EXPECT_EQ(std::string(static_cast<char*>(buf_) + 8192, 4096), std::string(4096, 'w'));
  // Wrap-around is still an error.
  blkioq_write(q_, UINT64_MAX - 4095, buf_, 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_discard(q_, UINT64_MAX - 4095, 8192, nullptr, 0);
  expect_error(-EINVAL);
}

TEST_F(Requests, BadFlags) {
  blkioq_write(q_, 0, buf_, 4096, nullptr, 0x80);
  expect_error(-EINVAL);
  blkioq_read(q_, 0, buf_, 4096, nullptr, BLKIO_REQ_FUA);
  expect_error(-EINVAL);
  blkioq_flush(q_, nullptr, BLKIO_REQ_FUA);
  expect_error(-EINVAL);
  blkioq_discard(q_, 0, 4096, nullptr, BLKIO_REQ_FUA);
  expect_error(-EINVAL);
  blkioq_write(q_, 0, buf_, 4096, nullptr, BLKIO_REQ_NO_UNMAP);
  expect_error(-EINVAL);
  blkioq_write_zeroes(q_, 0, 4096, nullptr, 1u << 7);
  expect_error(-EINVAL);
}

TEST_F(Requests, BadIovecs) {
  struct iovec iov = {buf_, 4096};
  blkioq_readv(q_, 0, &iov, -1, nullptr, 0);
  expect_error(-EINVAL);
  int max_segments = 0;
  ASSERT_EQ(blkio_get_int(*b_, "max-segments", &max_segments), 0);
  std::vector<struct iovec> many(static_cast<size_t>(max_segments) + 1, iov);
  blkioq_readv(q_, 0, many.data(), static_cast<int>(many.size()), nullptr, 0);
  expect_error(-EINVAL);
  blkioq_readv(q_, 0, nullptr, 1, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_readv(q_, 0, &iov, 0, nullptr, 0);  // empty is fine
  expect_error(0);
}

TEST_F(Requests, ZonesUnsupported) {
  blkio_zone zones[4];
  blkioq_report_zones(q_, 0, zones, 4, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_open_zone(q_, 0, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_close_zone(q_, 0, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_finish_zone(q_, 0, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_reset_zone(q_, 0, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_open_all_zones(q_, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_close_all_zones(q_, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_finish_all_zones(q_, nullptr, 0);
  expect_error(-ENOTSUP);
  blkioq_reset_all_zones(q_, nullptr, 0);
  expect_error(-ENOTSUP);
}

TEST_F(Requests, UserDataRoundTrips) {
  for (uintptr_t i = 1; i <= 8; i++) blkioq_read(q_, 0, buf_, 4096, reinterpret_cast<void*>(i * 1000), 0);
  blkioq_read(q_, 3, buf_, 4096, reinterpret_cast<void*>(42), 0);  // an error among them
  blkio_completion c[9];
  ASSERT_EQ(blkioq_do_io(q_, c, 9, 9, nullptr), 9);
  uint64_t seen = 0;
  for (auto& comp : c) {
    auto ud = reinterpret_cast<uintptr_t>(comp.user_data);
    if (ud == 42) {
      EXPECT_EQ(comp.ret, -EINVAL);
      EXPECT_NE(comp.error_msg, nullptr);
      continue;
    }
    EXPECT_EQ(comp.ret, 0);
    EXPECT_EQ(comp.error_msg, nullptr);
    seen |= 1u << (ud / 1000);
  }
  EXPECT_EQ(seen, 0x1FEu);
}

TEST_F(Requests, ErrorsNeverCrashWithGarbage) {
  // Enqueue-time checks run before the buffer is touched, so wild pointers
  // in malformed requests are harmless.
  blkioq_read(q_, UINT64_MAX - 4095, reinterpret_cast<void*>(0x1000), 8192, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_write(q_, 3, nullptr, 4096, nullptr, 0);
  expect_error(-EINVAL);
}

}  // namespace
