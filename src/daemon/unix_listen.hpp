// A listening Unix stream socket at a path, for every server side of the
// daemon (NBD exports, vhost-user-blk exports, the control socket). A stale
// socket file from an earlier run is replaced.
#pragma once

#include <string>

#include "blkstack/status.hpp"
#include "core/fd.hpp"

namespace blkstack {

// `flags` go to socket(2) with SOCK_STREAM | SOCK_CLOEXEC (SOCK_NONBLOCK, say).
Result<UniqueFd> listen_unix(const std::string& path, int backlog, int flags = 0);

}  // namespace blkstack
