#include "exports/nbd/nbd_listener.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <future>

#include "daemon/unix_listen.hpp"

namespace blkstack::nbd {

std::string listener_address(const NbdExportConfig& c) {
  return c.socket_path.empty() ? "tcp:" + c.tcp : "unix:" + c.socket_path;
}

namespace {

Result<int> listen_tcp(const std::string& hostport) {
  std::string host, port;
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string::npos || close + 1 >= hostport.size() || hostport[close + 1] != ':') {
      return error(-EINVAL, "bad TCP address '{}': expected [IPV6]:PORT", hostport);
    }
    host = hostport.substr(1, close - 1);
    port = hostport.substr(close + 2);
  } else {
    size_t colon = hostport.rfind(':');
    if (colon == std::string::npos) return error(-EINVAL, "bad TCP address '{}': expected HOST:PORT", hostport);
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int r = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (r != 0) return error(-EINVAL, "{}: {}", hostport, gai_strerror(r));
  Status last = error(-EADDRNOTAVAIL, "{}: no usable address", hostport);
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
      ::freeaddrinfo(res);
      return fd;
    }
    last = errno_error(hostport);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return last;
}

}  // namespace

Result<std::unique_ptr<Listener>> Listener::open(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) {
    auto fd = listen_unix(address.substr(5), 1024);
    if (!fd) return fd.status();
    return std::unique_ptr<Listener>(new Listener(fd->release(), address, address.substr(5)));
  }
  if (address.rfind("tcp:", 0) == 0) {
    auto fd = listen_tcp(address.substr(4));
    if (!fd) return fd.status();
    return std::unique_ptr<Listener>(new Listener(*fd, address, ""));
  }
  return error(-EINVAL, "unknown listener address {}", address);
}

std::unique_ptr<Listener> Listener::adopt(int fd, std::string address) {
  return std::unique_ptr<Listener>(new Listener(fd, std::move(address), ""));
}

Listener::~Listener() {
  ::close(fd_);
  if (!unlink_.empty()) ::unlink(unlink_.c_str());
}

void Listener::set_catalog(std::shared_ptr<const Catalog> c) {
  std::lock_guard lock(mutex_);
  catalog_ = std::move(c);
}

std::shared_ptr<const Catalog> Listener::catalog() const {
  std::lock_guard lock(mutex_);
  return catalog_;
}

void Listener::start(Reactor& acceptor, std::vector<Reactor*> reactors, std::vector<ConnectionSet*> sets) {
  acceptor_ = &acceptor;
  reactors_ = std::move(reactors);
  sets_ = std::move(sets);
  acceptor.post([this] { arm(); });
}

void Listener::arm() {
  if (stopping_) return;
  io_uring_sqe* s = acceptor_->sqe();
  io_uring_prep_multishot_accept(s, fd_, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data(s, static_cast<Reactor::Op*>(this));
  armed_ = true;
}

void Listener::complete(int res, uint32_t flags) {
  if (!(flags & IORING_CQE_F_MORE)) {
    armed_ = false;
    if (!stopping_ && res != -ECANCELED) arm();
  }
  if (res < 0) return;  // e.g. -EMFILE: the next accept may work
  if (stopping_) {
    ::close(res);
    return;
  }
  int one = 1;
  ::setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // fails harmlessly on Unix sockets
  auto catalog = this->catalog();
  unsigned k = next_++ % reactors_.size();
  Reactor* r = reactors_[k];
  ConnectionSet* set = sets_[k];
  int fd = res;
  if (r == acceptor_) {
    Connection::start(*r, fd, std::move(catalog), *set);
  } else {
    r->post([r, fd, catalog = std::move(catalog), set]() mutable { Connection::start(*r, fd, std::move(catalog), *set); });
  }
}

void Listener::stop() {
  if (!acceptor_) return;
  std::promise<void> done;
  acceptor_->post([&] {
    stopping_ = true;
    if (armed_) {
      io_uring_sqe* s = acceptor_->sqe();
      io_uring_prep_cancel(s, static_cast<Reactor::Op*>(this), 0);
      io_uring_sqe_set_data(s, nullptr);
    }
    done.set_value();
  });
  done.get_future().wait();
  // Wait for the accept's final CQE, which still names this object.
  for (;;) {
    std::promise<bool> armed;
    acceptor_->post([&] { armed.set_value(armed_); });
    if (!armed.get_future().get()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace blkstack::nbd
