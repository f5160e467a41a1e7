// The nbd driver against a real NBD server (nbdkit's memory plugin, with
// filters that take capabilities away): data paths, flags honestly derived
// from the server, block sizes, multi-conn, the completion fd, timeouts,
// connect errors and a server that dies with requests in flight.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <cstring>
#include <thread>

#include "core/driver.hpp"
#include "drivers/nbd/nbd_connection.hpp"
#include "native_test_util.hpp"

extern char** environ;

using namespace blkstack;
using blkstack::test::pattern;
using blkstack::test::prop;
using blkstack::test::wait_one;

namespace {

// nbdkit serving on a Unix socket in a temporary directory, killed at the end.
class Nbdkit {
 public:
  explicit Nbdkit(std::vector<std::string> args) {
    char tmpl[] = "/tmp/blkstack-nbdkit-XXXXXX";
    dir_ = mkdtemp(tmpl);
    sock_ = dir_ + "/sock";
    start(std::move(args));
  }
  // (Re)starts nbdkit on the same socket, with these arguments.
  void start(std::vector<std::string> args) {
    kill_now();
    std::string pidfile = dir_ + "/pid";
    ::unlink(pidfile.c_str());
    ::unlink(sock_.c_str());
    std::vector<std::string> argv = {"nbdkit", "-f", "-U", sock_, "-P", pidfile};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    if (posix_spawnp(&pid_, "nbdkit", nullptr, nullptr, cargv.data(), environ) != 0) pid_ = -1;
    // nbdkit writes its pidfile once it is listening.
    for (int i = 0; i < 1000 && pid_ > 0; i++) {
      struct stat st;
      if (stat(pidfile.c_str(), &st) == 0 && st.st_size > 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "nbdkit did not start";
  }
  ~Nbdkit() {
    kill_now();
    std::string cmd = "rm -rf " + dir_;
    (void)system(cmd.c_str());
  }
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::string uri() const { return "nbd+unix:///?socket=" + sock_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, sock_;
  pid_t pid_ = -1;
};

std::unique_ptr<Device> connect_nbd(const std::string& uri, std::vector<std::pair<std::string, std::string>> extra = {},
                                    int queues = 1) {
  extra.insert(extra.begin(), {"uri", uri});
  return blkstack::test::open_device("nbd", extra, queues);
}

Status connect_only(const std::string& uri, std::vector<std::pair<std::string, std::string>> props = {}) {
  auto d = Device::create("nbd");
  EXPECT_TRUE(d.ok());
  if (!uri.empty()) {
    EXPECT_TRUE((*d)->set_str("uri", uri).ok());
  }
  for (auto& [k, v] : props) {
    EXPECT_TRUE((*d)->set_str(k, v).ok()) << k;
  }
  return (*d)->connect();
}

struct Buf {
  explicit Buf(size_t n) : p(static_cast<char*>(aligned_alloc(4096, (n + 4095) / 4096 * 4096))), len(n) {
    memset(p, 0, n);
  }
  ~Buf() { free(p); }
  char* p;
  size_t len;
};

}  // namespace

TEST(NbdDriver, PropertiesFromAFullFeaturedServer) {
  Nbdkit server({"memory", "64M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  EXPECT_EQ(prop<uint64_t>(*dev, "capacity"), 64ull << 20);
  EXPECT_TRUE(prop<bool>(*dev, "supports-fua-natively"));
  EXPECT_TRUE(prop<bool>(*dev, "can-multi-conn"));
  EXPECT_FALSE(prop<bool>(*dev, "read-only"));
  EXPECT_EQ(prop<int>(*dev, "request-alignment"), 1);
  EXPECT_EQ(prop<int>(*dev, "max-transfer"), 32 << 20);
  EXPECT_EQ(prop<int>(*dev, "connections"), 1);
}

TEST(NbdDriver, ManyWritesInFlightThenReadBack) {
  Nbdkit server({"memory", "64M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  constexpr int kN = 64, kLen = 16384;
  std::string data = pattern(kN * kLen, 7);
  Buf buf(kN * kLen);
  memcpy(buf.p, data.data(), data.size());
  for (int i = 0; i < kN; i++) q.write(static_cast<uint64_t>(i) * 3 * kLen, buf.p + i * kLen, kLen, nullptr, 0);
  std::vector<Completion> c(kN);
  ASSERT_EQ(q.do_io(c.data(), kN, kN, nullptr), kN);
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  Buf back(kN * kLen);
  for (int i = 0; i < kN; i++) q.read(static_cast<uint64_t>(i) * 3 * kLen, back.p + i * kLen, kLen, nullptr, 0);
  ASSERT_EQ(q.do_io(c.data(), kN, kN, nullptr), kN);
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  EXPECT_EQ(memcmp(back.p, data.data(), data.size()), 0);
}

// A caller that blocks in do_io() for its completion needs no look at the
// socket before the wait (the wait says when a reply is there) and no wakeup
// of its own completion fd: at depth 1 that was a system call in five.
// Writes, because their replies come in one piece: a read's reply may come
// in chunks, and looking for the next chunk at once is how the socket is
// drained.
TEST(NbdDriver, BlockingCallerMakesNoProbeCalls) {
  Nbdkit server({"memory", "16M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Buf buf(4096);
  Completion c{};
  const uint64_t before = q.driver_queue().stats().probe_calls;
  for (int i = 0; i < 100; i++) {
    memset(buf.p, i, 4096);
    q.write(static_cast<uint64_t>(i) * 4096, buf.p, 4096, nullptr, 0);
    ASSERT_EQ(q.do_io(&c, 1, 1, nullptr), 1);
    ASSERT_EQ(c.ret, 0);
  }
  EXPECT_EQ(q.driver_queue().stats().probe_calls - before, 0u);
  for (int i = 0; i < 100; i++) {
    q.read(static_cast<uint64_t>(i) * 4096, buf.p, 4096, nullptr, 0);
    ASSERT_EQ(q.do_io(&c, 1, 1, nullptr), 1);
    ASSERT_EQ(c.ret, 0);
    ASSERT_EQ(buf.p[4095], static_cast<char>(i));
  }
  // A caller that does not wait does get the look (the counter counts).
  const uint64_t mid = q.driver_queue().stats().probe_calls;
  q.read(0, buf.p, 4096, nullptr, 0);
  int got = q.do_io(&c, 0, 1, nullptr);
  EXPECT_GT(q.driver_queue().stats().probe_calls - mid, 0u);
  if (got == 0) {
    ASSERT_EQ(q.do_io(&c, 1, 1, nullptr), 1);
  }
  EXPECT_EQ(c.ret, 0);
}

TEST(NbdDriver, VectoredIo) {
  Nbdkit server({"memory", "16M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  std::string data = pattern(3 * 4096 + 100, 3);
  iovec w[3] = {{data.data(), 4096}, {data.data() + 4096, 100}, {data.data() + 4196, 2 * 4096}};
  q.writev(1000, w, 3, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  Buf back(data.size());
  iovec r[4] = {{back.p, 10}, {back.p + 10, 0}, {back.p + 10, 5000}, {back.p + 5010, data.size() - 5010}};
  q.readv(1000, r, 4, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(memcmp(back.p, data.data(), data.size()), 0);
}

TEST(NbdDriver, ZeroesDiscardFlushAndFua) {
  Nbdkit server({"memory", "16M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Buf buf(1 << 20);
  memset(buf.p, 0xab, buf.len);
  q.write(0, buf.p, buf.len, nullptr, kReqFua);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.write_zeroes(4096, 8192, nullptr, kReqNoUnmap);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.write_zeroes(65536, 4096, nullptr, kReqNoFallback | kReqFua);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.discard(131072, 65536, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  q.flush(nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  Buf back(1 << 20);
  q.read(0, back.p, back.len, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  auto all = [&](size_t off, size_t len, unsigned char v) {
    for (size_t i = off; i < off + len; i++) {
      if (static_cast<unsigned char>(back.p[i]) != v) return false;
    }
    return true;
  };
  EXPECT_TRUE(all(0, 4096, 0xab));
  EXPECT_TRUE(all(4096, 8192, 0));
  EXPECT_TRUE(all(12288, 65536 - 12288, 0xab));
  EXPECT_TRUE(all(65536, 4096, 0));
  EXPECT_TRUE(all(131072, 65536, 0));  // the memory plugin's trim reads back zeroes
  EXPECT_TRUE(all(196608, back.len - 196608, 0xab));
}

TEST(NbdDriver, ServerWithoutFuaZeroOrTrim) {
  // The fua filter's default mode takes NBD_FLAG_SEND_FUA away, nozero's
  // takes NBD_FLAG_SEND_WRITE_ZEROES.
  Nbdkit server({"--filter=fua", "--filter=nozero", "memory", "16M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  EXPECT_FALSE(prop<bool>(*dev, "supports-fua-natively"));
  Queue& q = *dev->queue(0);
  Buf buf(65536);
  memset(buf.p, 0x5a, buf.len);
  q.write(0, buf.p, buf.len, nullptr, kReqFua);  // emulated: write, then flush
  ASSERT_EQ(wait_one(q).ret, 0);
  q.write_zeroes(0, 4096, nullptr, kReqNoFallback);
  EXPECT_EQ(wait_one(q).ret, -ENOTSUP);
  q.write_zeroes(0, 4096, nullptr, 0);  // falls back to writing zeroes
  ASSERT_EQ(wait_one(q).ret, 0);
  q.read(0, buf.p, buf.len, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  EXPECT_EQ(buf.p[0], 0);
  EXPECT_EQ(buf.p[4095], 0);
  EXPECT_EQ(buf.p[4096], 0x5a);
}

TEST(NbdDriver, ServerBlockSizesBecomeAlignmentAndMaxTransfer) {
  Nbdkit server({"--filter=blocksize-policy", "memory", "16M", "blocksize-minimum=4096",
                 "blocksize-preferred=65536", "blocksize-maximum=262144"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  EXPECT_EQ(prop<int>(*dev, "request-alignment"), 4096);
  EXPECT_EQ(prop<int>(*dev, "optimal-io-size"), 65536);
  EXPECT_EQ(prop<int>(*dev, "max-transfer"), 262144);
  Queue& q = *dev->queue(0);
  Buf buf(1 << 20);
  q.read(512, buf.p, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);
  q.read(0, buf.p, 524288, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);
  q.read(4096, buf.p, 262144, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
}

TEST(NbdDriver, ReadOnlyExport) {
  Nbdkit server({"-r", "memory", "16M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  EXPECT_TRUE(prop<bool>(*dev, "read-only"));
  Queue& q = *dev->queue(0);
  Buf buf(4096);
  q.write(0, buf.p, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EBADF);
  q.read(0, buf.p, 4096, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, 0);
}

TEST(NbdDriver, MultiConnQueuesOnTwoThreads) {
  Nbdkit server({"memory", "64M"});
  auto dev = connect_nbd(server.uri(), {}, 2);
  ASSERT_TRUE(dev);
  EXPECT_EQ(prop<int>(*dev, "connections"), 2);
  auto worker = [&](int qi) {
    Queue& q = *dev->queue(qi);
    Buf buf(1 << 20);
    std::string data = pattern(buf.len, 100 + qi);
    memcpy(buf.p, data.data(), buf.len);
    for (int i = 0; i < 16; i++) q.write((qi * 16 + i) * 65536ull, buf.p + i * 65536, 65536, nullptr, 0);
    std::vector<Completion> c(16);
    EXPECT_EQ(q.do_io(c.data(), 16, 16, nullptr), 16);
    q.flush(nullptr, 0);
    EXPECT_EQ(wait_one(q).ret, 0);
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  // Each queue reads what the other wrote: one export behind both connections.
  for (int qi = 0; qi < 2; qi++) {
    Queue& q = *dev->queue(1 - qi);
    Buf back(1 << 20);
    q.read(qi * 16 * 65536ull, back.p, back.len, nullptr, 0);
    ASSERT_EQ(wait_one(q).ret, 0);
    EXPECT_EQ(memcmp(back.p, pattern(back.len, 100 + qi).data(), back.len), 0) << "queue " << qi;
  }
}

TEST(NbdDriver, NoMultiConnMeansOneSharedConnection) {
  Nbdkit server({"--filter=multi-conn", "memory", "16M", "multi-conn-mode=disable"});
  auto dev = connect_nbd(server.uri(), {}, 2);
  ASSERT_TRUE(dev);
  EXPECT_FALSE(prop<bool>(*dev, "can-multi-conn"));
  EXPECT_EQ(prop<int>(*dev, "connections"), 1);
  // Both queues work through the one connection, from two threads.
  auto worker = [&](int qi) {
    Queue& q = *dev->queue(qi);
    Buf buf(4096);
    for (int i = 0; i < 200; i++) {
      memset(buf.p, qi + 1, 4096);
      q.write((qi * 200 + i) * 4096ull, buf.p, 4096, nullptr, 0);
      EXPECT_EQ(wait_one(q).ret, 0);
      q.read((qi * 200 + i) * 4096ull, buf.p, 4096, nullptr, 0);
      EXPECT_EQ(wait_one(q).ret, 0);
      EXPECT_EQ(buf.p[4095], qi + 1);
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();

  // Asking for two connections anyway is refused: flushes would not cover both.
  auto d = Device::create("nbd");
  ASSERT_TRUE((*d)->set_str("uri", server.uri()).ok());
  ASSERT_TRUE((*d)->set_str("connections", "2").ok());
  ASSERT_TRUE((*d)->connect().ok());
  ASSERT_TRUE((*d)->set("num-queues", PropValue(2)).ok());
  Status s = (*d)->start();
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("multi-conn"), std::string::npos) << s.message();
}

TEST(NbdDriver, CompletionFdWakesTheEventLoop) {
  Nbdkit server({"--filter=delay", "memory", "16M", "rdelay=200ms"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  int fd = q.completion_fd();
  ASSERT_GE(fd, 0);
  EXPECT_NE(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
  q.set_completion_fd_enabled(true);
  Buf buf(4096);
  q.read(0, buf.p, 4096, reinterpret_cast<void*>(42), 0);
  Completion c{};
  EXPECT_EQ(q.do_io(&c, 0, 1, nullptr), 0);  // submits; nothing done yet
  auto t0 = std::chrono::steady_clock::now();
  int got = 0;
  while (got == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    pollfd p{fd, POLLIN, 0};
    ASSERT_GE(poll(&p, 1, 10000), 0);
    got = q.do_io(&c, 0, 1, nullptr);  // spurious wakeups are allowed
  }
  ASSERT_EQ(got, 1);
  EXPECT_EQ(c.ret, 0);
  EXPECT_EQ(c.user_data, reinterpret_cast<void*>(42));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(150));
}

TEST(NbdDriver, DoIoTimeout) {
  Nbdkit server({"--filter=delay", "memory", "16M", "rdelay=3"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Buf buf(4096);
  q.read(0, buf.p, 4096, nullptr, 0);
  Completion c{};
  timespec t{0, 100 * 1000 * 1000};
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(q.do_io(&c, 1, 1, &t), -ETIME);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500));
  EXPECT_EQ(wait_one(q).ret, 0);  // and it still finishes
}

TEST(NbdDriver, ServerKilledWithRequestsInFlight) {
  auto server = std::make_unique<Nbdkit>(std::vector<std::string>{"--filter=delay", "memory", "16M", "wdelay=5"});
  auto dev = connect_nbd(server->uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Buf buf(65536);
  for (int i = 0; i < 4; i++) q.write(i * 65536ull, buf.p, 65536, nullptr, 0);
  Completion c[4]{};
  timespec t{0, 200 * 1000 * 1000};
  EXPECT_EQ(q.do_io(c, 1, 4, &t), -ETIME);
  server->kill_now();
  timespec t2{10, 0};
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(q.do_io(c, 4, 4, &t2), 4);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  for (auto& x : c) EXPECT_LT(x.ret, 0);
  // New requests fail at once instead of hanging.
  q.read(0, buf.p, 4096, nullptr, 0);
  t2 = {5, 0};
  ASSERT_EQ(q.do_io(c, 1, 1, &t2), 1);
  EXPECT_LT(c[0].ret, 0);
}

TEST(NbdDriver, ConnectErrorsAreClearAndBounded) {
  Status s = connect_only("");
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("uri"), std::string::npos);

  s = connect_only("nbd+unix:///?socket=/nonexistent/blkstack.sock");
  EXPECT_LT(s.code(), 0);
  EXPECT_NE(s.message().find("/nonexistent/blkstack.sock"), std::string::npos) << s.message();

  s = connect_only("http://example.com/");
  EXPECT_LT(s.code(), 0);

  // A server that accepts but never speaks: connect-timeout bounds the wait.
  blkstack::test::MuteUnixServer mute;
  auto t0 = std::chrono::steady_clock::now();
  s = connect_only("nbd+unix:///?socket=" + mute.path(), {{"connect-timeout", "1"}});
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(s.code(), -ETIMEDOUT) << s.message();
  EXPECT_NE(s.message().find("connect-timeout"), std::string::npos) << s.message();
  EXPECT_GE(took, std::chrono::milliseconds(900));
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST(NbdDriver, ExportPropertyNamesTheExport) {
  // The exportname filter serves only the export named here.
  Nbdkit server({"--filter=exportname", "memory", "16M", "exportname=disk1", "exportname-strict=true"});
  Status s = connect_only(server.uri(), {{"export", "disk1"}});
  EXPECT_TRUE(s.ok()) << s.message();
  s = connect_only(server.uri(), {{"export", "other"}});
  EXPECT_LT(s.code(), 0);
  s = connect_only("nbd+unix:///disk1?socket=/x", {{"export", "disk1"}});
  EXPECT_EQ(s.code(), -EINVAL);
  EXPECT_NE(s.message().find("already names an export"), std::string::npos) << s.message();
}

// An event loop that only hears edges (io_uring's multishot poll, epoll with
// EPOLLET) must still get every completion: the driver may not leave replies
// unread in the socket when it returns.
// blkio(3)'s event-driven example: the application reads 8 bytes from the
// completion fd (here in blocking mode, as the manual's example switches it)
// and then calls do_io(). libblkio's own tests and blkio-bench do this.
TEST(NbdDriver, CompletionFdIsReadLikeAnEventfd) {
  Nbdkit server({"memory", "16M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  const int fd = q.completion_fd();
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(fcntl(fd, F_GETFL) & O_NONBLOCK);
  ASSERT_EQ(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
  q.set_completion_fd_enabled(true);
  Buf buf(4096);
  for (int i = 0; i < 50; i++) {
    memset(buf.p, i, 4096);
    if (i % 2) {
      q.write(static_cast<uint64_t>(i / 2) * 4096, buf.p, 4096, nullptr, 0);
    } else {
      q.read(static_cast<uint64_t>(i / 2) * 4096, buf.p, 4096, nullptr, 0);
    }
    ASSERT_EQ(q.do_io(nullptr, 0, 0, nullptr), 0);
    Completion c{};
    int n = 0;
    while (n == 0) {
      pollfd p{fd, POLLIN, 0};
      int r;
      do {
        r = poll(&p, 1, 5000);
      } while (r < 0 && errno == EINTR);
      ASSERT_EQ(r, 1) << "no completion event, request " << i;
      uint64_t v;
      ASSERT_EQ(read(fd, &v, sizeof v), static_cast<ssize_t>(sizeof v)) << strerror(errno);
      n = q.do_io(&c, 0, 1, nullptr);
      ASSERT_GE(n, 0);
    }
    EXPECT_EQ(c.ret, 0);
  }
}

TEST(NbdDriver, EdgeTriggeredEventLoopLosesNothing) {
  Nbdkit server({"memory", "64M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  q.set_completion_fd_enabled(true);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLET;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, q.completion_fd(), &ev), 0);
  constexpr int kN = 128, kLen = 65536;
  Buf buf(static_cast<size_t>(kN) * kLen);
  for (int round = 0; round < 5; round++) {
    for (int i = 0; i < kN; i++) q.read(static_cast<uint64_t>(i) * kLen, buf.p + i * kLen, kLen, nullptr, 0);
    std::vector<Completion> c(kN);
    int done = q.do_io(c.data(), 0, kN, nullptr);
    ASSERT_GE(done, 0);
    while (done < kN) {
      epoll_event out;
      // EINTR is expected: the socket's poll completes as task work of this
      // thread, the thread that drives the queue (see nbd_queue.hpp).
      int r;
      do {
        r = epoll_wait(ep, &out, 1, 5000);
      } while (r < 0 && errno == EINTR);
      ASSERT_EQ(r, 1) << "no wakeup with " << kN - done << " requests left";
      int n = q.do_io(c.data(), 0, kN, nullptr);
      ASSERT_GE(n, 0);
      done += n;
    }
  }
  close(ep);
}

// ---- allocation: base:allocation through Queue::block_status ----

namespace {

// One block status query on q, waited for: the answer, or {0, false} and a
// failed expectation.
AllocationExtent status_of(Queue& q, uint64_t offset, uint64_t len, int* ret = nullptr) {
  AllocationExtent e{};
  q.block_status(offset, len, &e, &e, 0);
  Completion c = wait_one(q);
  EXPECT_EQ(c.user_data, &e);
  if (ret) {
    *ret = c.ret;
  } else {
    EXPECT_EQ(c.ret, 0) << (c.error_msg ? c.error_msg : "");
  }
  return e;
}

}  // namespace

TEST(NbdDriver, BlockStatusReportsHolesAsTheServerSeesThem) {
  Nbdkit server({"memory", "64M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  EXPECT_TRUE(dev->info().can_report_holes);
  Queue& q = *dev->queue(0);
  Buf buf(65536);
  memcpy(buf.p, pattern(65536, 3).data(), 65536);
  q.write(1 << 20, buf.p, 65536, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);

  AllocationExtent e = status_of(q, 0, 64 << 20);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, 1u << 20);
  e = status_of(q, 1 << 20, 64 << 20);
  EXPECT_FALSE(e.hole);
  EXPECT_GE(e.len, 65536u);
  EXPECT_LE(e.len, 1u << 20);  // the memory plugin's pages, not the whole export
  uint64_t after = (1 << 20) + e.len;
  e = status_of(q, after, (64 << 20) - after);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, (64u << 20) - after);
  // Never longer than asked; asked past the end, clamped to it.
  e = status_of(q, 0, 4096);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, 4096u);
  e = status_of(q, (64 << 20) - 8192, 1ull << 40);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, 8192u);

  // Zeroed data reads as zeroes: a hole (the memory plugin frees the pages).
  q.write_zeroes(1 << 20, 65536, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  e = status_of(q, 0, 64 << 20);
  EXPECT_TRUE(e.hole);
  EXPECT_GT(e.len, 1u << 20);

  // The synchronous form (its own connection; the server offers multi-conn).
  auto s = dev->extent_at(0, 64 << 20);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_TRUE(s->hole);
  EXPECT_EQ(s->len, 64u << 20);
}

TEST(NbdDriver, BlockStatusContractChecks) {
  Nbdkit server({"--filter=blocksize-policy", "memory", "16M", "blocksize-minimum=4096"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  int ret = 0;
  status_of(q, 16 << 20, 4096, &ret);
  EXPECT_EQ(ret, -EINVAL);  // beyond the end
  status_of(q, 0, 0, &ret);
  EXPECT_EQ(ret, -EINVAL);  // nothing asked
  status_of(q, 512, 4096, &ret);
  EXPECT_EQ(ret, -EINVAL);  // not a multiple of request-alignment
  AllocationExtent e{};
  q.block_status(0, 4096, &e, &e, kReqFua);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);  // no flags
  q.block_status(0, 4096, nullptr, nullptr, 0);
  EXPECT_EQ(wait_one(q).ret, -EINVAL);  // nowhere to answer
  e = status_of(q, 4096, 16 << 20);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, (16u << 20) - 4096);
}

// A server whose plugin cannot tell: everything is data, whatever was
// written (nbdkit still negotiates base:allocation and says "data").
TEST(NbdDriver, BlockStatusFromAServerWithoutExtentsIsAllData) {
  Nbdkit server({"--filter=noextents", "memory", "64M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  Buf buf(4096);
  q.write(1 << 20, buf.p, 4096, nullptr, 0);
  ASSERT_EQ(wait_one(q).ret, 0);
  AllocationExtent e = status_of(q, 0, 64 << 20);
  EXPECT_FALSE(e.hole);
  EXPECT_GT(e.len, 0u);
  e = status_of(q, 2 << 20, 4096);
  EXPECT_FALSE(e.hole);
  EXPECT_EQ(e.len, 4096u);
}

// No structured replies, so no meta contexts: the device says it cannot
// report holes, and queries answer "data" at once.
TEST(NbdDriver, BlockStatusWithoutBaseAllocation) {
  Nbdkit server({"--no-sr", "memory", "64M"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  EXPECT_FALSE(dev->info().can_report_holes);
  Queue& q = *dev->queue(0);
  AllocationExtent e = status_of(q, 0, 64 << 20);
  EXPECT_FALSE(e.hole);
  EXPECT_EQ(e.len, 64u << 20);
  auto s = dev->extent_at(0, 64 << 20);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->hole);
}

// NBD_STATE_HOLE says "unallocated", not "reads as zeroes": only
// NBD_STATE_ZERO makes a hole for us.
TEST(NbdDriver, BlockStatusHoleWithoutZeroIsData) {
  Nbdkit server({"eval", "get_size=echo 4M", "pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none",
                 "can_extents=exit 0",
                 "extents=echo 0 1048576 hole; echo 1048576 1048576 zero; echo 2097152 1048576 hole,zero; "
                 "echo 3145728 1048576"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->info().can_report_holes);
  Queue& q = *dev->queue(0);
  AllocationExtent e = status_of(q, 0, 4 << 20);
  EXPECT_FALSE(e.hole);
  EXPECT_EQ(e.len, 1u << 20);
  e = status_of(q, 1 << 20, 3 << 20);
  EXPECT_TRUE(e.hole);  // zero, allocated
  EXPECT_EQ(e.len, 1u << 20);
  e = status_of(q, 2 << 20, 2 << 20);
  EXPECT_TRUE(e.hole);
  EXPECT_EQ(e.len, 1u << 20);
  e = status_of(q, 3 << 20, 1 << 20);
  EXPECT_FALSE(e.hole);
  EXPECT_EQ(e.len, 1u << 20);
}

// Queries are requests like the others: many in flight, mixed with writes
// and reads on the same queue, each answered through its own completion.
TEST(NbdDriver, BlockStatusWithRequestsInFlight) {
  Nbdkit server({"--filter=delay", "memory", "64M", "wdelay=50ms"});
  auto dev = connect_nbd(server.uri());
  ASSERT_TRUE(dev);
  Queue& q = *dev->queue(0);
  constexpr int kN = 16;
  Buf buf(65536);
  memset(buf.p, 0x11, 65536);  // zeroes would stay holes: the memory plugin frees zero pages
  // Data at every odd MiB.
  for (int i = 0; i < kN; i++) q.write((2ull * i + 1) << 20, buf.p, 65536, nullptr, 0);
  std::vector<Completion> c(3 * kN);
  ASSERT_EQ(q.do_io(c.data(), kN, kN, nullptr), kN);
  for (int i = 0; i < kN; i++) ASSERT_EQ(c[i].ret, 0);

  // Slow writes elsewhere, reads, and queries at every MiB, all in flight.
  std::vector<AllocationExtent> ext(2 * kN);
  for (int i = 0; i < kN; i++) q.write((48ull << 20) + i * 65536ull, buf.p, 65536, nullptr, 0);
  for (int i = 0; i < 2 * kN; i++) {
    q.block_status(static_cast<uint64_t>(i) << 20, 1 << 20, &ext[i], &ext[i], 0);
    if (i % 4 == 0) q.read(static_cast<uint64_t>(i) << 20, buf.p, 4096, nullptr, 0);
  }
  const int total = kN + 2 * kN + kN / 2;
  int done = 0;
  c.resize(total);
  while (done < total) {
    int n = q.do_io(c.data() + done, 1, total - done, nullptr);
    ASSERT_GT(n, 0);
    done += n;
  }
  for (auto& x : c) EXPECT_EQ(x.ret, 0);
  for (int i = 0; i < 2 * kN; i++) {
    EXPECT_EQ(ext[i].hole, i % 2 == 0) << "MiB " << i;
    EXPECT_GT(ext[i].len, 0u);
    EXPECT_LE(ext[i].len, 1u << 20);
    if (i % 2 == 0) {
      EXPECT_EQ(ext[i].len, 1u << 20) << "MiB " << i;
    }
  }
}

// Without multi-conn the queues share one connection, and their queries go
// out on it, consistent with their writes; the synchronous form would need a
// second connection, whose view the server does not promise: it says data.
TEST(NbdDriver, BlockStatusWithoutMultiConn) {
  Nbdkit server({"--filter=multi-conn", "memory", "16M", "multi-conn-mode=disable"});
  auto dev = connect_nbd(server.uri(), {}, 2);
  ASSERT_TRUE(dev);
  EXPECT_TRUE(dev->info().can_report_holes);
  Buf buf(4096);
  memset(buf.p, 1, 4096);
  auto worker = [&](int qi) {
    Queue& q = *dev->queue(qi);
    for (int i = 0; i < 50; i++) {
      uint64_t off = (qi * 64 + i) * 65536ull;
      AllocationExtent e = status_of(q, off, 65536);
      EXPECT_TRUE(e.hole);
      q.write(off, buf.p, 4096, nullptr, 0);
      EXPECT_EQ(wait_one(q).ret, 0);
      e = status_of(q, off, 65536);
      EXPECT_FALSE(e.hole) << "queue " << qi << " at " << off;
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  auto s = dev->extent_at(8 << 20, 4096);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->hole);
}

// The synchronous form is bounded: a server that sits on the query fails it
// after connect-timeout instead of hanging the caller.
TEST(NbdDriver, SynchronousExtentAtIsBounded) {
  Nbdkit server({"--filter=delay", "memory", "16M", "delay-extents=10"});
  auto dev = connect_nbd(server.uri(), {{"connect-timeout", "1"}});
  ASSERT_TRUE(dev);
  auto t0 = std::chrono::steady_clock::now();
  auto s = dev->extent_at(0, 4096);
  EXPECT_EQ(s.status().code(), -ETIMEDOUT);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));
}

// ---- reconnection: the server goes away and comes back ----

namespace {

// A scratch file for nbdkit's file plugin, which keeps data across restarts.
class ScratchFile {
 public:
  explicit ScratchFile(uint64_t size) {
    char tmpl[] = "/tmp/blkstack-nbd-scratch-XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
    path_ = tmpl;
  }
  ~ScratchFile() { ::unlink(path_.c_str()); }
  void resize(uint64_t size) { EXPECT_EQ(truncate(path_.c_str(), static_cast<off_t>(size)), 0); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

using Clock = std::chrono::steady_clock;

// One request made by `issue` on q, waited for (up to 20 s).
template <class F>
Completion run_one(Queue& q, F issue) {
  issue();
  Completion c{};
  timespec t{20, 0};
  EXPECT_EQ(q.do_io(&c, 1, 1, &t), 1);
  return c;
}

// Issues `issue` every 50 ms until a request succeeds; how long that took,
// or nothing after `limit`.
template <class F>
std::optional<Clock::duration> until_ok(Queue& q, F issue, std::chrono::milliseconds limit) {
  auto t0 = Clock::now();
  while (Clock::now() - t0 < limit) {
    Completion c = run_one(q, issue);
    if (c.ret == 0) return Clock::now() - t0;
    EXPECT_EQ(c.ret, -EIO) << (c.error_msg ? c.error_msg : "");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return std::nullopt;
}

// Lets the queue see that the server hung up (a do_io() that reads the
// socket), as it would at its next event.
void notice_hangup(Queue& q) {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Completion c{};
  EXPECT_EQ(q.do_io(&c, 0, 1, nullptr), 0);
}

}  // namespace

// reconnect-delay: seconds, settable until blkio_start() like connections.
TEST(NbdDriver, ReconnectDelayProperty) {
  Nbdkit server({"memory", "16M"});
  auto d = Device::create("nbd");
  ASSERT_TRUE(d.ok());
  Device& dev = **d;
  EXPECT_EQ(prop<int>(dev, "reconnect-delay"), 0);
  EXPECT_FALSE(dev.set_str("reconnect-delay", "-1").ok());
  ASSERT_TRUE(dev.set_str("uri", server.uri()).ok());
  ASSERT_TRUE(dev.set_str("reconnect-delay", "7").ok());
  ASSERT_TRUE(dev.connect().ok());
  ASSERT_TRUE(dev.set_str("reconnect-delay", "3").ok());
  ASSERT_TRUE(dev.start().ok());
  EXPECT_EQ(prop<int>(dev, "reconnect-delay"), 3);
  EXPECT_FALSE(dev.set_str("reconnect-delay", "4").ok());
  EXPECT_EQ(prop<int>(dev, "reconnect-delay"), 3);
}

// reconnect-delay=0: in-flight requests fail when the server dies, new ones
// fail at once while it is away, and once it is back on the same socket the
// device works again, with the data written before the kill.
TEST(NbdDriver, ReconnectsAfterTheServerRestarts) {
  ScratchFile file(16 << 20);
  // Slow reads, so that some are in flight at the kill; writes go at once.
  Nbdkit server({"--filter=delay", "file", file.path(), "rdelay=5"});
  auto dev = connect_nbd(server.uri(), {{"reconnect-delay", "0"}});
  ASSERT_TRUE(dev);
  EXPECT_EQ(prop<int>(*dev, "reconnect-delay"), 0);
  Queue& q = *dev->queue(0);
  std::string data = pattern(1 << 20, 21);
  Buf buf(1 << 20);
  memcpy(buf.p, data.data(), buf.len);
  ASSERT_EQ(run_one(q, [&] { q.write(1 << 20, buf.p, buf.len, nullptr, 0); }).ret, 0);
  ASSERT_EQ(run_one(q, [&] { q.flush(nullptr, 0); }).ret, 0);

  Buf back(1 << 20);
  for (int i = 0; i < 4; i++) q.read(i * 4096ull, back.p + i * 4096, 4096, nullptr, 0);
  Completion c[4]{};
  timespec t{0, 200 * 1000 * 1000};
  EXPECT_EQ(q.do_io(c, 1, 4, &t), -ETIME);
  server.kill_now();
  auto t0 = Clock::now();
  timespec t2{10, 0};
  ASSERT_EQ(q.do_io(c, 4, 4, &t2), 4);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  for (auto& x : c) EXPECT_LT(x.ret, 0);

  // Away: new requests fail at once, with -EIO and a message.
  for (int i = 0; i < 3; i++) {
    t0 = Clock::now();
    Completion x = run_one(q, [&] { q.read(0, back.p, 4096, nullptr, 0); });
    EXPECT_EQ(x.ret, -EIO);
    ASSERT_NE(x.error_msg, nullptr);
    EXPECT_NE(std::string(x.error_msg).find("reconnect"), std::string::npos) << x.error_msg;
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
  }

  // Back, same socket, same file, no delay filter (same flags).
  server.start({"file", file.path()});
  auto took = until_ok(q, [&] { q.read(1 << 20, back.p, back.len, nullptr, 0); }, std::chrono::seconds(10));
  ASSERT_TRUE(took.has_value()) << "no reconnection within 10 s";
  EXPECT_LT(*took, std::chrono::seconds(4));
  EXPECT_EQ(memcmp(back.p, data.data(), data.size()), 0);

  // Writes too, and the event-driven path: the completion fd wakes.
  memset(buf.p, 0x77, 4096);
  q.set_completion_fd_enabled(true);
  q.write(0, buf.p, 4096, reinterpret_cast<void*>(7), kReqFua);
  Completion e{};
  int got = q.do_io(&e, 0, 1, nullptr);
  t0 = Clock::now();
  while (got == 0 && Clock::now() - t0 < std::chrono::seconds(10)) {
    pollfd p{q.completion_fd(), POLLIN, 0};
    ASSERT_GE(poll(&p, 1, 10000), 0);
    got = q.do_io(&e, 0, 1, nullptr);
  }
  ASSERT_EQ(got, 1);
  EXPECT_EQ(e.ret, 0);
  EXPECT_EQ(e.user_data, reinterpret_cast<void*>(7));
  q.set_completion_fd_enabled(false);
  ASSERT_EQ(run_one(q, [&] { q.read(0, back.p, 4096, nullptr, 0); }).ret, 0);
  EXPECT_EQ(back.p[0], 0x77);
  EXPECT_EQ(back.p[4095], 0x77);
}

// reconnect-delay=5: requests made while the server is away wait for it
// (here through the completion fd, as an event loop would); with the server
// left away they fail with -EIO after about the delay.
TEST(NbdDriver, ReconnectDelayHoldsRequests) {
  ScratchFile file(16 << 20);
  Nbdkit server({"file", file.path()});
  auto dev = connect_nbd(server.uri(), {{"reconnect-delay", "5"}});
  ASSERT_TRUE(dev);
  EXPECT_EQ(prop<int>(*dev, "reconnect-delay"), 5);
  Queue& q = *dev->queue(0);
  std::string data = pattern(65536, 33);
  Buf buf(65536);
  memcpy(buf.p, data.data(), buf.len);
  ASSERT_EQ(run_one(q, [&] { q.write(0, buf.p, buf.len, nullptr, kReqFua); }).ret, 0);

  server.kill_now();
  notice_hangup(q);
  Buf back(65536);
  Completion c{};
  int got = 0;
  Clock::duration took{};
  // The event loop on a thread of its own: nbdkit started by a thread that
  // then exits is told to go (it follows its parent thread).
  std::atomic<bool> parked{false};
  std::thread loop([&] {
    q.set_completion_fd_enabled(true);
    iovec iov[2] = {{back.p, 4096}, {back.p + 4096, 65536 - 4096}};
    q.readv(0, iov, 2, reinterpret_cast<void*>(1), 0);
    EXPECT_EQ(q.do_io(&c, 0, 1, nullptr), 0);  // waits for the server
    auto t0 = Clock::now();
    parked = true;
    while (got == 0 && Clock::now() - t0 < std::chrono::seconds(10)) {
      pollfd p{q.completion_fd(), POLLIN, 0};
      ASSERT_GE(poll(&p, 1, 10000), 0);
      got = q.do_io(&c, 0, 1, nullptr);
    }
    took = Clock::now() - t0;
    q.set_completion_fd_enabled(false);
  });
  while (!parked) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  server.start({"file", file.path()});
  loop.join();
  ASSERT_EQ(got, 1);
  EXPECT_EQ(c.ret, 0) << (c.error_msg ? c.error_msg : "");
  EXPECT_EQ(c.user_data, reinterpret_cast<void*>(1));
  EXPECT_GE(took, std::chrono::milliseconds(800));  // it did wait for the restart
  EXPECT_LT(took, std::chrono::seconds(4));
  EXPECT_EQ(memcmp(back.p, data.data(), data.size()), 0);

  // Left away: blocking do_io() waits about reconnect-delay, then -EIO.
  // (No do_io() between the kill and the read: the read is the first to
  // find the socket dead, and waits like the others.)
  server.kill_now();
  auto t0 = Clock::now();
  c = run_one(q, [&] { q.read(0, back.p, 4096, nullptr, 0); });
  took = Clock::now() - t0;
  EXPECT_EQ(c.ret, -EIO);
  ASSERT_NE(c.error_msg, nullptr);
  EXPECT_NE(std::string(c.error_msg).find("reconnect-delay"), std::string::npos) << c.error_msg;
  EXPECT_GE(took, std::chrono::milliseconds(4500));
  EXPECT_LT(took, std::chrono::milliseconds(8000));
}

// A server that comes back with another export (a different size, or
// read-only) is not silently served: the device stays failed with -EIO.
TEST(NbdDriver, ReconnectToADifferentExportFails) {
  for (int variant = 0; variant < 2; variant++) {
    SCOPED_TRACE(variant == 0 ? "size" : "read-only");
    ScratchFile file(16 << 20);
    Nbdkit server({"file", file.path()});
    auto dev = connect_nbd(server.uri(), {{"reconnect-delay", "0"}});
    ASSERT_TRUE(dev);
    Queue& q = *dev->queue(0);
    Buf buf(4096);
    ASSERT_EQ(run_one(q, [&] { q.read(0, buf.p, 4096, nullptr, 0); }).ret, 0);
    server.kill_now();
    notice_hangup(q);
    if (variant == 0) {
      file.resize(8 << 20);
      server.start({"file", file.path()});
    } else {
      server.start({"-r", "file", file.path()});
    }
    const char* want = variant == 0 ? "size" : "read-only";
    bool failed_for_good = false;
    auto t0 = Clock::now();
    while (!failed_for_good && Clock::now() - t0 < std::chrono::seconds(10)) {
      Completion c = run_one(q, [&] { q.read(0, buf.p, 4096, nullptr, 0); });
      ASSERT_EQ(c.ret, -EIO);
      ASSERT_NE(c.error_msg, nullptr);
      failed_for_good = std::string(c.error_msg).find(want) != std::string::npos;
      if (!failed_for_good) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_TRUE(failed_for_good);
    // And it stays failed, at once, for reads and writes.
    for (int i = 0; i < 3; i++) {
      t0 = Clock::now();
      Completion c = run_one(q, [&] { q.write(0, buf.p, 4096, nullptr, 0); });
      EXPECT_EQ(c.ret, -EIO);
      ASSERT_NE(c.error_msg, nullptr);
      EXPECT_NE(std::string(c.error_msg).find("not the one connected to"), std::string::npos) << c.error_msg;
      EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
    }
  }
}

// A handle that died or closed refuses new commands with EINVAL ("invalid state"),
// not with a connection error. A queue on a shared connection can issue on
// it before anyone has marked the link suspect; unless the refusal reads as
// ENOTCONN the request fails with -EINVAL instead of waiting for the
// reconnection (the race ReconnectWithTwoQueuesOnTwoThreads once lost).
TEST(NbdDriver, ADeadHandleRefusesAsNotConnected) {
  ScratchFile file(1 << 20);
  Nbdkit server({"file", file.path()});
  std::unique_ptr<nbd_handle, blkstack::NbdHandleCloser> h(nbd_create());
  ASSERT_TRUE(h);
  ASSERT_EQ(nbd_connect_uri(h.get(), server.uri().c_str()), 0) << nbd_get_error();
  nbd_handle* hp = h.get();
  server.kill_now();
  // Read the hang-up: the handle dies (closed, when nothing was in flight).
  for (int i = 0; i < 100 && !blkstack::nbd_handle_gone(hp); i++) {
    pollfd p{nbd_aio_get_fd(hp), POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) nbd_aio_notify_read(hp);
  }
  ASSERT_TRUE(blkstack::nbd_handle_gone(hp));
  char buf[512] = {};
  ASSERT_LT(nbd_aio_pwrite(hp, buf, sizeof buf, 0, NBD_NULL_COMPLETION, 0), 0);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << "libnbd changed how it refuses: " << nbd_get_error();
  EXPECT_EQ(blkstack::nbd_refusal_errno(hp), ENOTCONN);
}

// Two queues on two threads, each with its own connection (multi-conn) or
// both on one shared connection, ride out a restart.
TEST(NbdDriver, ReconnectWithTwoQueuesOnTwoThreads) {
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared connection" : "multi-conn");
    ScratchFile file(16 << 20);
    std::vector<std::string> args = {"file", file.path()};
    if (shared) args = {"--filter=multi-conn", "file", file.path(), "multi-conn-mode=disable"};
    Nbdkit server(args);
    auto dev = connect_nbd(server.uri(), {{"reconnect-delay", "5"}}, 2);
    ASSERT_TRUE(dev);
    EXPECT_EQ(prop<int>(*dev, "connections"), shared ? 1 : 2);
    std::atomic<int> phase{0};  // 1: killed
    std::atomic<int> noticed{0};
    auto worker = [&](int qi) {
      Queue& q = *dev->queue(qi);
      Buf buf(65536), back(65536);
      uint64_t off = (qi + 1) * (1ull << 20);
      memcpy(buf.p, pattern(65536, 50 + qi).data(), 65536);
      EXPECT_EQ(run_one(q, [&] { q.write(off, buf.p, 65536, nullptr, 0); }).ret, 0);
      EXPECT_EQ(run_one(q, [&] { q.flush(nullptr, 0); }).ret, 0);
      while (phase.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      // No do_io() first: the write may be the first to find the socket
      // dead, and still waits for the reconnection.
      noticed++;
      // Issued while the server is away; it is back within the delay.
      memcpy(buf.p, pattern(65536, 60 + qi).data(), 65536);
      auto t0 = Clock::now();
      Completion c = run_one(q, [&] { q.write(off + 65536, buf.p, 65536, nullptr, 0); });
      EXPECT_EQ(c.ret, 0) << (c.error_msg ? c.error_msg : "");
      EXPECT_LT(Clock::now() - t0, std::chrono::seconds(4));
      EXPECT_EQ(run_one(q, [&] { q.read(off, back.p, 65536, nullptr, 0); }).ret, 0);
      EXPECT_EQ(memcmp(back.p, pattern(65536, 50 + qi).data(), 65536), 0) << "queue " << qi;
      EXPECT_EQ(run_one(q, [&] { q.read(off + 65536, back.p, 65536, nullptr, 0); }).ret, 0);
      EXPECT_EQ(memcmp(back.p, pattern(65536, 60 + qi).data(), 65536), 0) << "queue " << qi;
    };
    std::thread a(worker, 0), b(worker, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    server.kill_now();
    phase = 1;
    while (noticed.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    server.start(args);
    a.join();
    b.join();
  }
}
