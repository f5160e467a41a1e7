// The virtio-blk-vhost-user driver against a real back-end:
// qemu-storage-daemon's vhost-user-blk export of a file. Data is checked
// against the file itself; limits against what the export's config space
// says; failure paths (a killed back-end, a missing socket, buffers outside
// mapped regions) must end in error completions, never a hang.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "native_test_util.hpp"
#include "vhost_user_test_util.hpp"

using namespace blkstack;
using blkstack::test::pattern;
using blkstack::test::Qsd;
using blkstack::test::QsdOptions;
using blkstack::test::prop;
using blkstack::test::wait_one;

namespace {

constexpr const char* kDriver = "virtio-blk-vhost-user";

std::unique_ptr<Device> open_vhost(const Qsd& qsd, int queues = 1, int poll_queues = 0,
                                   std::vector<std::pair<std::string, std::string>> extra = {}) {
  auto d = Device::create(kDriver);
  EXPECT_TRUE(d.ok()) << d.status().message();
  if (!d) return nullptr;
  EXPECT_TRUE((*d)->set_str("path", qsd.sock()).ok());
  for (auto& [k, v] : extra) {
    Status s = (*d)->set_str(k, v);
    EXPECT_TRUE(s.ok()) << k << ": " << s.message();
  }
  Status s = (*d)->connect();
  EXPECT_TRUE(s.ok()) << s.message();
  if (!s) return nullptr;
  EXPECT_TRUE((*d)->set("num-queues", PropValue(queues)).ok());
  EXPECT_TRUE((*d)->set("num-poll-queues", PropValue(poll_queues)).ok());
  s = (*d)->start();
  EXPECT_TRUE(s.ok()) << s.message();
  if (!s) return nullptr;
  return std::move(d.value());
}

// A mapped memory region from blkio_alloc_mem_region()'s native twin.
struct Region {
  Region(Device& d, size_t len) : dev(d) {
    Status s = d.alloc_mem_region(r, len);
    EXPECT_TRUE(s.ok()) << s.message();
    s = d.map_mem_region(r);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  ~Region() {
    dev.unmap_mem_region(r);
    dev.free_mem_region(r);
  }
  char* p() const { return static_cast<char*>(r.addr); }
  Device& dev;
  MemRegion r{};
};

}  // namespace

TEST(VhostUserDriver, PropertiesFromTheConfigSpace) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  EXPECT_EQ(prop<uint64_t>(*dev, "capacity"), 64ull << 20);
  EXPECT_FALSE(prop<bool>(*dev, "read-only"));
  EXPECT_TRUE(prop<bool>(*dev, "needs-mem-regions"));
  EXPECT_TRUE(prop<bool>(*dev, "needs-mem-region-fd"));
  EXPECT_FALSE(prop<bool>(*dev, "supports-fua-natively"));
  EXPECT_TRUE(prop<bool>(*dev, "supports-poll-queues"));
  EXPECT_EQ(prop<int>(*dev, "max-queues"), 2);
  EXPECT_EQ(prop<int>(*dev, "queue-size"), 256);
  EXPECT_EQ(prop<int>(*dev, "max-queue-size"), 1024);
  EXPECT_EQ(prop<int>(*dev, "request-alignment"), 512);
  EXPECT_GE(prop<int>(*dev, "max-segments"), 1);
  EXPECT_LE(prop<int>(*dev, "max-segments"), 254);
  EXPECT_GT(prop<int>(*dev, "max-transfer"), 0);
  EXPECT_EQ(prop<uint64_t>(*dev, "mem-region-alignment"), 4096u);
  EXPECT_GE(prop<uint64_t>(*dev, "max-mem-regions"), 1u);
  EXPECT_TRUE(prop<bool>(*dev, "flush-needed"));  // qsd offers VIRTIO_BLK_F_FLUSH
  auto path = dev->get_str("path");
  ASSERT_TRUE(path.ok());
  EXPECT_EQ(*path, qsd.sock());
  // queue-size is read-only once started.
  EXPECT_FALSE(dev->set("queue-size", PropValue(128)).ok());
}

TEST(VhostUserDriver, QueueSizeBoundsSegmentsAndIsChecked) {
  Qsd qsd;
  auto d = Device::create(kDriver);
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE((*d)->set_str("path", qsd.sock()).ok());
  ASSERT_TRUE((*d)->connect().ok());
  EXPECT_EQ((*d)->set("queue-size", PropValue(100)).code(), -EINVAL);   // not a power of two
  EXPECT_EQ((*d)->set("queue-size", PropValue(4096)).code(), -EINVAL);  // above max-queue-size
  ASSERT_TRUE((*d)->set("queue-size", PropValue(16)).ok());
  ASSERT_TRUE((*d)->start().ok());
  EXPECT_LE(prop<int>(**d, "max-segments"), 14);
  // Many requests on a small ring: the rest wait for descriptors.
  Region reg(**d, 64 * 4096);
  Queue& q = *(*d)->queue(0);
  std::string data = pattern(64 * 4096, 9);
  memcpy(reg.p(), data.data(), data.size());
  for (int i = 0; i < 64; i++) q.write(i * 4096ull, reg.p() + i * 4096, 4096, nullptr, 0);
  std::vector<Completion> c(64);
  ASSERT_EQ(q.do_io(c.data(), 64, 64, nullptr), 64) << q.error_message();
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  EXPECT_EQ(qsd.read_img(0, data.size()), data);
}

TEST(VhostUserDriver, RoundTripAtDepthOneAndSixtyFour) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  constexpr int kN = 64, kLen = 16384;
  Region reg(*dev, 2 * kN * kLen);
  char* out = reg.p();
  char* back = reg.p() + kN * kLen;

  // Depth 1: one request at a time.
  std::string one = pattern(kLen, 1);
  memcpy(out, one.data(), kLen);
  q.write(1 << 20, out, kLen, reinterpret_cast<void*>(7), 0);
  Completion c1 = wait_one(q);
  EXPECT_EQ(c1.ret, 0);
  EXPECT_EQ(c1.user_data, reinterpret_cast<void*>(7));
  EXPECT_EQ(qsd.read_img(1 << 20, kLen), one);
  q.read(1 << 20, back, kLen, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(memcmp(back, one.data(), kLen), 0);

  // Depth 64: all in flight at once, scattered offsets.
  std::string data = pattern(kN * kLen, 7);
  memcpy(out, data.data(), data.size());
  for (int i = 0; i < kN; i++) q.write(static_cast<uint64_t>(i) * 3 * kLen, out + i * kLen, kLen, nullptr, 0);
  std::vector<Completion> c(kN);
  ASSERT_EQ(q.do_io(c.data(), kN, kN, nullptr), kN) << q.error_message();
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  for (int i = 0; i < kN; i++) {
    ASSERT_EQ(qsd.read_img(static_cast<uint64_t>(i) * 3 * kLen, kLen), data.substr(i * kLen, kLen)) << i;
  }
  // And what the file holds comes back through reads at depth 64.
  std::string other = pattern(kN * kLen, 8);
  qsd.write_img(32 << 20, other);
  memset(back, 0, kN * kLen);
  for (int i = 0; i < kN; i++) q.read((32 << 20) + static_cast<uint64_t>(i) * kLen, back + i * kLen, kLen, nullptr, 0);
  ASSERT_EQ(q.do_io(c.data(), kN, kN, nullptr), kN);
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  EXPECT_EQ(memcmp(back, other.data(), other.size()), 0);
}

TEST(VhostUserDriver, LargeRequestsAreSplitIntoSegments) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  // Several MiB in one request (cut into max-segment-len pieces when the
  // device sets VIRTIO_BLK_F_SIZE_MAX; Debian 12's qsd does not).
  const size_t len = 4 << 20;
  ASSERT_LE(len, static_cast<size_t>(prop<int>(*dev, "max-transfer")));
  Region reg(*dev, 2 * len);
  std::string data = pattern(len, 21);
  memcpy(reg.p(), data.data(), len);
  q.write(4096, reg.p(), len, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(qsd.read_img(4096, len), data);
  q.read(4096, reg.p() + len, len, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(memcmp(reg.p() + len, data.data(), len), 0);
}

TEST(VhostUserDriver, VectoredIo) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Region reg(*dev, 1 << 20);
  char* p = reg.p();
  std::string data = pattern(3 * 4096 + 512, 3);
  memcpy(p, data.data(), data.size());
  // Segments in a different order in memory than on the device.
  char* w0 = p + 200000;
  memcpy(w0, data.data(), 4096);
  iovec w[3] = {{w0, 4096}, {p + 4096, 512}, {p + 4608, 2 * 4096}};
  q.writev(8192, w, 3, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(qsd.read_img(8192, data.size()), data);
  char* b = p + 500000;
  iovec r[4] = {{b, 512}, {b + 512, 0}, {b + 512, 4096}, {b + 4608, data.size() - 4608}};
  q.readv(8192, r, 4, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(memcmp(b, data.data(), data.size()), 0);
}

TEST(VhostUserDriver, FlushFuaDiscardAndWriteZeroes) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Region reg(*dev, 1 << 20);
  memset(reg.p(), 0xab, 1 << 20);
  q.write(0, reg.p(), 1 << 20, nullptr, kReqFua);  // emulated: write, then flush
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(qsd.read_img(0, 1 << 20), std::string(1 << 20, '\xab'));
  q.flush(nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);

  // Write zeroes: natively when offered, else through the fallback (the
  // driver's own zero area); either way the file reads back zeroes.
  q.write_zeroes(4096, 8192, nullptr, kReqNoUnmap);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.write_zeroes(65536, 65536, nullptr, kReqFua);
  ASSERT_EQ(wait_one(q).ret, 0);
  std::string img = qsd.read_img(0, 1 << 20);
  EXPECT_EQ(img.substr(0, 4096), std::string(4096, '\xab'));
  EXPECT_EQ(img.substr(4096, 8192), std::string(8192, '\0'));
  EXPECT_EQ(img.substr(12288, 65536 - 12288), std::string(65536 - 12288, '\xab'));
  EXPECT_EQ(img.substr(65536, 65536), std::string(65536, '\0'));

  if (dev->info().supports_discard) {
    int align = prop<int>(*dev, "discard-alignment");
    uint64_t off = 262144, len = 262144;
    ASSERT_EQ(off % align, 0u);
    q.discard(off, len, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
  } else {
    q.discard(262144, 65536, nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, -ENOTSUP);
  }
}

TEST(VhostUserDriver, ReadOnlyExportRefusesAWritableInstance) {
  // As real libblkio 1.5 does: connect works and read-only stays false;
  // start fails with -EROFS "Device is read-only".
  Qsd qsd(QsdOptions{.writable = false});
  auto d = Device::create(kDriver);
  ASSERT_TRUE(d);
  ASSERT_TRUE((*d)->set_str("path", qsd.sock()));
  ASSERT_TRUE((*d)->connect());
  EXPECT_FALSE(prop<bool>(**d, "read-only"));
  Status s = (*d)->start();
  EXPECT_EQ(s.code(), -EROFS);
  EXPECT_EQ(s.message(), "Device is read-only");
}

TEST(VhostUserDriver, ReadOnlyExport) {
  Qsd qsd(QsdOptions{.writable = false});
  auto dev = open_vhost(qsd, 1, 0, {{"read-only", "true"}});
  ASSERT_TRUE(dev);
  EXPECT_TRUE(prop<bool>(*dev, "read-only"));
  Queue& q = *dev->queue(0);
  Region reg(*dev, 65536);
  q.write(0, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  q.write_zeroes(0, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  qsd.write_img(0, pattern(4096, 5));
  q.read(0, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(std::string(reg.p(), 4096), pattern(4096, 5));
}

TEST(VhostUserDriver, TwoQueuesOnTwoThreads) {
  Qsd qsd;
  auto dev = open_vhost(qsd, 2);
  ASSERT_TRUE(dev);
  constexpr int kRounds = 200, kLen = 4096, kDepth = 16;
  Region reg(*dev, 2 * kDepth * kLen * 2);
  auto worker = [&](int t) {
    Queue& q = *dev->queue(t);
    char* out = reg.p() + t * 2 * kDepth * kLen;
    char* back = out + kDepth * kLen;
    uint64_t base = static_cast<uint64_t>(t) * (16 << 20);
    std::vector<Completion> c(kDepth);
    for (int r = 0; r < kRounds; r++) {
      std::string data = pattern(kDepth * kLen, static_cast<unsigned>(t * 1000 + r));
      memcpy(out, data.data(), data.size());
      for (int i = 0; i < kDepth; i++) q.write(base + i * kLen, out + i * kLen, kLen, nullptr, 0);
      ASSERT_EQ(q.do_io(c.data(), kDepth, kDepth, nullptr), kDepth);
      for (auto& x : c) ASSERT_EQ(x.ret, 0);
      for (int i = 0; i < kDepth; i++) q.read(base + i * kLen, back + i * kLen, kLen, nullptr, 0);
      ASSERT_EQ(q.do_io(c.data(), kDepth, kDepth, nullptr), kDepth);
      for (auto& x : c) ASSERT_EQ(x.ret, 0);
      ASSERT_EQ(memcmp(back, data.data(), data.size()), 0) << "thread " << t << " round " << r;
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
}

TEST(VhostUserDriver, PollQueue) {
  Qsd qsd;
  auto dev = open_vhost(qsd, 1, 1);
  ASSERT_TRUE(dev);
  Queue& q = *dev->poll_queue(0);
  EXPECT_EQ(q.completion_fd(), -1);
  Region reg(*dev, 65536);
  std::string data = pattern(65536, 11);
  memcpy(reg.p(), data.data(), data.size());
  for (int i = 0; i < 16; i++) q.write(i * 4096ull, reg.p() + i * 4096, 4096, nullptr, 0);
  Completion c[16];
  ASSERT_EQ(q.do_io(c, 16, 16, nullptr), 16);
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  EXPECT_EQ(qsd.read_img(0, 65536), data);
}

TEST(VhostUserDriver, CompletionFdWakesTheEventLoop) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  int fd = q.completion_fd();
  ASSERT_GE(fd, 0);
  EXPECT_NE(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
  q.set_completion_fd_enabled(true);
  Region reg(*dev, 65536);
  for (int round = 0; round < 50; round++) {
    q.read(round * 4096ull, reg.p(), 4096, reinterpret_cast<void*>(42), 0);
    Completion c{};
    int got = q.do_io(&c, 0, 1, nullptr);  // submits
    auto t0 = std::chrono::steady_clock::now();
    while (got == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
      pollfd p{fd, POLLIN, 0};
      ASSERT_EQ(poll(&p, 1, 10000), 1) << "round " << round;  // the fd must fire
      uint64_t v;
      (void)!read(fd, &v, sizeof v);  // blkio(3): read 8 bytes, then do_io
      got = q.do_io(&c, 0, 1, nullptr);  // spurious wakeups are allowed
    }
    ASSERT_EQ(got, 1);
    EXPECT_EQ(c.ret, 0);
    EXPECT_EQ(c.user_data, reinterpret_cast<void*>(42));
  }
}

TEST(VhostUserDriver, DoIoTimeout) {
  Qsd qsd(QsdOptions{.read_bps = 65536});
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Region reg(*dev, 1 << 20);
  // The throttle lets a request through when its bucket is empty, then
  // makes the next wait for the bytes to drain: 16 s at 64 KiB/s.
  q.read(0, reg.p(), 1 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.read(0, reg.p(), 1 << 20, nullptr, 0);
  Completion c{};
  timespec t{0, 100 * 1000 * 1000};
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(q.do_io(&c, 1, 1, &t), -ETIME);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, std::chrono::milliseconds(90));
  EXPECT_LT(took, std::chrono::milliseconds(1500));
}

TEST(VhostUserDriver, BufferOutsideMappedRegionsFails) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Region reg(*dev, 65536);
  std::vector<char> heap(8192);
  q.read(0, heap.data(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EFAULT);
  q.write(0, heap.data(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EFAULT);
  iovec v[2] = {{reg.p(), 4096}, {heap.data(), 4096}};  // one segment outside
  q.readv(0, v, 2, nullptr, 0);
  EXPECT_LT(wait_one(q).ret, 0);
  // Straddling the end of the region.
  q.read(0, reg.p() + 65536 - 2048, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EFAULT);
  // After unmapping, the region's memory is outside too; mapped again, fine.
  dev->unmap_mem_region(reg.r);
  q.read(0, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EFAULT);
  ASSERT_TRUE(dev->map_mem_region(reg.r).ok());
  q.read(0, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
}

TEST(VhostUserDriver, MisalignedAndOutOfRangeRequestsFail) {
  Qsd qsd;
  auto dev = open_vhost(qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Region reg(*dev, 65536);
  q.read(100, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);
  q.read(0, reg.p(), 1000, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);
  q.read(64ull << 20, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);
  q.write((64ull << 20) - 2048, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);
  // And the queue still works.
  q.read((64ull << 20) - 4096, reg.p(), 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
}

TEST(VhostUserDriver, BackendKilledWithRequestsInFlight) {
  auto qsd = std::make_unique<Qsd>(QsdOptions{.read_bps = 65536});
  auto dev = open_vhost(*qsd);
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  int fd = q.completion_fd();
  q.set_completion_fd_enabled(true);
  Region reg(*dev, 4 << 20);
  q.read(0, reg.p(), 1 << 20, nullptr, 0);  // fills the throttle's bucket
  ASSERT_EQ(wait_one(q).ret, 0);
  for (int i = 0; i < 4; i++) q.read(i * (1ull << 20), reg.p() + i * (1 << 20), 1 << 20, nullptr, 0);
  Completion c[4]{};
  timespec t{0, 200 * 1000 * 1000};
  EXPECT_EQ(q.do_io(c, 1, 4, &t), -ETIME);
  qsd->kill_now();
  // An event-driven caller hears of it through the completion fd.
  pollfd p{fd, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 5000), 1);
  // Reaped the event-driven way, one completion per call and no waiting:
  // every call must hand out what is left.
  auto t0 = std::chrono::steady_clock::now();
  int got = 0;
  while (got < 4 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
    int n = q.do_io(c + got, 0, 1, nullptr);
    ASSERT_GE(n, 0) << q.error_message();
    got += n;
  }
  ASSERT_EQ(got, 4);
  for (auto& x : c) EXPECT_EQ(x.ret, -EIO);
  timespec t2{10, 0};
  // New requests fail at once instead of hanging.
  q.read(0, reg.p(), 4096, nullptr, 0);
  t2 = {5, 0};
  ASSERT_EQ(q.do_io(c, 1, 1, &t2), 1);
  EXPECT_EQ(c[0].ret, -EIO);
}

TEST(VhostUserDriver, ConnectErrorsAreClearAndBounded) {
  auto connect_to = [](const std::string& path, int timeout_s = 5) {
    auto d = Device::create(kDriver);
    EXPECT_TRUE(d.ok());
    if (!path.empty()) {
      EXPECT_TRUE((*d)->set_str("path", path).ok());
    }
    EXPECT_TRUE((*d)->set("connect-timeout", PropValue(timeout_s)).ok());
    return (*d)->connect();
  };
  Status s = connect_to("");
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("path"), std::string::npos) << s.message();

  auto t0 = std::chrono::steady_clock::now();
  s = connect_to("/nonexistent/blkstack-vhost.sock");
  EXPECT_EQ(s.code(), -ENOENT);
  EXPECT_NE(s.message().find("/nonexistent/blkstack-vhost.sock"), std::string::npos) << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));

  // A back-end that accepts but never answers: connect-timeout bounds it.
  blkstack::test::MuteUnixServer mute;
  t0 = std::chrono::steady_clock::now();
  s = connect_to(mute.path(), 1);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(s.code(), -ETIMEDOUT) << s.message();
  EXPECT_GE(took, std::chrono::milliseconds(900));
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST(VhostUserDriver, ReconnectAfterDestroy) {
  // qsd serves one front-end at a time: a device that is destroyed must
  // really let go, or the next one would wait for the connect-timeout.
  Qsd qsd;
  for (int i = 0; i < 3; i++) {
    auto dev = open_vhost(qsd);
    ASSERT_TRUE(dev);
    Region reg(*dev, 65536);
    Queue& q = *dev->queue(0);
    q.read(0, reg.p(), 4096, nullptr, 0);
    ASSERT_EQ(wait_one(q).ret, 0);
  }
}
