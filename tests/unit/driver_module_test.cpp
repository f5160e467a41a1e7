// Driver modules (src/drivers/driver_module.hpp): the network drivers load on
// first use, and a wrong or broken module file is refused with a message
// instead of being run.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

#include "blkstack/device.hpp"

namespace fs = std::filesystem;

namespace {

// A private BLKSTACK_DRIVER_DIR for one test, restored afterwards.
class DriverDir {
 public:
  DriverDir() : dir_(fs::temp_directory_path() / ("blkstack-modules-" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
    ::setenv("BLKSTACK_DRIVER_DIR", dir_.c_str(), 1);
  }
  ~DriverDir() {
    ::unsetenv("BLKSTACK_DRIVER_DIR");
    fs::remove_all(dir_);
  }
  fs::path path(const char* name) const { return dir_ / name; }

 private:
  fs::path dir_;
};

}  // namespace

TEST(DriverModule, NetworkDriversLoadOnDemand) {
  for (const char* name : {"nbd", "rbd"}) {
    auto d = blkstack::Device::create(name);
    ASSERT_TRUE(d.ok()) << name << ": " << d.status().message();
    EXPECT_EQ((*d)->driver_name(), name);
  }
}

TEST(DriverModule, ModuleOfAnotherDriverIsRefused) {
  DriverDir dir;
  fs::copy_file(fs::path(BLKSTACK_BUILD_DRIVER_DIR) / "nbd.so", dir.path("rbd.so"));
  auto d = blkstack::Device::create("rbd");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), -ELIBBAD);
  EXPECT_NE(d.status().message().find("holds the nbd driver"), std::string::npos) << d.status().message();
}

TEST(DriverModule, BrokenModuleIsRefused) {
  DriverDir dir;
  std::ofstream(dir.path("nbd.so")) << "not an ELF file";
  auto d = blkstack::Device::create("nbd");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), -ELIBACC);
  EXPECT_NE(d.status().message().find("cannot load"), std::string::npos) << d.status().message();
}

TEST(DriverModule, BuiltinDriversNeedNoModule) {
  DriverDir dir;  // empty: nothing to load from here
  for (const char* name : {"io_uring", "null"}) {
    auto d = blkstack::Device::create(name);
    EXPECT_TRUE(d.ok()) << name << ": " << d.status().message();
  }
}
