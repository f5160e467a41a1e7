// Devices described as text: "DRIVER,prop=value,prop=value" (a comma inside
// a value is written ",,", as in QEMU's option strings). Used by the command
// line, the config file and the control socket alike.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "blkstack/device.hpp"
#include "blkstack/status.hpp"

namespace blkstack {

struct KeyValueList {
  std::string head;  // the first, key-less item (e.g. the driver name)
  std::vector<std::pair<std::string, std::string>> items;

  std::optional<std::string> get(std::string_view key) const;
  // Removes and returns a key; later uses see it no more.
  std::optional<std::string> take(std::string_view key);
};

// Splits "head,k=v,k2=v2". Every item after the head must have '='.
Result<KeyValueList> parse_key_values(std::string_view text);

struct OpenOptions {
  int num_queues = 1;
  int num_poll_queues = 0;
  bool read_only = false;
};

// Creates a device of spec.head, sets each property in the first state that
// allows writing it (created-state ones before connect, the rest after),
// then starts it.
Result<std::unique_ptr<Device>> open_device(const KeyValueList& spec, const OpenOptions& options = {});

}  // namespace blkstack
