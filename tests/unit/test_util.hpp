// Helpers shared by the unit tests: scratch files and started C-ABI devices.
#pragma once

#include <blkio.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

namespace blkstack::test {

// A scratch file of `size` bytes that disappears with the object. dir picks
// the file system ("/dev/shm" for tmpfs, "/var/tmp" for a disk).
class TempFile {
 public:
  explicit TempFile(uint64_t size, const char* dir = "/var/tmp") {
    path_ = std::string(dir) + "/blkstack-test-XXXXXX";
    int fd = mkstemp(path_.data());
    if (fd < 0) {
      ADD_FAILURE() << "mkstemp in " << dir;
      return;
    }
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) ADD_FAILURE() << "ftruncate";
    close(fd);
  }
  ~TempFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }
  std::vector<char> contents() const {
    std::vector<char> data;
    int fd = open(path_.c_str(), O_RDONLY);
    struct stat st {};
    fstat(fd, &st);
    data.resize(static_cast<size_t>(st.st_size));
    if (pread(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) ADD_FAILURE() << "pread";
    close(fd);
    return data;
  }
  void write_at(uint64_t off, const std::string& bytes) const {
    int fd = open(path_.c_str(), O_WRONLY);
    if (pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(bytes.size())) {
      ADD_FAILURE() << "pwrite";
    }
    close(fd);
  }
  // Bytes actually allocated on disk.
  uint64_t allocated() const {
    struct stat st {};
    stat(path_.c_str(), &st);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

 private:
  std::string path_;
};

// Owns a struct blkio.
class Blkio {
 public:
  explicit Blkio(const char* driver) { EXPECT_EQ(blkio_create(driver, &b_), 0) << blkio_get_error_msg(); }
  ~Blkio() { blkio_destroy(&b_); }
  Blkio(const Blkio&) = delete;
  blkio* get() const { return b_; }
  operator blkio*() const { return b_; }  // NOLINT

  // Sets `props` (name=value, in created state), connects, starts.
  void open(const std::vector<std::pair<std::string, std::string>>& props, int num_queues = 1) {
    for (auto& [k, v] : props) ASSERT_EQ(blkio_set_str(b_, k.c_str(), v.c_str()), 0) << k << ": " << blkio_get_error_msg();
    ASSERT_EQ(blkio_connect(b_), 0) << blkio_get_error_msg();
    ASSERT_EQ(blkio_set_int(b_, "num-queues", num_queues), 0) << blkio_get_error_msg();
    ASSERT_EQ(blkio_start(b_), 0) << blkio_get_error_msg();
  }

 private:
  blkio* b_ = nullptr;
};

// Waits for exactly one completion and returns it.
inline blkio_completion wait_one(blkioq* q) {
  blkio_completion c{};
  int n = blkioq_do_io(q, &c, 1, 1, nullptr);
  EXPECT_EQ(n, 1) << blkio_get_error_msg();
  return c;
}

}  // namespace blkstack::test
