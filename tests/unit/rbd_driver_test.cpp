// The rbd driver against a real single-node Ceph cluster (started by the
// ctest fixture rbd_cluster, scripts/ceph-cluster.sh): data, vectors,
// flush/FUA, discard, write zeroes, several queues on several threads, the
// completion fd, do_io timeouts, read-only and snapshots, capacity and
// limits, and connect errors. BLKSTACK_RBD_CONF names the cluster's
// ceph.conf; without it every test fails (a skipped check hides a defect).
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "blkstack/device.hpp"
#include "native_test_util.hpp"

using namespace blkstack;
using blkstack::test::pattern;
using blkstack::test::wait_one;

namespace {

const char* conf_path() { return getenv("BLKSTACK_RBD_CONF"); }

// One connection for the test's own bookkeeping (creating images and
// snapshots, reading back behind the driver's back).
class Cluster {
 public:
  // Never destroyed: librados' own threads may still run when the process
  // exits (an image open that timed out finishes in the background), and
  // shutting the handle down under them at exit is a race TSan reports.
  static Cluster& get() {
    static Cluster* c = new Cluster;
    return *c;
  }
  bool ok() const { return io_ != nullptr; }
  rados_ioctx_t io() const { return io_; }

 private:
  Cluster() {
    if (!conf_path()) return;
    if (rados_create(&cluster_, "admin") < 0) return;
    if (rados_conf_read_file(cluster_, conf_path()) < 0) return;
    rados_conf_set(cluster_, "client_mount_timeout", "20");
    if (rados_connect(cluster_) < 0) return;
    if (rados_ioctx_create(cluster_, "rbd", &io_) < 0) io_ = nullptr;
  }
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
};

// An image that exists for one test.
class TestImage {
 public:
  explicit TestImage(uint64_t size) {
    static std::atomic<int> seq{0};
    name_ = "test-" + std::to_string(getpid()) + "-" + std::to_string(seq++);
    int order = 22;  // 4 MiB objects
    int r = rbd_create(Cluster::get().io(), name_.c_str(), size, &order);
    EXPECT_EQ(r, 0) << "rbd_create " << name_ << ": " << strerror(-r);
  }
  ~TestImage() {
    // Snapshots first, or the image cannot be removed.
    rbd_image_t img;
    if (rbd_open(Cluster::get().io(), name_.c_str(), &img, nullptr) == 0) {
      rbd_snap_info_t snaps[16];
      int max = 16;
      int n = rbd_snap_list(img, snaps, &max);
      for (int i = 0; i < n; i++) rbd_snap_remove(img, snaps[i].name);
      if (n > 0) rbd_snap_list_end(snaps);
      rbd_close(img);
    }
    rbd_remove(Cluster::get().io(), name_.c_str());
  }
  const std::string& name() const { return name_; }

  // Reads through a fresh librbd handle: what the cluster has, not what a
  // driver's cache may hold.
  std::string read_direct(uint64_t off, size_t len) const {
    std::string out(len, '\0');
    rbd_image_t img;
    EXPECT_EQ(rbd_open_read_only(Cluster::get().io(), name_.c_str(), &img, nullptr), 0);
    EXPECT_EQ(rbd_read(img, off, len, out.data()), static_cast<ssize_t>(len));
    rbd_close(img);
    return out;
  }
  void write_direct(uint64_t off, const std::string& data) const {
    rbd_image_t img;
    ASSERT_EQ(rbd_open(Cluster::get().io(), name_.c_str(), &img, nullptr), 0);
    ASSERT_EQ(rbd_write(img, off, data.size(), data.data()), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(rbd_flush(img), 0);
    rbd_close(img);
  }
  void snap_create(const char* snap) const {
    rbd_image_t img;
    ASSERT_EQ(rbd_open(Cluster::get().io(), name_.c_str(), &img, nullptr), 0);
    ASSERT_EQ(rbd_snap_create(img, snap), 0);
    rbd_close(img);
  }

 private:
  std::string name_;
};

// A file the cluster script left next to ceph.conf.
std::string cluster_file(const std::string& name) {
  std::string conf = conf_path();
  return conf.substr(0, conf.rfind('/')) + "/" + name;
}

using Props = std::vector<std::pair<std::string, std::string>>;

Props base_props(const std::string& image) {
  return {{"conf", conf_path() ? conf_path() : ""}, {"pool", "rbd"}, {"image", image}};
}

// The Status of connecting a device with `props`, and how long it took.
Status try_connect(const Props& props, double* seconds = nullptr) {
  auto d = Device::create("rbd");
  EXPECT_TRUE(d.ok());
  for (auto& [k, v] : props) EXPECT_TRUE((*d)->set_str(k, v).ok()) << k;
  auto t0 = std::chrono::steady_clock::now();
  Status s = (*d)->connect();
  if (seconds) *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

class Rbd : public ::testing::Test {
 protected:
  static constexpr uint64_t kSize = 64 << 20;

  void SetUp() override {
    ASSERT_NE(conf_path(), nullptr) << "BLKSTACK_RBD_CONF is not set: run through ctest (fixture rbd_cluster)";
    ASSERT_TRUE(Cluster::get().ok()) << "cannot reach the cluster of " << conf_path();
    image_ = std::make_unique<TestImage>(kSize);
    buf_ = static_cast<char*>(mmap(nullptr, kBuf, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  void TearDown() override {
    dev_.reset();
    munmap(buf_, kBuf);
    image_.reset();
  }
  Queue* open(Props extra = {}, int queues = 1) {
    Props p = base_props(image_->name());
    p.insert(p.end(), extra.begin(), extra.end());
    dev_ = test::open_device("rbd", p, queues);
    return dev_ ? dev_->queue(0) : nullptr;
  }

  static constexpr size_t kBuf = 16 << 20;
  std::unique_ptr<TestImage> image_;
  std::unique_ptr<Device> dev_;
  char* buf_ = nullptr;
};


TEST_F(Rbd, WriteReadVerifyAnyByteOffset) {
  Queue* q = open();
  ASSERT_TRUE(q);
  // Byte granularity (request-alignment 1): an odd offset and length that
  // straddles the first object boundary.
  const uint64_t off = (4 << 20) - 12345;
  std::string data = pattern(100001, 1);
  memcpy(buf_, data.data(), data.size());
  q->write(off, buf_, data.size(), nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  memset(buf_, 0, data.size());
  q->read(off, buf_, data.size(), nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(memcmp(buf_, data.data(), data.size()), 0);
  q->flush(nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(image_->read_direct(off, data.size()), data);
}

TEST_F(Rbd, VectoredIo) {
  Queue* q = open();
  ASSERT_TRUE(q);
  std::string data = pattern(3 * 4096, 2);
  memcpy(buf_, data.data(), data.size());
  struct iovec iov[3] = {{buf_ + 8192, 4096}, {buf_, 4096}, {buf_ + 4096, 4096}};
  q->writev(4096, iov, 3, nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  q->flush(nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  std::string on_disk = image_->read_direct(4096, 3 * 4096);
  EXPECT_EQ(on_disk.substr(0, 4096), data.substr(8192, 4096));
  EXPECT_EQ(on_disk.substr(4096), data.substr(0, 8192));
  memset(buf_, 0, data.size());
  q->readv(4096, iov, 3, nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(memcmp(buf_, data.data(), data.size()), 0);
}

// FUA (write-then-flush in the contract layer): once the write completes,
// a fresh client sees the data.
TEST_F(Rbd, FuaWriteIsVisibleToOtherClients) {
  Queue* q = open();
  ASSERT_TRUE(q);
  std::string data = pattern(65536, 3);
  memcpy(buf_, data.data(), data.size());
  q->write(1 << 20, buf_, data.size(), nullptr, kReqFua);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(image_->read_direct(1 << 20, data.size()), data);
  struct iovec iov = {buf_, 4096};
  q->writev(0, &iov, 1, nullptr, kReqFua);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(image_->read_direct(0, 4096), data.substr(0, 4096));
}

TEST_F(Rbd, WriteZeroesReadsBackZeroes) {
  Queue* q = open();
  ASSERT_TRUE(q);
  const uint32_t modes[] = {0, kReqNoUnmap, kReqFua, kReqNoFallback, kReqNoUnmap | kReqFua};
  for (uint32_t flags : modes) {
    // Whole objects and a partial one, at a byte offset.
    image_->write_direct(0, pattern(12 << 20, 4));
    const uint64_t off = 3 * 4096 + 7, len = (9 << 20) - 11;
    q->write_zeroes(off, len, nullptr, flags);
    ASSERT_EQ(wait_one(*q).ret, 0) << "flags " << flags;
    q->read(0, buf_, 12 << 20, nullptr, 0);
    ASSERT_EQ(wait_one(*q).ret, 0);
    std::string expect = pattern(12 << 20, 4);
    memset(expect.data() + off, 0, len);
    ASSERT_EQ(std::string(buf_, 12 << 20), expect) << "flags " << flags;
    q->flush(nullptr, 0);
    ASSERT_EQ(wait_one(*q).ret, 0);
    EXPECT_EQ(image_->read_direct(0, 12 << 20), expect) << "flags " << flags;
  }
}

TEST_F(Rbd, DiscardCompletes) {
  Queue* q = open();
  ASSERT_TRUE(q);
  image_->write_direct(0, pattern(8 << 20, 5));
  // Whole objects: librbd removes them, and they read back as zeroes.
  q->discard(0, 8 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  q->read(0, buf_, 8 << 20, nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(std::string(buf_, 8 << 20), std::string(8 << 20, '\0'));
  // Any byte range is accepted (discard is advisory there).
  q->discard(12345, 6789, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, 0);
}

TEST_F(Rbd, CapacityAndLimits) {
  Queue* q = open();
  ASSERT_TRUE(q);
  auto cap = dev_->get("capacity", PropType::kUint64);
  ASSERT_TRUE(cap.ok());
  EXPECT_EQ(std::get<uint64_t>(*cap), kSize);
  EXPECT_EQ(std::get<int>(*dev_->get("request-alignment", PropType::kInt)), 1);
  EXPECT_EQ(std::get<int>(*dev_->get("optimal-io-size", PropType::kInt)), 4 << 20);
  EXPECT_EQ(std::get<bool>(*dev_->get("supports-fua-natively", PropType::kBool)), false);
  EXPECT_EQ(std::get<bool>(*dev_->get("needs-mem-regions", PropType::kBool)), false);
  // Past the end: refused by the contract layer before librbd sees it.
  q->read(kSize - 4096, buf_, 8192, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, -EINVAL);
  q->read(kSize - 4096, buf_, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, 0);
}

TEST_F(Rbd, TwoQueuesOnTwoThreads) {
  ASSERT_TRUE(open({}, 2));
  ASSERT_TRUE(dev_->queue(1));
  auto worker = [&](int qi) {
    Queue* q = dev_->queue(qi);
    char* base = buf_ + qi * (4 << 20);
    const uint64_t disk = static_cast<uint64_t>(qi) * (16 << 20);
    std::string data = pattern(4 << 20, 10 + qi);
    memcpy(base, data.data(), data.size());
    // 32 writes of 128 KiB in flight at once.
    for (int i = 0; i < 32; i++) q->write(disk + i * 131072, base + i * 131072, 131072, nullptr, 0);
    Completion c[32];
    int got = 0;
    while (got < 32) {
      int n = q->do_io(c, 1, 32, nullptr);
      ASSERT_GT(n, 0);
      for (int k = 0; k < n; k++) ASSERT_EQ(c[k].ret, 0);
      got += n;
    }
    memset(base, 0, 4 << 20);
    q->read(disk, base, 4 << 20, nullptr, 0);
    ASSERT_EQ(wait_one(*q).ret, 0);
    ASSERT_EQ(memcmp(base, data.data(), data.size()), 0) << "queue " << qi;
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
}

// Event-driven: wait on the completion fd, reap with min_completions 0.
TEST_F(Rbd, CompletionFdEventDriven) {
  Queue* q = open();
  ASSERT_TRUE(q);
  int fd = q->completion_fd();
  ASSERT_GE(fd, 0);
  q->set_completion_fd_enabled(true);
  std::string data = pattern(16 * 65536, 6);
  memcpy(buf_, data.data(), data.size());
  for (int i = 0; i < 16; i++) {
    q->write(i * 65536, buf_ + i * 65536, 65536, reinterpret_cast<void*>(static_cast<uintptr_t>(i + 1)), 0);
  }
  int got = 0, wakeups = 0;
  uint32_t seen = 0;
  while (got < 16) {
    pollfd p{fd, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 10000), 1) << "no completion fd wakeup in 10 s with " << 16 - got << " outstanding";
    wakeups++;
    uint64_t v;
    (void)!read(fd, &v, sizeof(v));  // applications reset the eventfd, as blkio(3) says
    Completion c[16];
    int n = q->do_io(c, 0, 16, nullptr);
    ASSERT_GE(n, 0);
    for (int k = 0; k < n; k++) {
      ASSERT_EQ(c[k].ret, 0);
      seen |= 1u << (reinterpret_cast<uintptr_t>(c[k].user_data) - 1);
    }
    got += n;
  }
  EXPECT_EQ(seen, 0xffffu);
  EXPECT_LE(wakeups, 16 + 2);
  // Nothing outstanding: the fd stays quiet.
  pollfd p{fd, POLLIN, 0};
  int r = poll(&p, 1, 100);
  if (r == 1) {
    Completion c[1];
    EXPECT_EQ(q->do_io(c, 0, 1, nullptr), 0);
  }
}

TEST_F(Rbd, DoIoTimeout) {
  Queue* q = open();
  ASSERT_TRUE(q);
  // A 16 MiB write takes far longer than 1 µs on any cluster.
  memset(buf_, 7, 16 << 20);
  q->write(0, buf_, 16 << 20, nullptr, 0);
  Completion c{};
  timespec t{0, 1000};
  EXPECT_EQ(q->do_io(&c, 1, 1, &t), -ETIME);
  EXPECT_EQ(t.tv_sec, 0);
  EXPECT_EQ(t.tv_nsec, 0);
  // The request is still there and finishes.
  timespec t2{30, 0};
  EXPECT_EQ(q->do_io(&c, 1, 1, &t2), 1);
  EXPECT_EQ(c.ret, 0);
}

// The cluster's OSD, stopped (SIGSTOP) for the life of this object: requests
// sent meanwhile stay in flight, deterministically.
class OsdPause {
 public:
  OsdPause() {
    std::string conf = conf_path();
    std::ifstream f(cluster_file("run/osd.0.pid"));
    f >> pid_;
    EXPECT_GT(pid_, 0) << "no osd.0.pid next to " << conf;
    if (pid_ > 0) {
      EXPECT_EQ(kill(pid_, SIGSTOP), 0);
      wait_stopped();
    }
  }
  ~OsdPause() { resume(); }
  void resume() {
    if (pid_ > 0) kill(pid_, SIGCONT);
    pid_ = 0;
  }

 private:
  // kill() only queues SIGSTOP: wait until every thread of the OSD has
  // stopped, or a request sent right now might still be served.
  void wait_stopped() {
    std::string dir = "/proc/" + std::to_string(pid_) + "/task";
    for (int i = 0; i < 200; i++) {
      bool all = true;
      for (const auto& t : std::filesystem::directory_iterator(dir)) {
        std::ifstream st(t.path() / "stat");
        std::string line;
        std::getline(st, line);
        auto close = line.rfind(')');
        if (close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'T') all = false;
      }
      if (all) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "osd " << pid_ << " did not stop";
  }

  pid_t pid_ = 0;
};

void on_sigusr1(int) {}

// A request the OSD does not answer: do_io with a timeout returns -ETIME
// after that timeout, do_io_interruptible returns -EINTR on a signal, and
// the request completes once the OSD runs again.
TEST_F(Rbd, DoIoTimeoutAndSignalWhileOsdStopped) {
  Queue* q = open();
  ASSERT_TRUE(q);
  memset(buf_, 1, 4096);
  q->write(0, buf_, 4096, nullptr, 0);  // connections and the exclusive lock in place
  ASSERT_EQ(wait_one(*q).ret, 0);

  OsdPause pause;
  q->read(0, buf_, 4096, nullptr, 0);
  Completion c{};
  timespec t{0, 300 * 1000000};
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(q->do_io(&c, 1, 1, &t), -ETIME);
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(waited, 0.29);
  EXPECT_LT(waited, 3.0);

  // SIGUSR1 blocked in this thread except while do_io waits.
  struct sigaction sa {};
  sa.sa_handler = on_sigusr1;
  struct sigaction old {};
  sigaction(SIGUSR1, &sa, &old);
  sigset_t block, wait_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &block, &wait_mask);
  sigdelset(&wait_mask, SIGUSR1);
  pthread_t self = pthread_self();
  std::thread killer([self] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    pthread_kill(self, SIGUSR1);
  });
  timespec t2{10, 0};
  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(q->do_io(&c, 1, 1, &t2, &wait_mask, true), -EINTR);
  waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  killer.join();
  pthread_sigmask(SIG_UNBLOCK, &block, nullptr);
  sigaction(SIGUSR1, &old, nullptr);
  EXPECT_LT(waited, 5.0);

  pause.resume();
  timespec t3{30, 0};
  ASSERT_EQ(q->do_io(&c, 1, 1, &t3), 1);
  EXPECT_EQ(c.ret, 0);
  EXPECT_EQ(std::string(buf_, 4096), std::string(4096, '\1'));
}

// Monitors up, OSD not answering: opening the image (which reads it from
// the OSD) fails within connect-timeout instead of hanging.
TEST_F(Rbd, ConnectErrorOsdNotAnsweringWithinTimeout) {
  Props p = base_props(image_->name());
  p.push_back({"connect-timeout", "2"});
  double secs = 0;
  Status s;
  {
    OsdPause pause;
    s = try_connect(p, &secs);
  }
  EXPECT_EQ(s.code(), -ETIMEDOUT) << s.message();
  EXPECT_NE(s.message().find("connect-timeout (2 s)"), std::string::npos) << s.message();
  EXPECT_GE(secs, 1.9);
  EXPECT_LT(secs, 2 + 3.0) << "connect took " << secs << " s with connect-timeout 2";
  // And with the OSD back, the same device opens.
  EXPECT_TRUE(try_connect(p).ok());
}

TEST_F(Rbd, ReadOnlyRefusesWrites) {
  image_->write_direct(0, pattern(4096, 8));
  Queue* q = open({{"read-only", "true"}});
  ASSERT_TRUE(q);
  EXPECT_TRUE(std::get<bool>(*dev_->get("read-only", PropType::kBool)));
  q->write(0, buf_, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, -EBADF);
  q->write_zeroes(0, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, -EBADF);
  q->discard(0, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, -EBADF);
  q->read(0, buf_, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(std::string(buf_, 4096), pattern(4096, 8));
}

TEST_F(Rbd, SnapshotIsReadOnlyAndFrozen) {
  image_->write_direct(0, pattern(8192, 9));
  image_->snap_create("s1");
  image_->write_direct(0, pattern(8192, 10));  // after the snapshot
  Queue* q = open({{"snapshot", "s1"}});
  ASSERT_TRUE(q);
  EXPECT_TRUE(std::get<bool>(*dev_->get("read-only", PropType::kBool)));
  q->read(0, buf_, 8192, nullptr, 0);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(std::string(buf_, 8192), pattern(8192, 9));
  q->write(0, buf_, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, -EBADF);
  q->flush(nullptr, 0);
  EXPECT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(image_->read_direct(0, 8192), pattern(8192, 10));
}

// Requests still in flight when the device goes away: the queue waits for
// librbd's callbacks (ASan would see them touch freed memory otherwise).
TEST_F(Rbd, CloseWithRequestsInFlight) {
  Queue* q = open({}, 1);
  ASSERT_TRUE(q);
  memset(buf_, 3, 8 << 20);
  for (int i = 0; i < 64; i++) q->write(static_cast<uint64_t>(i) * 131072, buf_ + i * 131072, 131072, nullptr, 0);
  dev_.reset();
  EXPECT_EQ(image_->read_direct(63 * 131072, 131072), std::string(131072, '\3'));
}

TEST_F(Rbd, ConnectErrorMissingImage) {
  Status s = try_connect(base_props("no-such-image"));
  EXPECT_EQ(s.code(), -ENOENT);
  EXPECT_NE(s.message().find("rbd/no-such-image"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("no such image"), std::string::npos) << s.message();
}

TEST_F(Rbd, ConnectErrorMissingSnapshot) {
  Props p = base_props(image_->name());
  p.push_back({"snapshot", "nope"});
  Status s = try_connect(p);
  EXPECT_EQ(s.code(), -ENOENT);
  EXPECT_NE(s.message().find("@nope"), std::string::npos) << s.message();
}

TEST_F(Rbd, ConnectErrorMissingPool) {
  Props p = base_props(image_->name());
  p[1].second = "no-such-pool";
  Status s = try_connect(p);
  EXPECT_EQ(s.code(), -ENOENT);
  EXPECT_NE(s.message().find("pool 'no-such-pool'"), std::string::npos) << s.message();
}

TEST_F(Rbd, ConnectErrorMissingProperties) {
  Status s = try_connect({{"conf", conf_path()}, {"image", "x"}});
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("pool"), std::string::npos) << s.message();
  s = try_connect({{"conf", conf_path()}, {"pool", "rbd"}});
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("image"), std::string::npos) << s.message();
}

TEST_F(Rbd, ConnectErrorBadConfPath) {
  Props p = base_props(image_->name());
  p[0].second = "/nonexistent/ceph.conf";
  Status s = try_connect(p);
  EXPECT_LT(s.code(), 0);
  EXPECT_NE(s.message().find("/nonexistent/ceph.conf"), std::string::npos) << s.message();
}

// A monitor address where nothing listens: connect fails within
// connect-timeout instead of hanging.
TEST_F(Rbd, ConnectErrorUnreachableMonitorWithinTimeout) {
  char path[] = "/tmp/blkstack-rbd-conf-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream f(path);
    f << "[global]\nmon host = v1:127.0.0.1:9\nauth client required = none\n"
         "ms bind ipv6 = false\n[client]\nlog file = /dev/null\n";
  }
  Props p = base_props(image_->name());
  p[0].second = path;
  p.push_back({"connect-timeout", "3"});
  double secs = 0;
  Status s = try_connect(p, &secs);
  unlink(path);
  EXPECT_LT(s.code(), 0);
  EXPECT_NE(s.message().find("cannot connect"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("127.0.0.1:9"), std::string::npos) << s.message();
  EXPECT_LT(secs, 3 + 5.0) << "connect took " << secs << " s with connect-timeout 3";
}

// The key in a one-entry keyring file ("key = ...").
std::string key_of(const std::string& keyring) {
  std::ifstream f(keyring);
  std::string line;
  while (std::getline(f, line)) {
    auto at = line.find("key = ");
    if (at != std::string::npos) return line.substr(at + 6);
  }
  return "";
}

// The fixture's cluster runs cephx (CEPH_AUTH=cephx, tests/unit/CMakeLists.txt):
// the other tests authenticate as client.admin through the conf's keyring;
// here client.blkstack, limited to the rbd profile on pool rbd, is named
// with the user and keyring properties, as a real deployment would.
TEST_F(Rbd, CephxUserAndKeyring) {
  const std::string keyring = cluster_file("blkstack.keyring");
  ASSERT_FALSE(key_of(keyring).empty()) << keyring << ": no key; the cluster must run cephx (CEPH_AUTH=cephx)";
  Props p = base_props(image_->name());
  p.push_back({"user", "blkstack"});
  p.push_back({"keyring", keyring});
  dev_ = test::open_device("rbd", p);
  ASSERT_TRUE(dev_);
  Queue* q = dev_->queue(0);
  std::string data = pattern(65536, 31);
  memcpy(buf_, data.data(), data.size());
  q->write(1 << 20, buf_, data.size(), nullptr, kReqFua);
  ASSERT_EQ(wait_one(*q).ret, 0);
  EXPECT_EQ(image_->read_direct(1 << 20, data.size()), data);
}

// A wrong key, or a user the keyring has no key for, is refused at once with
// the user named; nothing waits for connect-timeout.
TEST_F(Rbd, CephxWrongKeyOrUserIsRefused) {
  const std::string good = cluster_file("blkstack.keyring");
  std::string key = key_of(good);
  ASSERT_EQ(key.size(), 40u) << good << ": no cephx key; the cluster must run cephx (CEPH_AUTH=cephx)";
  // Same structure, another secret: one base64 digit of the secret changed.
  key[30] = key[30] == 'A' ? 'B' : 'A';
  char path[] = "/tmp/blkstack-rbd-keyring-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream f(path);
    f << "[client.blkstack]\n\tkey = " << key << "\n";
  }
  for (auto [user, keyring] : {std::pair<std::string, std::string>{"blkstack", path}, {"nobody", good}}) {
    SCOPED_TRACE(user + " with " + keyring);
    Props p = base_props(image_->name());
    p.push_back({"user", user});
    p.push_back({"keyring", keyring});
    p.push_back({"connect-timeout", "10"});
    double secs = 0;
    Status s = try_connect(p, &secs);
    EXPECT_LT(s.code(), 0);
    EXPECT_NE(s.message().find("user '" + user + "'"), std::string::npos) << s.message();
    EXPECT_LT(secs, 5.0) << "a refused key took " << secs << " s";
  }
  unlink(path);
}

// An image in an RBD namespace is found through the namespace property, and
// only there.
TEST_F(Rbd, Namespace) {
  rados_ioctx_t io = Cluster::get().io();
  const std::string ns = "ns-" + std::to_string(getpid());
  ASSERT_EQ(rbd_namespace_create(io, ns.c_str()), 0);
  rados_ioctx_t nsio;
  rados_t cluster = rados_ioctx_get_cluster(io);
  ASSERT_EQ(rados_ioctx_create(cluster, "rbd", &nsio), 0);
  rados_ioctx_set_namespace(nsio, ns.c_str());
  int order = 22;
  ASSERT_EQ(rbd_create(nsio, "in-ns", 8 << 20, &order), 0);

  Props p = base_props("in-ns");
  EXPECT_EQ(try_connect(p).code(), -ENOENT);  // not in the default namespace
  p.push_back({"namespace", ns});
  dev_ = test::open_device("rbd", p);
  ASSERT_TRUE(dev_);
  Queue* q = dev_->queue(0);
  EXPECT_EQ(std::get<uint64_t>(*dev_->get("capacity", PropType::kUint64)), 8u << 20);
  std::string data = pattern(4096, 11);
  memcpy(buf_, data.data(), data.size());
  q->write(4096, buf_, 4096, nullptr, kReqFua);
  ASSERT_EQ(wait_one(*q).ret, 0);
  dev_.reset();
  std::string back(4096, '\0');
  rbd_image_t img;
  ASSERT_EQ(rbd_open_read_only(nsio, "in-ns", &img, nullptr), 0);
  EXPECT_EQ(rbd_read(img, 4096, 4096, back.data()), 4096);
  rbd_close(img);
  EXPECT_EQ(back, data);
  EXPECT_EQ(rbd_remove(nsio, "in-ns"), 0);
  rados_ioctx_destroy(nsio);
  EXPECT_EQ(rbd_namespace_remove(io, ns.c_str()), 0);
}

}  // namespace
