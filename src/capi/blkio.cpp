// libblkio.so.1: the libblkio 1.x C ABI as a thin shim over the C++ core.
// The only state here is the per-thread error message.
#include <blkio.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "blkstack/device.hpp"
#include "blkstack/queue.hpp"

#define BLKIO_API extern "C" __attribute__((visibility("default")))

using blkstack::Device;
using blkstack::PropType;
using blkstack::PropValue;
using blkstack::Queue;
using blkstack::Status;

// The C handles are the C++ objects themselves: struct blkio and struct
// blkioq stay incomplete and are only ever cast.

static_assert(sizeof(blkio_completion) == sizeof(blkstack::Completion));
static_assert(offsetof(blkio_completion, ret) == offsetof(blkstack::Completion, ret));
static_assert(sizeof(blkio_completion) == 32);
static_assert(sizeof(blkio_mem_region) == sizeof(blkstack::MemRegion));
static_assert(sizeof(blkio_mem_region) == 40);
static_assert(offsetof(blkio_mem_region, fd) == offsetof(blkstack::MemRegion, fd));
static_assert(sizeof(blkio_zone) == sizeof(blkstack::Zone));
static_assert(sizeof(blkio_zone) == 64);
static_assert(BLKIO_REQ_FUA == blkstack::kReqFua && BLKIO_REQ_NO_UNMAP == blkstack::kReqNoUnmap &&
              BLKIO_REQ_NO_FALLBACK == blkstack::kReqNoFallback);

namespace {

thread_local std::string error_msg;

Device* dev(blkio* b) { return reinterpret_cast<Device*>(b); }
Queue* queue(blkioq* q) { return reinterpret_cast<Queue*>(q); }
blkioq* handle(Queue* q) { return reinterpret_cast<blkioq*>(q); }
const blkstack::MemRegion& region(const blkio_mem_region* r) {
  return *reinterpret_cast<const blkstack::MemRegion*>(r);
}

int report(const Status& s) {
  if (!s.ok()) error_msg = s.message();
  return s.code();
}

int fail(int err, const char* msg) {
  error_msg = msg;
  return err;
}

template <typename T>
int get_typed(blkio* b, const char* name, T* value, PropType type) {
  if (!b || !name || !value) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  auto v = dev(b)->get(name, type);
  if (!v) return report(v.status());
  *value = std::get<T>(*v);
  return 0;
}

int set_typed(blkio* b, const char* name, PropValue value) {
  if (!b || !name) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  return report(dev(b)->set(name, value));
}

}  // namespace

BLKIO_API const char* blkio_get_error_msg(void) { return error_msg.c_str(); }

BLKIO_API int blkio_create(const char* driver, struct blkio** bp) {
  if (!driver || !bp) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  auto d = Device::create(driver);
  if (!d) return report(d.status());
  *bp = reinterpret_cast<blkio*>(d.value().release());
  return 0;
}

BLKIO_API int blkio_connect(struct blkio* b) { return b ? report(dev(b)->connect()) : fail(-EINVAL, "b is NULL"); }
BLKIO_API int blkio_start(struct blkio* b) { return b ? report(dev(b)->start()) : fail(-EINVAL, "b is NULL"); }

BLKIO_API void blkio_destroy(struct blkio** bp) {
  if (!bp || !*bp) return;
  delete dev(*bp);
  *bp = nullptr;
}

BLKIO_API int blkio_get_bool(struct blkio* b, const char* name, bool* value) {
  return get_typed(b, name, value, PropType::kBool);
}
BLKIO_API int blkio_get_int(struct blkio* b, const char* name, int* value) {
  return get_typed(b, name, value, PropType::kInt);
}
BLKIO_API int blkio_get_uint64(struct blkio* b, const char* name, uint64_t* value) {
  return get_typed(b, name, value, PropType::kUint64);
}
BLKIO_API int blkio_get_str(struct blkio* b, const char* name, char** value) {
  if (!b || !name || !value) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  auto v = dev(b)->get_str(name);
  if (!v) return report(v.status());
  *value = strdup(v->c_str());
  if (!*value) return fail(-ENOMEM, "Out of memory");
  return 0;
}

BLKIO_API int blkio_set_bool(struct blkio* b, const char* name, bool value) { return set_typed(b, name, value); }
BLKIO_API int blkio_set_int(struct blkio* b, const char* name, int value) { return set_typed(b, name, value); }
BLKIO_API int blkio_set_uint64(struct blkio* b, const char* name, uint64_t value) {
  return set_typed(b, name, value);
}
BLKIO_API int blkio_set_str(struct blkio* b, const char* name, const char* value) {
  if (!b || !name || !value) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  return report(dev(b)->set_str(name, value));
}

BLKIO_API int blkio_alloc_mem_region(struct blkio* b, struct blkio_mem_region* r, size_t len) {
  if (!b || !r) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  return report(dev(b)->alloc_mem_region(*reinterpret_cast<blkstack::MemRegion*>(r), len));
}
BLKIO_API void blkio_free_mem_region(struct blkio* b, const struct blkio_mem_region* r) {
  if (b && r) dev(b)->free_mem_region(region(r));
}
BLKIO_API int blkio_map_mem_region(struct blkio* b, const struct blkio_mem_region* r) {
  if (!b || !r) return fail(-EINVAL, "Invalid argument (NULL pointer)");
  return report(dev(b)->map_mem_region(region(r)));
}
BLKIO_API void blkio_unmap_mem_region(struct blkio* b, const struct blkio_mem_region* r) {
  if (b && r) dev(b)->unmap_mem_region(region(r));
}

BLKIO_API struct blkioq* blkio_get_queue(struct blkio* b, int index) {
  Queue* q = b ? dev(b)->queue(index) : nullptr;
  if (!q) error_msg = "No queue with that index";
  return handle(q);
}
BLKIO_API struct blkioq* blkio_get_poll_queue(struct blkio* b, int index) {
  Queue* q = b ? dev(b)->poll_queue(index) : nullptr;
  if (!q) error_msg = "No poll queue with that index";
  return handle(q);
}

static int add_queue(blkio* b, bool poll) {
  if (!b) return fail(-EINVAL, "b is NULL");
  auto r = dev(b)->add_queue(poll);
  return r ? *r : report(r.status());
}
BLKIO_API int blkio_add_queue(struct blkio* b) { return add_queue(b, false); }
BLKIO_API int blkio_add_poll_queue(struct blkio* b) { return add_queue(b, true); }
BLKIO_API int blkio_remove_queue(struct blkio* b, int index) {
  return b ? report(dev(b)->remove_queue(false, index)) : fail(-EINVAL, "b is NULL");
}
BLKIO_API int blkio_remove_poll_queue(struct blkio* b, int index) {
  return b ? report(dev(b)->remove_queue(true, index)) : fail(-EINVAL, "b is NULL");
}

// ---- requests: straight into the queue ----
// (Queue::block_status, the allocation query, has no blkioq_* counterpart:
// libblkio has no such request, so nothing here ever makes one.)

BLKIO_API void blkioq_read(struct blkioq* q, uint64_t start, void* buf, size_t len, void* user_data, uint32_t flags) {
  queue(q)->read(start, buf, len, user_data, flags);
}
BLKIO_API void blkioq_write(struct blkioq* q, uint64_t start, const void* buf, size_t len, void* user_data,
                            uint32_t flags) {
  queue(q)->write(start, buf, len, user_data, flags);
}
BLKIO_API void blkioq_readv(struct blkioq* q, uint64_t start, const struct iovec* iov, int iovcnt, void* user_data,
                            uint32_t flags) {
  queue(q)->readv(start, iov, iovcnt, user_data, flags);
}
BLKIO_API void blkioq_writev(struct blkioq* q, uint64_t start, struct iovec* iov, int iovcnt, void* user_data,
                             uint32_t flags) {
  queue(q)->writev(start, iov, iovcnt, user_data, flags);
}
BLKIO_API void blkioq_write_zeroes(struct blkioq* q, uint64_t start, uint64_t len, void* user_data, uint32_t flags) {
  queue(q)->write_zeroes(start, len, user_data, flags);
}
BLKIO_API void blkioq_discard(struct blkioq* q, uint64_t start, uint64_t len, void* user_data, uint32_t flags) {
  queue(q)->discard(start, len, user_data, flags);
}
BLKIO_API void blkioq_flush(struct blkioq* q, void* user_data, uint32_t flags) { queue(q)->flush(user_data, flags); }

BLKIO_API void blkioq_report_zones(struct blkioq* q, uint64_t offset, struct blkio_zone* zones, uint32_t nr_zones,
                                   void* user_data, uint32_t flags) {
  queue(q)->report_zones(offset, reinterpret_cast<blkstack::Zone*>(zones), nr_zones, user_data, flags);
}

#define ZONE_OP(fn, op)                                                                    \
  BLKIO_API void fn(struct blkioq* q, uint64_t offset, void* user_data, uint32_t flags) { \
    queue(q)->zone_management(blkstack::Op::op, offset, user_data, flags);                \
  }
#define ZONE_ALL_OP(fn, op)                                                 \
  BLKIO_API void fn(struct blkioq* q, void* user_data, uint32_t flags) {   \
    queue(q)->zone_management(blkstack::Op::op, 0, user_data, flags);      \
  }
ZONE_OP(blkioq_close_zone, kZoneClose)
ZONE_OP(blkioq_finish_zone, kZoneFinish)
ZONE_OP(blkioq_open_zone, kZoneOpen)
ZONE_OP(blkioq_reset_zone, kZoneReset)
ZONE_ALL_OP(blkioq_close_all_zones, kZoneCloseAll)
ZONE_ALL_OP(blkioq_finish_all_zones, kZoneFinishAll)
ZONE_ALL_OP(blkioq_open_all_zones, kZoneOpenAll)
ZONE_ALL_OP(blkioq_reset_all_zones, kZoneResetAll)

BLKIO_API int blkioq_do_io(struct blkioq* q, struct blkio_completion* completions, int min_completions,
                           int max_completions, struct timespec* timeout) {
  int r = queue(q)->do_io(reinterpret_cast<blkstack::Completion*>(completions), min_completions, max_completions,
                          timeout);
  if (r < 0) [[unlikely]] error_msg = queue(q)->error_message();
  return r;
}

BLKIO_API int blkioq_do_io_interruptible(struct blkioq* q, struct blkio_completion* completions,
                                         int min_completions, int max_completions, struct timespec* timeout,
                                         const sigset_t* sig) {
  int r = queue(q)->do_io(reinterpret_cast<blkstack::Completion*>(completions), min_completions, max_completions,
                          timeout, sig, true);
  if (r < 0) [[unlikely]] error_msg = queue(q)->error_message();
  return r;
}

BLKIO_API int blkioq_get_completion_fd(struct blkioq* q) { return queue(q)->completion_fd(); }
BLKIO_API void blkioq_set_completion_fd_enabled(struct blkioq* q, bool enable) {
  queue(q)->set_completion_fd_enabled(enable);
}
