// qemu-storage-daemon exporting a file as a vhost-user-blk device on a Unix
// socket, for the virtio-blk-vhost-user driver tests. Started per test,
// killed at the end; the image file is read directly to check what the
// driver wrote.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace blkstack::test {

struct QsdOptions {
  uint64_t size = 64ull << 20;
  bool writable = true;
  int num_queues = 2;
  // Reads throttled to this many bytes per second (0: no throttle), for
  // requests that stay in flight long enough to time out or be killed.
  uint64_t read_bps = 0;
};

class Qsd {
 public:
  explicit Qsd(QsdOptions o = {}) {
    char tmpl[] = "/tmp/blkstack-qsd-XXXXXX";
    dir_ = mkdtemp(tmpl);
    img_ = dir_ + "/img";
    sock_ = dir_ + "/sock";
    int fd = open(img_.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(o.size)), 0);
    close(fd);
    std::string pidfile = dir_ + "/pid";
    // The pidfile is written after every export is listening; the socket
    // file alone appears at bind(), a moment before listen() (a connect in
    // between is refused).
    std::vector<std::string> argv = {"qemu-storage-daemon", "--pidfile", pidfile, "--blockdev",
                                     "file,node-name=f,filename=" + img_};
    std::string node = "f";
    if (o.read_bps) {
      argv.insert(argv.end(), {"--object", "throttle-group,id=tg,limits.bps-read=" + std::to_string(o.read_bps),
                               "--blockdev", "throttle,node-name=t,file=f,throttle-group=tg"});
      node = "t";
    }
    argv.insert(argv.end(), {"--export", "type=vhost-user-blk,id=e,node-name=" + node +
                                             ",addr.type=unix,addr.path=" + sock_ +
                                             ",writable=" + (o.writable ? "on" : "off") +
                                             ",num-queues=" + std::to_string(o.num_queues)});
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    if (posix_spawnp(&pid_, "qemu-storage-daemon", nullptr, nullptr, cargv.data(), environ) != 0) pid_ = -1;
    for (int i = 0; i < 1000 && pid_ > 0; i++) {
      struct stat st, pf;
      if (stat(pidfile.c_str(), &pf) == 0 && pf.st_size > 0 && stat(sock_.c_str(), &st) == 0 &&
          S_ISSOCK(st.st_mode)) {
        return;
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "qemu-storage-daemon did not start";
  }
  ~Qsd() {
    kill_now();
    std::string cmd = "rm -rf " + dir_;
    (void)system(cmd.c_str());
  }
  Qsd(const Qsd&) = delete;
  Qsd& operator=(const Qsd&) = delete;

  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  const std::string& sock() const { return sock_; }
  const std::string& img() const { return img_; }
  const std::string& dir() const { return dir_; }

  // The image's bytes, straight from the file.
  std::string read_img(uint64_t offset, size_t len) const {
    std::string s(len, '\0');
    int fd = open(img_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(pread(fd, s.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
    close(fd);
    return s;
  }
  void write_img(uint64_t offset, const std::string& data) const {
    int fd = open(img_.c_str(), O_WRONLY | O_CLOEXEC);
    EXPECT_EQ(pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset)), static_cast<ssize_t>(data.size()));
    close(fd);
  }

 private:
  std::string dir_, img_, sock_;
  pid_t pid_ = -1;
};

}  // namespace blkstack::test
