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

}  // namespace

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

TEST_F(Requests, OutOfRange) {
  blkioq_read(q_, cap_, buf_, 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_read(q_, cap_ - 4096, buf_, 8192, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_write(q_, UINT64_MAX - 4095, buf_, 4096, nullptr, 0);  // wraps around
  expect_error(-EINVAL);
  blkioq_write_zeroes(q_, cap_, 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_discard(q_, 0, cap_ + 4096, nullptr, 0);
  expect_error(-EINVAL);
  // The last block is fine.
  blkioq_read(q_, cap_ - 4096, buf_, 4096, nullptr, 0);
  expect_error(0);
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
  blkioq_read(q_, cap_ * 2, reinterpret_cast<void*>(0x1000), 4096, nullptr, 0);
  expect_error(-EINVAL);
  blkioq_write(q_, 3, nullptr, 4096, nullptr, 0);
  expect_error(-EINVAL);
}
