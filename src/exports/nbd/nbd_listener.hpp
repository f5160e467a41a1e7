// A listening socket (Unix, TCP over IPv4/IPv6, or one handed over by systemd)
// and the exports it offers. Connections are accepted on one reactor and
// spread over all of them.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/reactor.hpp"
#include "exports/nbd/nbd_connection.hpp"
#include "exports/nbd/nbd_export.hpp"

namespace blkstack::nbd {

class Listener final : public Reactor::Op {
 public:
  // Binds and listens on "unix:PATH" or "tcp:HOST:PORT" (IPv6 hosts in
  // brackets), or adopts an already listening fd (systemd socket activation).
  static Result<std::unique_ptr<Listener>> open(const std::string& address);
  static std::unique_ptr<Listener> adopt(int fd, std::string address);
  ~Listener();

  const std::string& address() const { return address_; }
  int fd() const { return fd_; }
  void set_catalog(std::shared_ptr<const Catalog> c);
  std::shared_ptr<const Catalog> catalog() const;

  // Starts accepting on `acceptor`; connection k goes to reactors[k % n].
  void start(Reactor& acceptor, std::vector<Reactor*> reactors, std::vector<ConnectionSet*> sets);
  // Stops accepting (any thread); returns once the accept is cancelled.
  void stop();

  void complete(int res, uint32_t flags) override;

 private:
  Listener(int fd, std::string address, std::string unlink_path)
      : fd_(fd), address_(std::move(address)), unlink_(std::move(unlink_path)) {}
  void arm();

  int fd_;
  std::string address_;
  std::string unlink_;  // Unix socket to remove at the end
  mutable std::mutex mutex_;
  std::shared_ptr<const Catalog> catalog_;
  Reactor* acceptor_ = nullptr;
  std::vector<Reactor*> reactors_;
  std::vector<ConnectionSet*> sets_;
  unsigned next_ = 0;
  bool armed_ = false;
  bool stopping_ = false;
};

// Turns an export's socket=/tcp= into a listener address ("unix:..."/"tcp:...").
std::string listener_address(const NbdExportConfig& c);

}  // namespace blkstack::nbd
