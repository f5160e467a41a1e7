// The daemon's control socket: a Unix stream socket speaking JSON lines.
// Each line a client sends is one request and gets one reply line. It runs
// inside the main thread's poll() loop (Daemon::run), so nothing here may
// block: clients are non-blocking, replies wait in a per-client queue until
// the socket takes them, and a client that sends a line over 1 MiB or leaves
// more than 4 MiB of replies unread is dropped. Otherwise one client that
// stops reading would stop signal handling and every other client.
#pragma once

#include <poll.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "blkstack/status.hpp"
#include "core/fd.hpp"

namespace blkstack {

class ControlServer {
 public:
  using Handler = std::function<nlohmann::json(const nlohmann::json&)>;

  ControlServer() = default;
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Listens on `path` (replacing a stale socket file; removed again on
  // destruction).
  Status open(const std::string& path);
  bool is_open() const { return listen_.valid(); }

  // Appends the fds to watch: the listening socket, then each client.
  void add_poll_fds(std::vector<pollfd>& fds) const;
  // Acts on poll()'s answer for the fds add_poll_fds() appended, which
  // start at fds[first]. Requests are answered through `handle`.
  void on_events(const std::vector<pollfd>& fds, size_t first, const Handler& handle);

  size_t clients() const { return clients_.size(); }

  static constexpr size_t kMaxLine = 1 << 20;
  static constexpr size_t kMaxUnread = 4 << 20;

 private:
  struct Client {
    UniqueFd fd;
    std::string in;   // bytes of a request line not yet complete
    std::string out;  // replies the socket has not taken yet
    bool eof = false;   // the client has sent all it will (socat does this): answer, then close
    bool gone = false;
  };
  void read_requests(Client& c, const Handler& handle);
  void write_replies(Client& c);

  UniqueFd listen_;
  std::string path_;
  std::vector<Client> clients_;
};

}  // namespace blkstack
