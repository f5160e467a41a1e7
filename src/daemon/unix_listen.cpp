#include "daemon/unix_listen.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace blkstack {

Result<UniqueFd> listen_unix(const std::string& path, int backlog, int flags) {
  sockaddr_un sa{};
  if (path.size() >= sizeof(sa.sun_path)) return error(-ENAMETOOLONG, "socket path too long: {}", path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0));
  if (!fd.valid()) return errno_error("socket");
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  ::unlink(path.c_str());  // a stale socket from an earlier run
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(fd.get(), backlog) != 0) {
    return errno_error(path);
  }
  return fd;
}

}  // namespace blkstack
