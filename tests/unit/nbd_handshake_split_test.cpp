// Feeding the same client bytes in any split must give the same server bytes,
// the same final step and the same negotiation as feeding them at once.
#include <random>

#include "nbd_test_util.hpp"

namespace blkstack::nbd::test {
namespace {

using Step = Handshake::Step;

struct Outcome {
  Bytes out;
  Step step = Step::kNeedMore;
  size_t consumed = 0;  // total bytes of the stream consumed
  Negotiated neg;
  size_t max_buffered = 0;
};

// Feeds `stream` in pieces from `next_piece`, completing STARTTLS in place
// (the bytes after it stand for the decrypted stream).
template <class F>
Outcome drive(const ExportCatalog& cat, TlsMode mode, const Bytes& stream, F next_piece) {
  Handshake hs(cat, mode);
  Outcome o;
  o.out = hs.out();
  hs.out().clear();
  size_t pos = 0;
  for (;;) {
    size_t n = std::min(next_piece(), stream.size() - pos);
    size_t c = 0;
    Step s = hs.feed(std::span(stream).subspan(pos, n), c);
    o.max_buffered = std::max(o.max_buffered, hs.buffered());
    o.out.insert(o.out.end(), hs.out().begin(), hs.out().end());
    hs.out().clear();
    pos += c;
    if (s == Step::kStartTls) {
      hs.tls_started();
      continue;
    }
    if (s != Step::kNeedMore || pos == stream.size()) {
      o.step = s;
      break;
    }
  }
  o.consumed = pos;
  o.neg = hs.negotiated();
  return o;
}

void expect_same(const Outcome& a, const Outcome& b, const char* what) {
  EXPECT_EQ(a.out, b.out) << what;
  EXPECT_EQ(a.step, b.step) << what;
  EXPECT_EQ(a.consumed, b.consumed) << what;
  EXPECT_EQ(a.neg.exp, b.neg.exp) << what;
  EXPECT_EQ(a.neg.structured_replies, b.neg.structured_replies) << what;
  EXPECT_EQ(a.neg.extended_headers, b.neg.extended_headers) << what;
  EXPECT_EQ(a.neg.base_allocation, b.neg.base_allocation) << what;
  EXPECT_EQ(a.neg.transmission_flags, b.neg.transmission_flags) << what;
  EXPECT_EQ(a.neg.tls, b.neg.tls) << what;
}

std::vector<std::pair<TlsMode, Bytes>> sessions() {
  std::vector<std::pair<TlsMode, Bytes>> v;
  Bytes a = client_flags();
  append(a, option(kOptList));
  append(a, option(kOptStructuredReply));
  append(a, option(kOptListMetaContext, meta_payload("", {})));
  append(a, option(kOptSetMetaContext, meta_payload("", {"base:allocation"})));
  append(a, option(kOptInfo, info_payload("second", {kInfoName, kInfoDescription, kInfoBlockSize})));
  append(a, option(77, Bytes(300, 1)));
  append(a, option(kOptGo, info_payload("", {kInfoBlockSize})));
  append(a, Bytes(40, 0x25));  // transmission bytes
  v.emplace_back(TlsMode::kOff, a);

  Bytes b = client_flags();
  append(b, option(kOptList));
  append(b, option(kOptStartTls));
  append(b, option(kOptExtendedHeaders));
  append(b, option(kOptSetMetaContext, meta_payload("", {"base:", "base:allocation"})));
  append(b, option(kOptGo, info_payload("")));
  v.emplace_back(TlsMode::kRequire, b);

  Bytes c = client_flags(kClientFlagFixedNewstyle);
  append(c, option(kOptInfo, info_payload("nope")));
  append(c, option(kOptExportName, Bytes{'s', 'e', 'c', 'o', 'n', 'd'}));
  append(c, Bytes(5, 0));
  v.emplace_back(TlsMode::kOn, c);

  Bytes d = client_flags();
  Bytes big = option(kOptGo);
  put_be32(&big[12], Handshake::kMaxOptionPayload + 10);
  append(d, big);
  append(d, Bytes(Handshake::kMaxOptionPayload + 10, 0xee));
  append(d, option(kOptAbort));
  append(d, Bytes(3, 0));
  v.emplace_back(TlsMode::kOff, d);
  return v;
}

TEST(HandshakeSplitTest, ByteByByteEqualsAllAtOnce) {
  MapCatalog cat = standard_catalog();
  for (auto& [mode, stream] : sessions()) {
    Outcome whole = drive(cat, mode, stream, [&] { return stream.size(); });
    Outcome bytes = drive(cat, mode, stream, [] { return size_t(1); });
    expect_same(whole, bytes, "byte by byte");
    EXPECT_NE(whole.step, Step::kNeedMore);
  }
}

TEST(HandshakeSplitTest, RandomPiecesEqualAllAtOnce) {
  MapCatalog cat = standard_catalog();
  std::mt19937 rng(1234);
  for (auto& [mode, stream] : sessions()) {
    Outcome whole = drive(cat, mode, stream, [&] { return stream.size(); });
    for (int i = 0; i < 50; ++i) {
      Outcome r = drive(cat, mode, stream, [&] { return size_t(rng() % 40); });
      expect_same(whole, r, "random pieces");
    }
  }
}

TEST(HandshakeSplitTest, BufferStaysBounded) {
  MapCatalog cat = standard_catalog();
  for (auto& [mode, stream] : sessions()) {
    Outcome o = drive(cat, mode, stream, [] { return size_t(7); });
    EXPECT_LE(o.max_buffered, Handshake::kMaxOptionPayload);
  }
}

}  // namespace
}  // namespace blkstack::nbd::test
