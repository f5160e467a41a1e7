#include "daemon/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace blkstack {

std::shared_ptr<spdlog::logger> Logging::make(std::string& err) const {
  try {
    spdlog::drop("blkstack");
    auto logger = file_.empty() ? spdlog::stderr_color_mt("blkstack") : spdlog::basic_logger_mt("blkstack", file_);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
    logger->flush_on(spdlog::level::info);
    return logger;
  } catch (const spdlog::spdlog_ex& e) {
    err = e.what();
    return nullptr;
  }
}

Status Logging::init(const std::string& file, const std::string& level) {
  file_ = file;
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return error(-EINVAL, "unknown log level '{}'", level);
  std::string err;
  auto logger = make(err);
  if (!logger) return error(-EIO, "log: {}", err);
  logger->set_level(lvl);
  spdlog::set_default_logger(logger);
  return {};
}

void Logging::reopen() {
  if (file_.empty()) return;
  auto old = spdlog::default_logger();
  std::string err;
  auto logger = make(err);
  if (!logger) {
    spdlog::set_default_logger(old);
    spdlog::error("daemon: cannot reopen log file {}: {}", file_, err);
    return;
  }
  logger->set_level(old->level());
  spdlog::set_default_logger(logger);
  spdlog::info("daemon: log file reopened file={}", file_);
}

}  // namespace blkstack
