#include "blkstack/device_spec.hpp"

namespace blkstack {

std::optional<std::string> KeyValueList::get(std::string_view key) const {
  for (auto& [k, v] : items) {
    if (k == key) return v;
  }
  return std::nullopt;
}

std::optional<std::string> KeyValueList::take(std::string_view key) {
  for (auto it = items.begin(); it != items.end(); ++it) {
    if (it->first == key) {
      std::string v = std::move(it->second);
      items.erase(it);
      return v;
    }
  }
  return std::nullopt;
}

Result<KeyValueList> parse_key_values(std::string_view text) {
  // Split on single commas; ",," is a literal comma.
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < text.size(); i++) {
    if (text[i] == ',') {
      if (i + 1 < text.size() && text[i + 1] == ',') {
        parts.back() += ',';
        i++;
      } else {
        parts.emplace_back();
      }
    } else {
      parts.back() += text[i];
    }
  }
  KeyValueList kv;
  kv.head = parts[0];
  if (kv.head.empty() || kv.head.find('=') != std::string::npos) {
    return error(-EINVAL, "'{}': expected a name first, then key=value items", text);
  }
  for (size_t i = 1; i < parts.size(); i++) {
    size_t eq = parts[i].find('=');
    if (eq == std::string::npos || eq == 0) {
      return error(-EINVAL, "'{}': item '{}' is not key=value", text, parts[i]);
    }
    kv.items.emplace_back(parts[i].substr(0, eq), parts[i].substr(eq + 1));
  }
  return kv;
}

Result<std::unique_ptr<Device>> open_device(const KeyValueList& spec, const OpenOptions& options) {
  auto created = Device::create(spec.head);
  if (!created) return created.status();
  std::unique_ptr<Device> dev = std::move(created.value());

  auto set_all = [&](bool created_state) -> Status {
    for (auto& [k, v] : spec.items) {
      auto access = dev->property_access(k);
      if (!access) return error(access.status().code(), "{}: {}", k, access.status().message());
      bool early = access->writable & states::kCreated;
      if (early != created_state) continue;
      if (Status s = dev->set_str(k, v); !s) return error(s.code(), "{}={}: {}", k, v, s.message());
    }
    return {};
  };
  if (options.read_only) {
    if (Status s = dev->set("read-only", PropValue(true)); !s) return s;
  }
  if (Status s = set_all(true); !s) return s;
  if (Status s = dev->connect(); !s) return error(s.code(), "connect: {}", s.message());
  if (!spec.get("num-queues")) {
    if (Status s = dev->set("num-queues", PropValue(options.num_queues)); !s) return s;
  }
  if (!spec.get("num-poll-queues") && options.num_poll_queues) {
    if (Status s = dev->set("num-poll-queues", PropValue(options.num_poll_queues)); !s) return s;
  }
  if (Status s = set_all(false); !s) return s;
  if (Status s = dev->start(); !s) return error(s.code(), "start: {}", s.message());
  return dev;
}

}  // namespace blkstack
