// The driver side of the split virtqueue and the config-space translation,
// without a back-end: this test plays the device on the ring memory, so the
// EVENT_IDX rules and the paths qemu-storage-daemon never takes (SIZE_MAX,
// 4 KiB blocks, a read-only device) are checked exactly.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <vector>

#include "drivers/virtio_blk_vhost_user/blk_config.hpp"
#include "vhost/virtqueue_driver.hpp"

#include <linux/virtio_config.h>

using blkstack::vhost::VirtqueueDriver;

namespace {

struct Ring {
  explicit Ring(uint16_t size, bool event_idx)
      : mem(VirtqueueDriver::layout(size).bytes + 64, 0),
        base(reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(mem.data()) + 63) & ~uintptr_t{63})),
        vq(base, size, event_idx),
        size(size) {}
  // The device's side.
  uint16_t avail_idx() const { return vq.avail()->idx; }
  uint16_t avail_entry(uint16_t i) const { return vq.avail()->ring[i % size]; }
  uint16_t used_event() const { return vq.avail()->ring[size]; }
  void set_avail_event(uint16_t v) {
    auto* u = const_cast<vring_used*>(vq.used());
    std::memcpy(reinterpret_cast<char*>(u) + offsetof(vring_used, ring) + sizeof(vring_used_elem) * size, &v, 2);
  }
  void complete(uint16_t head, uint32_t len) {
    auto* u = const_cast<vring_used*>(vq.used());
    u->ring[u->idx % size] = {head, len};
    u->idx++;
  }
  std::vector<char> mem;
  char* base;
  VirtqueueDriver vq;
  uint16_t size;
};

}  // namespace

TEST(VirtqueueDriver, ChainsAreWrittenAndRecycled) {
  Ring r(8, true);
  VirtqueueDriver::Segment segs[3] = {{0x1000, 16, false}, {0x2000, 4096, true}, {0x3000, 1, true}};
  uint16_t head = r.vq.add(segs, 3);
  EXPECT_EQ(r.vq.free_descriptors(), 5);
  const vring_desc* d = r.vq.desc();
  EXPECT_EQ(d[head].addr, 0x1000u);
  EXPECT_EQ(d[head].flags, VRING_DESC_F_NEXT);
  uint16_t second = d[head].next;
  EXPECT_EQ(d[second].addr, 0x2000u);
  EXPECT_EQ(d[second].flags, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE);
  uint16_t third = d[second].next;
  EXPECT_EQ(d[third].len, 1u);
  EXPECT_EQ(d[third].flags, VRING_DESC_F_WRITE);
  // Not visible to the device before publish().
  EXPECT_EQ(r.avail_idx(), 0);
  EXPECT_TRUE(r.vq.publish());  // first kick: the device has seen nothing
  EXPECT_EQ(r.avail_idx(), 1);
  EXPECT_EQ(r.avail_entry(0), head);

  uint16_t got;
  uint32_t len;
  EXPECT_FALSE(r.vq.pop_used(got, len));
  r.complete(head, 4097);
  ASSERT_TRUE(r.vq.pop_used(got, len));
  EXPECT_EQ(got, head);
  EXPECT_EQ(len, 4097u);
  EXPECT_EQ(r.vq.free_descriptors(), 8);
  EXPECT_EQ(r.vq.in_flight(), 0);

  // Fill the whole ring many times over: the free list never leaks.
  for (int round = 0; round < 100; round++) {
    std::vector<uint16_t> heads;
    while (r.vq.free_descriptors() >= 2) heads.push_back(r.vq.add(segs, 2));
    r.vq.publish();
    for (uint16_t h : heads) r.complete(h, 0);
    for (size_t i = 0; i < heads.size(); i++) ASSERT_TRUE(r.vq.pop_used(got, len));
    ASSERT_EQ(r.vq.free_descriptors(), 8) << round;
  }
}

TEST(VirtqueueDriver, EventIdxKicksOnlyWhenTheDeviceAsked) {
  Ring r(16, true);
  VirtqueueDriver::Segment seg{0x1000, 512, false};
  r.vq.add(&seg, 1);
  EXPECT_TRUE(r.vq.publish());  // avail_event 0: wants to hear of entry 0
  // The device has not caught up (still asks about entry 0): no kick for 1.
  r.vq.add(&seg, 1);
  EXPECT_FALSE(r.vq.publish());
  // Nothing new: never a kick.
  EXPECT_FALSE(r.vq.publish());
  // The device caught up to 2 and went to sleep asking about entry 2.
  r.set_avail_event(2);
  r.vq.add(&seg, 1);
  r.vq.add(&seg, 1);
  EXPECT_TRUE(r.vq.publish());  // one kick for the batch of two
}

TEST(VirtqueueDriver, NotificationArmingAndSuppression) {
  Ring r(16, true);
  VirtqueueDriver::Segment seg{0x1000, 512, false};
  uint16_t h = r.vq.add(&seg, 1);
  r.vq.publish();
  EXPECT_FALSE(r.vq.arm_notifications());
  EXPECT_EQ(r.used_event(), 0);  // notify me about used entry 0
  r.complete(h, 0);
  EXPECT_TRUE(r.vq.arm_notifications());  // arrived meanwhile: reap, do not sleep
  uint16_t got;
  uint32_t len;
  ASSERT_TRUE(r.vq.pop_used(got, len));
  EXPECT_FALSE(r.vq.arm_notifications());
  EXPECT_EQ(r.used_event(), 1);
  r.vq.disarm_notifications();
  // The device would notify only if used_event fell in [old, new): it does not.
  EXPECT_FALSE(vring_need_event(r.used_event(), 2, 1));
  r.vq.suppress_notifications();
  EXPECT_FALSE(vring_need_event(r.used_event(), 2, 1));
  EXPECT_FALSE(vring_need_event(r.used_event(), 200, 1));
}

TEST(VirtqueueDriver, WithoutEventIdxTheFlagsDecide) {
  Ring r(8, false);
  VirtqueueDriver::Segment seg{0x1000, 512, false};
  r.vq.add(&seg, 1);
  EXPECT_TRUE(r.vq.publish());
  const_cast<vring_used*>(r.vq.used())->flags = VRING_USED_F_NO_NOTIFY;
  r.vq.add(&seg, 1);
  EXPECT_FALSE(r.vq.publish());
  r.vq.suppress_notifications();
  EXPECT_EQ(r.vq.avail()->flags, VRING_AVAIL_F_NO_INTERRUPT);
  r.vq.arm_notifications();
  EXPECT_EQ(r.vq.avail()->flags, 0);
}

TEST(VirtqueueDriver, BogusUsedIdsAreSkipped) {
  Ring r(8, true);
  VirtqueueDriver::Segment seg{0x1000, 512, false};
  uint16_t h = r.vq.add(&seg, 1);
  r.vq.publish();
  r.complete(7, 0);   // never issued
  r.complete(300, 0); // out of range
  r.complete(h, 0);
  uint16_t got;
  uint32_t len;
  ASSERT_TRUE(r.vq.pop_used(got, len));
  EXPECT_EQ(got, h);
  EXPECT_EQ(r.vq.bad_used_ids(), 2u);
  r.complete(h, 0);  // twice
  EXPECT_FALSE(r.vq.pop_used(got, len));
  EXPECT_EQ(r.vq.free_descriptors(), 8);
}

TEST(VirtioBlkConfig, LimitsFromTheConfigSpace) {
  using namespace blkstack;
  virtio_blk_config c{};
  c.capacity = 1 << 21;  // 1 GiB in sectors
  c.blk_size = 4096;
  c.seg_max = 32;
  c.size_max = 65536;
  c.max_discard_sectors = 2048;
  c.max_discard_seg = 1;
  c.discard_sector_alignment = 16;
  c.max_write_zeroes_sectors = 4096;
  c.max_write_zeroes_seg = 1;
  c.write_zeroes_may_unmap = 1;
  uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
               (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_DISCARD) |
               (1ull << VIRTIO_BLK_F_WRITE_ZEROES) | (1ull << VIRTIO_BLK_F_RO);
  auto g = virtio_blk_geometry(f, c, 256);
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_EQ(g->info.capacity, 1ull << 30);
  EXPECT_EQ(g->info.request_alignment, 4096);
  EXPECT_EQ(g->info.max_segments, 32);
  EXPECT_EQ(g->info.max_segment_len, 65536);
  EXPECT_EQ(g->info.max_transfer, 32 * 65536);
  EXPECT_TRUE(g->read_only);
  EXPECT_FALSE(g->caps.flush);
  EXPECT_FALSE(g->info.flush_needed);
  EXPECT_FALSE(g->info.supports_fua_natively);
  EXPECT_TRUE(g->info.supports_discard);
  EXPECT_EQ(g->info.discard_alignment, 8192);
  EXPECT_EQ(g->info.max_discard_len, 2048u * 512);
  EXPECT_TRUE(g->caps.write_zeroes_may_unmap);
  EXPECT_EQ(g->info.max_write_zeroes_len, 4096u * 512);
  EXPECT_EQ(g->num_queues, 1);  // no MQ

  // A small ring bounds segments below seg_max.
  g = virtio_blk_geometry(f, c, 8);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->info.max_segments, 6);

  // Features not offered: their fields are ignored.
  g = virtio_blk_geometry(1ull << VIRTIO_F_VERSION_1, c, 256);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->info.request_alignment, 512);
  EXPECT_FALSE(g->info.supports_discard);
  EXPECT_FALSE(g->info.supports_write_zeroes);
  EXPECT_FALSE(g->read_only);
  EXPECT_EQ(g->info.max_segment_len, 0);

  // Nonsense from the device is an error, not a crash later.
  c.blk_size = 1000;
  EXPECT_FALSE(virtio_blk_geometry(f, c, 256).ok());
}
