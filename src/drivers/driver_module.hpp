// Loadable driver modules: blkstack-drivers/<name>.so next to the library (or
// program) that uses them. A module is built from this same tree with the
// same compiler and flags, links its own copy of the core code it needs, and
// exports one C symbol; the ABI tag, fixed at configure time, refuses a module
// from another build instead of crashing on a mismatched class layout.
#pragma once

#include <memory>
#include <string_view>

#include "core/driver.hpp"

namespace blkstack {

struct DriverModule {
  const char* abi_tag;  // must equal BLKSTACK_ABI_TAG of the loader
  const char* name;
  std::unique_ptr<Driver> (*create)();
};

// The symbol every module exports.
inline constexpr const char* kDriverModuleSymbol = "blkstack_driver_module_v1";

// Loads (once per process: dlopen counts references) the module for `name`
// and creates a driver instance. Searched, in order: $BLKSTACK_DRIVER_DIR,
// blkstack-drivers/ beside the object holding this code (libblkio.so.1, or
// the program it is linked into), the build tree, the install directory.
Result<std::unique_ptr<Driver>> load_driver_module(std::string_view name);

}  // namespace blkstack

// In a module's source: BLKSTACK_DRIVER_MODULE("rbd", &RbdDriver::create).
#define BLKSTACK_DRIVER_MODULE(NAME, CREATE)                                            \
  extern "C" __attribute__((visibility("default"))) const blkstack::DriverModule*       \
  blkstack_driver_module_v1() {                                                         \
    static const blkstack::DriverModule module{BLKSTACK_ABI_TAG, NAME, CREATE};         \
    return &module;                                                                     \
  }
