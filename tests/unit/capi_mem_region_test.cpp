// blkio(3) "Mapping memory regions".
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::TempFile;
using blkstack::test::wait_one;

namespace {
class MemRegions : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::make_unique<TempFile>(1 << 20, "/dev/shm");
    b_ = std::make_unique<Blkio>("io_uring");
    b_->open({{"path", file_->path()}});
  }
  std::unique_ptr<TempFile> file_;
  std::unique_ptr<Blkio> b_;
};

TEST(MemRegionsState, AllocNeedsStart) {
  Blkio b("io_uring");
  blkio_mem_region r;
  EXPECT_LT(blkio_alloc_mem_region(b, &r, 4096), 0);
  EXPECT_LT(blkio_map_mem_region(b, &r), 0);
}

TEST_F(MemRegions, AllocIsMemfdBackedAndCloexec) {
  blkio_mem_region r{};
  ASSERT_EQ(blkio_alloc_mem_region(*b_, &r, 3 * 4096), 0);
  EXPECT_NE(r.addr, nullptr);
  EXPECT_EQ(r.len, 3u * 4096);
  EXPECT_EQ(r.iova, 0u);
  EXPECT_EQ(r.flags, 0u);
  ASSERT_GE(r.fd, 0);
  EXPECT_TRUE(fcntl(r.fd, F_GETFD) & FD_CLOEXEC);
  char link[64], target[256] = {};
  snprintf(link, sizeof(link), "/proc/self/fd/%d", r.fd);
  ASSERT_GT(readlink(link, target, sizeof(target) - 1), 0);
  EXPECT_EQ(std::string(target).rfind("/memfd:", 0), 0u) << target;
  // The memory is shared with the fd.
  memset(r.addr, 0xab, r.len);
  unsigned char b = 0;
  ASSERT_EQ(pread(r.fd, &b, 1, static_cast<off_t>(r.fd_offset) + 5000), 1);
  EXPECT_EQ(b, 0xab);
  blkio_free_mem_region(*b_, &r);
  EXPECT_LT(fcntl(r.fd, F_GETFD), 0);
}

TEST_F(MemRegions, AllocZeroFails) {
  blkio_mem_region r;
  EXPECT_EQ(blkio_alloc_mem_region(*b_, &r, 0), -EINVAL);
}

TEST_F(MemRegions, MapRules) {
  blkio_mem_region r{};
  ASSERT_EQ(blkio_alloc_mem_region(*b_, &r, 8192), 0);
  EXPECT_EQ(blkio_map_mem_region(*b_, &r), 0);
  EXPECT_EQ(blkio_map_mem_region(*b_, &r), -EINVAL);  // already mapped
  blkio_mem_region bad = r;
  bad.flags = 1;
  EXPECT_EQ(blkio_map_mem_region(*b_, &bad), -EINVAL);
  bad = r;
  bad.iova = 4096;
  EXPECT_EQ(blkio_map_mem_region(*b_, &bad), -EINVAL);
  bad = r;
  bad.len = 0;
  EXPECT_EQ(blkio_map_mem_region(*b_, &bad), -EINVAL);
  bad = r;
  bad.addr = static_cast<char*>(r.addr) + 4096;
  bad.len = 4096;
  EXPECT_EQ(blkio_map_mem_region(*b_, &bad), -EINVAL);  // overlaps
  // Unmapping something never mapped has no effect; then the real one.
  blkio_unmap_mem_region(*b_, &bad);
  blkio_unmap_mem_region(*b_, &r);
  blkio_unmap_mem_region(*b_, &r);
  EXPECT_EQ(blkio_map_mem_region(*b_, &r), 0);  // can map again
  blkio_unmap_mem_region(*b_, &r);
  blkio_free_mem_region(*b_, &r);
}

TEST_F(MemRegions, CallerMemoryWithoutFd) {
  void* m = mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(m, MAP_FAILED);
  blkio_mem_region r{m, 1 << 16, 0, 0, -1, 0};
  EXPECT_EQ(blkio_map_mem_region(*b_, &r), 0);
  // The caller may close or never have an fd; I/O into the region works.
  blkioq* q = blkio_get_queue(*b_, 0);
  memset(m, 'q', 4096);
  blkioq_write(q, 0, m, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
  memset(m, 0, 4096);
  blkioq_read(q, 0, m, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(static_cast<char*>(m)[4095], 'q');
  blkio_unmap_mem_region(*b_, &r);
  munmap(m, 1 << 16);
}

TEST_F(MemRegions, MapDoesNotTakeTheFd) {
  int fd = memfd_create("t", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  void* m = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  blkio_mem_region r{m, 4096, 0, 0, fd, 0};
  ASSERT_EQ(blkio_map_mem_region(*b_, &r), 0);
  close(fd);  // allowed
  blkioq* q = blkio_get_queue(*b_, 0);
  blkioq_read(q, 0, m, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
  blkio_unmap_mem_region(*b_, &r);
  munmap(m, 4096);
}

TEST_F(MemRegions, DestroyCleansUp) {
  blkio_mem_region r{};
  ASSERT_EQ(blkio_alloc_mem_region(*b_, &r, 4096), 0);
  ASSERT_EQ(blkio_map_mem_region(*b_, &r), 0);
  int fd = r.fd;
  b_.reset();  // blkio_destroy unmaps and frees
  EXPECT_LT(fcntl(fd, F_GETFD), 0);
}

TEST_F(MemRegions, MaxMemRegionsReported) {
  uint64_t max = 0;
  ASSERT_EQ(blkio_get_uint64(*b_, "max-mem-regions", &max), 0);
  EXPECT_GT(max, 1000u);
  uint64_t align = 0;
  ASSERT_EQ(blkio_get_uint64(*b_, "mem-region-alignment", &align), 0);
  int balign = 0;
  ASSERT_EQ(blkio_get_int(*b_, "buf-alignment", &balign), 0);
  EXPECT_EQ(align % static_cast<uint64_t>(balign), 0u);
}

}  // namespace
