// Helpers for tests that use the native C++ API.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "blkstack/device.hpp"
#include "blkstack/queue.hpp"

namespace blkstack::test {

// A Unix socket that accepts connections (the kernel's backlog does) and
// never says a word: what a hung server looks like to a client.
class MuteUnixServer {
 public:
  MuteUnixServer() {
    char tmpl[] = "/tmp/blkstack-mute-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ + "/sock";
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof(a.sun_path) - 1);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
  }
  ~MuteUnixServer() {
    ::close(fd_);
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  MuteUnixServer(const MuteUnixServer&) = delete;
  MuteUnixServer& operator=(const MuteUnixServer&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  int fd_ = -1;
};

// A property read through the native API, its type from T (bool, int,
// uint64_t); a failed read is a test failure and returns T{}.
template <typename T>
T prop(Device& d, const char* name) {
  PropType t = std::is_same_v<T, bool> ? PropType::kBool : std::is_same_v<T, int> ? PropType::kInt : PropType::kUint64;
  auto v = d.get(name, t);
  EXPECT_TRUE(v.ok()) << name << ": " << v.status().message();
  return v ? std::get<T>(*v) : T{};
}

inline std::unique_ptr<Device> open_device(const std::string& driver,
                                           const std::vector<std::pair<std::string, std::string>>& props,
                                           int num_queues = 1) {
  auto d = Device::create(driver);
  EXPECT_TRUE(d.ok()) << d.status().message();
  if (!d) return nullptr;
  for (auto& [k, v] : props) {
    Status s = (*d)->set_str(k, v);
    EXPECT_TRUE(s.ok()) << k << ": " << s.message();
  }
  Status s = (*d)->connect();
  EXPECT_TRUE(s.ok()) << s.message();
  s = (*d)->set("num-queues", PropValue(num_queues));
  EXPECT_TRUE(s.ok()) << s.message();
  s = (*d)->start();
  EXPECT_TRUE(s.ok()) << s.message();
  return std::move(d.value());
}

inline Completion wait_one(Queue& q) {
  Completion c{};
  int n = q.do_io(&c, 1, 1, nullptr);
  EXPECT_EQ(n, 1) << q.error_message();
  return c;
}

inline std::string pattern(size_t len, unsigned seed) {
  std::string s(len, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& ch : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    ch = static_cast<char>(x);
  }
  return s;
}

}  // namespace blkstack::test
