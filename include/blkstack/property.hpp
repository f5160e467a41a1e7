// Typed properties: the configuration and introspection surface of a device.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "blkstack/status.hpp"

namespace blkstack {

enum class State : uint8_t { kCreated = 1, kConnected = 2, kStarted = 4 };

const char* state_name(State s);

// Bit masks of states, used to say when a property may be read or written.
namespace states {
inline constexpr uint8_t kNone = 0;
inline constexpr uint8_t kCreated = 1;
inline constexpr uint8_t kConnected = 2;
inline constexpr uint8_t kStarted = 4;
inline constexpr uint8_t kAfterConnect = kConnected | kStarted;
inline constexpr uint8_t kAll = kCreated | kConnected | kStarted;
}  // namespace states

enum class PropType : uint8_t { kBool, kInt, kUint64, kStr };

const char* prop_type_name(PropType t);

using PropValue = std::variant<bool, int, uint64_t, std::string>;

inline PropType type_of(const PropValue& v) { return static_cast<PropType>(v.index()); }

// Text conversions used by blkio_get_str()/blkio_set_str() and the command
// line: "true"/"false", decimal int, decimal uint64.
std::string prop_to_string(const PropValue& v);
Result<PropValue> prop_from_string(PropType type, std::string_view text);

// Describes one property of an object of type Owner.
template <typename Owner>
struct Property {
  std::string_view name;
  PropType type;
  uint8_t readable;  // states (bit mask) in which it may be read
  uint8_t writable;  // states (bit mask) in which it may be written
  PropValue (*get)(const Owner&);
  Status (*set)(Owner&, const PropValue&);  // null when never writable
};

}  // namespace blkstack
