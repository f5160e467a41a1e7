// The common properties of blkio(3), and property dispatch: access rules per
// state, type checks and text conversion, shared by every driver.
#include <algorithm>

#include "blkstack/device.hpp"
#include "core/driver.hpp"

namespace blkstack {

namespace {

using DP = Property<Device>;
using namespace states;

// Accessors: getters read the connect-time DeviceInfo or the device's own
// settings; the few writable ones validate before storing.
#define INFO_GETTER(field, type) [](const Device& d) { return PropValue(static_cast<type>(d.info().field)); }

}  // namespace

struct DeviceProperties {
  static const std::vector<DP>& table() {
    static const std::vector<DP> props = {
        {"can-add-queues", PropType::kBool, kAll, kNone,
         [](const Device& d) { return PropValue(d.driver_->can_add_queues()); }, nullptr},
        {"driver", PropType::kStr, kAll, kNone, [](const Device& d) { return PropValue(d.driver_name_); },
         nullptr},
        {"read-only", PropType::kBool, kAll, kCreated, [](const Device& d) { return PropValue(d.read_only_); },
         [](Device& d, const PropValue& v) {
           d.read_only_ = std::get<bool>(v);
           return Status{};
         }},
        {"capacity", PropType::kUint64, kAfterConnect, kNone,
         [](const Device& d) {
           const DeviceInfo& i = d.info();
           return PropValue(i.can_grow ? d.driver_->current_capacity(i.capacity) : i.capacity);
         },
         nullptr},
        {"max-queues", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(max_queues, int), nullptr},
        {"num-queues", PropType::kInt, kAfterConnect, kConnected,
         [](const Device& d) { return PropValue(d.num_queues_); },
         [](Device& d, const PropValue& v) {
           int n = std::get<int>(v);
           if (n < 0) return error(-EINVAL, "num-queues must be equal to or greater than 0");
           if (n > d.info_.max_queues) return error(-EINVAL, "num-queues must not exceed max-queues ({})", d.info_.max_queues);
           d.num_queues_ = n;
           return Status{};
         }},
        {"num-poll-queues", PropType::kInt, kAfterConnect, kConnected,
         [](const Device& d) { return PropValue(d.num_poll_queues_); },
         [](Device& d, const PropValue& v) {
           int n = std::get<int>(v);
           if (n < 0) return error(-EINVAL, "num-poll-queues must be equal to or greater than 0");
           if (n > d.info_.max_queues) return error(-EINVAL, "num-poll-queues must not exceed max-queues ({})", d.info_.max_queues);
           d.num_poll_queues_ = n;
           return Status{};
         }},
        {"supports-poll-queues", PropType::kBool, kAfterConnect, kNone, INFO_GETTER(supports_poll_queues, bool),
         nullptr},
        {"max-mem-regions", PropType::kUint64, kAfterConnect, kNone, INFO_GETTER(max_mem_regions, uint64_t),
         nullptr},
        {"may-pin-mem-regions", PropType::kBool, kAfterConnect, kNone, INFO_GETTER(may_pin_mem_regions, bool),
         nullptr},
        {"mem-region-alignment", PropType::kUint64, kAfterConnect, kNone,
         INFO_GETTER(mem_region_alignment, uint64_t), nullptr},
        {"needs-mem-regions", PropType::kBool, kAfterConnect, kNone, INFO_GETTER(needs_mem_regions, bool),
         nullptr},
        {"needs-mem-region-fd", PropType::kBool, kAfterConnect, kNone, INFO_GETTER(needs_mem_region_fd, bool),
         nullptr},
        {"optimal-io-alignment", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(optimal_io_alignment, int),
         nullptr},
        {"optimal-io-size", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(optimal_io_size, int), nullptr},
        {"request-alignment", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(request_alignment, int),
         nullptr},
        {"flush-needed", PropType::kBool, kAfterConnect, kNone, INFO_GETTER(flush_needed, bool), nullptr},
        {"buf-alignment", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(buf_alignment, int), nullptr},
        {"can-grow", PropType::kBool, kAfterConnect, kNone, INFO_GETTER(can_grow, bool), nullptr},
        {"max-segments", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(max_segments, int), nullptr},
        {"max-segment-len", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(max_segment_len, int), nullptr},
        {"max-transfer", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(max_transfer, int), nullptr},
        {"optimal-buf-alignment", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(optimal_buf_alignment, int),
         nullptr},
        {"supports-fua-natively", PropType::kBool, kAfterConnect, kNone,
         INFO_GETTER(supports_fua_natively, bool), nullptr},
        {"max-write-zeroes-len", PropType::kUint64, kAfterConnect, kNone,
         INFO_GETTER(max_write_zeroes_len, uint64_t), nullptr},
        {"discard-alignment", PropType::kInt, kAfterConnect, kNone, INFO_GETTER(discard_alignment, int), nullptr},
        {"discard-alignment-offset", PropType::kInt, kAfterConnect, kNone,
         INFO_GETTER(discard_alignment_offset, int), nullptr},
        {"max-discard-len", PropType::kUint64, kAfterConnect, kNone, INFO_GETTER(max_discard_len, uint64_t),
         nullptr},
    };
    return props;
  }
};

#undef INFO_GETTER

namespace {

// A property of either the device or its driver, with the owner bound.
struct BoundProperty {
  PropType type;
  uint8_t readable;
  uint8_t writable;
  const DP* common = nullptr;
  const DriverProperty* driver = nullptr;
};

template <typename P>
const P* find_in(std::span<const P> table, std::string_view name) {
  for (const P& p : table) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

Status access_error(uint8_t allowed, State now, bool writing) {
  if (allowed == states::kNone) return error(-EACCES, "Property is read-only");
  // Allowed only in a later state: the caller is early.
  if (allowed > static_cast<uint8_t>(now)) {
    return (allowed & states::kConnected) ? error(-ENODEV, "Device must be connected")
                                          : error(-ENODEV, "Device must be started");
  }
  return error(-EBUSY, "Cannot {} property in {} state", writing ? "set" : "get", state_name(now));
}

}  // namespace

static Result<BoundProperty> lookup(const Device& d, Driver& drv, std::string_view name) {
  if (const DP* p = find_in<DP>(DeviceProperties::table(), name)) {
    return BoundProperty{p->type, p->readable, p->writable, p, nullptr};
  }
  if (const DriverProperty* p = find_in<DriverProperty>(drv.properties(), name)) {
    return BoundProperty{p->type, p->readable, p->writable, nullptr, p};
  }
  (void)d;
  return error(-ENOENT, "Unknown property name");
}

Result<PropType> Device::property_type(std::string_view name) const {
  auto p = lookup(*this, *driver_, name);
  if (!p) return p.status();
  return p->type;
}

Result<Device::PropertyAccess> Device::property_access(std::string_view name) const {
  auto p = lookup(*this, *driver_, name);
  if (!p) return p.status();
  return PropertyAccess{p->type, p->readable, p->writable};
}

std::vector<std::string_view> Device::property_names() const {
  std::vector<std::string_view> names;
  for (const DP& p : DeviceProperties::table()) names.push_back(p.name);
  for (const DriverProperty& p : driver_->properties()) names.push_back(p.name);
  return names;
}

Result<PropValue> Device::get(std::string_view name, PropType type) const {
  auto p = lookup(*this, *driver_, name);
  if (!p) return p.status();
  if (p->type != type) {
    return error(-ENOTTY, "Property is not a{} {}", type == PropType::kInt ? "n" : "", prop_type_name(type));
  }
  if (!(p->readable & static_cast<uint8_t>(state_))) return access_error(p->readable, state_, false);
  return p->common ? p->common->get(*this) : p->driver->get(*driver_);
}

Result<std::string> Device::get_str(std::string_view name) const {
  auto t = property_type(name);
  if (!t) return t.status();
  auto v = get(name, *t);
  if (!v) return v.status();
  return prop_to_string(*v);
}

Status Device::set(std::string_view name, const PropValue& value) {
  std::lock_guard lock(control_);
  auto p = lookup(*this, *driver_, name);
  if (!p) return p.status();
  if (p->type != type_of(value)) {
    return error(-ENOTTY, "Property is not a{} {}", type_of(value) == PropType::kInt ? "n" : "",
                 prop_type_name(type_of(value)));
  }
  if (!(p->writable & static_cast<uint8_t>(state_))) return access_error(p->writable, state_, true);
  return p->common ? p->common->set(*this, value) : p->driver->set(*driver_, value);
}

Status Device::set_str(std::string_view name, std::string_view text) {
  auto t = property_type(name);
  if (!t) return t.status();
  auto v = prop_from_string(*t, text);
  if (!v) return v.status();
  return set(name, *v);
}

}  // namespace blkstack
