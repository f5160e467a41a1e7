// Daemon logging: spdlog with one line per event ("time level component:
// message key=value ..."), to stderr or to a file that SIGHUP reopens.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

#include "blkstack/status.hpp"

namespace blkstack {

class Logging {
 public:
  Status init(const std::string& file, const std::string& level);
  void reopen();  // after log rotation

 private:
  std::shared_ptr<spdlog::logger> make(std::string& err) const;
  std::string file_;
};

}  // namespace blkstack
