// blkioq_do_io() / blkioq_do_io_interruptible(): min/max/timeout rules and
// the completion fd.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>

#include <atomic>
#include <cerrno>
#include <thread>

#include "test_util.hpp"

using blkstack::test::Blkio;
using blkstack::test::TempFile;
using blkstack::test::wait_one;

namespace {

class DoIo : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::make_unique<TempFile>(1 << 20, "/dev/shm");
    b_ = std::make_unique<Blkio>("io_uring");
    b_->open({{"path", file_->path()}});
    q_ = blkio_get_queue(*b_, 0);
  }
  std::unique_ptr<TempFile> file_;
  std::unique_ptr<Blkio> b_;
  blkioq* q_ = nullptr;
  char buf_[4096];
};


TEST_F(DoIo, ArgumentRules) {
  blkio_completion c[4];
  EXPECT_EQ(blkioq_do_io(q_, c, -1, 1, nullptr), -EINVAL);
  EXPECT_EQ(blkioq_do_io(q_, c, 0, -1, nullptr), -EINVAL);
  EXPECT_EQ(blkioq_do_io(q_, c, 2, 1, nullptr), -EINVAL);
  // More than outstanding.
  EXPECT_EQ(blkioq_do_io(q_, c, 1, 1, nullptr), -EINVAL);
  EXPECT_STREQ(blkio_get_error_msg(), "min_completions is larger than total outstanding requests");
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  EXPECT_EQ(blkioq_do_io(q_, c, 2, 4, nullptr), -EINVAL);
  EXPECT_EQ(blkioq_do_io(q_, c, 1, 4, nullptr), 1);
  // NULL completions with max 0 is allowed.
  EXPECT_EQ(blkioq_do_io(q_, nullptr, 0, 0, nullptr), 0);
}

TEST_F(DoIo, MaxCompletionsLimitsAndKeepsTheRest) {
  for (int i = 0; i < 10; i++) blkioq_read(q_, 0, buf_, sizeof(buf_), reinterpret_cast<void*>(uintptr_t(i)), 0);
  blkio_completion c[10];
  int got = blkioq_do_io(q_, c, 3, 3, nullptr);
  EXPECT_EQ(got, 3);
  int total = got;
  while (total < 10) {
    int n = blkioq_do_io(q_, c, 1, 10, nullptr);
    ASSERT_GE(n, 1);
    total += n;
  }
  EXPECT_EQ(total, 10);
  EXPECT_EQ(blkioq_do_io(q_, c, 0, 10, nullptr), 0);
}

TEST_F(DoIo, SubmitOnlyWithZeroMax) {
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  EXPECT_EQ(blkioq_do_io(q_, nullptr, 0, 0, nullptr), 0);
  EXPECT_EQ(wait_one(q_).ret, 0);
}

TEST_F(DoIo, TimeoutUpdatesTimespec) {
  blkio_completion c;
  struct timespec ts = {0, 50 * 1000 * 1000};
  // Nothing to wait for: returns at once and keeps (nearly) all the time.
  EXPECT_EQ(blkioq_do_io(q_, &c, 0, 1, &ts), 0);
  EXPECT_EQ(ts.tv_sec, 0);
  EXPECT_GT(ts.tv_nsec, 40 * 1000 * 1000);
  EXPECT_LE(ts.tv_nsec, 50 * 1000 * 1000);
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  ts = {5, 0};
  EXPECT_EQ(blkioq_do_io(q_, &c, 1, 1, &ts), 1);
  EXPECT_TRUE(ts.tv_sec < 5 || (ts.tv_sec == 5 && ts.tv_nsec == 0));
  EXPECT_GE(ts.tv_sec, 4);
}

TEST_F(DoIo, InvalidTimeout) {
  blkio_completion c;
  struct timespec ts = {0, 2000000000};
  EXPECT_EQ(blkioq_do_io(q_, &c, 0, 1, &ts), -EINVAL);
}

TEST_F(DoIo, CompletionFdIsNonBlockingAndSignals) {
  int fd = blkioq_get_completion_fd(q_);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(fcntl(fd, F_GETFL) & O_NONBLOCK);
  blkioq_set_completion_fd_enabled(q_, true);
  blkioq_read(q_, 0, buf_, sizeof(buf_), reinterpret_cast<void*>(7), 0);
  ASSERT_EQ(blkioq_do_io(q_, nullptr, 0, 0, nullptr), 0);
  struct pollfd pfd = {fd, POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 5000), 1);
  uint64_t v;
  ASSERT_EQ(read(fd, &v, sizeof(v)), 8);
  blkio_completion c;
  int n;
  // Spurious wakeups are allowed: loop as the manual's example does.
  while ((n = blkioq_do_io(q_, &c, 0, 1, nullptr)) == 0) {
    ASSERT_EQ(poll(&pfd, 1, 5000), 1);
    ASSERT_EQ(read(fd, &v, sizeof(v)), 8);
  }
  ASSERT_EQ(n, 1);
  EXPECT_EQ(c.user_data, reinterpret_cast<void*>(7));
}

TEST_F(DoIo, ErrorCompletionsAlsoSignalTheFd) {
  int fd = blkioq_get_completion_fd(q_);
  blkioq_set_completion_fd_enabled(q_, true);
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, BLKIO_REQ_FUA);  // invalid
  struct pollfd pfd = {fd, POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 5000), 1);
  blkio_completion c;
  ASSERT_EQ(blkioq_do_io(q_, &c, 0, 1, nullptr), 1);
  EXPECT_EQ(c.ret, -EINVAL);
}

TEST_F(DoIo, DisabledFdStaysQuiet) {
  int fd = blkioq_get_completion_fd(q_);
  blkioq_set_completion_fd_enabled(q_, false);
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  ASSERT_EQ(blkioq_do_io(q_, nullptr, 0, 0, nullptr), 0);
  usleep(20000);
  uint64_t v;
  EXPECT_EQ(read(fd, &v, sizeof(v)), -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(wait_one(q_).ret, 0);
}

// Completions left in the ring when the caller had no room must not be lost
// to an event-driven caller that already drained the eventfd.
TEST_F(DoIo, LeftoverCompletionsResignal) {
  int fd = blkioq_get_completion_fd(q_);
  blkioq_set_completion_fd_enabled(q_, true);
  for (int i = 0; i < 4; i++) blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  ASSERT_EQ(blkioq_do_io(q_, nullptr, 0, 0, nullptr), 0);
  int got = 0;
  struct pollfd pfd = {fd, POLLIN, 0};
  while (got < 4) {
    ASSERT_EQ(poll(&pfd, 1, 5000), 1) << "completion fd went quiet with completions pending";
    uint64_t v;
    ASSERT_EQ(read(fd, &v, sizeof(v)), 8);
    blkio_completion c;
    got += blkioq_do_io(q_, &c, 0, 1, nullptr);  // one at a time
  }
}

// A slow device: the null driver with a latency makes requests that take
// a known time, so waiting, timeouts and signals can be tested.
class SlowDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    b_ = std::make_unique<Blkio>("null");
    b_->open({{"latency-ns", "300000000"}});
    q_ = blkio_get_queue(*b_, 0);
  }
  std::unique_ptr<Blkio> b_;
  blkioq* q_ = nullptr;
  char buf_[4096];
};

TEST_F(SlowDevice, TimeoutExpiresWithEtime) {
  blkioq_read(q_, 0, buf_, sizeof(buf_), reinterpret_cast<void*>(5), 0);
  blkio_completion c;
  struct timespec ts = {0, 20 * 1000 * 1000};
  EXPECT_EQ(blkioq_do_io(q_, &c, 1, 1, &ts), -ETIME);
  EXPECT_EQ(ts.tv_sec, 0);
  EXPECT_EQ(ts.tv_nsec, 0);
  // The request is still there and completes later.
  EXPECT_EQ(blkioq_do_io(q_, &c, 1, 1, nullptr), 1);
  EXPECT_EQ(c.user_data, reinterpret_cast<void*>(5));
}

TEST_F(SlowDevice, PartialCompletionsAreNotLostOnTimeout) {
  blkioq_read(q_, 0, buf_, sizeof(buf_), reinterpret_cast<void*>(1), 0);
  usleep(350 * 1000);
  blkioq_read(q_, 0, buf_, sizeof(buf_), reinterpret_cast<void*>(2), 0);
  blkio_completion c[2];
  struct timespec ts = {0, 10 * 1000 * 1000};
  EXPECT_EQ(blkioq_do_io(q_, c, 2, 2, &ts), -ETIME);  // only one is done
  EXPECT_EQ(blkioq_do_io(q_, c, 2, 2, nullptr), 2);   // both come back
}

TEST_F(SlowDevice, CompletionFdFiresWhenDue) {
  int fd = blkioq_get_completion_fd(q_);
  blkioq_set_completion_fd_enabled(q_, true);
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  ASSERT_EQ(blkioq_do_io(q_, nullptr, 0, 0, nullptr), 0);
  struct pollfd pfd = {fd, POLLIN, 0};
  EXPECT_EQ(poll(&pfd, 1, 100), 0);   // not yet
  ASSERT_EQ(poll(&pfd, 1, 2000), 1);  // then it fires
  uint64_t v;
  ASSERT_EQ(read(fd, &v, sizeof(v)), 8);
  blkio_completion c;
  EXPECT_EQ(blkioq_do_io(q_, &c, 0, 1, nullptr), 1);
}

std::atomic<int> sigusr1_hits{0};
void on_sigusr1(int) { sigusr1_hits++; }

struct SignalSetup {
  SignalSetup() {
    struct sigaction sa = {};
    sa.sa_handler = on_sigusr1;
    sigaction(SIGUSR1, &sa, &old_action);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old_mask);
    pthread_sigmask(SIG_BLOCK, nullptr, &unblocked);
    sigdelset(&unblocked, SIGUSR1);
  }
  ~SignalSetup() {
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    sigaction(SIGUSR1, &old_action, nullptr);
  }
  struct sigaction old_action;
  sigset_t old_mask, unblocked;
};

TEST_F(SlowDevice, InterruptibleReturnsEintr) {
  SignalSetup sigs;
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  pthread_t self = pthread_self();
  std::thread killer([self] {
    usleep(50 * 1000);
    pthread_kill(self, SIGUSR1);
  });
  blkio_completion c;
  int hits = sigusr1_hits;
  EXPECT_EQ(blkioq_do_io_interruptible(q_, &c, 1, 1, nullptr, &sigs.unblocked), -EINTR);
  killer.join();
  EXPECT_EQ(sigusr1_hits, hits + 1);
  EXPECT_EQ(blkioq_do_io(q_, &c, 1, 1, nullptr), 1);  // still completes
}

TEST_F(SlowDevice, PlainDoIoRidesOutSignals) {
  blkioq_read(q_, 0, buf_, sizeof(buf_), nullptr, 0);
  struct sigaction sa = {}, old;
  sa.sa_handler = on_sigusr1;
  sigaction(SIGUSR1, &sa, &old);
  pthread_t self = pthread_self();
  std::thread killer([self] {
    usleep(50 * 1000);
    pthread_kill(self, SIGUSR1);
  });
  blkio_completion c;
  EXPECT_EQ(blkioq_do_io(q_, &c, 1, 1, nullptr), 1);
  killer.join();
  sigaction(SIGUSR1, &old, nullptr);
}

}  // namespace
