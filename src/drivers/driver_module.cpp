#include "drivers/driver_module.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace blkstack {

namespace {

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::vector<std::string> search_dirs() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("BLKSTACK_DRIVER_DIR"); env && *env) dirs.emplace_back(env);
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&load_driver_module), &info) && info.dli_fname) {
    std::string self = info.dli_fname;
    // A program's own path may be bare (argv[0] resolution is not dladdr's job).
    if (self.find('/') == std::string::npos) {
      char buf[4096];
      ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
      if (n > 0) self.assign(buf, static_cast<size_t>(n));
    }
    dirs.push_back(dir_of(self) + "/blkstack-drivers");
  }
  dirs.emplace_back(BLKSTACK_BUILD_DRIVER_DIR);
  dirs.emplace_back(BLKSTACK_INSTALL_DRIVER_DIR);
  return dirs;
}

}  // namespace

Result<std::unique_ptr<Driver>> load_driver_module(std::string_view name) {
  std::string file = std::string(name) + ".so";
  std::string tried;
  for (const std::string& dir : search_dirs()) {
    std::string path = dir + "/" + file;
    if (::access(path.c_str(), F_OK) != 0) {
      tried += (tried.empty() ? "" : ", ") + path;
      continue;
    }
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = ::dlerror();
      return error(-ELIBACC, "driver {}: cannot load {}: {}", name, path, why ? why : "dlopen failed");
    }
    // Never dlclose: librbd and friends keep threads alive past their last
    // handle, and an unmapped module under a running thread is a crash.
    using EntryFn = const DriverModule* (*)();
    auto entry = reinterpret_cast<EntryFn>(::dlsym(handle, kDriverModuleSymbol));
    if (!entry) return error(-ELIBBAD, "driver {}: {} has no {}", name, path, kDriverModuleSymbol);
    const DriverModule* m = entry();
    if (name != m->name) return error(-ELIBBAD, "driver {}: {} holds the {} driver", name, path, m->name);
    if (std::strcmp(m->abi_tag, BLKSTACK_ABI_TAG) != 0) {
      return error(-ELIBBAD, "driver {}: {} is from another build ({}, expected {})", name, path, m->abi_tag,
                   BLKSTACK_ABI_TAG);
    }
    return m->create();
  }
  return error(-ENOENT, "driver {}: module not found (tried {}; set BLKSTACK_DRIVER_DIR)", name, tried);
}

}  // namespace blkstack
