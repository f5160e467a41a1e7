// Memory the driver shares with the vhost-user back-end: a memfd mapping,
// so it can be handed over as a file descriptor (SCM_RIGHTS) and mapped by
// the back-end at the same offsets. Holds the rings, the per-request
// virtio-blk headers and status bytes, and a zero area for the contract
// layer's write-zeroes fallback.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>

#include "blkstack/status.hpp"
#include "core/fd.hpp"

namespace blkstack {

class SharedMemory {
 public:
  SharedMemory() = default;

  static Result<SharedMemory> create(const char* name, size_t len) {
    SharedMemory m;
    len = round_up(len, page_size());
    m.fd_.reset(::memfd_create(name, MFD_CLOEXEC));
    if (!m.fd_.valid()) return errno_error("memfd_create");
    if (::ftruncate(m.fd_.get(), static_cast<off_t>(len)) != 0) return errno_error("ftruncate");
    // Zero-filled by the kernel: rings start empty, and the zero area reads
    // as zeroes without being touched.
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd_.get(), 0);
    if (p == MAP_FAILED) return errno_error("mmap");
    m.map_ = Mapping(p, len);
    return m;
  }

  char* data() const { return static_cast<char*>(map_.get()); }
  size_t size() const { return map_.size(); }
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  Mapping map_;
};

}  // namespace blkstack
