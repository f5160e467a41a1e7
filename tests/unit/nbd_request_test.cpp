// Request parsing and the validation table.
#include <cerrno>

#include "exports/nbd/transmission.hpp"
#include "nbd_test_util.hpp"

namespace blkstack::nbd::test {
namespace {

// A request header as the spec lays it out; extended headers carry a 64-bit length.
Bytes request_header(uint32_t magic, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset, uint64_t len,
                     int len_bytes) {
  Bytes b;
  append_be(b, magic, 4);
  append_be(b, flags, 2);
  append_be(b, type, 2);
  append_be(b, cookie, 8);
  append_be(b, offset, 8);
  append_be(b, len, len_bytes);
  return b;
}
Bytes compact_request(uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset, uint32_t len) {
  return request_header(kRequestMagic, flags, type, cookie, offset, len, 4);
}
Bytes extended_request(uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset, uint64_t len) {
  return request_header(kExtendedRequestMagic, flags, type, cookie, offset, len, 8);
}

TEST(ParseRequest, Compact) {
  Bytes b = compact_request(kCmdFlagFua, kCmdWrite, 0x0102030405060708ull, 0x1000, 0x200);
  b.push_back(0xaa);  // payload byte: not part of the header
  RequestHeader h{};
  size_t c = 9;
  ASSERT_EQ(parse_request(b, false, h, c), Parse::kOk);
  EXPECT_EQ(c, kCompactRequestSize);
  EXPECT_EQ(h.flags, kCmdFlagFua);
  EXPECT_EQ(h.type, kCmdWrite);
  EXPECT_EQ(h.cookie, 0x0102030405060708ull);
  EXPECT_EQ(h.offset, 0x1000u);
  EXPECT_EQ(h.length, 0x200u);
}

TEST(ParseRequest, Extended) {
  Bytes b = extended_request(0, kCmdTrim, 7, 1ull << 40, 0x123456789ull);
  RequestHeader h{};
  size_t c = 0;
  ASSERT_EQ(parse_request(b, true, h, c), Parse::kOk);
  EXPECT_EQ(c, kExtendedRequestSize);
  EXPECT_EQ(h.offset, 1ull << 40);
  EXPECT_EQ(h.length, 0x123456789ull);
}

TEST(ParseRequest, PartialNeedsMore) {
  Bytes b = compact_request(0, kCmdRead, 1, 0, 512);
  for (size_t n = 0; n < b.size(); ++n) {
    RequestHeader h{};
    size_t c = 5;
    EXPECT_EQ(parse_request(std::span(b).first(n), false, h, c), Parse::kNeedMore) << n;
    EXPECT_EQ(c, 0u);
  }
}

TEST(ParseRequest, WrongMagicForMode) {
  RequestHeader h{};
  size_t c = 0;
  EXPECT_EQ(parse_request(compact_request(0, 0, 0, 0, 0), true, h, c), Parse::kBadMagic);
  EXPECT_EQ(parse_request(extended_request(0, 0, 0, 0, 0), false, h, c), Parse::kBadMagic);
  Bytes junk = {0, 0, 0, 0};
  EXPECT_EQ(parse_request(junk, false, h, c), Parse::kBadMagic) << "reported once 4 bytes are in";
}

// ---- validate -------------------------------------------------------------------

struct Env {
  MapCatalog cat = standard_catalog();
  Negotiated neg(const std::string& name, bool structured, bool extended, bool alloc) {
    Negotiated n;
    n.exp = cat.find(name);
    n.structured_replies = structured || extended;
    n.extended_headers = extended;
    n.base_allocation = alloc;
    n.base_allocation_id = alloc ? 1 : 0;
    n.transmission_flags = transmission_flags(*n.exp, n.structured_replies);
    return n;
  }
};

struct Row {
  const char* what;
  uint16_t type, flags;
  uint64_t offset, length;
  uint32_t error;
  bool payload = false;
  bool fatal = false;
};

// Default export "" (1 GiB, everything advertised, min block 1), structured
// replies and base:allocation negotiated, compact headers.
TEST(Validate, TableDefaultExportStructured) {
  Env env;
  const Negotiated n = env.neg("", true, false, true);
  const uint64_t size = 1ull << 30;
  const Row rows[] = {
      {"read ok", kCmdRead, 0, 0, 4096, 0},
      {"read FUA ok", kCmdRead, kCmdFlagFua, 0, 1, 0},
      {"read DF ok", kCmdRead, kCmdFlagDf, 0, 65536, 0},
      {"read to the end", kCmdRead, 0, size - 1, 1, 0},
      {"read past end", kCmdRead, 0, size - 1, 2, kEinval},
      {"read offset past end", kCmdRead, 0, size + 1, 1, kEinval},
      {"read offset overflow", kCmdRead, 0, ~0ull - 10, 100, kEinval},
      {"read zero length", kCmdRead, 0, 0, 0, kEinval},
      {"read > max payload", kCmdRead, 0, 0, (32u << 20) + 1, kEoverflow},
      {"read NO_HOLE", kCmdRead, kCmdFlagNoHole, 0, 1, kEinval},
      {"read REQ_ONE", kCmdRead, kCmdFlagReqOne, 0, 1, kEinval},
      {"read unknown flag", kCmdRead, 1u << 9, 0, 1, kEinval},
      {"read PAYLOAD_LEN compact", kCmdRead, kCmdFlagPayloadLen, 0, 1, kEinval},
      {"write ok", kCmdWrite, kCmdFlagFua, 0, 512, 0, true},
      {"write past end: ENOSPC", kCmdWrite, 0, size, 512, kEnospc, true},
      {"write > 2^25: fatal", kCmdWrite, 0, 0, (32u << 20) + 512, kEinval, true, true},
      {"write FAST_ZERO", kCmdWrite, kCmdFlagFastZero, 0, 512, kEinval, true},
      {"write DF", kCmdWrite, kCmdFlagDf, 0, 512, kEinval, true},
      {"write zero length", kCmdWrite, 0, 0, 0, kEinval, true},
      {"flush ok", kCmdFlush, 0, 0, 0, 0},
      {"flush FUA ok", kCmdFlush, kCmdFlagFua, 0, 0, 0},
      {"flush with offset", kCmdFlush, 0, 512, 0, kEinval},
      {"flush with length", kCmdFlush, 0, 0, 512, kEinval},
      {"trim ok", kCmdTrim, 0, 4096, 1 << 20, 0},
      {"trim past end", kCmdTrim, 0, size, 1, kEinval},
      {"trim NO_HOLE", kCmdTrim, kCmdFlagNoHole, 0, 1, kEinval},
      {"zeroes ok", kCmdWriteZeroes, kCmdFlagNoHole | kCmdFlagFua, 0, 1 << 20, 0},
      {"zeroes fast ok", kCmdWriteZeroes, kCmdFlagFastZero, 0, 1 << 20, 0},
      {"zeroes past end: ENOSPC", kCmdWriteZeroes, 0, size - 1, 2, kEnospc},
      {"zeroes > max payload is fine", kCmdWriteZeroes, 0, 0, size, 0},
      {"zeroes DF", kCmdWriteZeroes, kCmdFlagDf, 0, 1, kEinval},
      {"cache ok", kCmdCache, 0, 0, 4096, 0},
      {"cache NO_HOLE", kCmdCache, kCmdFlagNoHole, 0, 4096, kEinval},
      {"block status ok", kCmdBlockStatus, 0, 0, size, 0},
      {"block status REQ_ONE", kCmdBlockStatus, kCmdFlagReqOne, 0, 1, 0},
      {"block status past end", kCmdBlockStatus, 0, size, 1, kEinval},
      {"block status zero length", kCmdBlockStatus, 0, 0, 0, kEinval},
      {"block status DF", kCmdBlockStatus, kCmdFlagDf, 0, 1, kEinval},
      {"unknown command", 9, 0, 0, 1, kEinval},
      {"resize unsupported", kCmdResize, 0, 0, 1, kEinval},
      {"huge unknown command", 0xffff, 0, 0, 0, kEinval},
  };
  for (const Row& r : rows) {
    Verdict v = validate(RequestHeader{r.flags, r.type, 1, r.offset, r.length}, n);
    EXPECT_EQ(v.error, r.error) << r.what;
    EXPECT_EQ(v.payload_follows, r.payload) << r.what;
    if (r.payload) { EXPECT_EQ(v.payload_len, r.length) << r.what; }
    EXPECT_EQ(v.fatal, r.fatal) << r.what;
    EXPECT_FALSE(v.disconnect) << r.what;
  }
}

// "second": read-only, 64 MiB, min 4096, max 1 MiB, only FLUSH advertised,
// simple replies, no meta context.
TEST(Validate, TableReadOnlyExportSimple) {
  Env env;
  const Negotiated n = env.neg("second", false, false, false);
  const Row rows[] = {
      {"aligned read", kCmdRead, 0, 8192, 4096, 0},
      {"unaligned offset", kCmdRead, 0, 512, 4096, kEinval},
      {"unaligned length", kCmdRead, 0, 0, 4097, kEinval},
      {"read > max: EINVAL without chunks", kCmdRead, 0, 0, (1u << 20) + 4096, kEinval},
      {"read DF without structured", kCmdRead, kCmdFlagDf, 0, 4096, kEinval},
      {"read FUA without SEND_FUA", kCmdRead, kCmdFlagFua, 0, 4096, kEinval},
      {"write: EPERM", kCmdWrite, 0, 0, 4096, kEperm, true},
      {"write > max payload: EPERM first, payload consumed", kCmdWrite, 0, 0, 2u << 20, kEperm, true},
      {"write beyond 2^25: fatal", kCmdWrite, 0, 0, (32u << 20) + 4096, kEinval, true, true},
      {"trim: EPERM", kCmdTrim, 0, 0, 4096, kEperm},
      {"zeroes: EPERM", kCmdWriteZeroes, 0, 0, 4096, kEperm},
      {"flush ok", kCmdFlush, 0, 0, 0, 0},
      {"cache not advertised", kCmdCache, 0, 0, 4096, kEinval},
      {"block status not negotiated", kCmdBlockStatus, 0, 0, 4096, kEinval},
  };
  for (const Row& r : rows) {
    Verdict v = validate(RequestHeader{r.flags, r.type, 1, r.offset, r.length}, n);
    EXPECT_EQ(v.error, r.error) << r.what;
    EXPECT_EQ(v.payload_follows, r.payload) << r.what;
    EXPECT_EQ(v.fatal, r.fatal) << r.what;
  }
}

TEST(Validate, WriteOverMaxOnWritableExport) {
  Env env;
  env.cat.at("").max_block = 1u << 20;
  Negotiated n = env.neg("", false, false, false);
  Verdict v = validate(RequestHeader{0, kCmdWrite, 1, 0, 2u << 20}, n);
  EXPECT_EQ(v.error, kEinval);
  EXPECT_TRUE(v.payload_follows);
  EXPECT_EQ(v.payload_len, 2u << 20);
  EXPECT_FALSE(v.fatal) << "payloads up to 2^25 are read past, not treated as DoS";
  v = validate(RequestHeader{0, kCmdWrite, 1, 0, (1u << 20)}, n);
  EXPECT_EQ(v.error, 0u);
}

TEST(Validate, TrimAndZeroesNotAdvertised) {
  Env env;
  ExportInfo& e = env.cat.at("");
  e.can_trim = e.can_write_zeroes = e.can_fast_zero = e.can_flush = e.can_fua = false;
  Negotiated n = env.neg("", true, false, false);
  EXPECT_EQ(validate(RequestHeader{0, kCmdTrim, 1, 0, 1}, n).error, kEinval);
  EXPECT_EQ(validate(RequestHeader{0, kCmdWriteZeroes, 1, 0, 1}, n).error, kEinval);
  EXPECT_EQ(validate(RequestHeader{0, kCmdFlush, 1, 0, 0}, n).error, kEinval);
  EXPECT_EQ(validate(RequestHeader{kCmdFlagFua, kCmdWrite, 1, 0, 1}, n).error, kEinval);
}

TEST(Validate, FastZeroNeedsAdvertisement) {
  Env env;
  env.cat.at("").can_fast_zero = false;
  Negotiated n = env.neg("", true, false, false);
  EXPECT_EQ(validate(RequestHeader{kCmdFlagFastZero, kCmdWriteZeroes, 1, 0, 1}, n).error, kEinval);
  EXPECT_EQ(validate(RequestHeader{kCmdFlagNoHole, kCmdWriteZeroes, 1, 0, 1}, n).error, 0u);
}

TEST(Validate, BlockStatusNeedsChunks) {
  Env env;
  Negotiated n = env.neg("", false, false, true);  // inconsistent on purpose
  n.structured_replies = false;
  EXPECT_EQ(validate(RequestHeader{0, kCmdBlockStatus, 1, 0, 1}, n).error, kEinval);
}

TEST(Validate, Disconnect) {
  Env env;
  Negotiated n = env.neg("", false, false, false);
  Verdict v = validate(RequestHeader{0, kCmdDisc, 1, 0, 0}, n);
  EXPECT_TRUE(v.disconnect);
  EXPECT_EQ(v.error, 0u);
  EXPECT_FALSE(v.payload_follows);
  // Even a malformed DISC ends the session: the client sends nothing more.
  v = validate(RequestHeader{kCmdFlagDf, kCmdDisc, 1, 5, 5}, env.neg("", true, true, false));
  EXPECT_TRUE(v.disconnect);
  EXPECT_FALSE(v.payload_follows);
}

TEST(Validate, ExtendedHeaders) {
  Env env;
  Negotiated n = env.neg("", false, true, true);
  const uint64_t size = 1ull << 30;
  const Row rows[] = {
      {"write with PAYLOAD_LEN", kCmdWrite, kCmdFlagPayloadLen, 0, 4096, 0, true},
      // Non-compliant, but what QEMU 9+ clients send: the data follows all the same.
      {"write without PAYLOAD_LEN", kCmdWrite, 0, 0, 4096, 0, true},
      {"read with payload: consumed, EINVAL", kCmdRead, kCmdFlagPayloadLen, 0, 100, kEinval, true},
      {"block status payload form unsupported", kCmdBlockStatus, kCmdFlagPayloadLen, 0, 12, kEinval, true},
      {"trim with 64-bit effect length", kCmdTrim, 0, 0, size, 0},
      {"zeroes 64-bit length past end", kCmdWriteZeroes, 0, 0, size + 1, kEnospc},
      {"block status 64-bit", kCmdBlockStatus, kCmdFlagReqOne, 0, size, 0},
      {"read 64-bit length", kCmdRead, 0, 0, 1ull << 33, kEinval},
      {"unknown command with payload", 42, kCmdFlagPayloadLen, 0, 8, kEinval, true},
      {"huge payload: fatal", kCmdWrite, kCmdFlagPayloadLen, 0, 1ull << 40, kEinval, true, true},
      {"read DF ok", kCmdRead, kCmdFlagDf, 0, 512, 0},
  };
  for (const Row& r : rows) {
    Verdict v = validate(RequestHeader{r.flags, r.type, 1, r.offset, r.length}, n);
    EXPECT_EQ(v.error, r.error) << r.what;
    EXPECT_EQ(v.payload_follows, r.payload) << r.what;
    if (r.payload) { EXPECT_EQ(v.payload_len, r.length) << r.what; }
    EXPECT_EQ(v.fatal, r.fatal) << r.what;
  }
}

TEST(Validate, PayloadDiscardLimit) {
  ExportInfo e;
  e.max_block = 1u << 20;
  EXPECT_EQ(payload_discard_limit(e), 32u << 20);
  e.max_block = 0xffffffffu;
  EXPECT_EQ(payload_discard_limit(e), 0xffffffffu);
}

TEST(ErrnoToNbd, Mapping) {
  EXPECT_EQ(errno_to_nbd(0), 0u);
  EXPECT_EQ(errno_to_nbd(-EPERM), kEperm);
  EXPECT_EQ(errno_to_nbd(EROFS), kEperm);
  EXPECT_EQ(errno_to_nbd(-EIO), kEio);
  EXPECT_EQ(errno_to_nbd(-ENOMEM), kEnomem);
  EXPECT_EQ(errno_to_nbd(EINVAL), kEinval);
  EXPECT_EQ(errno_to_nbd(-ENOSPC), kEnospc);
  EXPECT_EQ(errno_to_nbd(-EDQUOT), kEnospc);
  EXPECT_EQ(errno_to_nbd(-EFBIG), kEnospc);
  EXPECT_EQ(errno_to_nbd(-EOVERFLOW), kEoverflow);
  EXPECT_EQ(errno_to_nbd(-ENOTSUP), kEnotsup);
  EXPECT_EQ(errno_to_nbd(-EOPNOTSUPP), kEnotsup);
  EXPECT_EQ(errno_to_nbd(-ESHUTDOWN), kEshutdown);
  EXPECT_EQ(errno_to_nbd(-ENODEV), kEio);
  EXPECT_EQ(errno_to_nbd(INT32_MIN), kEio);
}

}  // namespace
}  // namespace blkstack::nbd::test
