// The device side of split virtqueues (src/vhost/virtqueue_device.*) over a
// ring this test plays the driver for: chains, indirect tables, loops,
// out-of-bounds buffers, used ring and EVENT_IDX notification decisions.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "vhost/virtqueue_device.hpp"

using namespace blkstack::vhost;

namespace {

constexpr uint64_t kGpa = 0x100000;    // guest-physical base of the memory
constexpr uint64_t kUva = 0x7f000000;  // the front-end's virtual base
constexpr uint64_t kMemSize = 1 << 20;

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

// A driver's view: one guest memory region holding the rings at fixed
// offsets and data buffers above them.
class Ring {
 public:
  explicit Ring(uint16_t num = 8) : num(num), buf(kMemSize / 8) {
    mem_base = reinterpret_cast<uint8_t*>(buf.data());
    EXPECT_EQ(mem.add({kGpa, kMemSize, kUva, mem_base}), nullptr);
    layout = {num, kUva + kDescOff, kUva + kAvailOff, kUva + kUsedOff};
  }
  static constexpr uint64_t kDescOff = 0, kAvailOff = 0x4000, kUsedOff = 0x8000, kDataOff = 0x10000;

  Desc* desc() { return reinterpret_cast<Desc*>(mem_base + kDescOff); }
  uint16_t* avail() { return reinterpret_cast<uint16_t*>(mem_base + kAvailOff); }  // flags, idx, ring[], used_event
  uint16_t* used16() { return reinterpret_cast<uint16_t*>(mem_base + kUsedOff); }
  uint32_t* used_elem(uint16_t i) { return reinterpret_cast<uint32_t*>(mem_base + kUsedOff + 4 + 8 * (i % num)); }
  uint16_t& used_event() { return avail()[2 + num]; }
  uint16_t avail_event() { return *reinterpret_cast<uint16_t*>(mem_base + kUsedOff + 4 + 8 * num); }
  uint64_t data_gpa(uint64_t off) { return kGpa + kDataOff + off; }
  uint8_t* data_host(uint64_t off) { return mem_base + kDataOff + off; }

  void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) { desc()[i] = {addr, len, flags, next}; }
  void make_available(uint16_t head) {
    avail()[2 + (avail_idx % num)] = head;
    avail_idx++;
    avail()[1] = avail_idx;
  }
  const char* attach(bool event_idx = false, bool indirect = true) { return vq.attach(mem, layout, 0, event_idx, indirect); }

  uint16_t num;
  std::vector<uint64_t> buf;
  uint8_t* mem_base;
  GuestMemory mem;
  RingLayout layout;
  VirtqueueDevice vq;
  uint16_t avail_idx = 0;
  Chain chain;
};

}  // namespace

TEST(VhostGuestMemory, TranslatesWithBounds) {
  GuestMemory m;
  std::vector<uint8_t> a(4096), b(4096);
  ASSERT_EQ(m.add({0x1000, 4096, 0x9000, a.data()}), nullptr);
  ASSERT_EQ(m.add({0x2000, 4096, 0xa000, b.data()}), nullptr);
  EXPECT_NE(m.add({0x1800, 4096, 0xb000, b.data()}), nullptr) << "overlap accepted";
  EXPECT_NE(m.add({UINT64_MAX - 10, 4096, 0, b.data()}), nullptr) << "wrapping region accepted";
  EXPECT_NE(m.add({0x5000, 0, 0, b.data()}), nullptr) << "empty region accepted";
  EXPECT_EQ(m.gpa_to_host(0x1000, 4096), a.data());
  EXPECT_EQ(m.gpa_to_host(0x1fff, 1), a.data() + 4095);
  EXPECT_EQ(m.gpa_to_host(0x1fff, 2), nullptr) << "range crossing regions must not translate as one";
  EXPECT_EQ(m.gpa_to_host(0xfff, 1), nullptr);
  EXPECT_EQ(m.gpa_to_host(0x3000, 1), nullptr);
  EXPECT_EQ(m.gpa_to_host(0x1000, UINT64_MAX), nullptr);
  EXPECT_EQ(m.uva_to_host(0xa010, 16), b.data() + 16);
  EXPECT_EQ(m.uva_to_host(0x1000, 1), nullptr) << "gpa used as uva";
  EXPECT_TRUE(m.remove(0x1000, 4096));
  EXPECT_FALSE(m.remove(0x1000, 4096));
  EXPECT_EQ(m.gpa_to_host(0x1000, 1), nullptr);
  EXPECT_EQ(m.gpa_to_host(0x2000, 1), b.data());
}

TEST(VhostVirtqueue, AttachChecksLayout) {
  Ring r;
  EXPECT_EQ(r.attach(), nullptr);
  RingLayout bad = r.layout;
  bad.num = 6;
  EXPECT_NE(r.vq.attach(r.mem, bad, 0, false, false), nullptr) << "non-power-of-two size";
  bad = r.layout;
  bad.desc += 8;
  EXPECT_NE(r.vq.attach(r.mem, bad, 0, false, false), nullptr) << "misaligned descriptor table";
  bad = r.layout;
  bad.used = kUva + kMemSize - 8;
  EXPECT_NE(r.vq.attach(r.mem, bad, 0, false, false), nullptr) << "used ring past the end of memory";
  bad = r.layout;
  bad.avail = kGpa + Ring::kAvailOff;
  EXPECT_NE(r.vq.attach(r.mem, bad, 0, false, false), nullptr) << "ring address given as gpa";
}

TEST(VhostVirtqueue, PopsChainReadableThenWritable) {
  Ring r;
  ASSERT_EQ(r.attach(), nullptr);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kEmpty);
  r.set_desc(3, r.data_gpa(0), 16, kDescFNext, 5);
  r.set_desc(5, r.data_gpa(4096), 4096, kDescFNext | kDescFWrite, 1);
  r.set_desc(1, r.data_gpa(8192), 1, kDescFWrite);
  r.make_available(3);
  ASSERT_EQ(r.vq.pop(r.chain), PopResult::kOk) << r.chain.error;
  EXPECT_EQ(r.chain.head, 3);
  EXPECT_EQ(r.chain.n_readable, 1);
  EXPECT_EQ(r.chain.n_writable, 2);
  EXPECT_EQ(r.chain.readable_bytes, 16u);
  EXPECT_EQ(r.chain.writable_bytes, 4097u);
  EXPECT_EQ(r.chain.iov[0].iov_base, r.data_host(0));
  EXPECT_EQ(r.chain.iov[1].iov_base, r.data_host(4096));
  EXPECT_EQ(r.chain.iov[2].iov_len, 1u);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kEmpty);
  r.vq.push(3, 4097);
  EXPECT_EQ(r.used16()[1], 1);
  EXPECT_EQ(r.used_elem(0)[0], 3u);
  EXPECT_EQ(r.used_elem(0)[1], 4097u);
}

TEST(VhostVirtqueue, IndirectTable) {
  Ring r;
  ASSERT_EQ(r.attach(), nullptr);
  auto* table = reinterpret_cast<Desc*>(r.data_host(0x1000));
  table[0] = {r.data_gpa(0x2000), 16, kDescFNext, 1};
  table[1] = {r.data_gpa(0x3000), 512, kDescFNext, 2};
  table[2] = {r.data_gpa(0x4000), 1, kDescFWrite, 0};
  r.set_desc(0, r.data_gpa(0x1000), 3 * 16, kDescFIndirect);
  r.make_available(0);
  ASSERT_EQ(r.vq.pop(r.chain), PopResult::kOk) << r.chain.error;
  EXPECT_EQ(r.chain.n_readable, 2);
  EXPECT_EQ(r.chain.n_writable, 1);
  EXPECT_EQ(r.chain.readable_bytes, 528u);

  // Without the feature, indirect descriptors are refused.
  Ring r2;
  ASSERT_EQ(r2.attach(false, false), nullptr);
  r2.set_desc(0, r2.data_gpa(0x1000), 16, kDescFIndirect);
  r2.make_available(0);
  EXPECT_EQ(r2.vq.pop(r2.chain), PopResult::kBadChain);
}

TEST(VhostVirtqueue, BadIndirectTables) {
  struct Case {
    const char* what;
    uint32_t len;
    uint16_t flags;
    bool nested;
    bool loop;
  } cases[] = {
      {"length not a multiple of 16", 20, kDescFIndirect, false, false},
      {"zero length", 0, kDescFIndirect, false, false},
      {"INDIRECT with NEXT", 32, kDescFIndirect | kDescFNext, false, false},
      {"nested indirect", 32, kDescFIndirect, true, false},
      {"loop inside the table", 32, kDescFIndirect, false, true},
  };
  for (auto& c : cases) {
    Ring r;
    ASSERT_EQ(r.attach(), nullptr);
    auto* table = reinterpret_cast<Desc*>(r.data_host(0x1000));
    table[0] = {r.data_gpa(0x2000), 16, kDescFNext, 1};
    table[1] = {r.data_gpa(0x3000), 1, kDescFWrite, 0};
    if (c.nested) table[1] = {r.data_gpa(0x1000), 32, kDescFIndirect, 0};
    if (c.loop) table[1] = {r.data_gpa(0x3000), 1, kDescFWrite | kDescFNext, 0};
    r.set_desc(0, r.data_gpa(0x1000), c.len, c.flags, 1);
    r.set_desc(1, r.data_gpa(0x3000), 1, kDescFWrite);
    r.make_available(0);
    EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain) << c.what;
    EXPECT_NE(r.chain.error, nullptr) << c.what;
  }
  // A table that runs off the end of guest memory.
  Ring r;
  ASSERT_EQ(r.attach(), nullptr);
  r.set_desc(0, kGpa + kMemSize - 16, 32, kDescFIndirect);
  r.make_available(0);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain);
}

TEST(VhostVirtqueue, LoopsAndLongChains) {
  Ring r(4);
  ASSERT_EQ(r.attach(), nullptr);
  // 0 -> 1 -> 0 -> ...
  r.set_desc(0, r.data_gpa(0), 16, kDescFNext, 1);
  r.set_desc(1, r.data_gpa(16), 16, kDescFNext, 0);
  r.make_available(0);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain);
  // A self loop.
  r.set_desc(2, r.data_gpa(0), 16, kDescFNext, 2);
  r.make_available(2);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain);
  // next out of range.
  r.set_desc(3, r.data_gpa(0), 16, kDescFNext, 4);
  r.make_available(3);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain);
  // Head consumed each time: the ring goes on.
  EXPECT_EQ(r.vq.last_avail(), 3);
  // A chain of exactly num descriptors is fine.
  for (uint16_t i = 0; i < 3; i++) r.set_desc(i, r.data_gpa(i * 16), 16, kDescFNext, i + 1);
  r.set_desc(3, r.data_gpa(64), 1, kDescFWrite);
  r.make_available(0);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kOk) << r.chain.error;
}

TEST(VhostVirtqueue, OutOfBoundsBuffers) {
  struct Case {
    const char* what;
    uint64_t addr;
    uint32_t len;
  } cases[] = {
      {"below memory", kGpa - 16, 16},
      {"above memory", kGpa + kMemSize, 16},
      {"runs past the end", kGpa + kMemSize - 8, 16},
      {"huge length", kGpa, UINT32_MAX},
      {"address wraps", UINT64_MAX - 4, 16},
  };
  for (auto& c : cases) {
    Ring r;
    ASSERT_EQ(r.attach(), nullptr);
    r.set_desc(0, c.addr, c.len, 0);
    r.make_available(0);
    EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain) << c.what;
  }
}

TEST(VhostVirtqueue, ReadableAfterWritableRejected) {
  Ring r;
  ASSERT_EQ(r.attach(), nullptr);
  r.set_desc(0, r.data_gpa(0), 1, kDescFWrite | kDescFNext, 1);
  r.set_desc(1, r.data_gpa(16), 16, 0);
  r.make_available(0);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBadChain);
}

TEST(VhostVirtqueue, SplitsBuffersAtRegionBoundaries) {
  // Two regions adjacent in guest-physical space, apart in ours.
  std::vector<uint8_t> a(8192), b(8192);
  GuestMemory m;
  ASSERT_EQ(m.add({0x10000, 8192, 0x10000, a.data()}), nullptr);
  ASSERT_EQ(m.add({0x12000, 8192, 0x12000, b.data()}), nullptr);
  auto* d = reinterpret_cast<Desc*>(a.data());
  auto* avail = reinterpret_cast<uint16_t*>(a.data() + 0x1000);
  d[0] = {0x11f00, 0x200, 0, 0};  // 0x100 bytes in a, 0x100 in b
  avail[2] = 0;
  avail[1] = 1;
  VirtqueueDevice vq;
  ASSERT_EQ(vq.attach(m, {4, 0x10000, 0x11000, 0x12000}, 0, false, false), nullptr);
  Chain c;
  ASSERT_EQ(vq.pop(c), PopResult::kOk) << c.error;
  ASSERT_EQ(c.n_readable, 2);
  EXPECT_EQ(c.iov[0].iov_base, a.data() + 0x1f00);
  EXPECT_EQ(c.iov[0].iov_len, 0x100u);
  EXPECT_EQ(c.iov[1].iov_base, b.data());
  EXPECT_EQ(c.iov[1].iov_len, 0x100u);
}

TEST(VhostVirtqueue, BrokenRing) {
  Ring r(4);
  ASSERT_EQ(r.attach(), nullptr);
  r.avail()[1] = 5;  // five available in a ring of four
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kBroken);
  EXPECT_TRUE(r.vq.broken());
  Ring r2(4);
  ASSERT_EQ(r2.attach(), nullptr);
  r2.make_available(7);  // head beyond the table
  EXPECT_EQ(r2.vq.pop(r2.chain), PopResult::kBroken);
  // Re-attaching (the front-end restarted the ring) clears it.
  r2.avail()[2] = 0;
  r2.set_desc(0, r2.data_gpa(0), 1, kDescFWrite);
  ASSERT_EQ(r2.attach(), nullptr);
  EXPECT_EQ(r2.vq.pop(r2.chain), PopResult::kOk);
}

TEST(VhostVirtqueue, ResumesFromBaseAndUsedIndex) {
  Ring r(4);
  r.used16()[1] = 6;  // a previous run returned six
  r.avail_idx = 6;
  r.avail()[1] = 6;
  ASSERT_EQ(r.vq.attach(r.mem, r.layout, 6, false, false), nullptr);
  EXPECT_EQ(r.vq.pop(r.chain), PopResult::kEmpty);
  r.set_desc(2, r.data_gpa(0), 1, kDescFWrite);
  r.make_available(2);
  ASSERT_EQ(r.vq.pop(r.chain), PopResult::kOk);
  r.vq.push(2, 1);
  EXPECT_EQ(r.used16()[1], 7);
  EXPECT_EQ(r.used_elem(6)[0], 2u);
}

TEST(VhostVirtqueue, NotificationWithoutEventIdx) {
  Ring r;
  ASSERT_EQ(r.attach(false), nullptr);
  r.set_desc(0, r.data_gpa(0), 1, kDescFWrite);
  r.make_available(0);
  ASSERT_EQ(r.vq.pop(r.chain), PopResult::kOk);
  r.vq.push(0, 1);
  EXPECT_TRUE(r.vq.should_notify());
  r.avail()[0] = kAvailFNoInterrupt;
  r.vq.push(0, 1);
  EXPECT_FALSE(r.vq.should_notify());
}

TEST(VhostVirtqueue, EventIdx) {
  Ring r;
  ASSERT_EQ(r.attach(true), nullptr);
  for (uint16_t i = 0; i < 4; i++) {
    r.set_desc(i, r.data_gpa(i * 16), 1, kDescFWrite);
    r.make_available(i);
  }
  for (int i = 0; i < 4; i++) ASSERT_EQ(r.vq.pop(r.chain), PopResult::kOk);
  // avail_event tells the driver where to kick next.
  EXPECT_FALSE(r.vq.arm_kick());
  EXPECT_EQ(r.avail_event(), 4);
  r.make_available(0);
  EXPECT_TRUE(r.vq.arm_kick()) << "a request that arrived before sleeping must be seen";

  // The first notification is always sent.
  r.vq.push(0, 1);
  EXPECT_TRUE(r.vq.should_notify());
  // Driver wants an interrupt when used idx passes 2 (used_event = 2).
  r.used_event() = 2;
  r.vq.push(1, 1);  // used idx 2: event 2 not yet passed
  EXPECT_FALSE(r.vq.should_notify());
  r.vq.push(2, 1);  // used idx 3: passed
  EXPECT_TRUE(r.vq.should_notify());
  r.vq.push(3, 1);  // used idx 4, event still 2: already signalled
  EXPECT_FALSE(r.vq.should_notify());
  EXPECT_FALSE(r.vq.should_notify()) << "nothing new";
  // Wrap-around of the 16-bit indices.
  EXPECT_TRUE(need_event(0xffff, 0x0001, 0xfffe));
  EXPECT_FALSE(need_event(0x0005, 0x0001, 0xfffe));
}
