// The control socket's framing and its limits, without a daemon behind it:
// requests split across writes or packed into one, bad JSON, a line over the
// limit, and a client that does not read.
#include "daemon/control_server.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <string>

namespace blkstack {
namespace {

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/tmp/blkstack-control-test-" + std::to_string(::getpid()) + ".sock";
    ASSERT_TRUE(server_.open(path_));
  }

  UniqueFd connect_client() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path_.c_str());
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    return fd;
  }

  // One round of the daemon's loop: poll (briefly) and act.
  void turn() {
    std::vector<pollfd> fds;
    server_.add_poll_fds(fds);
    ::poll(fds.data(), fds.size(), 50);
    server_.on_events(fds, 0, [this](const nlohmann::json& req) {
      handled_++;
      return nlohmann::json{{"ok", true}, {"echo", req}};
    });
  }

  // Reads reply lines until `n` have come (turning the server meanwhile).
  std::vector<nlohmann::json> replies(int fd, size_t n) {
    std::vector<nlohmann::json> out;
    std::string buf;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (out.size() < n && std::chrono::steady_clock::now() < until) {
      turn();
      char b[4096];
      ssize_t got = ::recv(fd, b, sizeof(b), MSG_DONTWAIT);
      if (got == 0) break;
      if (got > 0) buf.append(b, static_cast<size_t>(got));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        out.push_back(nlohmann::json::parse(buf.substr(0, nl)));
        buf.erase(0, nl + 1);
      }
    }
    return out;
  }

  bool peer_closed(int fd) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    char b[65536];
    while (std::chrono::steady_clock::now() < until) {
      turn();
      ssize_t got = ::recv(fd, b, sizeof(b), MSG_DONTWAIT);
      if (got == 0 || (got < 0 && errno == ECONNRESET)) return true;
    }
    return false;
  }

  std::string path_;
  ControlServer server_;
  int handled_ = 0;
};

TEST_F(ControlServerTest, LinesSplitAndPackedAreEachOneRequest) {
  UniqueFd c = connect_client();
  turn();  // accept
  std::string two = "{\"cmd\": \"a\"}\n{\"cmd\": \"b\"}\n{\"cmd\":";
  ASSERT_EQ(::send(c.get(), two.data(), two.size(), 0), static_cast<ssize_t>(two.size()));
  auto r = replies(c.get(), 2);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["echo"]["cmd"], "a");
  EXPECT_EQ(r[1]["echo"]["cmd"], "b");
  std::string rest = " \"c\"}\n";
  ASSERT_EQ(::send(c.get(), rest.data(), rest.size(), 0), static_cast<ssize_t>(rest.size()));
  r = replies(c.get(), 1);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["echo"]["cmd"], "c");
  EXPECT_EQ(handled_, 3);
}

TEST_F(ControlServerTest, AClientThatHalfClosesStillGetsItsRepliesThenTheEnd) {
  // What `echo '{...}' | socat - UNIX-CONNECT:...` does: the request, then
  // the end of its input, then it waits for the reply.
  UniqueFd c = connect_client();
  turn();
  std::string two = "{\"cmd\": \"a\"}\n{\"cmd\": \"b\"}\n";
  ASSERT_EQ(::send(c.get(), two.data(), two.size(), 0), static_cast<ssize_t>(two.size()));
  ASSERT_EQ(::shutdown(c.get(), SHUT_WR), 0);
  auto r = replies(c.get(), 2);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1]["echo"]["cmd"], "b");
  EXPECT_TRUE(peer_closed(c.get()));
  EXPECT_EQ(server_.clients(), 0u);
}

TEST_F(ControlServerTest, BadJsonGetsAnErrorReplyAndTheClientStays) {
  UniqueFd c = connect_client();
  turn();
  std::string bad = "{not json\n{\"cmd\": \"ok\"}\n";
  ASSERT_EQ(::send(c.get(), bad.data(), bad.size(), 0), static_cast<ssize_t>(bad.size()));
  auto r = replies(c.get(), 2);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_FALSE(r[0]["ok"].get<bool>());
  EXPECT_EQ(r[0]["errno"], EINVAL);
  EXPECT_TRUE(r[1]["ok"].get<bool>());
  EXPECT_EQ(handled_, 1);
}

TEST_F(ControlServerTest, ALineOverTheLimitDropsTheClient) {
  UniqueFd c = connect_client();
  turn();
  std::string huge(ControlServer::kMaxLine + 4096, 'x');
  size_t sent = 0;
  while (sent < huge.size()) {
    ssize_t n = ::send(c.get(), huge.data() + sent, huge.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) sent += static_cast<size_t>(n);
    if (n < 0 && errno != EAGAIN) break;
    turn();
  }
  EXPECT_TRUE(peer_closed(c.get()));
  EXPECT_EQ(server_.clients(), 0u);
  EXPECT_EQ(handled_, 0);
}

TEST_F(ControlServerTest, AClientThatDoesNotReadNeitherBlocksNorGrowsWithoutEnd) {
  UniqueFd hog = connect_client();
  int small = 4096;
  ::setsockopt(hog.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  UniqueFd other = connect_client();
  turn();
  std::string line = "{\"cmd\": \"stats\", \"pad\": \"" + std::string(200, 'p') + "\"}\n";
  std::string batch;
  for (int i = 0; i < 100; i++) batch += line;
  bool dropped = false;
  // Each turn() must return (a blocking send would hang the test here).
  for (int i = 0; i < 4000 && !dropped; i++) {
    ssize_t n = ::send(hog.get(), batch.data(), batch.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) dropped = true;
    turn();
  }
  EXPECT_TRUE(dropped) << "a client with megabytes of unread replies was kept";
  std::string req = "{\"cmd\": \"still\"}\n";
  ASSERT_EQ(::send(other.get(), req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  auto r = replies(other.get(), 1);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["echo"]["cmd"], "still");
}

}  // namespace
}  // namespace blkstack
