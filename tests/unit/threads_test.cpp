// Two queues driven by two threads at once (run under TSan in CI): queues of
// one device share nothing on the data path.
#include <cstring>
#include <thread>

#include "native_test_util.hpp"
#include "test_util.hpp"

using namespace blkstack;
using blkstack::test::open_device;
using blkstack::test::pattern;
using blkstack::test::TempFile;

TEST(Threads, TwoQueuesTwoThreads) {
  TempFile f(8 << 20, "/dev/shm");
  auto dev = open_device("io_uring", {{"path", f.path()}}, 2);
  ASSERT_TRUE(dev);
  MemRegion r{};
  ASSERT_TRUE(dev->alloc_mem_region(r, 2 << 20).ok());
  ASSERT_TRUE(dev->map_mem_region(r).ok());

  auto worker = [&](int id) {
    Queue& q = *dev->queue(id);
    char* buf = static_cast<char*>(r.addr) + (id << 20);
    uint64_t base = static_cast<uint64_t>(id) * (4 << 20);
    for (int round = 0; round < 50; round++) {
      std::string data = pattern(64 * 1024, static_cast<unsigned>(id * 1000 + round));
      for (int i = 0; i < 16; i++) {
        memcpy(buf + i * 65536, data.data(), data.size());
        q.write(base + static_cast<uint64_t>(i) * 65536, buf + i * 65536, 65536, reinterpret_cast<void*>(uintptr_t(i)), 0);
      }
      Completion c[16];
      int got = 0;
      while (got < 16) {
        int n = q.do_io(c, 1, 16, nullptr);
        ASSERT_GT(n, 0);
        for (int k = 0; k < n; k++) ASSERT_EQ(c[k].ret, 0);
        got += n;
      }
      memset(buf, 0, 16 * 65536);
      for (int i = 0; i < 16; i++) q.read(base + static_cast<uint64_t>(i) * 65536, buf + i * 65536, 65536, nullptr, 0);
      ASSERT_EQ(q.do_io(c, 16, 16, nullptr), 16);
      for (int i = 0; i < 16; i++) ASSERT_EQ(memcmp(buf + i * 65536, data.data(), data.size()), 0);
    }
  };
  // Control path from a third thread while both queues are busy: mapping
  // and unmapping an unrelated region must be safe.
  std::thread t0(worker, 0), t1(worker, 1);
  for (int i = 0; i < 100; i++) {
    MemRegion extra{};
    ASSERT_TRUE(dev->alloc_mem_region(extra, 4096).ok());
    ASSERT_TRUE(dev->map_mem_region(extra).ok());
    dev->unmap_mem_region(extra);
    dev->free_mem_region(extra);
  }
  t0.join();
  t1.join();
}
