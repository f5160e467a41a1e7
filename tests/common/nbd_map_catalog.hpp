// An NBD export catalog backed by a map, for test servers and protocol tests
// (the daemon's catalog follows its live exports instead).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "exports/nbd/handshake.hpp"

namespace blkstack::nbd::test {

class MapCatalog : public ExportCatalog {
 public:
  void add(ExportInfo e) { exports_[e.name] = std::move(e); }
  ExportInfo& at(const std::string& n) { return exports_.at(n); }
  const ExportInfo* find(std::string_view name) const override {
    auto it = exports_.find(std::string(name));
    return it == exports_.end() ? nullptr : &it->second;
  }
  std::vector<const ExportInfo*> list() const override {
    std::vector<const ExportInfo*> v;
    for (auto& [k, e] : exports_) v.push_back(&e);
    return v;
  }

 private:
  std::map<std::string, ExportInfo> exports_;
};

}  // namespace blkstack::nbd::test
