// The vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): message
// codes, flags and payload layouts shared by the virtio-blk-vhost-user driver
// (front-end) and the vhost-user-blk export (back-end). Facts only: numbers
// and layouts; the logic lives in vhost_user_message.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blkstack::vhost {

// Front-end -> back-end requests.
enum class Request : uint32_t {
  kNone = 0,
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
};
const char* request_name(Request r);

// Header flags.
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;

// Virtio feature bit that says the protocol-feature messages exist.
inline constexpr uint64_t kFeatureProtocolFeatures = 1ull << 30;

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
enum ProtocolFeature : uint64_t {
  kProtoMq = 1ull << 0,
  kProtoLogShmfd = 1ull << 1,
  kProtoRarp = 1ull << 2,
  kProtoReplyAck = 1ull << 3,
  kProtoMtu = 1ull << 4,
  kProtoBackendReq = 1ull << 5,
  kProtoCrossEndian = 1ull << 6,
  kProtoCryptoSession = 1ull << 7,
  kProtoPagefault = 1ull << 8,
  kProtoConfig = 1ull << 9,
  kProtoBackendSendFd = 1ull << 10,
  kProtoHostNotifier = 1ull << 11,
  kProtoInflightShmfd = 1ull << 12,
  kProtoResetDevice = 1ull << 13,
  kProtoInbandNotifications = 1ull << 14,
  kProtoConfigureMemSlots = 1ull << 15,
  kProtoStatus = 1ull << 16,
};

struct Header {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes that follow
};
static_assert(sizeof(Header) == 12);

// SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE.
struct VringState {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(VringState) == 8);

// SET_VRING_ADDR: addresses in the front-end's own address space.
struct VringAddr {
  uint32_t index;
  uint32_t flags;  // bit 0: log writes to the used ring
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);

// SET_VRING_KICK / CALL / ERR carry a u64: the queue index in the low byte,
// kVringNoFd when no descriptor is attached (polling).
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFd = 1ull << 8;

struct MemoryRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;  // the front-end's virtual address of the region
  uint64_t mmap_offset;     // where the region starts in the attached fd
};
static_assert(sizeof(MemoryRegion) == 32);

// SET_MEM_TABLE: one fd per region, in order.
inline constexpr uint32_t kMaxMemTableRegions = 8;
struct MemoryTable {
  uint32_t nregions;
  uint32_t padding;
  MemoryRegion regions[kMaxMemTableRegions];
};
static_assert(sizeof(MemoryTable) == 8 + 8 * 32);
inline constexpr size_t memory_table_size(uint32_t n) { return 8 + n * sizeof(MemoryRegion); }

// ADD_MEM_REG / REM_MEM_REG (CONFIGURE_MEM_SLOTS).
struct SingleMemoryRegion {
  uint64_t padding;
  MemoryRegion region;
};
static_assert(sizeof(SingleMemoryRegion) == 40);

// GET_CONFIG / SET_CONFIG.
inline constexpr uint32_t kMaxConfigSize = 256;
struct ConfigSpace {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;  // 0: writable fields, 1: migration
  uint8_t payload[kMaxConfigSize];
};
inline constexpr size_t kConfigHeaderSize = 12;
static_assert(sizeof(ConfigSpace) == kConfigHeaderSize + kMaxConfigSize);

// GET_INFLIGHT_FD / SET_INFLIGHT_FD.
struct InflightDesc {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
};
static_assert(sizeof(InflightDesc) == 24);

// The largest payload either side accepts; anything bigger is malformed.
inline constexpr uint32_t kMaxPayload = 4096;
// The most descriptors one message may carry (SCM_RIGHTS).
inline constexpr size_t kMaxFds = 8;

}  // namespace blkstack::vhost
