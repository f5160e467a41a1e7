#include "daemon/config.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <toml++/toml.h>

namespace blkstack {

Result<bool> parse_switch(std::string_view key, std::string_view v) {
  if (v == "on" || v == "true" || v == "yes" || v == "1") return true;
  if (v == "off" || v == "false" || v == "no" || v == "0") return false;
  return error(-EINVAL, "{}={}: expected on or off", key, v);
}

namespace {

// A device or export entry: "driver"/"type" becomes the head, the rest
// key=value in file order.
Result<KeyValueList> entry_from_json(const nlohmann::json& j, const char* head_key) {
  if (!j.is_object()) return error(-EINVAL, "expected an object for each entry");
  KeyValueList kv;
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string value;
    if (it->is_string()) {
      value = it->get<std::string>();
    } else if (it->is_boolean()) {
      value = it->get<bool>() ? "true" : "false";
    } else if (it->is_number_integer() || it->is_number_unsigned()) {
      value = it->dump();
    } else {
      return error(-EINVAL, "{}: values must be strings, numbers or booleans", it.key());
    }
    if (it.key() == head_key) {
      kv.head = value;
    } else {
      kv.items.emplace_back(it.key(), value);
    }
  }
  if (kv.head.empty()) return error(-EINVAL, "entry without \"{}\"", head_key);
  return kv;
}

Status apply_config(const nlohmann::json& j, DaemonConfig& c) {
  if (!j.is_object()) return error(-EINVAL, "the configuration must be an object/table");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const nlohmann::json& v = *it;
    if (k == "blockdev" || k == "export") {
      if (!v.is_array()) return error(-EINVAL, "{} must be a list", k);
      for (auto& e : v) {
        auto kv = entry_from_json(e, k == "blockdev" ? "driver" : "type");
        if (!kv) return error(kv.status().code(), "{}: {}", k, kv.status().message());
        (k == "blockdev" ? c.blockdevs : c.exports).push_back(std::move(*kv));
      }
    } else if (k == "threads" && v.is_number_unsigned()) {
      c.threads = v.get<unsigned>();
    } else if (k == "control" && v.is_string()) {
      c.control_socket = v.get<std::string>();
    } else if (k == "log-file" && v.is_string()) {
      c.log_file = v.get<std::string>();
    } else if (k == "log-level" && v.is_string()) {
      c.log_level = v.get<std::string>();
    } else if (k == "pool-size" && v.is_number_unsigned()) {
      c.pool_bytes = v.get<uint64_t>();
    } else if (k == "drain-timeout" && v.is_number() && v.get<double>() >= 0) {
      c.drain_timeout_s = v.get<double>();
    } else if (k == "tls" && v.is_object()) {
      for (auto t = v.begin(); t != v.end(); ++t) {
        if (t.key() == "verify-peer" && t->is_boolean()) {
          c.tls.verify_peer = t->get<bool>();
          continue;
        }
        if (!t->is_string()) return error(-EINVAL, "tls.{}: expected a string", t.key());
        std::string s = t->get<std::string>();
        if (t.key() == "creds") c.tls.creds_dir = s;
        else if (t.key() == "cert") c.tls.cert_file = s;
        else if (t.key() == "key") c.tls.key_file = s;
        else if (t.key() == "ca") c.tls.ca_file = s;
        else if (t.key() == "psk") c.tls.psk_file = s;
        else return error(-EINVAL, "unknown setting tls.{}", t.key());
      }
    } else {
      return error(-EINVAL, "unknown or malformed setting '{}'", k);
    }
  }
  return {};
}

}  // namespace

Status load_config_file(const std::string& path, DaemonConfig& c) {
  std::ifstream in(path);
  if (!in) return error(-ENOENT, "cannot open config file {}", path);
  nlohmann::json j;
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".toml") == 0) {
    try {
      toml::table t = toml::parse(in, path);
      std::ostringstream os;
      os << toml::json_formatter{t};
      j = nlohmann::json::parse(os.str());
    } catch (const toml::parse_error& e) {
      return error(-EINVAL, "{}: {}", path, e.what());
    } catch (const std::exception& e) {
      return error(-EINVAL, "{}: {}", path, e.what());
    }
  } else {
    try {
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      return error(-EINVAL, "{}: {}", path, e.what());
    }
  }
  return apply_config(j, c);
}

}  // namespace blkstack
