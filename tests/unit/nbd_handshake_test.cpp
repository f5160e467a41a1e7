// Option haggling without TLS: greeting, every option, malformed input.
#include "nbd_test_util.hpp"

namespace blkstack::nbd::test {
namespace {

using Step = Handshake::Step;

class HandshakeTest : public ::testing::Test {
 protected:
  MapCatalog cat = standard_catalog();
};

TEST_F(HandshakeTest, GreetingIsByteExact) {
  Session s(cat);
  const Bytes want = {'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C', 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0x00, 0x03};
  EXPECT_EQ(s.greeting, want);
}

TEST_F(HandshakeTest, UnknownClientFlagsClose) {
  Session s(cat);
  EXPECT_EQ(s.feed(client_flags(kClientFlagFixedNewstyle | 4)), Step::kClose);
  EXPECT_TRUE(s.out.empty());
  EXPECT_NE(s.hs.close_reason().find("flags"), std::string::npos);
}

TEST_F(HandshakeTest, ClientFlagsAloneNeedMore) {
  Session s(cat);
  EXPECT_EQ(s.feed(client_flags()), Step::kNeedMore);
  EXPECT_EQ(s.last_consumed, 4u);
  EXPECT_TRUE(s.out.empty());
}

TEST_F(HandshakeTest, BadOptionMagicCloses) {
  Session s(cat);
  Bytes in = client_flags();
  Bytes opt = option(kOptList);
  opt[0] ^= 1;
  append(in, opt);
  EXPECT_EQ(s.feed(in), Step::kClose);
  EXPECT_TRUE(s.out.empty());
}

TEST_F(HandshakeTest, ExportNameWithNoZeroes) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptExportName, Bytes{'s', 'e', 'c', 'o', 'n', 'd'}));
  Bytes trailing = {0x25, 0x60, 0x95, 0x13};  // first bytes of a request
  append(in, trailing);
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_EQ(s.last_consumed, in.size() - 4) << "transmission bytes must be left alone";
  Bytes want;
  append_be(want, 64ull << 20, 8);
  append_be(want, kFlagHasFlags | kFlagReadOnly | kFlagSendFlush | kFlagRotational, 2);
  EXPECT_EQ(s.out, want);
  const Negotiated& n = s.hs.negotiated();
  EXPECT_EQ(n.exp, cat.find("second"));
  EXPECT_FALSE(n.structured_replies);
  EXPECT_FALSE(n.extended_headers);
  EXPECT_FALSE(n.block_size_agreed);
  // Later feeds change nothing.
  size_t c = 99;
  EXPECT_EQ(s.hs.feed(trailing, c), Step::kDone);
  EXPECT_EQ(c, 0u);
}

TEST_F(HandshakeTest, ExportNameWithZeroes) {
  Session s(cat);
  Bytes in = client_flags(kClientFlagFixedNewstyle);
  append(in, option(kOptExportName));
  ASSERT_EQ(s.feed(in), Step::kDone);
  ASSERT_EQ(s.out.size(), 8u + 2 + 124);
  EXPECT_EQ(get_be64(s.out.data()), 1ull << 30);
  const uint16_t want = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendTrim | kFlagSendWriteZeroes |
                        kFlagCanMultiConn | kFlagSendCache | kFlagSendFastZero;
  EXPECT_EQ(get_be16(s.out.data() + 8), want);
  for (size_t i = 10; i < s.out.size(); ++i) ASSERT_EQ(s.out[i], 0);
}

TEST_F(HandshakeTest, ExportNameUnknownCloses) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptExportName, Bytes{'x'}));
  EXPECT_EQ(s.feed(in), Step::kClose);
  EXPECT_TRUE(s.out.empty());
}

TEST_F(HandshakeTest, ExportNameTooLongClosesWithoutReadingIt) {
  Session s(cat);
  Bytes in = client_flags();
  Bytes hdr = option(kOptExportName);
  put_be32(&hdr[12], 5000);
  append(in, hdr);
  EXPECT_EQ(s.feed(in), Step::kClose);
  EXPECT_EQ(s.hs.buffered(), 0u);
}

TEST_F(HandshakeTest, NonFixedNewstyleClientMayStillUseExportName) {
  Session s(cat);
  Bytes in = client_flags(0);
  append(in, option(kOptExportName));
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_EQ(s.out.size(), 134u);
}

TEST_F(HandshakeTest, AbortAcksAndCloses) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptAbort, Bytes{1, 2, 3}));  // data is ignored
  EXPECT_EQ(s.feed(in), Step::kClose);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].opt, kOptAbort);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_TRUE(r[0].data.empty());
}

TEST_F(HandshakeTest, AbortReplyIsByteExact) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptAbort));
  s.feed(in);
  const Bytes want = {0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0};
  EXPECT_EQ(s.out, want);
}

TEST_F(HandshakeTest, ListSendsEveryExportThenAck) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptList));
  EXPECT_EQ(s.feed(in), Step::kNeedMore);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 3u);
  std::map<std::string, std::string> seen;
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(r[i].type, kRepServer);
    uint32_t n = get_be32(r[i].data.data());
    ASSERT_LE(n + 4, r[i].data.size());
    seen[std::string(r[i].data.begin() + 4, r[i].data.begin() + 4 + n)] =
        std::string(r[i].data.begin() + 4 + n, r[i].data.end());
  }
  EXPECT_EQ(seen[""], "default export");
  EXPECT_EQ(seen["second"], "the second one");
  EXPECT_EQ(r[2].type, kRepAck);
}

TEST_F(HandshakeTest, ListWithDataIsInvalid) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptList, Bytes{0}));
  s.feed(in);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, UnknownOptionsAreUnsupported) {
  for (uint32_t opt : {kOptPeekExport, 12u, 0u, 0xffffffffu}) {
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(opt, Bytes(100, 7)));
    EXPECT_EQ(s.feed(in), Step::kNeedMore);
    auto r = s.replies();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].opt, opt);
    EXPECT_EQ(r[0].type, kRepErrUnsup);
  }
}

struct InfoResult {
  std::vector<OptReply> infos;
  OptReply final;
};
InfoResult split_info(const std::vector<OptReply>& r) {
  InfoResult res;
  for (size_t i = 0; i + 1 < r.size(); ++i) res.infos.push_back(r[i]);
  if (!r.empty()) res.final = r.back();
  return res;
}
const OptReply* find_info(const InfoResult& r, uint16_t type) {
  for (auto& i : r.infos)
    if (i.type == kRepInfo && get_be16(i.data.data()) == type) return &i;
  return nullptr;
}

TEST_F(HandshakeTest, InfoReturnsExportAndRequestedItems) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptInfo, info_payload("second", {kInfoName, kInfoDescription, kInfoBlockSize, 77})));
  ASSERT_EQ(s.feed(in), Step::kNeedMore);
  auto r = split_info(s.replies());
  EXPECT_EQ(r.final.type, kRepAck);
  ASSERT_EQ(r.infos.size(), 4u) << "export, name, description, block size; unknown 77 ignored";
  const OptReply* e = find_info(r, kInfoExport);
  ASSERT_TRUE(e);
  ASSERT_EQ(e->data.size(), 12u);
  EXPECT_EQ(get_be64(&e->data[2]), 64ull << 20);
  EXPECT_EQ(get_be16(&e->data[10]), kFlagHasFlags | kFlagReadOnly | kFlagSendFlush | kFlagRotational);
  const OptReply* n = find_info(r, kInfoName);
  ASSERT_TRUE(n);
  EXPECT_EQ(std::string(n->data.begin() + 2, n->data.end()), "second");
  const OptReply* d = find_info(r, kInfoDescription);
  ASSERT_TRUE(d);
  EXPECT_EQ(std::string(d->data.begin() + 2, d->data.end()), "the second one");
  const OptReply* b = find_info(r, kInfoBlockSize);
  ASSERT_TRUE(b);
  ASSERT_EQ(b->data.size(), 14u);
  EXPECT_EQ(get_be32(&b->data[2]), 4096u);
  EXPECT_EQ(get_be32(&b->data[6]), 65536u);
  EXPECT_EQ(get_be32(&b->data[10]), 1u << 20);
}

TEST_F(HandshakeTest, InfoWithoutRequestsSendsOnlyExport) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptInfo, info_payload("")));
  s.feed(in);
  auto r = split_info(s.replies());
  ASSERT_EQ(r.infos.size(), 1u);
  EXPECT_TRUE(find_info(r, kInfoExport));
  EXPECT_EQ(r.final.type, kRepAck);
}

TEST_F(HandshakeTest, InfoExportReplyIsByteExact) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptInfo, info_payload("second")));
  s.feed(in);
  const Bytes want = {
      0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 6, 0, 0, 0, 3, 0, 0, 0, 12,  // NBD_REP_INFO
      0,    0,                                                                           // NBD_INFO_EXPORT
      0,    0,    0,    0,    0x04, 0,    0,    0,                                       // 64 MiB
      0,    0x17,                                                           // HAS_FLAGS|RO|FLUSH|ROTATIONAL
      0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0};  // NBD_REP_ACK
  EXPECT_EQ(s.out, want);
}

TEST_F(HandshakeTest, InfoDuplicateRequestsAnsweredOnce) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptInfo, info_payload("", {kInfoName, kInfoName, kInfoExport})));
  s.feed(in);
  auto r = split_info(s.replies());
  EXPECT_EQ(r.infos.size(), 2u);
}

TEST_F(HandshakeTest, InfoUnknownExport) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptInfo, info_payload("nope", {kInfoBlockSize})));
  s.feed(in);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 1u) << "no NBD_REP_INFO before ERR_UNKNOWN";
  EXPECT_EQ(r[0].type, kRepErrUnknown);
}

TEST_F(HandshakeTest, InfoMalformedPayloads) {
  const std::vector<Bytes> bad = {
      {},                                      // nothing
      {0, 0, 0},                               // short length
      {0, 0, 0, 9, 'a', 'b', 0, 0},            // name runs past the option
      {0, 0, 0, 0, 0, 1},                      // one request promised, none present
      {0, 0, 0, 0, 0, 0, 0},                   // trailing byte
      {0, 0, 0, 0, 0, 1, 0, 3, 0},             // odd trailing byte after requests
      {0xff, 0xff, 0xff, 0xff, 0, 0},          // huge name length
  };
  for (uint32_t opt : {kOptInfo, kOptGo}) {
    for (const Bytes& p : bad) {
      Session s(cat);
      Bytes in = client_flags();
      append(in, option(opt, p));
      EXPECT_EQ(s.feed(in), Step::kNeedMore);
      auto r = s.replies();
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].type, kRepErrInvalid) << "payload size " << p.size();
    }
  }
}

TEST_F(HandshakeTest, GoEntersTransmission) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptGo, info_payload("", {kInfoBlockSize})));
  in.push_back(0x25);
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_EQ(s.last_consumed, in.size() - 1);
  auto r = split_info(s.replies());
  EXPECT_EQ(r.final.type, kRepAck);
  EXPECT_EQ(r.final.opt, kOptGo);
  EXPECT_TRUE(find_info(r, kInfoBlockSize));
  const Negotiated& n = s.hs.negotiated();
  EXPECT_EQ(n.exp, cat.find(""));
  EXPECT_TRUE(n.block_size_agreed);
  EXPECT_FALSE(n.base_allocation);
  EXPECT_EQ(n.transmission_flags, get_be16(&find_info(r, kInfoExport)->data[10]));
}

TEST_F(HandshakeTest, GoUnknownExportKeepsNegotiating) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptGo, info_payload("nope")));
  append(in, option(kOptGo, info_payload("second")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  auto r = s.replies();
  EXPECT_EQ(r[0].type, kRepErrUnknown);
  EXPECT_EQ(s.hs.negotiated().exp, cat.find("second"));
  EXPECT_FALSE(s.hs.negotiated().block_size_agreed);
}

TEST_F(HandshakeTest, InfoThenGoGiveSameFlags) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptInfo, info_payload("")));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[1].data, r[3].data);
  EXPECT_TRUE(get_be16(&r[3].data[10]) & kFlagSendDf);
  EXPECT_TRUE(s.hs.negotiated().structured_replies);
}

TEST_F(HandshakeTest, BlockSizeRequiredPolicy) {
  cat.at("second").block_size_required = true;
  {  // GO without NBD_INFO_BLOCK_SIZE: constraints first, then the error
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(kOptGo, info_payload("second")));
    EXPECT_EQ(s.feed(in), Step::kNeedMore);
    auto r = split_info(s.replies());
    EXPECT_EQ(r.final.type, kRepErrBlockSizeReqd);
    EXPECT_TRUE(find_info(r, kInfoBlockSize));
  }
  {  // asking for it succeeds
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(kOptGo, info_payload("second", {kInfoBlockSize})));
    EXPECT_EQ(s.feed(in), Step::kDone);
    EXPECT_TRUE(s.hs.negotiated().block_size_agreed);
  }
  {  // INFO never fails for it: it commits to nothing
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(kOptInfo, info_payload("second")));
    s.feed(in);
    EXPECT_EQ(split_info(s.replies()).final.type, kRepAck);
  }
  {  // EXPORT_NAME cannot promise anything: hard disconnect
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(kOptExportName, Bytes{'s', 'e', 'c', 'o', 'n', 'd'}));
    EXPECT_EQ(s.feed(in), Step::kClose);
  }
  {  // an export with default sizes is never refused
    cat.at("").block_size_required = true;
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(kOptGo, info_payload("")));
    EXPECT_EQ(s.feed(in), Step::kDone);
  }
}

TEST_F(HandshakeTest, BlockSizeSentOnlyOnRequestByDefault) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptGo, info_payload("second")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  auto r = split_info(s.replies());
  EXPECT_FALSE(find_info(r, kInfoBlockSize));
  EXPECT_FALSE(s.hs.negotiated().block_size_agreed);
}

TEST_F(HandshakeTest, StructuredReplyRules) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply, Bytes{0}));  // data: invalid
  append(in, option(kOptStructuredReply));            // ok
  append(in, option(kOptStructuredReply));            // repeat: invalid
  s.feed(in);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_EQ(r[1].type, kRepAck);
  EXPECT_EQ(r[2].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, ExtendedHeadersRules) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptExtendedHeaders, Bytes{0}));  // data: invalid
  append(in, option(kOptExtendedHeaders));            // after structured: fine
  append(in, option(kOptExtendedHeaders));            // repeat: invalid
  append(in, option(kOptStructuredReply));            // cannot downgrade
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 7u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_EQ(r[1].type, kRepErrInvalid);
  EXPECT_EQ(r[2].type, kRepAck);
  EXPECT_EQ(r[3].type, kRepErrInvalid);
  EXPECT_EQ(r[4].type, kRepErrExtHeaderReqd);
  EXPECT_EQ(r[6].type, kRepAck);
  EXPECT_TRUE(s.hs.negotiated().extended_headers);
  EXPECT_TRUE(s.hs.negotiated().structured_replies);
  EXPECT_TRUE(s.hs.negotiated().transmission_flags & kFlagSendDf);
  EXPECT_FALSE(s.hs.negotiated().transmission_flags & kFlagBlockStatusPayload);
}

TEST_F(HandshakeTest, ExtendedHeadersAloneEnableChunks) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptExtendedHeaders));
  append(in, option(kOptStructuredReply));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  auto r = s.replies();
  EXPECT_EQ(r[1].type, kRepErrExtHeaderReqd);
  EXPECT_TRUE(s.hs.negotiated().structured_replies);
}

TEST_F(HandshakeTest, ExportNameAfterExtendedHeadersCloses) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptExtendedHeaders));
  append(in, option(kOptExportName));
  EXPECT_EQ(s.feed(in), Step::kClose);
  EXPECT_EQ(s.replies().size(), 1u);
}

TEST_F(HandshakeTest, OversizedOptionIsDiscardedNotBuffered) {
  for (uint32_t opt : {kOptInfo, kOptGo, kOptListMetaContext, kOptSetMetaContext}) {
    Session s(cat);
    Bytes in = client_flags();
    Bytes hdr = option(opt);
    const uint32_t len = Handshake::kMaxOptionPayload + 1;
    put_be32(&hdr[12], len);
    append(in, hdr);
    EXPECT_EQ(s.feed(in), Step::kNeedMore);
    Bytes chunk(4096, 0xab);
    for (uint32_t left = len; left > 0;) {
      Bytes part(chunk.begin(), chunk.begin() + std::min<uint32_t>(left, chunk.size()));
      EXPECT_TRUE(s.out.empty()) << "no reply before the option is read";
      EXPECT_EQ(s.feed(part), Step::kNeedMore);
      EXPECT_LE(s.hs.buffered(), 16u);
      left -= part.size();
    }
    auto r = s.replies();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].type, kRepErrTooBig);
    // and the stream is still in sync
    EXPECT_EQ(s.feed(option(kOptGo, info_payload(""))), Step::kDone);
  }
}

TEST_F(HandshakeTest, HugeUnknownOptionStreamsPast) {
  Session s(cat);
  Bytes in = client_flags();
  Bytes hdr = option(99);
  put_be32(&hdr[12], 0xffffffffu);
  append(in, hdr);
  EXPECT_EQ(s.feed(in), Step::kNeedMore);
  Bytes big(1 << 20, 0);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.feed(big), Step::kNeedMore);
  EXPECT_TRUE(s.out.empty());
  EXPECT_EQ(s.hs.buffered(), 0u);
}

TEST_F(HandshakeTest, TooManyOptionsClose) {
  Session s(cat);
  Bytes in = client_flags();
  for (unsigned i = 0; i <= Handshake::kMaxOptions; ++i) append(in, option(kOptStructuredReply, Bytes{0}));
  EXPECT_EQ(s.feed(in), Step::kClose);
  EXPECT_EQ(s.replies().size(), Handshake::kMaxOptions);
}

TEST_F(HandshakeTest, StartTlsRefusedWhenOff) {
  Session s(cat, TlsMode::kOff);
  Bytes in = client_flags();
  append(in, option(kOptStartTls));
  EXPECT_EQ(s.feed(in), Step::kNeedMore);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrPolicy);
}

TEST_F(HandshakeTest, TransmissionFlagsFollowExportInfo) {
  ExportInfo e;
  EXPECT_EQ(transmission_flags(e, false), kFlagHasFlags);
  EXPECT_EQ(transmission_flags(e, true), kFlagHasFlags | kFlagSendDf);
  e.can_write_zeroes = e.can_fast_zero = e.can_trim = true;
  EXPECT_EQ(transmission_flags(e, false), kFlagHasFlags | kFlagSendWriteZeroes | kFlagSendFastZero | kFlagSendTrim);
  e.read_only = true;  // read-only exports do not offer what must fail
  EXPECT_EQ(transmission_flags(e, false), kFlagHasFlags | kFlagReadOnly);
  ExportInfo f;
  f.can_fast_zero = true;  // without write zeroes it MUST stay clear
  EXPECT_EQ(transmission_flags(f, false), kFlagHasFlags);
}

TEST_F(HandshakeTest, ExportInfoProblems) {
  ExportInfo e;
  EXPECT_EQ(export_info_problem(e), nullptr);
  e.min_block = 3;
  EXPECT_NE(export_info_problem(e), nullptr);
  e.min_block = 1u << 17;
  EXPECT_NE(export_info_problem(e), nullptr);
  e.min_block = 4096;
  e.preferred_block = 512;
  EXPECT_NE(export_info_problem(e), nullptr);
  e.preferred_block = 4096;
  e.max_block = 1024;
  EXPECT_NE(export_info_problem(e), nullptr);
  e.max_block = 0xffffffffu;
  EXPECT_EQ(export_info_problem(e), nullptr);
  e.name.assign(4097, 'x');
  EXPECT_NE(export_info_problem(e), nullptr);
}

}  // namespace
}  // namespace blkstack::nbd::test
