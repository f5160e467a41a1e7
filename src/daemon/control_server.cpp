#include "daemon/control_server.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "daemon/unix_listen.hpp"

namespace blkstack {

ControlServer::~ControlServer() {
  if (listen_.valid()) ::unlink(path_.c_str());
}

Status ControlServer::open(const std::string& path) {
  auto fd = listen_unix(path, 16, SOCK_NONBLOCK);
  if (!fd) return error(fd.status().code(), "control socket: {}", fd.status().message());
  listen_ = std::move(*fd);
  path_ = path;
  spdlog::info("daemon: control socket path={}", path);
  return {};
}

void ControlServer::add_poll_fds(std::vector<pollfd>& fds) const {
  if (!listen_.valid()) return;
  fds.push_back({listen_.get(), POLLIN, 0});
  for (const Client& c : clients_) {
    short events = static_cast<short>((c.eof ? 0 : POLLIN) | (c.out.empty() ? 0 : POLLOUT));
    fds.push_back({c.fd.get(), events, 0});
  }
}

void ControlServer::on_events(const std::vector<pollfd>& fds, size_t first, const Handler& handle) {
  if (!listen_.valid()) return;
  // Clients first (their pollfds follow the listener's, in order); clients
  // accepted now were not polled.
  for (size_t i = 0; i < clients_.size() && first + 1 + i < fds.size(); i++) {
    Client& c = clients_[i];
    short ev = fds[first + 1 + i].revents;
    if (!c.eof && (ev & (POLLIN | POLLHUP | POLLERR))) read_requests(c, handle);
    if (!c.gone && !c.out.empty() && (ev & (POLLOUT | POLLERR | POLLHUP))) write_replies(c);
    if (c.eof && c.out.empty()) c.gone = true;
  }
  std::erase_if(clients_, [](const Client& c) { return c.gone; });
  if (fds[first].revents & POLLIN) {
    for (;;) {
      UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!fd.valid()) break;
      clients_.push_back(Client{std::move(fd), {}, {}, false});
    }
  }
}

void ControlServer::read_requests(Client& c, const Handler& handle) {
  char buf[4096];
  // A bounded number of reads per wakeup, so that a client that never stops
  // writing cannot keep the loop (and every other client) waiting.
  for (int reads = 0; reads < 16 && c.out.size() <= kMaxUnread; reads++) {
    ssize_t n = ::read(c.fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n < 0) {
      c.gone = true;
      return;
    }
    if (n == 0) {
      // The client has sent everything (a half close, as socat does at the
      // end of its input): its replies still go out, then it is closed.
      c.eof = true;
      break;
    }
    c.in.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = c.in.find('\n')) != std::string::npos) {
      std::string line = c.in.substr(0, nl);
      c.in.erase(0, nl + 1);
      nlohmann::json reply;
      try {
        reply = handle(nlohmann::json::parse(line));
      } catch (const std::exception& e) {
        reply = {{"ok", false}, {"error", std::string("bad JSON: ") + e.what()}, {"errno", EINVAL}};
      }
      c.out += reply.dump();
      c.out += '\n';
    }
    if (c.in.size() > kMaxLine) {
      spdlog::warn("daemon: control client dropped: a request line over {} bytes", kMaxLine);
      c.gone = true;
      return;
    }
  }
  write_replies(c);
  if (c.eof && c.out.empty()) c.gone = true;
}

void ControlServer::write_replies(Client& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      c.gone = true;
      return;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
  if (c.out.size() > kMaxUnread) {
    spdlog::warn("daemon: control client dropped: it left {} bytes of replies unread", c.out.size());
    c.gone = true;
  }
}

}  // namespace blkstack
