// Device lifecycle, memory regions and queue management: the control path of
// the contract layer.
#include "blkstack/device.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "blkstack/queue.hpp"
#include "core/driver.hpp"
#include "core/fd.hpp"

namespace blkstack {

namespace {
constexpr size_t kZeroBufferLen = 1 << 20;  // write-zeroes fallback chunk
}

Result<std::unique_ptr<Device>> Device::create(std::string_view name) {
  for (const DriverEntry& e : drivers()) {
    if (name != e.name) continue;
    auto driver = e.create();
    if (!driver) return driver.status();
    return std::unique_ptr<Device>(new Device(std::string(name), std::move(*driver)));
  }
  return error(-ENOENT, "Unknown driver name");
}

std::vector<std::string_view> Device::driver_names() {
  std::vector<std::string_view> names;
  for (const DriverEntry& e : drivers()) names.emplace_back(e.name);
  return names;
}

Device::Device(std::string name, std::unique_ptr<Driver> driver)
    : driver_name_(std::move(name)), driver_(std::move(driver)) {
  region_tables_.push_back(std::make_unique<RegionTable>());
  regions_.store(region_tables_.back().get(), std::memory_order_release);
}

Device::~Device() {
  // Queues first: they use the driver and the regions.
  queues_.clear();
  poll_queues_.clear();
  for (const MappedRegion& r : regions().all()) driver_->unmap_region(r);
  for (const MemRegion& m : allocated_) {
    ::munmap(m.addr, round_up(m.len, page_size()));
    ::close(m.fd);
  }
  if (zero_buffer_) ::munmap(zero_buffer_, zero_buffer_len_);
  driver_.reset();
}

Status Device::connect() {
  std::lock_guard lock(control_);
  if (state_ == State::kConnected) return {};
  if (state_ == State::kStarted) return error(-EBUSY, "Device is already started");
  DeviceInfo info;
  bool read_only = read_only_;
  if (Status s = driver_->connect(read_only, info); !s) return s;
  // The contract layer relies on these; a driver that breaks them is a bug.
  if (!is_pow2(static_cast<uint64_t>(info.request_alignment)) ||
      !is_pow2(static_cast<uint64_t>(info.buf_alignment)) || info.mem_region_alignment == 0 ||
      info.mem_region_alignment % static_cast<uint64_t>(info.buf_alignment) != 0) {
    return error(-EIO, "driver reported inconsistent alignment requirements");
  }
  info_ = info;
  read_only_ = read_only;
  state_ = State::kConnected;
  return {};
}

Status Device::start() {
  std::lock_guard lock(control_);
  if (state_ == State::kStarted) return {};
  if (state_ == State::kCreated) return error(-ENODEV, "Device must be connected");
  if (num_poll_queues_ > 0 && !info_.supports_poll_queues) {
    return error(-EINVAL, "Poll queues are not supported by this device (num-poll-queues must be 0)");
  }
  if (static_cast<int64_t>(num_queues_) + num_poll_queues_ > info_.max_queues) {
    return error(-EINVAL, "num-queues + num-poll-queues exceeds max-queues ({})", info_.max_queues);
  }
  if (num_queues_ + num_poll_queues_ == 0 && !driver_->can_add_queues()) {
    return error(-EINVAL, "At least one queue is required");
  }
  if (Status s = driver_->start(num_queues_, num_poll_queues_); !s) return s;
  driver_->update_info(info_);

  void* zero = ::mmap(nullptr, kZeroBufferLen, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (zero == MAP_FAILED) return errno_error("mmap zero buffer");
  zero_buffer_ = zero;
  zero_buffer_len_ = kZeroBufferLen;

  // Queues can only be made once the device is started.
  state_ = State::kStarted;
  std::vector<std::unique_ptr<Queue>> queues, poll_queues;
  for (int i = 0; i < num_queues_ + num_poll_queues_; i++) {
    bool poll = i >= num_queues_;
    auto q = make_queue(poll, i);
    if (!q) {
      state_ = State::kConnected;
      ::munmap(zero_buffer_, zero_buffer_len_);
      zero_buffer_ = nullptr;
      return q.status();
    }
    (poll ? poll_queues : queues).push_back(std::move(q.value()));
  }
  queues_ = std::move(queues);
  poll_queues_ = std::move(poll_queues);
  return {};
}

int Device::memory_file() const { return state_ == State::kCreated ? -1 : driver_->memory_file(); }

Result<AllocationExtent> Device::extent_at(uint64_t offset, uint64_t len) {
  if (state_ == State::kCreated) return error(-ENODEV, "Device must be connected");
  if (offset >= info_.capacity) return error(-EINVAL, "offset is beyond the end of the device");
  len = std::min(len, info_.capacity - offset);
  if (!info_.can_report_holes) return AllocationExtent{len, false};
  auto e = driver_->extent_at(offset, len);
  if (e && (e->len == 0 || e->len > len)) return AllocationExtent{len, false};
  return e;
}

// ---- queues ----

Result<std::unique_ptr<Queue>> Device::make_queue(bool poll, int index) {
  (void)index;
  auto dq = driver_->create_queue(poll);
  if (!dq) return dq.status();
  for (const MappedRegion& r : regions().all()) {
    MappedRegion copy = r;
    if (Status s = (*dq)->map_region(copy); !s) return s;
    if (copy.driver_index != r.driver_index) {
      return error(-ENOMEM, "the new queue cannot use the memory regions already mapped");
    }
  }
  return std::make_unique<Queue>(*this, std::move(dq.value()), poll);
}

Queue* Device::find_queue(bool poll, int index) {
  std::lock_guard lock(control_);
  auto& v = poll ? poll_queues_ : queues_;
  if (index < 0 || static_cast<size_t>(index) >= v.size()) return nullptr;
  return v[index].get();
}

Result<int> Device::add_queue(bool poll) {
  std::lock_guard lock(control_);
  if (state_ != State::kStarted) return error(-ENODEV, "Device must be started");
  if (!driver_->can_add_queues()) return error(-ENOTSUP, "This driver cannot add queues");
  if (poll && !info_.supports_poll_queues) return error(-EINVAL, "Poll queues not supported");
  auto live = [](const auto& v) { return std::count_if(v.begin(), v.end(), [](auto& q) { return q != nullptr; }); };
  if (live(queues_) + live(poll_queues_) >= info_.max_queues) {
    return error(-EBUSY, "The device already has max-queues ({}) queues", info_.max_queues);
  }
  auto& v = poll ? poll_queues_ : queues_;
  if (v.size() >= static_cast<size_t>(INT_MAX)) return error(-ENOSPC, "Too many queues");
  auto q = make_queue(poll, static_cast<int>(v.size()));
  if (!q) return q.status();
  v.push_back(std::move(q.value()));
  return static_cast<int>(v.size() - 1);
}

Status Device::remove_queue(bool poll, int index) {
  std::lock_guard lock(control_);
  auto& v = poll ? poll_queues_ : queues_;
  if (index < 0 || static_cast<size_t>(index) >= v.size() || !v[index]) {
    return error(-ENOENT, "no queue with index {}", index);
  }
  v[index].reset();
  return {};
}

// ---- memory regions ----

Status Device::alloc_mem_region(MemRegion& region, size_t len) {
  std::lock_guard lock(control_);
  if (state_ != State::kStarted) return error(-ENODEV, "Device must be started");
  if (len == 0) return error(-EINVAL, "len must be greater than 0");
  if (len % info_.mem_region_alignment != 0) {
    return error(-EINVAL, "len must be a multiple of mem-region-alignment ({})", info_.mem_region_alignment);
  }
  size_t map_len = round_up(len, std::max<uint64_t>(page_size(), info_.mem_region_alignment));
  UniqueFd fd(::memfd_create("blkstack-mem-region", MFD_CLOEXEC));
  if (!fd.valid()) return errno_error("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(map_len)) != 0) return errno_error("ftruncate");
  void* addr = ::mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (addr == MAP_FAILED) return errno_error("mmap");
  region = MemRegion{addr, len, 0, 0, fd.release(), 0};
  allocated_.push_back(region);
  return {};
}

void Device::free_mem_region(const MemRegion& region) {
  std::lock_guard lock(control_);
  auto it = std::find_if(allocated_.begin(), allocated_.end(), [&](const MemRegion& m) { return m.same_as(region); });
  if (it == allocated_.end()) return;
  // blkio(3) forbids freeing a mapped region; unmapping first keeps a
  // careless caller from leaving the driver with a dangling buffer.
  unmap_locked(region);
  ::munmap(it->addr, round_up(it->len, std::max<uint64_t>(page_size(), info_.mem_region_alignment)));
  ::close(it->fd);
  allocated_.erase(it);
}

Status Device::check_region(const MemRegion& r) const {
  const uint64_t align = info_.mem_region_alignment;
  if (r.len == 0) return error(-EINVAL, "Memory region len must be greater than 0");
  if (reinterpret_cast<uintptr_t>(r.addr) % align != 0 || r.len % align != 0) {
    return error(-EINVAL, "Memory region addr and len must be multiples of mem-region-alignment ({})", align);
  }
  if (reinterpret_cast<uintptr_t>(r.addr) + r.len < reinterpret_cast<uintptr_t>(r.addr)) {
    return error(-EINVAL, "Memory region wraps around the address space");
  }
  if (r.iova != 0) return error(-EINVAL, "Memory region iova is reserved and must be 0");
  if (r.flags != 0) return error(-EINVAL, "Memory region flags are reserved and must be 0");
  if (info_.needs_mem_region_fd && r.fd < 0) {
    return error(-EINVAL, "This driver needs a file descriptor for each memory region");
  }
  if (r.fd >= 0 && ::fcntl(r.fd, F_GETFD) < 0) return error(-EBADF, "Memory region fd is not open");
  return {};
}

void Device::publish_regions(std::unique_ptr<RegionTable> table) {
  regions_.store(table.get(), std::memory_order_release);
  region_tables_.push_back(std::move(table));
}

Status Device::map_mem_region(const MemRegion& region) {
  std::lock_guard lock(control_);
  if (state_ != State::kStarted) return error(-ENODEV, "Device must be started");
  if (Status s = check_region(region); !s) return s;
  const RegionTable& cur = regions();
  if (cur.exact(region)) return error(-EINVAL, "memory region already mapped");
  if (cur.overlapping(reinterpret_cast<uintptr_t>(region.addr), region.len)) {
    return error(-EINVAL, "memory region overlaps a mapped region");
  }
  if (cur.all().size() >= info_.max_mem_regions) {
    return error(-ENOSPC, "max-mem-regions ({}) regions are already mapped", info_.max_mem_regions);
  }
  MappedRegion mr;
  mr.desc = region;
  mr.begin = reinterpret_cast<uintptr_t>(region.addr);
  mr.end = mr.begin + region.len;
  if (Status s = driver_->map_region(mr); !s) return s;
  std::vector<DriverQueue*> told;
  for (auto* v : {&queues_, &poll_queues_}) {
    for (auto& q : *v) {
      if (!q) continue;
      if (Status s = q->driver_queue().map_region(mr); !s) {
        for (DriverQueue* d : told) d->unmap_region(mr);
        driver_->unmap_region(mr);
        return s;
      }
      told.push_back(&q->driver_queue());
    }
  }
  std::vector<MappedRegion> regions = cur.all();
  regions.push_back(mr);
  publish_regions(std::make_unique<RegionTable>(std::move(regions)));
  return {};
}

void Device::unmap_mem_region(const MemRegion& region) {
  std::lock_guard lock(control_);
  unmap_locked(region);
}

void Device::unmap_locked(const MemRegion& region) {
  const RegionTable& cur = regions();
  const MappedRegion* mr = cur.exact(region);
  if (!mr) return;
  MappedRegion gone = *mr;
  std::vector<MappedRegion> regions;
  for (const MappedRegion& r : cur.all()) {
    if (!r.desc.same_as(region)) regions.push_back(r);
  }
  publish_regions(std::make_unique<RegionTable>(std::move(regions)));
  for (auto* v : {&queues_, &poll_queues_}) {
    for (auto& q : *v) {
      if (q) q->driver_queue().unmap_region(gone);
    }
  }
  driver_->unmap_region(gone);
}

}  // namespace blkstack
