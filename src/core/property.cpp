// Property text conversions, shared by blkio_get_str()/blkio_set_str(), the
// daemon's --blockdev options and the config file.
#include "blkstack/property.hpp"

#include <charconv>
#include <climits>

namespace blkstack {

const char* state_name(State s) {
  switch (s) {
    case State::kCreated: return "created";
    case State::kConnected: return "connected";
    case State::kStarted: return "started";
  }
  return "?";
}

const char* prop_type_name(PropType t) {
  switch (t) {
    case PropType::kBool: return "bool";
    case PropType::kInt: return "int";
    case PropType::kUint64: return "uint64";
    case PropType::kStr: return "str";
  }
  return "?";
}

std::string prop_to_string(const PropValue& v) {
  switch (type_of(v)) {
    case PropType::kBool: return std::get<bool>(v) ? "true" : "false";
    case PropType::kInt: return std::to_string(std::get<int>(v));
    case PropType::kUint64: return std::to_string(std::get<uint64_t>(v));
    case PropType::kStr: return std::get<std::string>(v);
  }
  return {};
}

namespace {

// Whole-string decimal parse: no sign for unsigned, no spaces, no base
// prefixes, no trailing characters, no overflow.
template <typename T>
bool parse_decimal(std::string_view text, T& out) {
  if (text.empty()) return false;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  if constexpr (std::is_unsigned_v<T>) {
    if (*first == '-' || *first == '+') return false;
  } else if (*first == '+') {
    return false;
  }
  auto [ptr, ec] = std::from_chars(first, last, out, 10);
  return ec == std::errc() && ptr == last;
}

}  // namespace

Result<PropValue> prop_from_string(PropType type, std::string_view text) {
  switch (type) {
    case PropType::kBool:
      if (text == "true") return PropValue(true);
      if (text == "false") return PropValue(false);
      return error(-EINVAL, "Value must be \"true\" or \"false\"");
    case PropType::kInt: {
      int v = 0;
      if (!parse_decimal(text, v)) return error(-EINVAL, "Value must be a signed 32-bit integer");
      return PropValue(v);
    }
    case PropType::kUint64: {
      uint64_t v = 0;
      if (!parse_decimal(text, v)) return error(-EINVAL, "Value must be an unsigned 64-bit integer");
      return PropValue(v);
    }
    case PropType::kStr:
      return PropValue(std::string(text));
  }
  return error(-EINVAL, "unknown property type");
}

}  // namespace blkstack
