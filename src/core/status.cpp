#include "blkstack/status.hpp"

#include <cstring>

namespace blkstack {

Status errno_error(std::string_view what) {
  int e = errno;
  return Status(-e, fmt::format("{}: {}", what, std::strerror(e)));
}

}  // namespace blkstack
