// Random client bytes into Handshake. Input: byte 0 picks the TLS mode, byte 1
// seeds how the rest is cut into feed() pieces; the rest is the client stream
// (after STARTTLS it stands for the decrypted stream). Checks: no crash, bounded
// buffering, any split gives the same result as one feed, and the server only
// ever answers options it has completely read, in order, with one final reply
// each.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "exports/nbd/handshake.hpp"
#include "exports/nbd/protocol.hpp"
#include "fuzz_check.hpp"

using namespace blkstack::nbd;

namespace {

class Catalog : public ExportCatalog {
 public:
  Catalog() {
    a_.name = "";
    a_.description = "default";
    a_.size = 1 << 20;
    a_.can_block_status = a_.can_flush = a_.can_trim = true;
    b_.name = "second";
    b_.description = "second export";
    b_.size = 1 << 30;
    b_.min_block = 4096;
    b_.preferred_block = 4096;
    b_.block_size_required = true;
    b_.can_block_status = true;
  }
  const ExportInfo* find(std::string_view n) const override {
    return n == a_.name ? &a_ : n == b_.name ? &b_ : nullptr;
  }
  std::vector<const ExportInfo*> list() const override { return {&a_, &b_}; }

 private:
  ExportInfo a_, b_;
};

struct Run {
  std::vector<uint8_t> out;  // after the greeting
  size_t consumed = 0;
  Handshake::Step step = Handshake::Step::kNeedMore;
  Negotiated neg;
  int tls_upgrades = 0;
};

struct ClientOption {
  uint32_t opt;
  size_t end;  // stream offset just past the option
};

// The options the client stream contains completely within [0, n).
std::vector<ClientOption> complete_options(std::span<const uint8_t> s, size_t n) {
  std::vector<ClientOption> v;
  if (n < 4) return v;
  size_t i = 4;
  while (n - i >= 16) {
    if (get_be64(&s[i]) != kIHaveOpt) break;
    uint32_t len = get_be32(&s[i + 12]);
    if (n - i - 16 < len) break;
    v.push_back({get_be32(&s[i + 8]), i + 16 + len});
    i += 16 + len;
  }
  return v;
}

bool is_final(uint32_t type) { return type == kRepAck || (type & kRepFlagError); }

// Every server byte is an answer to a completely read option, in order.
void check_replies(std::span<const uint8_t> stream, size_t consumed, const std::vector<uint8_t>& out,
                   Handshake::Step step, bool finished) {
  auto opts = complete_options(stream, consumed);
  size_t o = 0;
  for (size_t k = 0; k < opts.size(); ++k) {
    const bool last = k + 1 == opts.size();
    if (opts[k].opt == kOptExportName) {
      FUZZ_CHECK(last);
      FUZZ_CHECK(step == Handshake::Step::kDone || step == Handshake::Step::kClose);
      if (step == Handshake::Step::kDone) {
        FUZZ_CHECK(out.size() - o == 10 || out.size() - o == 134);
        o = out.size();
      }
      break;
    }
    bool final_seen = false;
    while (!final_seen) {
      if (out.size() - o < 20) {
        // Only a session that closed on this very option may leave it unanswered.
        FUZZ_CHECK(last && step == Handshake::Step::kClose && out.size() == o);
        return;
      }
      FUZZ_CHECK(get_be64(&out[o]) == kOptReplyMagic);
      FUZZ_CHECK(get_be32(&out[o + 8]) == opts[k].opt);
      uint32_t type = get_be32(&out[o + 12]);
      uint32_t len = get_be32(&out[o + 16]);
      FUZZ_CHECK(out.size() - o - 20 >= len);
      if (type == kRepInfo) FUZZ_CHECK(len >= 2);
      o += 20 + len;
      final_seen = is_final(type);
    }
  }
  FUZZ_CHECK(o == out.size());
  // Terminal steps stop exactly at an option boundary (or inside the option
  // header for closes decided from the header).
  if (step == Handshake::Step::kDone || step == Handshake::Step::kStartTls) {
    FUZZ_CHECK(!opts.empty() && opts.back().end == consumed);
  }
  if (step == Handshake::Step::kNeedMore && finished) FUZZ_CHECK(consumed == stream.size());
}

template <class Next>
Run drive(const Catalog& cat, TlsMode mode, std::span<const uint8_t> stream, Next next, bool check_each) {
  Handshake hs(cat, mode);
  FUZZ_CHECK(hs.out().size() == 18);
  hs.out().clear();
  Run r;
  for (;;) {
    size_t n = std::min(next(), stream.size() - r.consumed);
    size_t c = 0;
    r.step = hs.feed(stream.subspan(r.consumed, n), c);
    FUZZ_CHECK(c <= n);
    FUZZ_CHECK(hs.buffered() <= Handshake::kMaxOptionPayload + 16);
    r.out.insert(r.out.end(), hs.out().begin(), hs.out().end());
    hs.out().clear();
    r.consumed += c;
    if (r.step == Handshake::Step::kNeedMore) FUZZ_CHECK(c == n);
    if (check_each) check_replies(stream, r.consumed, r.out, r.step, false);
    if (r.step == Handshake::Step::kStartTls) {
      FUZZ_CHECK(mode != TlsMode::kOff);
      hs.tls_started();
      ++r.tls_upgrades;
      continue;
    }
    if (r.step != Handshake::Step::kNeedMore || r.consumed == stream.size()) break;
  }
  if (r.step == Handshake::Step::kDone) {
    const Negotiated& n = hs.negotiated();
    FUZZ_CHECK(n.exp != nullptr);
    FUZZ_CHECK(n.transmission_flags & kFlagHasFlags);
    FUZZ_CHECK(!n.extended_headers || n.structured_replies);
    FUZZ_CHECK(!n.base_allocation || n.structured_replies);
    FUZZ_CHECK(mode != TlsMode::kRequire || n.tls);
    r.neg = n;
  }
  if (r.step == Handshake::Step::kClose) FUZZ_CHECK(!hs.close_reason().empty());
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  static const Catalog cat;  // immutable after construction
  const TlsMode mode = data[0] % 3 == 0 ? TlsMode::kOff : data[0] % 3 == 1 ? TlsMode::kOn : TlsMode::kRequire;
  uint32_t seed = data[1] * 2654435761u + 1;
  std::span<const uint8_t> stream(data + 2, size - 2);

  Run whole = drive(cat, mode, stream, [&] { return stream.size(); }, false);
  check_replies(stream, whole.consumed, whole.out, whole.step, true);
  Run pieces = drive(
      cat, mode, stream,
      [&] {
        seed = seed * 1103515245u + 12345u;
        return size_t((seed >> 16) % 67);
      },
      true);
  FUZZ_CHECK(whole.out == pieces.out);
  FUZZ_CHECK(whole.consumed == pieces.consumed);
  FUZZ_CHECK(whole.step == pieces.step);
  FUZZ_CHECK(whole.tls_upgrades == pieces.tls_upgrades);
  FUZZ_CHECK(whole.neg.exp == pieces.neg.exp);
  FUZZ_CHECK(whole.neg.transmission_flags == pieces.neg.transmission_flags);
  FUZZ_CHECK(whole.neg.base_allocation == pieces.neg.base_allocation);
  FUZZ_CHECK(whole.neg.extended_headers == pieces.neg.extended_headers);
  return 0;
}
