// The vhost-user-blk export's sans-IO parts: the per-connection message
// state machine (Session) against a fake host, and virtio-blk request
// parsing (blk_request).
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <vector>

#include "exports/vhost_user_blk/blk_request.hpp"
#include "exports/vhost_user_blk/session.hpp"

using namespace blkstack;
using namespace blkstack::vhost;
using namespace blkstack::vhost_blk;

namespace {

class FakeHost final : public SessionHost {
 public:
  uint8_t* map(int, uint64_t len) override {
    auto& b = bufs.emplace_back(len / 8 + 1);
    maps++;
    return reinterpret_cast<uint8_t*>(b.data());
  }
  void unmap(uint8_t*, uint64_t) override {
    EXPECT_EQ(running.size(), 0u) << "memory unmapped under a running ring";
    unmaps++;
  }
  const char* start_vring(const VringStart& s) override {
    running[s.index] = s;
    starts++;
    return nullptr;
  }
  uint16_t stop_vring(unsigned i) override {
    EXPECT_TRUE(running.count(i));
    running.erase(i);
    return stop_base;
  }
  void set_call_fd(unsigned, int) override { call_changes++; }
  void set_writeback(bool on) override { writeback = on; }

  std::vector<std::vector<uint64_t>> bufs;
  std::map<unsigned, VringStart> running;
  int maps = 0, unmaps = 0, starts = 0, call_changes = 0;
  uint16_t stop_base = 42;
  bool writeback = true;
};

constexpr uint64_t kFeatures = (1ull << 32) | (1ull << kRingFEventIdx) | (1ull << VIRTIO_BLK_F_CONFIG_WCE);

SessionConfig config() {
  SessionConfig c;
  c.features = kFeatures;
  c.protocol_features = kProtoMq | kProtoReplyAck | kProtoConfig | kProtoConfigureMemSlots;
  c.num_queues = 2;
  c.max_queue_size = 256;
  c.config.capacity = 1234;
  return c;
}

template <typename T>
Message req(Request r, const T& body, int fds = 0, uint32_t flags = kVersion) {
  Message m = Message::make(r, body, flags);
  for (int i = 0; i < fds; i++) m.fds.emplace_back(::dup(0));
  return m;
}
Message req(Request r) { return Message::make(r); }

struct Fixture {
  FakeHost host;
  Session s{host, config()};
  Session::Outcome send(Message m) { return s.handle(m); }
  void ok(Message m) {
    auto o = s.handle(m);
    ASSERT_FALSE(o.disconnect) << o.why;
  }
  void setup_memory() {
    MemoryTable t{};
    t.nregions = 1;
    t.regions[0] = {0, 0x10000, 0x7000000, 0};
    Message m = req(Request::kSetMemTable, t, 1);
    m.hdr.size = static_cast<uint32_t>(memory_table_size(1));
    ok(std::move(m));
  }
  void setup_ring(uint32_t i, bool enable) {
    ok(req(Request::kSetVringNum, VringState{i, 8}));
    ok(req(Request::kSetVringAddr, VringAddr{i, 0, 0x7000000, 0x7002000, 0x7001000, 0}));
    ok(req(Request::kSetVringKick, uint64_t{i}, 1));
    if (enable) ok(req(Request::kSetVringEnable, VringState{i, 1}));
  }
};

}  // namespace

TEST(VhostSession, Negotiation) {
  Fixture f;
  auto o = f.send(req(Request::kGetFeatures));
  ASSERT_TRUE(o.reply);
  EXPECT_EQ(o.msg.u64(), kFeatures | kFeatureProtocolFeatures);
  EXPECT_EQ(o.msg.hdr.flags, kVersion | kFlagReply);
  EXPECT_TRUE(f.send(req(Request::kSetFeatures, uint64_t{1} << 40)).disconnect) << "features never offered";
  Fixture g;
  EXPECT_TRUE(g.send(req(Request::kSetFeatures, uint64_t{1} << kRingFEventIdx)).disconnect) << "VERSION_1 missing";
  Fixture h;
  h.ok(req(Request::kSetFeatures, kFeatures | kFeatureProtocolFeatures));
  EXPECT_EQ(h.s.acked_features(), kFeatures | kFeatureProtocolFeatures);
  EXPECT_EQ(h.send(req(Request::kGetQueueNum)).msg.u64(), 2u);
  EXPECT_EQ(h.send(req(Request::kGetMaxMemSlots)).msg.u64(), Session::kMaxMemSlots);
  EXPECT_TRUE(h.send(req(Request::kSetProtocolFeatures, uint64_t{kProtoStatus})).disconnect);
}

TEST(VhostSession, NeedReplyAcks) {
  Fixture f;
  auto o = f.send(req(Request::kSetOwner, uint64_t{0}, 0, kVersion | kFlagNeedReply));
  ASSERT_TRUE(o.reply);
  EXPECT_EQ(o.msg.u64(), 0u);
  EXPECT_FALSE(f.send(req(Request::kSetOwner)).reply);
  // A GET has its own reply: no extra ack.
  o = f.send(req(Request::kGetQueueNum, uint64_t{0}, 0, kVersion | kFlagNeedReply));
  EXPECT_EQ(o.msg.u64(), 2u);
}

TEST(VhostSession, RingStartsWhenCompleteAndEnabled) {
  Fixture f;
  f.ok(req(Request::kSetFeatures, kFeatures | kFeatureProtocolFeatures));
  f.setup_memory();
  f.setup_ring(0, false);
  EXPECT_EQ(f.host.starts, 0) << "protocol features negotiated: the ring starts disabled";
  f.ok(req(Request::kSetVringEnable, VringState{0, 1}));
  ASSERT_EQ(f.host.running.count(0), 1u);
  EXPECT_TRUE(f.host.running[0].event_idx);
  EXPECT_EQ(f.host.running[0].layout.num, 8);
  // Changing a running ring is a protocol error.
  EXPECT_TRUE(f.send(req(Request::kSetVringNum, VringState{0, 16})).disconnect);
}

TEST(VhostSession, WithoutProtocolFeaturesRingsStartEnabled) {
  Fixture f;
  f.ok(req(Request::kSetFeatures, kFeatures));
  f.setup_memory();
  f.setup_ring(1, false);
  EXPECT_EQ(f.host.running.count(1), 1u);
}

TEST(VhostSession, GetVringBaseStopsAndReportsBase) {
  Fixture f;
  f.ok(req(Request::kSetFeatures, kFeatures | kFeatureProtocolFeatures));
  f.setup_memory();
  f.setup_ring(0, true);
  auto o = f.send(req(Request::kGetVringBase, VringState{0, 0}));
  ASSERT_TRUE(o.reply);
  EXPECT_EQ(o.msg.as<VringState>().num, 42u);
  EXPECT_TRUE(f.host.running.empty());
  // Restarting needs a new kick fd; it resumes at the saved base.
  f.ok(req(Request::kSetVringKick, uint64_t{0}, 1));
  ASSERT_EQ(f.host.running.count(0), 1u);
  EXPECT_EQ(f.host.running[0].last_avail, 42);
}

TEST(VhostSession, MemoryChangesRestartRunningRings) {
  Fixture f;
  f.ok(req(Request::kSetFeatures, kFeatures | kFeatureProtocolFeatures));
  f.setup_memory();
  f.setup_ring(0, true);
  SingleMemoryRegion r{0, {0x100000, 0x1000, 0x9000000, 0}};
  f.ok(req(Request::kAddMemReg, r, 1));
  EXPECT_EQ(f.host.starts, 2);
  EXPECT_EQ(f.s.memory().size(), 2u);
  f.ok(req(Request::kRemMemReg, r));
  EXPECT_EQ(f.s.memory().size(), 1u);
  EXPECT_EQ(f.host.unmaps, 1);
  EXPECT_TRUE(f.send(req(Request::kRemMemReg, r)).disconnect) << "removing a region that is not there";
  f.s.close();
  EXPECT_TRUE(f.host.running.empty());
  EXPECT_EQ(f.host.unmaps, f.host.maps);
}

TEST(VhostSession, ConfigSpace) {
  Fixture f;
  ConfigSpace c{};
  c.offset = 0;
  c.size = 8;
  Message m = req(Request::kGetConfig, c);
  m.hdr.size = kConfigHeaderSize + 8;
  auto o = f.send(std::move(m));
  ASSERT_TRUE(o.reply);
  EXPECT_EQ(o.msg.hdr.size, kConfigHeaderSize + 8);
  uint64_t cap;
  std::memcpy(&cap, o.msg.as<ConfigSpace>().payload, 8);
  EXPECT_EQ(cap, 1234u);
  c.offset = 250;
  c.size = 10;
  m = req(Request::kGetConfig, c);
  EXPECT_TRUE(f.send(std::move(m)).disconnect) << "range beyond the config space";
  // wce is the one writable field.
  ConfigSpace w{};
  w.offset = offsetof(virtio_blk_config, wce);
  w.size = 1;
  w.payload[0] = 0;
  o = f.send(req(Request::kSetConfig, w, 0, kVersion | kFlagNeedReply));
  EXPECT_FALSE(o.disconnect);
  EXPECT_EQ(o.msg.u64(), 0u);
  EXPECT_FALSE(f.host.writeback);
  w.offset = 0;
  o = f.send(req(Request::kSetConfig, w, 0, kVersion | kFlagNeedReply));
  EXPECT_NE(o.msg.u64(), 0u) << "capacity is not writable";
}

TEST(VhostSession, MalformedAndUnknownDisconnect) {
  Fixture f;
  Message m = req(Request::kSetFeatures, uint64_t{0});
  m.hdr.size = 3;
  EXPECT_TRUE(f.send(std::move(m)).disconnect);
  Fixture g;
  EXPECT_TRUE(g.send(req(Request::kSetLogBase, uint64_t{0})).disconnect);
  Fixture h;
  EXPECT_TRUE(h.send(req(Request::kSetVringKick, uint64_t{0} | kVringNoFd)).disconnect) << "polling rings";
  Fixture i;
  EXPECT_TRUE(i.send(req(Request::kSetVringKick, uint64_t{5}, 1)).disconnect) << "index out of range";
}

// ---- blk_request ----

namespace {
struct BlkFixture {
  std::vector<uint8_t> hdr = std::vector<uint8_t>(16 + 32), data = std::vector<uint8_t>(4096), status = std::vector<uint8_t>(1);
  Chain c;
  BlkLimits lim;
  BlkFixture() {
    lim.capacity = 1 << 20;
    lim.flush = lim.discard = lim.write_zeroes = true;
    lim.max_discard_sectors = lim.max_write_zeroes_sectors = 64;
  }
  void header(uint32_t type, uint64_t sector) {
    virtio_blk_outhdr h{type, 0, sector};
    std::memcpy(hdr.data(), &h, 16);
  }
  void build(bool data_writable, size_t data_len = 4096, size_t hdr_len = 16) {
    c = Chain{};
    c.iov[0] = {hdr.data(), hdr_len};
    c.iov[1] = {data.data(), data_len};
    c.iov[2] = {status.data(), 1};
    c.n_readable = data_writable ? 1 : 2;
    c.n_writable = data_writable ? 2 : 1;
    c.readable_bytes = hdr_len + (data_writable ? 0 : data_len);
    c.writable_bytes = 1 + (data_writable ? data_len : 0);
  }
};
}  // namespace

TEST(VhostBlkRequest, ReadWrite) {
  BlkFixture f;
  f.header(VIRTIO_BLK_T_IN, 8);
  f.build(true);
  BlkRequest r = parse_request(f.c, f.lim);
  ASSERT_EQ(r.op, BlkOp::kRead);
  EXPECT_EQ(r.offset, 4096u);
  EXPECT_EQ(r.len, 4096u);
  EXPECT_EQ(r.iovcnt, 1);
  EXPECT_EQ(r.status_byte, f.status.data());
  EXPECT_EQ(r.used_len_ok, 4097u);
  f.header(VIRTIO_BLK_T_OUT, 0);
  f.build(false);
  r = parse_request(f.c, f.lim);
  ASSERT_EQ(r.op, BlkOp::kWrite);
  EXPECT_EQ(r.iovcnt, 1);
  EXPECT_EQ(r.iov[0].iov_base, f.data.data());
  EXPECT_EQ(r.used_len_ok, 1u);
}

TEST(VhostBlkRequest, Rejections) {
  BlkFixture f;
  f.header(VIRTIO_BLK_T_IN, (1 << 20) / 512);  // at the end
  f.build(true);
  EXPECT_EQ(parse_request(f.c, f.lim).status, VIRTIO_BLK_S_IOERR);
  f.header(VIRTIO_BLK_T_IN, 0);
  f.build(true, 100);  // not whole sectors
  EXPECT_EQ(parse_request(f.c, f.lim).status, VIRTIO_BLK_S_IOERR);
  f.build(true, 4096, 8);  // short header
  EXPECT_EQ(parse_request(f.c, f.lim).status, VIRTIO_BLK_S_IOERR);
  f.header(VIRTIO_BLK_T_OUT, 0);
  f.lim.read_only = true;
  f.build(false);
  EXPECT_EQ(parse_request(f.c, f.lim).status, VIRTIO_BLK_S_IOERR);
  f.lim.read_only = false;
  f.header(77, 0);
  f.build(false);
  EXPECT_EQ(parse_request(f.c, f.lim).status, VIRTIO_BLK_S_UNSUPP);
  f.header(VIRTIO_BLK_T_FLUSH, 0);
  f.lim.flush = false;
  f.build(false, 0);
  EXPECT_EQ(parse_request(f.c, f.lim).status, VIRTIO_BLK_S_UNSUPP);
  // No writable status byte: nothing to report into.
  f.build(false);
  f.c.n_writable = 0;
  f.c.writable_bytes = 0;
  BlkRequest r = parse_request(f.c, f.lim);
  EXPECT_EQ(r.op, BlkOp::kDone);
  EXPECT_EQ(r.status_byte, nullptr);
}

TEST(VhostBlkRequest, HeaderSplitAndStatusInDataBuffer) {
  BlkFixture f;
  f.header(VIRTIO_BLK_T_IN, 1);
  // Header in two pieces; data and status share one writable buffer.
  std::vector<uint8_t> buf(513);
  f.c = Chain{};
  f.c.iov[0] = {f.hdr.data(), 10};
  f.c.iov[1] = {f.hdr.data() + 10, 6};
  f.c.iov[2] = {buf.data(), 513};
  f.c.n_readable = 2;
  f.c.n_writable = 1;
  f.c.readable_bytes = 16;
  f.c.writable_bytes = 513;
  BlkRequest r = parse_request(f.c, f.lim);
  ASSERT_EQ(r.op, BlkOp::kRead);
  EXPECT_EQ(r.offset, 512u);
  EXPECT_EQ(r.len, 512u);
  EXPECT_EQ(r.iov[0].iov_len, 512u);
  EXPECT_EQ(r.status_byte, buf.data() + 512);
}

TEST(VhostBlkRequest, DiscardAndWriteZeroes) {
  BlkFixture f;
  auto seg = [&](uint32_t type, uint64_t sector, uint32_t n, uint32_t flags) {
    f.header(type, 0);
    virtio_blk_discard_write_zeroes s{sector, n, flags};
    std::memcpy(f.hdr.data() + 16, &s, 16);
    f.build(false, 0, 32);
    f.c.iov[1] = f.c.iov[2];
    f.c.n_readable = 1;
    return parse_request(f.c, f.lim);
  };
  BlkRequest r = seg(VIRTIO_BLK_T_WRITE_ZEROES, 8, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
  ASSERT_EQ(r.op, BlkOp::kWriteZeroes);
  EXPECT_TRUE(r.unmap);
  EXPECT_EQ(r.offset, 4096u);
  EXPECT_EQ(r.len, 8192u);
  r = seg(VIRTIO_BLK_T_WRITE_ZEROES, 8, 16, 0);
  EXPECT_FALSE(r.unmap);
  EXPECT_EQ(seg(VIRTIO_BLK_T_DISCARD, 8, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(seg(VIRTIO_BLK_T_DISCARD, 8, 16, 0).op, BlkOp::kDiscard);
  EXPECT_EQ(seg(VIRTIO_BLK_T_DISCARD, 8, 65, 0).status, VIRTIO_BLK_S_IOERR) << "beyond max_discard_sectors";
  EXPECT_EQ(seg(VIRTIO_BLK_T_DISCARD, 2047, 2, 0).status, VIRTIO_BLK_S_IOERR) << "beyond capacity";
}
