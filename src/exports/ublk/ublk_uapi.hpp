// The Linux ublk UAPI (as of Linux 6.12), written out as the facts it is:
// command numbers, flags and structure layouts. Our own definitions, so the
// build does not depend on the host's (possibly older) kernel headers.
#pragma once

#include <linux/ioctl.h>

#include <cstdint>

namespace blkstack::ublk {

// ---- control commands (on /dev/ublk-control, SQE128 uring_cmd) ----
struct CtrlCmd {
  uint32_t dev_id;
  uint16_t queue_id;  // 0xffff when not about a queue
  uint16_t len;       // bytes at addr
  uint64_t addr;
  uint64_t data[1];
  uint16_t dev_path_len;  // unprivileged devices and GET_DEV_INFO2: path bytes at the start of addr (with NUL)
  uint16_t pad;
  uint32_t reserved;
};
static_assert(sizeof(CtrlCmd) == 32);

inline constexpr unsigned kCmdGetQueueAffinity = 0x01;
inline constexpr unsigned kCmdGetDevInfo = 0x02;
inline constexpr unsigned kCmdAddDev = 0x04;
inline constexpr unsigned kCmdDelDev = 0x05;
inline constexpr unsigned kCmdStartDev = 0x06;
inline constexpr unsigned kCmdStopDev = 0x07;
inline constexpr unsigned kCmdSetParams = 0x08;
inline constexpr unsigned kCmdGetParams = 0x09;
inline constexpr unsigned kCmdStartUserRecovery = 0x10;
inline constexpr unsigned kCmdEndUserRecovery = 0x11;
inline constexpr unsigned kCmdGetDevInfo2 = 0x12;
inline constexpr unsigned kCmdGetFeatures = 0x13;

// The ioctl-encoded forms (UBLK_F_CMD_IOCTL_ENCODE).
constexpr uint32_t ctrl_ior(unsigned nr) { return _IOR('u', nr, CtrlCmd); }
constexpr uint32_t ctrl_iowr(unsigned nr) { return _IOWR('u', nr, CtrlCmd); }
inline constexpr uint32_t kUCmdGetDevInfo = ctrl_ior(kCmdGetDevInfo);
inline constexpr uint32_t kUCmdAddDev = ctrl_iowr(kCmdAddDev);
inline constexpr uint32_t kUCmdDelDev = ctrl_iowr(kCmdDelDev);
inline constexpr uint32_t kUCmdStartDev = ctrl_iowr(kCmdStartDev);
inline constexpr uint32_t kUCmdStopDev = ctrl_iowr(kCmdStopDev);
inline constexpr uint32_t kUCmdSetParams = ctrl_iowr(kCmdSetParams);
inline constexpr uint32_t kUCmdGetParams = ctrl_ior(kCmdGetParams);
inline constexpr uint32_t kUCmdStartUserRecovery = ctrl_iowr(kCmdStartUserRecovery);
inline constexpr uint32_t kUCmdEndUserRecovery = ctrl_iowr(kCmdEndUserRecovery);
inline constexpr uint32_t kUCmdGetDevInfo2 = ctrl_ior(kCmdGetDevInfo2);
inline constexpr uint32_t kUCmdGetFeatures = ctrl_ior(kCmdGetFeatures);

struct DevInfo {
  uint16_t nr_hw_queues;
  uint16_t queue_depth;
  uint16_t state;
  uint16_t pad0;
  uint32_t max_io_buf_bytes;
  uint32_t dev_id;
  int32_t ublksrv_pid;
  uint32_t pad1;
  uint64_t flags;
  uint64_t ublksrv_flags;
  uint32_t owner_uid;
  uint32_t owner_gid;
  uint64_t reserved1;
  uint64_t reserved2;
};
static_assert(sizeof(DevInfo) == 64);

inline constexpr uint16_t kStateDead = 0;
inline constexpr uint16_t kStateLive = 1;
inline constexpr uint16_t kStateQuiesced = 2;

// Device flags (DevInfo::flags, and what GET_FEATURES reports).
inline constexpr uint64_t kFSupportZeroCopy = 1ull << 0;
inline constexpr uint64_t kFUringCmdCompInTask = 1ull << 1;
inline constexpr uint64_t kFNeedGetData = 1ull << 2;
inline constexpr uint64_t kFUserRecovery = 1ull << 3;
inline constexpr uint64_t kFUserRecoveryReissue = 1ull << 4;
inline constexpr uint64_t kFUnprivilegedDev = 1ull << 5;
inline constexpr uint64_t kFCmdIoctlEncode = 1ull << 6;
inline constexpr uint64_t kFUserCopy = 1ull << 7;
inline constexpr uint64_t kFZoned = 1ull << 8;

// ---- I/O commands (on /dev/ublkcN, normal SQE uring_cmd, cmd at sqe->addr3) ----
struct IoCmd {
  uint16_t q_id;
  uint16_t tag;
  int32_t result;  // COMMIT: bytes done or -errno
  uint64_t addr;   // FETCH/COMMIT/NEED_GET_DATA: our buffer for this tag
};
static_assert(sizeof(IoCmd) == 16);

inline constexpr unsigned kIoFetchReq = 0x20;
inline constexpr unsigned kIoCommitAndFetchReq = 0x21;
inline constexpr unsigned kIoNeedGetData = 0x22;
inline constexpr uint32_t kUIoFetchReq = _IOWR('u', kIoFetchReq, IoCmd);
inline constexpr uint32_t kUIoCommitAndFetchReq = _IOWR('u', kIoCommitAndFetchReq, IoCmd);
inline constexpr uint32_t kUIoNeedGetData = _IOWR('u', kIoNeedGetData, IoCmd);

// FETCH/COMMIT completion results.
inline constexpr int kIoResOk = 0;
inline constexpr int kIoResNeedGetData = 1;
// UBLK_IO_RES_ABORT is -ENODEV.

// The per-tag request descriptor the driver writes into the mmap'ed area.
struct IoDesc {
  uint32_t op_flags;  // op: bits 0-7, flags: bits 8-31
  uint32_t nr_sectors;
  uint64_t start_sector;
  uint64_t addr;
};
static_assert(sizeof(IoDesc) == 24);

inline constexpr uint8_t kOpRead = 0;
inline constexpr uint8_t kOpWrite = 1;
inline constexpr uint8_t kOpFlush = 2;
inline constexpr uint8_t kOpDiscard = 3;
inline constexpr uint8_t kOpWriteSame = 4;
inline constexpr uint8_t kOpWriteZeroes = 5;

inline constexpr uint32_t kIoFFua = 1u << 13;
inline constexpr uint32_t kIoFNoUnmap = 1u << 15;

// mmap and user-copy offsets.
inline constexpr uint64_t kCmdBufOffset = 0;
inline constexpr uint64_t kIoBufOffset = 0x80000000ull;
inline constexpr unsigned kMaxQueueDepth = 4096;
inline constexpr unsigned kIoBufBits = 25;
inline constexpr unsigned kTagOff = kIoBufBits;
inline constexpr unsigned kTagBits = 16;
inline constexpr unsigned kQidOff = kTagOff + kTagBits;
inline constexpr unsigned kQidBits = 12;
inline constexpr unsigned kMaxNrQueues = 1u << kQidBits;

// ---- parameters ----
inline constexpr uint32_t kAttrReadOnly = 1u << 0;
inline constexpr uint32_t kAttrRotational = 1u << 1;
inline constexpr uint32_t kAttrVolatileCache = 1u << 2;
inline constexpr uint32_t kAttrFua = 1u << 3;

struct ParamBasic {
  uint32_t attrs;
  uint8_t logical_bs_shift;
  uint8_t physical_bs_shift;
  uint8_t io_opt_shift;
  uint8_t io_min_shift;
  uint32_t max_sectors;
  uint32_t chunk_sectors;
  uint64_t dev_sectors;
  uint64_t virt_boundary_mask;
};
static_assert(sizeof(ParamBasic) == 32);

struct ParamDiscard {
  uint32_t discard_alignment;
  uint32_t discard_granularity;
  uint32_t max_discard_sectors;
  uint32_t max_write_zeroes_sectors;
  uint16_t max_discard_segments;
  uint16_t reserved0;
};
static_assert(sizeof(ParamDiscard) == 20);

struct ParamDevt {
  uint32_t char_major;
  uint32_t char_minor;
  uint32_t disk_major;
  uint32_t disk_minor;
};

struct ParamZoned {
  uint32_t max_open_zones;
  uint32_t max_active_zones;
  uint32_t max_zone_append_sectors;
  uint8_t reserved[20];
};

inline constexpr uint32_t kParamTypeBasic = 1u << 0;
inline constexpr uint32_t kParamTypeDiscard = 1u << 1;
inline constexpr uint32_t kParamTypeDevt = 1u << 2;
inline constexpr uint32_t kParamTypeZoned = 1u << 3;

struct Params {
  uint32_t len;
  uint32_t types;
  ParamBasic basic;
  ParamDiscard discard;
  ParamDevt devt;
  ParamZoned zoned;
};

}  // namespace blkstack::ublk
