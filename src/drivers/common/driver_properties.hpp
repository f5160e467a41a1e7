// Property table entries that several drivers declare the same way: a string
// or a number of seconds kept in a driver member and settable until connect.
// The member pointer is named where the driver lists its properties (inside
// the class, so private members are fine).
#pragma once

#include <string>
#include <string_view>

#include "core/driver.hpp"

namespace blkstack {

template <class D, std::string D::*Field>
constexpr DriverProperty str_property(std::string_view name) {
  return {name, PropType::kStr, states::kAll, states::kCreated,
          [](const Driver& d) { return PropValue(static_cast<const D&>(d).*Field); },
          [](Driver& d, const PropValue& v) {
            static_cast<D&>(d).*Field = std::get<std::string>(v);
            return Status{};
          }};
}

// A timeout: 0 means none. Settable until connect unless `writable` says
// otherwise.
template <class D, int D::*Field, uint8_t writable = states::kCreated>
constexpr DriverProperty seconds_property(std::string_view name) {
  return {name, PropType::kInt, states::kAll, writable,
          [](const Driver& d) { return PropValue(static_cast<const D&>(d).*Field); },
          [](Driver& d, const PropValue& v) {
            int s = std::get<int>(v);
            if (s < 0) return error(-EINVAL, "a timeout must be 0 (none) or a number of seconds, not {}", s);
            static_cast<D&>(d).*Field = s;
            return Status{};
          }};
}

}  // namespace blkstack
