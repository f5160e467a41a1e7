#include "drivers/io_uring/io_uring_driver.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/uring.hpp"
#include "drivers/common/block_limits.hpp"
#include "drivers/io_uring/io_uring_queue.hpp"

namespace blkstack {

namespace {

// Up to this size a copy in the calling thread beats handing the request to
// a worker thread (measured in bench/RESULTS.md); beyond it the workers'
// parallelism is worth their hand-off.
constexpr uint32_t kDefaultInlineMax = 64 * 1024;

// Does the file live in memory (tmpfs, shmem and memfd, ramfs)?
bool file_in_memory(int fd) {
  struct statfs sf {};
  if (::fstatfs(fd, &sf) != 0) return false;
  return sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC;
}

// Files in memory are read and written by a memory copy that never waits
// for a device. io_uring does a read or write in the submitting thread only
// for files that promise not to block (FMODE_NOWAIT); where the kernel makes
// no such promise for these files (RWF_NOWAIT fails with EOPNOTSUPP: checked
// on Linux 6.12 and 6.18) it hands every request to an io-wq worker thread,
// which costs a wakeup and two context switches around a copy of a
// microsecond or so. For those we do small copies ourselves (inline_max),
// and mark the rest IOSQE_ASYNC (worker_only). Kernels that can do it inline
// keep the ring.
bool io_uring_needs_worker(int fd_in_memory) {
  char byte;
  struct iovec iov {&byte, 1};
  return ::preadv2(fd_in_memory, &iov, 1, 0, RWF_NOWAIT) < 0 && errno == EOPNOTSUPP;
}

// The inline size limit; BLKSTACK_IO_URING_INLINE_MAX (bytes; 0: never)
// overrides it, for measurements.
uint32_t inline_io_limit() {
  uint64_t limit = kDefaultInlineMax;
  if (const char* env = std::getenv("BLKSTACK_IO_URING_INLINE_MAX")) {
    char* end = nullptr;
    unsigned long long v = std::strtoull(env, &end, 0);
    if (end != env && *end == '\0') limit = std::min<unsigned long long>(v, 1u << 30);
  }
  return static_cast<uint32_t>(limit);
}

}  // namespace

std::unique_ptr<Driver> IoUringDriver::create() { return std::make_unique<IoUringDriver>(); }

struct IoUringProperties {
  static IoUringDriver& self(Driver& d) { return static_cast<IoUringDriver&>(d); }
  static const IoUringDriver& self(const Driver& d) { return static_cast<const IoUringDriver&>(d); }

  static std::span<const DriverProperty> table() {
    using namespace states;
    static const DriverProperty props[] = {
        {"direct", PropType::kBool, kAll, kCreated, [](const Driver& d) { return PropValue(self(d).direct_); },
         [](Driver& d, const PropValue& v) {
           self(d).direct_ = std::get<bool>(v);
           return Status{};
         }},
        {"fd", PropType::kInt, kAll, kCreated, [](const Driver& d) { return PropValue(self(d).fd_prop_); },
         [](Driver& d, const PropValue& v) {
           self(d).fd_prop_ = std::get<int>(v);
           return Status{};
         }},
        {"path", PropType::kStr, kAll, kCreated, [](const Driver& d) { return PropValue(self(d).path_); },
         [](Driver& d, const PropValue& v) {
           self(d).path_ = std::get<std::string>(v);
           return Status{};
         }},
        // Beyond blkio(3): for applications that drive each queue from one
        // thread only (docs/io-uring-driver.md).
        {"single-issuer", PropType::kBool, kAll, kCreated,
         [](const Driver& d) { return PropValue(self(d).single_issuer_); },
         [](Driver& d, const PropValue& v) {
           self(d).single_issuer_ = std::get<bool>(v);
           return Status{};
         }},
        {"num-entries", PropType::kInt, kAfterConnect, kConnected,
         [](const Driver& d) { return PropValue(self(d).num_entries_); },
         [](Driver& d, const PropValue& v) {
           int n = std::get<int>(v);
           if (n <= 0) return error(-EINVAL, "num-entries must be greater than 0");
           self(d).num_entries_ = n;
           return Status{};
         }},
    };
    return props;
  }
};

std::span<const DriverProperty> IoUringDriver::properties() const { return IoUringProperties::table(); }

Status IoUringDriver::connect(bool& read_only, DeviceInfo& info) {
  if (!path_.empty() && fd_prop_ >= 0) return error(-EINVAL, "path and fd cannot be set at the same time");
  if (path_.empty() && fd_prop_ < 0) return error(-EINVAL, "One of path and fd must be set");

  UniqueFd fd;
  bool direct = direct_;
  bool ro = read_only;
  if (!path_.empty()) {
    int flags = (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? O_DIRECT : 0);
    fd.reset(::open(path_.c_str(), flags));
    if (!fd.valid()) return errno_error(path_);
  } else {
    int fl = ::fcntl(fd_prop_, F_GETFL);
    if (fl < 0) return errno_error("fd");
    if ((fl & O_ACCMODE) == O_WRONLY) return error(-EINVAL, "fd must be open for reading");
    ro = (fl & O_ACCMODE) == O_RDONLY;
    direct = (fl & O_DIRECT) != 0;
  }
  int raw = fd.valid() ? fd.get() : fd_prop_;

  struct stat st {};
  if (::fstat(raw, &st) != 0) return errno_error("fstat");
  bool is_block = S_ISBLK(st.st_mode);
  if (!is_block && !S_ISREG(st.st_mode)) return error(-EINVAL, "Not a regular file or block device");

  DeviceInfo i;
  i.max_queues = INT_MAX;
  i.max_mem_regions = UINT64_MAX;
  i.may_pin_mem_regions = true;  // mapped regions become io_uring fixed buffers, which pins them
  i.needs_mem_regions = false;
  i.needs_mem_region_fd = false;
  i.max_segments = IOV_MAX;
  i.max_segment_len = 0;
  i.max_transfer = 0;
  i.optimal_buf_alignment = static_cast<int>(page_size());
  i.supports_fua_natively = true;  // RWF_DSYNC on the write itself
  i.fua_native_write_zeroes = false;
  i.can_grow = !is_block;
  i.supports_write_zeroes = true;

  if (is_block) {
    BlockLimits bl = block_limits_of_fd(raw);
    i.capacity = bl.size;
    i.request_alignment = static_cast<int>(bl.logical_block_size);
    i.buf_alignment = direct ? static_cast<int>(std::max<uint32_t>(bl.dma_alignment, 1)) : 1;
    i.optimal_io_alignment = static_cast<int>(std::max(bl.physical_block_size, bl.logical_block_size));
    i.optimal_io_size =
        bl.optimal_io_size % static_cast<uint32_t>(i.optimal_io_alignment) == 0 ? static_cast<int>(bl.optimal_io_size) : 0;
    i.flush_needed = !direct || bl.write_back_cache;
    i.supports_discard = bl.discard_max_bytes > 0;
    i.discard_alignment = static_cast<int>(std::max<uint64_t>(bl.discard_granularity, bl.logical_block_size));
    i.discard_alignment_offset = static_cast<int>(bl.discard_alignment % static_cast<uint64_t>(i.discard_alignment));
    i.max_discard_len = bl.discard_max_bytes;
    i.max_write_zeroes_len = 0;  // the kernel splits and falls back itself
    i.rotational = bl.rotational;
    i.can_report_holes = false;
  } else {
    i.capacity = static_cast<uint64_t>(st.st_size);
    BlockLimits bl = block_limits_of_dev(st.st_dev);
    if (direct) {
      // O_DIRECT rules for this file: statx knows them on Linux >= 6.1.
      struct statx sx {};
      uint32_t offset_align = 0, mem_align = 0;
      if (::statx(raw, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
          sx.stx_dio_offset_align) {
        offset_align = sx.stx_dio_offset_align;
        mem_align = sx.stx_dio_mem_align;
      } else {
        offset_align = bl.logical_block_size;
        mem_align = bl.logical_block_size;
      }
      i.request_alignment = static_cast<int>(std::max<uint32_t>(offset_align, 1));
      i.buf_alignment = static_cast<int>(std::max<uint32_t>(mem_align, 1));
    } else {
      i.request_alignment = 1;
      i.buf_alignment = 1;
    }
    i.optimal_io_alignment = static_cast<int>(std::max<uint64_t>(
        std::max<uint64_t>(static_cast<uint64_t>(st.st_blksize), bl.physical_block_size),
        static_cast<uint64_t>(i.request_alignment)));
    i.optimal_io_size = 0;
    i.flush_needed = true;
    i.discard_alignment = i.request_alignment;
    i.discard_alignment_offset = 0;
    i.max_discard_len = 0;
    i.max_write_zeroes_len = 0;
    i.rotational = bl.rotational;
    i.can_report_holes = true;
  }
  i.mem_region_alignment = static_cast<uint64_t>(i.buf_alignment);

  const bool in_memory = !is_block && file_in_memory(raw);
  const bool worker_only = in_memory && io_uring_needs_worker(raw);
  target_ = IoUringTarget{raw, is_block, direct, !is_block, worker_only ? inline_io_limit() : 0, single_issuer_};
  target_.worker_only = worker_only;
  in_memory_ = in_memory && !direct;
  if (!is_block) i.supports_discard = ro || probe_punch_hole(i.capacity);
  i.supports_poll_queues = direct && probe_iopoll(i);

  // Success: from here on the library owns the descriptor.
  if (fd.valid()) {
    fd_prop_ = fd.get();
    fd_ = std::move(fd);
  } else {
    fd_.reset(fd_prop_);
  }
  direct_ = direct;
  read_only = ro;
  info = i;
  return {};
}

// Can this file do polled (IORING_SETUP_IOPOLL) I/O? Only the kernel knows:
// try one read on a scratch polled ring.
bool IoUringDriver::probe_iopoll(const DeviceInfo& info) const {
  size_t len = static_cast<size_t>(info.request_alignment);
  if (info.capacity < len) return false;
  Ring ring;
  io_uring_params p{};
  p.flags = IORING_SETUP_IOPOLL;
  if (!ring.init(2, p, 0)) return false;
  void* buf = nullptr;
  if (posix_memalign(&buf, std::max<size_t>(page_size(), static_cast<size_t>(info.buf_alignment)), len) != 0) return false;
  io_uring_sqe* sqe = io_uring_get_sqe(ring.get());
  io_uring_prep_read(sqe, target_.fd, buf, static_cast<unsigned>(len), 0);
  io_uring_cqe* cqe = nullptr;
  bool ok = false;
  if (io_uring_submit_and_wait(ring.get(), 1) >= 0 && io_uring_wait_cqe(ring.get(), &cqe) == 0) {
    ok = cqe->res >= 0;
    io_uring_cqe_seen(ring.get(), cqe);
  }
  free(buf);
  return ok;
}

// Does the file system punch holes? Punching past the end of the file with
// KEEP_SIZE changes nothing, so it is a harmless question to ask.
bool IoUringDriver::probe_punch_hole(uint64_t capacity) const {
  off_t at = static_cast<off_t>(round_up(capacity + 1, 1 << 20));
  return ::fallocate(target_.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, 4096) == 0;
}

Result<std::unique_ptr<DriverQueue>> IoUringDriver::create_queue(bool poll) {
  auto q = std::make_unique<IoUringQueue>(target_, poll);
  if (Status s = q->init(static_cast<unsigned>(num_entries_)); !s) return s;
  return std::unique_ptr<DriverQueue>(std::move(q));
}

Status IoUringDriver::map_region(MappedRegion& r) {
  if (fixed_used_.empty()) fixed_used_.assign(kMaxFixedBuffers, false);
  auto it = std::find(fixed_used_.begin(), fixed_used_.end(), false);
  if (it == fixed_used_.end()) return {};  // no slot left: plain opcodes for this one
  *it = true;
  r.driver_slot = r.driver_index = static_cast<int>(it - fixed_used_.begin());
  return {};
}

void IoUringDriver::unmap_region(const MappedRegion& r) {
  if (r.driver_slot >= 0 && static_cast<size_t>(r.driver_slot) < fixed_used_.size()) {
    fixed_used_[static_cast<size_t>(r.driver_slot)] = false;
  }
}

Result<AllocationExtent> IoUringDriver::extent_at(uint64_t offset, uint64_t len) {
  if (target_.is_block) return AllocationExtent{len, false};
  off_t data = ::lseek(target_.fd, static_cast<off_t>(offset), SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO) return AllocationExtent{len, true};  // only a hole from here to the end
    return AllocationExtent{len, false};                     // cannot tell: call it data
  }
  if (static_cast<uint64_t>(data) > offset) return AllocationExtent{std::min<uint64_t>(len, static_cast<uint64_t>(data) - offset), true};
  off_t hole = ::lseek(target_.fd, static_cast<off_t>(offset), SEEK_HOLE);
  if (hole < 0 || static_cast<uint64_t>(hole) <= offset) return AllocationExtent{len, false};
  return AllocationExtent{std::min<uint64_t>(len, static_cast<uint64_t>(hole) - offset), false};
}

uint64_t IoUringDriver::current_capacity(uint64_t connected_capacity) {
  struct stat st {};
  if (!target_.can_grow || ::fstat(target_.fd, &st) != 0) return connected_capacity;
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace blkstack
