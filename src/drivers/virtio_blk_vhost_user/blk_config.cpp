#include "drivers/virtio_blk_vhost_user/blk_config.hpp"

#include <linux/virtio_config.h>

#include <algorithm>
#include <climits>

#include "core/fd.hpp"
#include "vhost/virtqueue_driver.hpp"  // VIRTIO_RING_F_EVENT_IDX

namespace blkstack {

namespace {

constexpr uint64_t bit(unsigned b) { return 1ull << b; }
bool has(uint64_t features, unsigned b) { return features & bit(b); }
constexpr uint64_t kSector = 512;

}  // namespace

uint64_t virtio_blk_wanted_features() {
  // Not INDIRECT_DESC (chains are direct: header, data, status), not
  // CONFIG_WCE (we flush whenever asked, whatever the cache mode), not
  // GEOMETRY (meaningless here).
  return bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_BLK_F_SIZE_MAX) |
         bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_RO) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) |
         bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_MQ) | bit(VIRTIO_BLK_F_DISCARD) |
         bit(VIRTIO_BLK_F_WRITE_ZEROES);
}

Result<VirtioBlkGeometry> virtio_blk_geometry(uint64_t f, const virtio_blk_config& cfg, uint16_t queue_size) {
  VirtioBlkGeometry g;
  DeviceInfo& info = g.info;
  VirtioBlkCaps& caps = g.caps;

  // Logical block size: request offsets and lengths must be multiples of
  // it (and of the 512-byte sector virtio-blk addresses in).
  uint64_t blk = kSector;
  if (has(f, VIRTIO_BLK_F_BLK_SIZE) && cfg.blk_size != 0) {
    if (!is_pow2(cfg.blk_size) || cfg.blk_size < kSector || cfg.blk_size > (1u << 20)) {
      return error(-EPROTO, "virtio-blk device reports a block size of {} bytes", cfg.blk_size);
    }
    blk = cfg.blk_size;
  }
  info.capacity = cfg.capacity * kSector;
  info.request_alignment = static_cast<int>(blk);
  info.buf_alignment = 1;
  info.optimal_buf_alignment = 4096;
  info.optimal_io_alignment = static_cast<int>(blk);
  info.optimal_io_size = 0;
  if (has(f, VIRTIO_BLK_F_TOPOLOGY)) {
    if (cfg.physical_block_exp < 8) info.optimal_io_alignment = static_cast<int>(blk << cfg.physical_block_exp);
    if (cfg.opt_io_size > 0 && uint64_t{cfg.opt_io_size} * blk <= INT_MAX) {
      info.optimal_io_size = static_cast<int>(cfg.opt_io_size * blk);
    }
  }

  // Segments: a chain is header + data + status, all direct descriptors,
  // so the ring size bounds it as well as seg_max does.
  int segs = queue_size - 2;
  if (has(f, VIRTIO_BLK_F_SEG_MAX) && cfg.seg_max > 0) segs = std::min<int>(segs, static_cast<int>(cfg.seg_max));
  if (segs < 1) return error(-EINVAL, "queue-size {} leaves no room for data segments", queue_size);
  info.max_segments = segs;
  caps.max_segment_len = 1u << 30;  // descriptor lengths are 32-bit; keep well clear
  if (has(f, VIRTIO_BLK_F_SIZE_MAX) && cfg.size_max > 0) {
    caps.max_segment_len = std::min<uint32_t>(cfg.size_max, caps.max_segment_len);
    info.max_segment_len = static_cast<int>(caps.max_segment_len);
  }
  if (caps.max_segment_len < 4096) {
    return error(-EPROTO, "virtio-blk device allows segments of only {} bytes", caps.max_segment_len);
  }
  // A single buffer is cut into max_segment_len pieces, one descriptor each.
  uint64_t max_transfer = uint64_t{caps.max_segment_len} * static_cast<uint64_t>(segs);
  max_transfer = std::min<uint64_t>(max_transfer, INT_MAX);
  info.max_transfer = static_cast<int>(max_transfer - max_transfer % blk);

  g.read_only = has(f, VIRTIO_BLK_F_RO);
  caps.flush = has(f, VIRTIO_BLK_F_FLUSH);
  info.flush_needed = caps.flush;
  // virtio-blk has no FUA: the contract layer emulates it with a flush.
  info.supports_fua_natively = false;
  info.fua_native_write_zeroes = false;

  caps.discard = has(f, VIRTIO_BLK_F_DISCARD) && cfg.max_discard_sectors > 0 && cfg.max_discard_seg > 0;
  info.supports_discard = caps.discard;
  if (caps.discard) {
    uint64_t align = std::max<uint64_t>(uint64_t{cfg.discard_sector_alignment} * kSector, blk);
    if (!is_pow2(align) || align > (1u << 30)) align = blk;
    info.discard_alignment = static_cast<int>(align);
    uint64_t max = uint64_t{cfg.max_discard_sectors} * kSector;
    info.max_discard_len = max - max % align;
  }
  caps.write_zeroes = has(f, VIRTIO_BLK_F_WRITE_ZEROES) && cfg.max_write_zeroes_sectors > 0 &&
                      cfg.max_write_zeroes_seg > 0;
  caps.write_zeroes_may_unmap = caps.write_zeroes && cfg.write_zeroes_may_unmap;
  info.supports_write_zeroes = caps.write_zeroes;
  if (caps.write_zeroes) {
    uint64_t max = uint64_t{cfg.max_write_zeroes_sectors} * kSector;
    info.max_write_zeroes_len = max - max % blk;
  } else {
    info.max_write_zeroes_len = 0;  // the fallback writes any length
  }

  g.num_queues = has(f, VIRTIO_BLK_F_MQ) ? std::max<int>(cfg.num_queues, 1) : 1;
  return g;
}

}  // namespace blkstack
