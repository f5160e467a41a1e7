// The io_uring driver on regular files (tmpfs and disk) and loop block
// devices: data, FUA, flush, write-zeroes modes, discard, fixed buffers and
// batched submission.
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/mman.h>
#include <linux/loop.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/driver.hpp"
#include "native_test_util.hpp"
#include "test_util.hpp"

using namespace blkstack;
using blkstack::test::open_device;
using blkstack::test::pattern;
using blkstack::test::TempFile;
using blkstack::test::wait_one;

namespace {

struct Case {
  const char* dir;
  bool direct;
  bool ring_only = false;  // memory files: every request through the ring, none inline
  bool single_issuer = false;
};

constexpr const char* kInlineEnv = "BLKSTACK_IO_URING_INLINE_MAX";

// Opens an io_uring device with the inline limit given (nullptr: the default).
std::unique_ptr<Device> open_with_inline_max(const std::string& path, const char* inline_max, bool direct = false,
                                             bool single_issuer = false) {
  if (inline_max) setenv(kInlineEnv, inline_max, 1);
  auto dev = open_device("io_uring", {{"path", path},
                                      {"direct", direct ? "true" : "false"},
                                      {"single-issuer", single_issuer ? "true" : "false"}});
  unsetenv(kInlineEnv);
  return dev;
}

class IoUringFile : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    file_ = std::make_unique<TempFile>(4 << 20, GetParam().dir);
    dev_ = open_with_inline_max(file_->path(), GetParam().ring_only ? "0" : nullptr, GetParam().direct,
                                GetParam().single_issuer);
    ASSERT_TRUE(dev_);
    q_ = dev_->queue(0);
    buf_ = static_cast<char*>(mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  void TearDown() override { munmap(buf_, 1 << 20); }

  // Small reads and writes of files in memory are done by the calling
  // thread (see IoUringTarget::inline_max) unless the test turned that off.
  bool inline_io() const { return std::string(GetParam().dir) == "/dev/shm" && !GetParam().ring_only; }

  std::unique_ptr<TempFile> file_;
  std::unique_ptr<Device> dev_;
  Queue* q_ = nullptr;
  char* buf_ = nullptr;
};


TEST_P(IoUringFile, WriteThenReadBack) {
  std::string data = pattern(64 * 1024, 1);
  memcpy(buf_, data.data(), data.size());
  q_->write(8192, buf_, data.size(), nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  memset(buf_, 0, data.size());
  q_->read(8192, buf_, data.size(), nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_EQ(memcmp(buf_, data.data(), data.size()), 0);
  auto contents = file_->contents();
  EXPECT_EQ(memcmp(contents.data() + 8192, data.data(), data.size()), 0);
}

// The allocation query as a queue request: io_uring's queues do not answer
// it themselves, so the contract layer asks SEEK_DATA/SEEK_HOLE inline and
// the completion comes at the next do_io(), like any other.
TEST_P(IoUringFile, BlockStatusThroughTheQueue) {
  ASSERT_TRUE(dev_->info().can_report_holes);
  memset(buf_, 0x5a, 65536);
  q_->write(1 << 20, buf_, 65536, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  AllocationExtent e{};
  q_->block_status(0, 4 << 20, &e, &e, 0);
  Completion c = wait_one(*q_);
  EXPECT_EQ(c.ret, 0);
  EXPECT_EQ(c.user_data, &e);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, 1u << 20);
  q_->block_status(1 << 20, 1ull << 40, &e, &e, 0);  // clamped to the end
  EXPECT_EQ(wait_one(*q_).ret, 0);
  EXPECT_FALSE(e.hole);
  EXPECT_GE(e.len, 65536u);
  EXPECT_LE(e.len, 3u << 20);
  auto s = dev_->extent_at(1 << 20, 4 << 20);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->len, e.len);
  // Checked like any request.
  q_->block_status(4 << 20, 4096, &e, nullptr, 0);
  EXPECT_EQ(wait_one(*q_).ret, -EINVAL);
  q_->block_status(0, 4096, &e, nullptr, 1);
  EXPECT_EQ(wait_one(*q_).ret, -EINVAL);
}

TEST(NullDriver, BlockStatusIsAllData) {
  auto dev = open_device("null", {{"size", "1048576"}});
  ASSERT_TRUE(dev);
  AllocationExtent e{};
  dev->queue(0)->block_status(4096, 1 << 20, &e, nullptr, 0);
  EXPECT_EQ(wait_one(*dev->queue(0)).ret, 0);
  EXPECT_FALSE(e.hole);
  EXPECT_EQ(e.len, (1u << 20) - 4096);
}

TEST_P(IoUringFile, VectoredIo) {
  std::string data = pattern(3 * 4096, 2);
  memcpy(buf_, data.data(), data.size());
  struct iovec iov[3] = {{buf_ + 8192, 4096}, {buf_, 4096}, {buf_ + 4096, 4096}};
  q_->writev(4096, iov, 3, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  auto contents = file_->contents();
  EXPECT_EQ(memcmp(contents.data() + 4096, data.data() + 8192, 4096), 0);
  EXPECT_EQ(memcmp(contents.data() + 8192, data.data(), 8192), 0);
  memset(buf_, 0, data.size());
  q_->readv(4096, iov, 3, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_EQ(memcmp(buf_, data.data(), data.size()), 0);
}

TEST_P(IoUringFile, FuaAndFlush) {
  std::string data = pattern(4096, 3);
  memcpy(buf_, data.data(), data.size());
  q_->write(0, buf_, 4096, nullptr, kReqFua);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  struct iovec iov = {buf_, 4096};  // must outlive the request
  q_->writev(0, &iov, 1, nullptr, kReqFua);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  q_->flush(nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_EQ(memcmp(file_->contents().data(), data.data(), 4096), 0);
}

TEST_P(IoUringFile, WriteZeroesAllModes) {
  const uint32_t modes[] = {0, kReqNoUnmap, kReqFua, kReqNoFallback, kReqNoUnmap | kReqFua};
  for (uint32_t flags : modes) {
    file_->write_at(65536, pattern(65536, 4));
    q_->write_zeroes(65536, 65536, nullptr, flags);
    Completion c = wait_one(*q_);
    ASSERT_EQ(c.ret, 0) << "flags " << flags;
    auto contents = file_->contents();
    EXPECT_EQ(std::string(contents.data() + 65536, 65536), std::string(65536, '\0')) << "flags " << flags;
  }
}

// NO_UNMAP with NO_FALLBACK either zeroes natively (ZERO_RANGE) or refuses
// with -ENOTSUP and leaves the data alone (tmpfs has no ZERO_RANGE).
TEST_P(IoUringFile, WriteZeroesNoFallbackIsHonest) {
  std::string data = pattern(65536, 5);
  file_->write_at(0, data);
  q_->write_zeroes(0, 65536, nullptr, kReqNoUnmap | kReqNoFallback);
  Completion c = wait_one(*q_);
  auto contents = file_->contents();
  if (c.ret == 0) {
    EXPECT_EQ(std::string(contents.data(), 65536), std::string(65536, '\0'));
  } else {
    EXPECT_EQ(c.ret, -ENOTSUP);
    EXPECT_EQ(std::string(contents.data(), 65536), data);
  }
  if (std::string(GetParam().dir) == "/dev/shm") {
    EXPECT_EQ(c.ret, -ENOTSUP);
  }
}

TEST_P(IoUringFile, WriteZeroesKeepsAllocationWithNoUnmap) {
  file_->write_at(0, pattern(1 << 20, 6));
  uint64_t before = file_->allocated();
  q_->write_zeroes(0, 1 << 20, nullptr, kReqNoUnmap);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_GE(file_->allocated(), before);
  q_->write_zeroes(0, 1 << 20, nullptr, 0);  // may unmap: punches a hole
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_LT(file_->allocated(), before);
}

TEST_P(IoUringFile, DiscardPunchesHole) {
  file_->write_at(1 << 20, pattern(1 << 20, 7));
  uint64_t before = file_->allocated();
  q_->discard(1 << 20, 1 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_LT(file_->allocated(), before);
  auto contents = file_->contents();
  EXPECT_EQ(std::string(contents.data() + (1 << 20), 1 << 20), std::string(1 << 20, '\0'));
  EXPECT_TRUE(dev_->info().supports_discard);
}

TEST_P(IoUringFile, MappedRegionsUseFixedBuffers) {
  MemRegion r{};
  ASSERT_TRUE(dev_->alloc_mem_region(r, 1 << 17).ok());
  ASSERT_TRUE(dev_->map_mem_region(r).ok());
  auto before = q_->driver_queue().stats();
  q_->read(0, r.addr, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  q_->write(0, static_cast<char*>(r.addr) + 4096, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  auto mid = q_->driver_queue().stats();
  if (inline_io()) {
    // Done with pread/pwrite by this thread: no opcode at all.
    EXPECT_EQ(mid.inline_ops - before.inline_ops, 2u);
    EXPECT_EQ(mid.fixed_buffer_ops, before.fixed_buffer_ops);
    // Too big for the inline path: through the ring, with the fixed buffer.
    q_->read(0, r.addr, 1 << 17, nullptr, 0);
    ASSERT_EQ(wait_one(*q_).ret, 0);
    EXPECT_EQ(q_->driver_queue().stats().fixed_buffer_ops - mid.fixed_buffer_ops, 1u);
    mid = q_->driver_queue().stats();
  } else {
    EXPECT_EQ(mid.fixed_buffer_ops - before.fixed_buffer_ops, 2u);
    EXPECT_EQ(mid.inline_ops, 0u);
  }
  EXPECT_EQ(mid.plain_ops, before.plain_ops);
  // Unmapped memory uses the plain opcodes.
  q_->read(0, buf_, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  auto after = q_->driver_queue().stats();
  EXPECT_EQ(after.plain_ops - mid.plain_ops, inline_io() ? 0u : 1u);
  // After unmapping, the region's memory is plain memory again.
  dev_->unmap_mem_region(r);
  q_->read(0, r.addr, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  EXPECT_EQ(q_->driver_queue().stats().fixed_buffer_ops, after.fixed_buffer_ops);
  dev_->free_mem_region(r);
}

TEST_P(IoUringFile, OneSubmitPerDoIo) {
  auto before = q_->driver_queue().stats();
  for (int i = 0; i < 32; i++) q_->read(static_cast<uint64_t>(i) * 4096, buf_ + i * 4096, 4096, nullptr, 0);
  EXPECT_EQ(q_->driver_queue().stats().submit_calls, before.submit_calls);  // nothing submitted yet
  Completion c[32];
  int got = q_->do_io(c, 32, 32, nullptr);
  EXPECT_EQ(got, 32);
  auto after = q_->driver_queue().stats();
  // Inline requests never reach the kernel's ring.
  EXPECT_EQ(after.submit_calls - before.submit_calls, inline_io() ? 0u : 1u);
  EXPECT_EQ(after.inline_ops - before.inline_ops, inline_io() ? 32u : 0u);
}

TEST_P(IoUringFile, MoreRequestsThanRingEntries) {
  Completion c[600];
  for (int i = 0; i < 600; i++) q_->read(static_cast<uint64_t>(i % 256) * 4096, buf_ + (i % 256) * 4096, 4096, nullptr, 0);
  int got = 0;
  while (got < 600) {
    int n = q_->do_io(c, 1, 600, nullptr);
    ASSERT_GT(n, 0) << q_->error_message();
    for (int i = 0; i < n; i++) EXPECT_EQ(c[i].ret, 0);
    got += n;
  }
}

// memory_file(): only a file in memory opened without O_DIRECT, and its
// bytes are the device's (an export splices replies straight from it).
TEST_P(IoUringFile, MemoryFileOnlyForFilesInMemory) {
  const bool in_memory = std::string(GetParam().dir) == "/dev/shm" && !GetParam().direct;
  const int fd = dev_->memory_file();
  ASSERT_EQ(fd >= 0, in_memory);
  if (!in_memory) return;
  const std::string blob = blkstack::test::pattern(8192, 7);
  std::memcpy(buf_, blob.data(), blob.size());
  q_->write(12288, buf_, blob.size(), nullptr, 0);
  ASSERT_EQ(wait_one(*q_).ret, 0);
  std::string got(blob.size(), '\0');
  ASSERT_EQ(::pread(fd, got.data(), got.size(), 12288), static_cast<ssize_t>(got.size()));
  EXPECT_EQ(got, blob);
}

INSTANTIATE_TEST_SUITE_P(Files, IoUringFile,
                         ::testing::Values(Case{"/dev/shm", false}, Case{"/dev/shm", false, true},
                                           Case{"/var/tmp", false}, Case{"/var/tmp", true},
                                           Case{"/dev/shm", false, true, true}, Case{"/var/tmp", true, false, true}),
                         [](const auto& info) {
                           return std::string(info.param.dir[5] == 's' ? "tmpfs" : "disk") +
                                  (info.param.direct ? "_direct" : "_buffered") + (info.param.ring_only ? "_ring" : "") +
                                  (info.param.single_issuer ? "_single_issuer" : "");
                         });

// single-issuer=true: each ring is bound to the first thread that drives it
// (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN, created disabled), not to the
// thread that created the queue; another thread is refused with -EEXIST,
// without a hang, and what it queued is done by the owner's next do_io().
TEST(IoUringSingleIssuer, BoundToTheFirstThreadThatDrivesIt) {
  TempFile f(1 << 20, "/var/tmp");
  auto dev = open_device("io_uring", {{"path", f.path()}, {"single-issuer", "true"}});
  ASSERT_TRUE(dev);
  EXPECT_TRUE(std::get<bool>(*dev->get("single-issuer", PropType::kBool)));
  Queue& q = *dev->queue(0);
  std::vector<char> buf(8192, 'x');
  std::atomic<int> step{0};
  auto wait_for = [&](int s) {
    while (step.load() < s) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  std::thread owner([&] {
    q.write(0, buf.data(), 4096, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
    step = 1;
    wait_for(2);
    // What the other thread queued is done here.
    Completion c;
    timespec t{5, 0};
    EXPECT_EQ(q.do_io(&c, 1, 1, &t), 1);
    EXPECT_EQ(c.ret, 0);
    EXPECT_EQ(memcmp(buf.data() + 4096, buf.data(), 4096), 0);
    step = 3;
  });
  wait_for(1);
  // This thread did not enable the ring: refused, at once, not a hang.
  memset(buf.data() + 4096, 0, 4096);
  q.read(0, buf.data() + 4096, 4096, nullptr, 0);
  Completion c;
  timespec t{2, 0};
  EXPECT_EQ(q.do_io(&c, 1, 1, &t), -EEXIST);
  step = 2;
  wait_for(3);
  owner.join();
  // A device whose ring is first driven here works here.
  auto dev2 = open_device("io_uring", {{"path", f.path()}, {"single-issuer", "true"}});
  ASSERT_TRUE(dev2);
  Queue& q2 = *dev2->queue(0);
  q2.read(0, buf.data(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q2).ret, 0);
}

// A region mapped (and unmapped) by another thread once the ring is bound:
// the kernel lets only the owner change the ring's buffers, so the owner
// registers it at its next do_io(); until then its requests use the plain
// opcodes. A daemon's reactors each map buffers on every queue.
TEST(IoUringSingleIssuer, RegionMappedByAnotherThreadIsRegisteredByTheOwner) {
  TempFile f(1 << 20, "/var/tmp");
  f.write_at(0, pattern(8192, 5));
  auto dev = open_device("io_uring", {{"path", f.path()}, {"single-issuer", "true"}});
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  MemRegion r{};
  std::atomic<int> step{0};
  auto wait_for = [&](int s) {
    while (step.load() < s) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  std::thread owner([&] {
    std::vector<char> plain(4096);
    q.read(0, plain.data(), 4096, nullptr, 0);  // binds the ring to this thread
    EXPECT_EQ(wait_one(q).ret, 0);
    step = 1;
    wait_for(2);
    auto s0 = q.driver_queue().stats();
    // Queued before the owner applied the registration: plain.
    q.read(0, r.addr, 4096, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
    auto s1 = q.driver_queue().stats();
    EXPECT_EQ(s1.plain_ops - s0.plain_ops, 1u);
    EXPECT_EQ(s1.fixed_buffer_ops, s0.fixed_buffer_ops);
    // Registered by that do_io(): fixed from now on, and the data lands.
    memset(r.addr, 0, 8192);
    q.read(4096, static_cast<char*>(r.addr) + 4096, 4096, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
    auto s2 = q.driver_queue().stats();
    EXPECT_EQ(s2.fixed_buffer_ops - s1.fixed_buffer_ops, 1u);
    EXPECT_EQ(std::string(static_cast<char*>(r.addr) + 4096, 4096), pattern(8192, 5).substr(4096));
    step = 3;
    wait_for(4);
    // Unmapped by the other thread: plain memory again, dropped here.
    q.read(0, r.addr, 4096, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
    auto s3 = q.driver_queue().stats();
    EXPECT_EQ(s3.fixed_buffer_ops, s2.fixed_buffer_ops);
    EXPECT_EQ(s3.plain_ops - s2.plain_ops, 1u);
    EXPECT_EQ(std::string(static_cast<char*>(r.addr), 4096), pattern(8192, 5).substr(0, 4096));
    step = 5;
  });
  wait_for(1);
  ASSERT_TRUE(dev->alloc_mem_region(r, 1 << 16).ok());
  ASSERT_TRUE(dev->map_mem_region(r).ok());
  step = 2;
  wait_for(3);
  dev->unmap_mem_region(r);
  step = 4;
  wait_for(5);
  owner.join();
  dev->free_mem_region(r);
}

// Deferred task work still wakes an event-driven caller: the completion fd
// fires for a request submitted with do_io(0, 0).
TEST(IoUringSingleIssuer, CompletionFdFires) {
  TempFile f(1 << 20, "/var/tmp");
  auto dev = open_device("io_uring", {{"path", f.path()}, {"direct", "true"}, {"single-issuer", "true"}});
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 4096), 0);
  q.set_completion_fd_enabled(true);
  const int fd = q.completion_fd();
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 20; i++) {
    uint64_t junk;
    while (read(fd, &junk, sizeof junk) == sizeof junk) {
    }
    q.read(static_cast<uint64_t>(i) * 4096, buf, 4096, nullptr, 0);
    ASSERT_EQ(q.do_io(nullptr, 0, 0, nullptr), 0);
    int got = 0;
    Completion c;
    for (int tries = 0; tries < 10 && got == 0; tries++) {
      struct pollfd p {fd, POLLIN, 0};
      ASSERT_EQ(poll(&p, 1, 2000), 1) << "no wakeup for a completion, round " << i;
      got = q.do_io(&c, 0, 1, nullptr);  // a spurious wakeup is allowed: look again
    }
    ASSERT_EQ(got, 1);
    EXPECT_EQ(c.ret, 0);
  }
  free(buf);
}

TEST(IoUringDirect, AlignmentFromTheFileSystem) {
  TempFile f(1 << 20, "/var/tmp");
  auto dev = open_device("io_uring", {{"path", f.path()}, {"direct", "true"}});
  ASSERT_TRUE(dev);
  EXPECT_GE(dev->info().request_alignment, 512);
  EXPECT_GE(dev->info().buf_alignment, 1);
  EXPECT_EQ(dev->info().mem_region_alignment % static_cast<uint64_t>(dev->info().buf_alignment), 0u);
  auto buffered = open_device("io_uring", {{"path", f.path()}});
  EXPECT_EQ(buffered->info().request_alignment, 1);
}

// ---- files in memory: small reads and writes done by the calling thread ----

struct InlineFixture {
  explicit InlineFixture(uint64_t size, const char* dir = "/dev/shm", const char* inline_max = nullptr)
      : file(size, dir), dev(open_with_inline_max(file.path(), inline_max)) {
    buf = static_cast<char*>(mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~InlineFixture() { munmap(buf, 1 << 20); }
  Queue& q() { return *dev->queue(0); }
  DriverQueueStats stats() { return q().driver_queue().stats(); }
  TempFile file;
  std::unique_ptr<Device> dev;
  char* buf;
};

TEST(IoUringInline, OnlySmallRequestsOnMemoryFilesSkipTheRing) {
  InlineFixture f(4 << 20);
  ASSERT_TRUE(f.dev);
  auto s0 = f.stats();
  std::string data = pattern(65536, 21);
  memcpy(f.buf, data.data(), data.size());
  f.q().write(4096, f.buf, data.size(), nullptr, kReqFua);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  memset(f.buf, 0, data.size());
  f.q().read(4096, f.buf, data.size(), nullptr, 0);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  EXPECT_EQ(memcmp(f.buf, data.data(), data.size()), 0);
  EXPECT_EQ(memcmp(f.file.contents().data() + 4096, data.data(), data.size()), 0);
  auto s1 = f.stats();
  EXPECT_EQ(s1.inline_ops - s0.inline_ops, 2u);
  EXPECT_EQ(s1.submit_calls, s0.submit_calls);
  // One byte over the limit: the ring.
  f.q().read(0, f.buf, 65536 + 4096, nullptr, 0);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  auto s2 = f.stats();
  EXPECT_EQ(s2.inline_ops, s1.inline_ops);
  EXPECT_EQ(s2.plain_ops - s1.plain_ops, 1u);
  EXPECT_EQ(memcmp(f.buf + 4096, data.data(), data.size()), 0);
}

TEST(IoUringInline, DiskFilesAndTheSwitchKeepTheRing) {
  InlineFixture disk(1 << 20, "/var/tmp");
  ASSERT_TRUE(disk.dev);
  disk.q().read(0, disk.buf, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(disk.q()).ret, 0);
  EXPECT_EQ(disk.stats().inline_ops, 0u);
  EXPECT_EQ(disk.stats().plain_ops, 1u);
  InlineFixture off(1 << 20, "/dev/shm", "0");
  ASSERT_TRUE(off.dev);
  off.q().read(0, off.buf, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(off.q()).ret, 0);
  EXPECT_EQ(off.stats().inline_ops, 0u);
  InlineFixture big(1 << 20, "/dev/shm", "1048576");
  ASSERT_TRUE(big.dev);
  big.q().read(0, big.buf, 1 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(big.q()).ret, 0);
  EXPECT_EQ(big.stats().inline_ops, 1u);
}

// More requests queued before one do_io() than the ring has entries: the
// inline list grows, and every one is done, in order, with its own data.
TEST(IoUringInline, MoreRequestsThanRingEntriesInOneBatch) {
  InlineFixture f(2 << 20);
  ASSERT_TRUE(f.dev);
  const int n = 256;  // 4 KiB each: the whole 1 MiB buffer
  ASSERT_GT(n, std::get<int>(*f.dev->get("num-entries", PropType::kInt)));
  std::string data = pattern(static_cast<size_t>(n) * 4096, 23);
  memcpy(f.buf, data.data(), data.size());
  for (int i = 0; i < n; i++) f.q().write(static_cast<uint64_t>(i) * 4096, f.buf + i * 4096, 4096, nullptr, 0);
  // And a read of the first block after its write, in the same batch.
  char back[4096];
  f.q().read(0, back, 4096, nullptr, 0);
  std::vector<Completion> c(n + 1);
  ASSERT_EQ(f.q().do_io(c.data(), n + 1, n + 1, nullptr), n + 1);
  for (const Completion& x : c) ASSERT_EQ(x.ret, 0);
  EXPECT_EQ(f.stats().inline_ops, static_cast<uint64_t>(n) + 1);
  EXPECT_EQ(memcmp(f.file.contents().data(), data.data(), data.size()), 0);
  EXPECT_EQ(memcmp(back, data.data(), 4096), 0);
}

// A submit-only do_io() (max_completions 0) finishes inline requests with
// nowhere to put them: the completion fd must still say so, or an
// event-driven caller would sleep forever.
TEST(IoUringInline, CompletionFdFiresForCompletionsNotYetReaped) {
  InlineFixture f(1 << 20);
  ASSERT_TRUE(f.dev);
  Queue& q = f.q();
  q.set_completion_fd_enabled(true);
  const int fd = q.completion_fd();
  ASSERT_GE(fd, 0);
  uint64_t junk;
  while (read(fd, &junk, sizeof junk) == sizeof junk) {
  }
  int tag = 7;
  q.write(0, f.buf, 4096, &tag, 0);
  q.read(8192, f.buf + 8192, 4096, &tag, 0);
  ASSERT_EQ(q.do_io(nullptr, 0, 0, nullptr), 0);
  EXPECT_EQ(f.stats().inline_ops, 2u);
  struct pollfd p {fd, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 2000), 1) << "no wakeup for inline completions";
  ASSERT_EQ(read(fd, &junk, sizeof junk), static_cast<ssize_t>(sizeof junk));
  Completion c[2];
  ASSERT_EQ(q.do_io(c, 0, 2, nullptr), 2);
  EXPECT_EQ(c[0].ret, 0);
  EXPECT_EQ(c[1].ret, 0);
  EXPECT_EQ(c[0].user_data, &tag);
  EXPECT_EQ(q.outstanding(), 0u);
  // Room for one of two: the other waits, and the fd says so again.
  q.read(0, f.buf, 4096, nullptr, 0);
  q.read(4096, f.buf, 4096, nullptr, 0);
  ASSERT_EQ(q.do_io(c, 1, 1, nullptr), 1);
  ASSERT_EQ(poll(&p, 1, 2000), 1);
  ASSERT_EQ(q.do_io(c, 1, 1, nullptr), 1);
  EXPECT_EQ(q.outstanding(), 0u);
}

// Reading past the end of a file that can grow reads zeroes, as through the
// ring; errors come back as error completions.
TEST(IoUringInline, PastTheEndReadsZeroesAndErrorsComplete) {
  InlineFixture f(4096);
  ASSERT_TRUE(f.dev);
  f.file.write_at(0, std::string(4096, 'x'));
  memset(f.buf, 0x55, 16384);
  f.q().read(0, f.buf, 8192, nullptr, 0);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  EXPECT_EQ(std::string(f.buf, 4096), std::string(4096, 'x'));
  EXPECT_EQ(std::string(f.buf + 4096, 4096), std::string(4096, '\0'));
  memset(f.buf, 0x55, 16384);
  struct iovec iov[2] = {{f.buf, 2048}, {f.buf + 8192, 4096}};
  f.q().readv(2048, iov, 2, nullptr, 0);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  EXPECT_EQ(std::string(f.buf, 2048), std::string(2048, 'x'));
  EXPECT_EQ(std::string(f.buf + 8192, 4096), std::string(4096, '\0'));
  // Vectored writes too, then a write that extends the file.
  struct iovec w[2] = {{f.buf + 8192, 1024}, {f.buf, 1024}};
  f.q().writev(0, w, 2, nullptr, kReqFua);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  f.q().write(1 << 20, f.buf, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(f.q()).ret, 0);
  auto contents = f.file.contents();
  ASSERT_EQ(contents.size(), (1u << 20) + 4096);
  EXPECT_EQ(std::string(contents.data(), 1024), std::string(1024, '\0'));
  EXPECT_EQ(std::string(contents.data() + 1024, 1024), std::string(1024, 'x'));
  EXPECT_EQ(f.stats().inline_ops, 4u);
  // A buffer the kernel cannot write to: -EFAULT as a completion, no crash.
  void* ro = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  f.q().read(0, ro, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(f.q()).ret, -EFAULT);
  munmap(ro, 4096);
}

TEST(IoUringEntries, TooManyEntriesFailsStart) {
  TempFile f(1 << 20, "/dev/shm");
  auto d = Device::create("io_uring");
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE((*d)->set_str("path", f.path()).ok());
  ASSERT_TRUE((*d)->connect().ok());
  ASSERT_TRUE((*d)->set("num-entries", PropValue(1 << 20)).ok());
  Status s = (*d)->start();
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("num-entries"), std::string::npos);
}

// Block devices, through a loop device over a scratch file (needs root).
class LoopDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "loop devices need root";
    file_ = std::make_unique<TempFile>(16 << 20, "/var/tmp");
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    ASSERT_GE(ctl, 0);
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    close(ctl);
    ASSERT_GE(n, 0);
    path_ = "/dev/loop" + std::to_string(n);
    loop_fd_ = open(path_.c_str(), O_RDWR | O_CLOEXEC);
    int backing = open(file_->path().c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_EQ(ioctl(loop_fd_, LOOP_SET_FD, backing), 0);
    close(backing);
  }
  void TearDown() override {
    if (loop_fd_ >= 0) {
      ioctl(loop_fd_, LOOP_CLR_FD, 0);
      close(loop_fd_);
    }
  }
  std::unique_ptr<TempFile> file_;
  std::string path_;
  int loop_fd_ = -1;
};

TEST_F(LoopDevice, BlockDeviceLimitsAndIo) {
  auto dev = open_device("io_uring", {{"path", path_}, {"direct", "true"}});
  ASSERT_TRUE(dev);
  const DeviceInfo& i = dev->info();
  EXPECT_EQ(i.capacity, 16u << 20);
  EXPECT_EQ(i.request_alignment, 512);
  EXPECT_FALSE(i.can_report_holes);
  Queue& q = *dev->queue(0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 65536), 0);
  std::string data = pattern(65536, 9);
  memcpy(buf, data.data(), data.size());
  q.write(1 << 20, buf, 65536, nullptr, kReqFua);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.flush(nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(memcmp(file_->contents().data() + (1 << 20), data.data(), data.size()), 0);
  // Write zeroes, each mode.
  for (uint32_t flags : {0u, kReqNoUnmap, kReqNoFallback}) {
    file_->write_at(2 << 20, data);
    q.write_zeroes(2 << 20, 65536, nullptr, flags);
    Completion c = wait_one(q);
    ASSERT_EQ(c.ret, 0) << "flags " << flags;
    EXPECT_EQ(std::string(file_->contents().data() + (2 << 20), 65536), std::string(65536, '\0'));
  }
  // Discard, when the loop device offers it.
  if (i.supports_discard) {
    q.discard(0, 1 << 20, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
  }
  free(buf);
}

// Large requests on a file in memory go to io-wq workers (io_uring cannot do
// them in the submitting thread). A memory copy never sleeps, and io-wq only
// starts another worker when none is running or the request asks for it
// (IOSQE_ASYNC): without the flag, every such request of a ring is copied by
// one worker, one after another. io-wq names its workers iou-wrk-<tid of the
// submitting thread>, so a fresh thread counts only its own.
TEST(IoUringWorkers, LargeRequestsOnMemoryFilesRunOnSeveralWorkers) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) GTEST_SKIP() << "one CPU: io-wq runs one worker at a time anyway";
  constexpr uint64_t kChunk = 1 << 20;
  constexpr int kDepth = 8, kRequests = 128;
  TempFile file(kChunk * kDepth * 4, "/dev/shm");
  {
    // Data, not holes: each read is a real copy, long enough to overlap.
    const std::string blob = blkstack::test::pattern(kChunk * kDepth * 4, 3);
    int fd = ::open(file.path().c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, blob.data(), blob.size(), 0), static_cast<ssize_t>(blob.size()));
    ::close(fd);
  }
  auto dev = open_device("io_uring", {{"path", file.path()}});
  ASSERT_TRUE(dev);
  void* mem = mmap(nullptr, kChunk * kDepth, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  int workers = 0, done = 0;
  // A steady depth of 8, as an export keeps it: requests arrive while the
  // first worker is busy copying.
  std::thread t([&] {
    Queue* q = dev->queue(0);
    int issued = 0;
    auto issue = [&](uintptr_t slot) {
      q->read(kChunk * static_cast<uint64_t>(issued++ % (kDepth * 4)), static_cast<char*>(mem) + kChunk * slot, kChunk,
              reinterpret_cast<void*>(slot), 0);
    };
    for (uintptr_t i = 0; i < kDepth; i++) issue(i);
    Completion c[kDepth];
    while (done < kRequests) {
      int n = q->do_io(c, 1, kDepth, nullptr);
      if (n <= 0) break;
      for (int i = 0; i < n; i++) {
        EXPECT_EQ(c[i].ret, 0);
        if (issued < kRequests) issue(reinterpret_cast<uintptr_t>(c[i].user_data));
      }
      done += n;
    }
    // Idle workers live on for seconds: count them now.
    const std::string mine = "iou-wrk-" + std::to_string(gettid());
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
      std::ifstream comm(e.path() / "comm");
      std::string name;
      std::getline(comm, name);
      workers += name == mine;
    }
  });
  t.join();
  munmap(mem, kChunk * kDepth);
  EXPECT_EQ(done, kRequests);
  EXPECT_GE(workers, 2) << "the reads were copied by " << workers << " io-wq worker(s)";
}

}  // namespace
