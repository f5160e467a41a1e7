// Arbitrary vhost-user message streams against the back-end's message
// validation and per-connection state machine (Session), without sockets.
// Memory "mappings" are heap buffers filled from the input, and started
// vrings are really served: chains popped, parsed as virtio-blk requests and
// returned, so a sequence that sets up rings reaches the data path too.
//
// Input: messages, each a 12-byte header (request, flags, size, host
// order), one byte whose low 3 bits are the number of fds attached (+1 for
// 8), then min(size, 256) payload bytes (a larger size stays in the header,
// so oversized messages reach validate()).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "exports/vhost_user_blk/blk_request.hpp"
#include "exports/vhost_user_blk/session.hpp"
#include "fuzz_check.hpp"

using namespace blkstack;
using namespace blkstack::vhost;
using namespace blkstack::vhost_blk;

namespace {

class FakeHost final : public SessionHost {
 public:
  explicit FakeHost(const uint8_t* fill, size_t fill_len) : fill_(fill), fill_len_(fill_len) {}
  ~FakeHost() { FUZZ_CHECK(maps_.empty()); }

  uint8_t* map(int, uint64_t len) override {
    if (len > (1 << 20) || maps_.size() >= 64) return nullptr;
    auto buf = std::make_unique<uint8_t[]>(len + 16);
    // Align like a page-aligned mmap would (to 16 at least).
    uint8_t* p = buf.get() + (16 - reinterpret_cast<uintptr_t>(buf.get()) % 16) % 16;
    for (uint64_t i = 0; i < len; i++) p[i] = fill_len_ ? fill_[i % fill_len_] : 0;
    maps_[p] = {std::move(buf), len};
    return p;
  }
  void unmap(uint8_t* addr, uint64_t len) override {
    auto it = maps_.find(addr);
    FUZZ_CHECK(it != maps_.end() && it->second.len == len);
    // A running ring must never outlive the memory it reads.
    for (auto& [i, r] : rings_) FUZZ_CHECK(!r.running);
    maps_.erase(it);
  }
  const char* start_vring(const VringStart& s) override {
    Ring& r = rings_[s.index];
    FUZZ_CHECK(!r.running);
    FUZZ_CHECK(s.kick_fd != -2);
    if (const char* e = r.vq.attach(*s.mem, s.layout, s.last_avail, s.event_idx, s.indirect)) return e;
    r.running = true;
    serve(r);
    return nullptr;
  }
  uint16_t stop_vring(unsigned index) override {
    Ring& r = rings_[index];
    FUZZ_CHECK(r.running);
    serve(r);
    r.running = false;
    return r.vq.last_avail();
  }
  void set_call_fd(unsigned index, int) override { FUZZ_CHECK(rings_[index].running); }
  void set_writeback(bool) override {}
  size_t running() const {
    size_t n = 0;
    for (auto& [i, r] : rings_) n += r.running;
    return n;
  }

 private:
  struct Ring {
    VirtqueueDevice vq;
    bool running = false;
  };
  struct Buf {
    std::unique_ptr<uint8_t[]> mem;
    uint64_t len;
  };
  void serve(Ring& r) {
    static Chain chain;
    BlkLimits lim;
    lim.capacity = 1 << 20;
    lim.flush = lim.discard = lim.write_zeroes = true;
    lim.max_discard_sectors = lim.max_write_zeroes_sectors = 64;
    for (int i = 0; i < 64; i++) {
      PopResult p = r.vq.pop(chain);
      if (p == PopResult::kEmpty || p == PopResult::kBroken) break;
      if (p == PopResult::kBadChain) {
        r.vq.push(chain.head, 0);
        continue;
      }
      BlkRequest b = parse_request(chain, lim);
      if (b.status_byte) *b.status_byte = b.status;
      r.vq.push(chain.head, b.used_len_ok);
    }
    (void)r.vq.should_notify();
  }
  const uint8_t* fill_;
  size_t fill_len_;
  std::map<uint8_t*, Buf> maps_;
  std::map<unsigned, Ring> rings_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FakeHost host(data, size);
  SessionConfig cfg;
  cfg.features = (1ull << 32) | (1ull << kRingFEventIdx) | (1ull << kRingFIndirectDesc) | (1ull << 9) | (1ull << 11);
  cfg.protocol_features = kProtoMq | kProtoReplyAck | kProtoConfig | kProtoConfigureMemSlots | kProtoResetDevice;
  cfg.num_queues = 2;
  cfg.max_queue_size = 256;
  cfg.config.capacity = 2048;
  {
    Session s(host, cfg);
    auto m = std::make_unique<Message>();
    size_t pos = 0;
    while (pos + sizeof(Header) + 1 <= size) {
      std::memcpy(&m->hdr, data + pos, sizeof(Header));
      pos += sizeof(Header);
      unsigned nfds = data[pos++] & 7;
      if (nfds == 7) nfds = 9;  // more than any request may carry
      size_t body = std::min<size_t>({m->hdr.size, 256, size - pos});
      m->payload.fill(0);
      std::memcpy(m->payload.data(), data + pos, body);
      pos += body;
      m->fds.clear();
      for (unsigned i = 0; i < nfds; i++) m->fds.emplace_back(-1);
      Session::Outcome out = s.handle(*m);
      if (out.reply) {
        FUZZ_CHECK(out.msg.hdr.flags & kFlagReply);
        FUZZ_CHECK(out.msg.hdr.request == m->hdr.request);
        FUZZ_CHECK(out.msg.hdr.size <= kMaxPayload);
        FUZZ_CHECK(validate(out.msg, true).empty());
      }
      if (out.disconnect) {
        FUZZ_CHECK(!out.why.empty());
        break;
      }
      FUZZ_CHECK(s.running_vrings() == host.running());
    }
  }
  FUZZ_CHECK(host.running() == 0);  // the session's end stopped every ring
  return 0;
}
