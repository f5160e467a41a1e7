// TLS policy: kOff (NOTLS), kOn (optional STARTTLS), kRequire (FORCEDTLS).
#include "nbd_test_util.hpp"

namespace blkstack::nbd::test {
namespace {

using Step = Handshake::Step;

class TlsTest : public ::testing::Test {
 protected:
  MapCatalog cat = standard_catalog();
};

TEST_F(TlsTest, RequireAnswersEveryOtherOptionWithTlsReqd) {
  Session s(cat, TlsMode::kRequire);
  Bytes in = client_flags();
  const std::vector<uint32_t> opts = {kOptList,           kOptInfo,           kOptGo,
                                      kOptStructuredReply, kOptListMetaContext, kOptSetMetaContext,
                                      kOptExtendedHeaders, 42};
  for (uint32_t o : opts) append(in, option(o, o == kOptInfo || o == kOptGo ? info_payload("") : Bytes{}));
  EXPECT_EQ(s.feed(in), Step::kNeedMore);
  auto r = s.replies();
  ASSERT_EQ(r.size(), opts.size());
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].opt, opts[i]);
    EXPECT_EQ(r[i].type, kRepErrTlsReqd) << opts[i];
  }
}

TEST_F(TlsTest, RequireExportNameWithoutTlsCloses) {
  Session s(cat, TlsMode::kRequire);
  Bytes in = client_flags();
  append(in, option(kOptExportName));
  EXPECT_EQ(s.feed(in), Step::kClose);
  EXPECT_TRUE(s.out.empty());
}

TEST_F(TlsTest, RequireAbortStillAcked) {
  Session s(cat, TlsMode::kRequire);
  Bytes in = client_flags();
  append(in, option(kOptAbort));
  EXPECT_EQ(s.feed(in), Step::kClose);
  ASSERT_EQ(s.replies().size(), 1u);
  EXPECT_EQ(s.replies()[0].type, kRepAck);
}

TEST_F(TlsTest, RequireNeedsFixedNewstyle) {
  Session s(cat, TlsMode::kRequire);
  EXPECT_EQ(s.feed(client_flags(0)), Step::kClose);
}

TEST_F(TlsTest, StartTlsStopsAtTheOptionBoundary) {
  Session s(cat, TlsMode::kRequire);
  Bytes in = client_flags();
  append(in, option(kOptStartTls));
  const size_t boundary = in.size();
  in.insert(in.end(), {0x16, 0x03, 0x01});  // a TLS ClientHello starts here
  EXPECT_EQ(s.feed(in), Step::kStartTls);
  EXPECT_EQ(s.last_consumed, boundary);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  // Nothing is consumed until the transport says TLS is up.
  size_t c = 7;
  EXPECT_EQ(s.hs.feed(Bytes{1, 2, 3}, c), Step::kStartTls);
  EXPECT_EQ(c, 0u);
}

TEST_F(TlsTest, AfterTlsEverythingWorksAndSecondStartTlsIsInvalid) {
  Session s(cat, TlsMode::kRequire);
  Bytes in = client_flags();
  append(in, option(kOptStartTls));
  ASSERT_EQ(s.feed(in), Step::kStartTls);
  s.hs.tls_started();
  s.out.clear();
  Bytes after = option(kOptStartTls);
  append(after, option(kOptList));
  append(after, option(kOptGo, info_payload("second")));
  ASSERT_EQ(s.feed(after), Step::kDone);
  auto r = s.replies();
  ASSERT_GE(r.size(), 3u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  for (auto& x : r) EXPECT_NE(x.type, kRepErrTlsReqd);
  EXPECT_TRUE(s.hs.negotiated().tls);
}

TEST_F(TlsTest, StartTlsForgetsEarlierNegotiation) {
  Session s(cat, TlsMode::kOn);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptExtendedHeaders));
  append(in, option(kOptSetMetaContext, meta_payload("", {"base:allocation"})));
  append(in, option(kOptStartTls));
  ASSERT_EQ(s.feed(in), Step::kStartTls);
  s.hs.tls_started();
  ASSERT_EQ(s.feed(option(kOptGo, info_payload(""))), Step::kDone);
  const Negotiated& n = s.hs.negotiated();
  EXPECT_FALSE(n.structured_replies);
  EXPECT_FALSE(n.extended_headers);
  EXPECT_FALSE(n.base_allocation);
  EXPECT_TRUE(n.tls);
  EXPECT_FALSE(n.transmission_flags & kFlagSendDf);
}

TEST_F(TlsTest, OptionalModeServesPlaintextToo) {
  Session s(cat, TlsMode::kOn);
  Bytes in = client_flags();
  append(in, option(kOptList));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  for (auto& x : s.replies()) EXPECT_NE(x.type, kRepErrTlsReqd);
  EXPECT_FALSE(s.hs.negotiated().tls);
}

TEST_F(TlsTest, OptionalModeRefusesTlsToNonFixedClients) {
  Session s(cat, TlsMode::kOn);
  Bytes in = client_flags(0);
  append(in, option(kOptStartTls));
  EXPECT_EQ(s.feed(in), Step::kNeedMore);
  EXPECT_EQ(s.replies().at(0).type, kRepErrPolicy);
}

TEST_F(TlsTest, StartTlsWithDataIsInvalid) {
  for (TlsMode m : {TlsMode::kOff, TlsMode::kOn, TlsMode::kRequire}) {
    Session s(cat, m);
    Bytes in = client_flags();
    append(in, option(kOptStartTls, Bytes{1}));
    EXPECT_EQ(s.feed(in), Step::kNeedMore);
    EXPECT_EQ(s.replies().at(0).type, kRepErrInvalid);
  }
}

TEST_F(TlsTest, OffNeverSendsTlsReqd) {
  Session s(cat, TlsMode::kOff);
  Bytes in = client_flags();
  for (uint32_t o : {kOptStartTls, kOptList, kOptStructuredReply, 42u}) append(in, option(o));
  s.feed(in);
  for (auto& x : s.replies()) EXPECT_NE(x.type, kRepErrTlsReqd);
}

TEST_F(TlsTest, TlsStartedOutsideStartTlsIsIgnored) {
  Session s(cat, TlsMode::kRequire);
  s.hs.tls_started();
  Bytes in = client_flags();
  append(in, option(kOptList));
  s.feed(in);
  EXPECT_EQ(s.replies().at(0).type, kRepErrTlsReqd);
}

}  // namespace
}  // namespace blkstack::nbd::test
