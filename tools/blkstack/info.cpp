// `blkstack info DRIVER,prop=value...`: every property of a connected device.
#include <nlohmann/json.hpp>

#include <iostream>

#include "blkstack/device_spec.hpp"
#include "commands.hpp"

namespace blkstack::cli {

namespace {

int run_info(const std::string& spec_text, bool json) {
  auto spec = parse_key_values(spec_text);
  if (!spec) {
    std::cerr << "blkstack info: " << spec.status().message() << "\n";
    return 2;
  }
  auto dev = Device::create(spec->head);
  if (!dev) {
    std::cerr << "blkstack info: " << spec->head << ": " << dev.status().message() << "\n";
    return 1;
  }
  for (auto& [k, v] : spec->items) {
    if (Status s = (*dev)->set_str(k, v); !s) {
      std::cerr << "blkstack info: " << k << "=" << v << ": " << s.message() << "\n";
      return 1;
    }
  }
  if (Status s = (*dev)->connect(); !s) {
    std::cerr << "blkstack info: connect: " << s.message() << "\n";
    return 1;
  }
  nlohmann::ordered_json j;
  size_t width = 0;
  for (auto name : (*dev)->property_names()) width = std::max(width, name.size());
  for (auto name : (*dev)->property_names()) {
    auto type = (*dev)->property_type(name);
    auto value = (*dev)->get(name, *type);
    if (!value) continue;  // not readable in this state
    if (json) {
      std::visit([&](auto&& v) { j[std::string(name)] = v; }, *value);
    } else {
      std::cout << std::string(name) << std::string(width + 2 - name.size(), ' ') << prop_to_string(*value) << "  ("
                << prop_type_name(*type) << ")\n";
    }
  }
  if (json) std::cout << j.dump(2) << "\n";
  return 0;
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show every property of a device");
  static std::string spec;
  static bool json = false;
  cmd->add_option("device", spec, "DRIVER[,property=value...], e.g. io_uring,path=disk.img")->required();
  cmd->add_flag("--json", json, "JSON output");
  cmd->callback([] { std::exit(run_info(spec, json)); });
}

}  // namespace blkstack::cli
