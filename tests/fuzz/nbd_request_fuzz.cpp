// Random transmission-phase traffic: the first 16 bytes describe the export
// and the negotiation, the rest is a request stream. Every request is parsed,
// validated and answered with each encoder, and the results are checked
// against the spec's rules independently of how validate() is written.
#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "exports/nbd/protocol.hpp"
#include "exports/nbd/transmission.hpp"
#include "fuzz_check.hpp"

using namespace blkstack::nbd;

namespace {

struct Setup {
  ExportInfo exp;
  Negotiated neg;
};

void make_setup(const uint8_t* p, Setup& s) {
  ExportInfo& e = s.exp;
  const uint16_t bits = get_be16(p);
  e.read_only = bits & 1;
  e.can_flush = bits & 2;
  e.can_fua = bits & 4;
  e.can_trim = bits & 8;
  e.can_write_zeroes = bits & 16;
  e.can_fast_zero = bits & 32;
  e.can_cache = bits & 64;
  e.can_block_status = bits & 128;
  e.min_block = 1u << (p[2] % 13);           // 1 .. 4096
  e.preferred_block = std::max<uint32_t>(e.min_block, 512) << (p[3] % 4);
  e.max_block = std::max<uint32_t>(get_be32(p + 4), e.preferred_block);
  e.size = get_be64(p + 8) >> (p[3] >> 2);  // from tiny to huge
  Negotiated& n = s.neg;
  n.exp = &e;
  n.extended_headers = bits & 256;
  n.structured_replies = n.extended_headers || (bits & 512);
  n.base_allocation = n.structured_replies && e.can_block_status && (bits & 1024);
  n.base_allocation_id = n.base_allocation ? 1 : 0;
  n.transmission_flags = transmission_flags(e, n.structured_replies);
}

void check_verdict(const RequestHeader& r, const Verdict& v, const Negotiated& n) {
  const ExportInfo& e = *n.exp;
  if (v.disconnect) {
    FUZZ_CHECK(r.type == kCmdDisc && v.error == 0 && !v.payload_follows);
    return;
  }
  FUZZ_CHECK(!v.fatal || (v.error != 0 && v.payload_follows && v.payload_len > payload_discard_limit(e)));
  if (n.extended_headers)
    FUZZ_CHECK(v.payload_follows == ((r.flags & kCmdFlagPayloadLen) != 0 || r.type == kCmdWrite));
  else
    FUZZ_CHECK(v.payload_follows == (r.type == kCmdWrite));
  if (v.payload_follows) FUZZ_CHECK(v.payload_len == r.length);
  if (v.error != 0) {
    FUZZ_CHECK(v.error == kEinval || v.error == kEperm || v.error == kEnospc || v.error == kEoverflow);
    return;
  }
  // Accepted: everything the device will be asked to do is legal.
  const uint16_t tf = n.transmission_flags;
  FUZZ_CHECK(r.type <= kCmdBlockStatus && r.type != kCmdDisc);
  if ((r.flags & kCmdFlagFua)) FUZZ_CHECK(tf & kFlagSendFua);
  if ((r.flags & kCmdFlagDf)) FUZZ_CHECK(r.type == kCmdRead && n.structured_replies);
  if ((r.flags & kCmdFlagReqOne)) FUZZ_CHECK(r.type == kCmdBlockStatus);
  if ((r.flags & (kCmdFlagNoHole | kCmdFlagFastZero))) FUZZ_CHECK(r.type == kCmdWriteZeroes);
  if ((r.flags & kCmdFlagFastZero)) FUZZ_CHECK(tf & kFlagSendFastZero);
  if ((r.flags & kCmdFlagPayloadLen)) FUZZ_CHECK(n.extended_headers && r.type == kCmdWrite);
  FUZZ_CHECK((r.flags & ~0x3fu) == 0);
  const bool writes = r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes;
  if (writes) FUZZ_CHECK(!e.read_only);
  if (r.type == kCmdTrim) FUZZ_CHECK(e.can_trim);
  if (r.type == kCmdWriteZeroes) FUZZ_CHECK(e.can_write_zeroes);
  if (r.type == kCmdCache) FUZZ_CHECK(e.can_cache);
  if (r.type == kCmdBlockStatus) FUZZ_CHECK(n.base_allocation);
  if (r.type == kCmdFlush) {
    FUZZ_CHECK(e.can_flush && r.offset == 0 && r.length == 0);
    return;
  }
  FUZZ_CHECK(r.length > 0 && r.offset <= e.size && r.length <= e.size - r.offset);
  FUZZ_CHECK(r.offset % e.min_block == 0 && r.length % e.min_block == 0);
  if (r.type == kCmdRead || r.type == kCmdWrite) FUZZ_CHECK(r.length <= e.max_block);
}

void check_encoders(const RequestHeader& r, const Negotiated& n, std::span<const uint8_t> rest) {
  const ReplyTo to{r.cookie, r.offset, n.extended_headers};
  const size_t head = to.extended ? kExtendedChunkHeaderSize : kCompactChunkHeaderSize;
  ReplyBuffer b{};
  FUZZ_CHECK(encode_simple_reply(b, r.cookie, uint32_t(r.length)) == kSimpleReplySize);
  FUZZ_CHECK(get_be64(&b[8]) == r.cookie);
  size_t got = encode_chunk_header(b, to, r.flags, r.type, r.length);
  FUZZ_CHECK(got == (to.extended || r.length <= UINT32_MAX ? head : 0));
  got = encode_offset_data(b, to, 0, r.offset, r.length);
  const bool data_ok = r.length > 0 && (to.extended ? r.length <= UINT64_MAX - 8 : r.length <= UINT32_MAX - 8);
  FUZZ_CHECK(got == (data_ok ? head + 8 : 0));
  if (got) FUZZ_CHECK(get_be64(&b[head]) == r.offset);
  got = encode_offset_hole(b, to, kReplyFlagDone, r.offset, uint32_t(r.length));
  FUZZ_CHECK(got == (uint32_t(r.length) ? head + 12 : 0));
  FUZZ_CHECK(encode_none(b, to) == head);

  std::array<uint8_t, 96> eb{};
  std::string_view msg(reinterpret_cast<const char*>(rest.data()), std::min<size_t>(rest.size(), 200));
  got = encode_error(eb, to, kReplyFlagDone, uint32_t(r.offset), msg);
  if (uint32_t(r.offset) == 0) {
    FUZZ_CHECK(got == 0);
  } else {
    FUZZ_CHECK(got >= head + 6 && got <= eb.size());
    FUZZ_CHECK(got == head + 6 + get_be16(&eb[head + 4]));
  }
  got = encode_error_offset(eb, to, 0, kEio, r.offset, msg);
  FUZZ_CHECK(got == head + 6 + get_be16(&eb[head + 4]) + 8 && got <= eb.size());

  // Block status from extents derived from the remaining bytes.
  // Fixed-size buffers: this runs up to 64 times per input, and heap churn
  // under ASan would dominate the fuzzer's time.
  std::array<Extent, 64> exbuf;
  size_t nex = 0;
  for (size_t i = 0; i + 5 <= std::min<size_t>(rest.size(), 5 * 64); i += 5)
    exbuf[nex++] = {uint64_t(get_be32(&rest[i])) << (rest[i + 4] & 31), uint32_t(rest[i + 4] >> 5)};
  std::span<const Extent> ex(exbuf.data(), nex);
  BlockStatusQuery q;
  q.length = r.length;
  q.req_one = r.flags & kCmdFlagReqOne;
  q.align = n.exp->min_block;
  q.context_id = 1;
  std::array<uint8_t, 32 + 8 + 16 * 64> sbuf;
  std::span<uint8_t> sb(sbuf.data(), head + 8 + 16 * (1 + (r.cookie & 63)));
  BlockStatusResult res = encode_block_status(sb, to, q, ex);
  if (res.bytes == 0) {
    FUZZ_CHECK(res.descriptors == 0);
    return;
  }
  FUZZ_CHECK(res.bytes <= sb.size());
  const size_t fixed = to.extended ? 8 : 4, dsize = to.extended ? 16 : 8;
  FUZZ_CHECK(res.bytes == head + fixed + res.descriptors * dsize);
  const uint64_t plen = to.extended ? get_be64(&sb[24]) : get_be32(&sb[16]);
  FUZZ_CHECK(plen == fixed + res.descriptors * dsize);
  FUZZ_CHECK(get_be16(&sb[6]) == (to.extended ? kReplyTypeBlockStatusExt : kReplyTypeBlockStatus));
  if (to.extended) FUZZ_CHECK(get_be32(&sb[head + 4]) == res.descriptors);
  if (q.req_one) FUZZ_CHECK(res.descriptors == 1);
  uint64_t sum = 0;
  for (size_t i = 0; i < res.descriptors; ++i) {
    const uint8_t* d = &sb[head + fixed + i * dsize];
    uint64_t len = to.extended ? get_be64(d) : get_be32(d);
    FUZZ_CHECK(len != 0);
    if (to.extended) FUZZ_CHECK(get_be32(d + 8) == 0);  // 32-bit context: upper half zero
    if (i + 1 < res.descriptors) FUZZ_CHECK(sum + len < q.length || len == 0);
    sum += len;
  }
  FUZZ_CHECK(sum == res.covered && sum <= q.length);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 16) return 0;
  Setup s;
  make_setup(data, s);
  std::span<const uint8_t> in(data + 16, size - 16);
  size_t pos = 0;
  for (int requests = 0; pos < in.size() && requests < 64; ++requests) {
    RequestHeader r{};
    size_t c = 0;
    Parse p = parse_request(in.subspan(pos), s.neg.extended_headers, r, c);
    if (p == Parse::kBadMagic) {
      FUZZ_CHECK(c == 0);
      // Resynchronise the fuzzer (not the protocol) by forcing a valid magic.
      std::array<uint8_t, kExtendedRequestSize> copy{};
      const size_t n = std::min(copy.size(), in.size() - pos);
      std::copy(in.begin() + pos, in.begin() + pos + n, copy.begin());
      put_be32(copy.data(), s.neg.extended_headers ? kExtendedRequestMagic : kRequestMagic);
      p = parse_request(std::span(copy).first(n), s.neg.extended_headers, r, c);
    }
    if (p == Parse::kNeedMore) {
      FUZZ_CHECK(c == 0 && in.size() - pos < (s.neg.extended_headers ? kExtendedRequestSize : kCompactRequestSize));
      break;
    }
    FUZZ_CHECK(c == (s.neg.extended_headers ? kExtendedRequestSize : kCompactRequestSize));
    if (!s.neg.extended_headers) FUZZ_CHECK(r.length <= UINT32_MAX);
    pos += c;
    Verdict v = validate(r, s.neg);
    check_verdict(r, v, s.neg);
    check_encoders(r, s.neg, in.subspan(pos));
    if (v.disconnect || v.fatal) break;
    if (v.payload_follows) pos += size_t(std::min<uint64_t>(v.payload_len, in.size() - pos));
  }
  return 0;
}
