// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT with base:allocation.
#include "nbd_test_util.hpp"

namespace blkstack::nbd::test {
namespace {

using Step = Handshake::Step;

class MetaTest : public ::testing::Test {
 protected:
  MapCatalog cat = standard_catalog();
  // Runs STRUCTURED_REPLY (optionally) and then `opt`; returns replies to `opt`.
  std::vector<OptReply> run(uint32_t opt, const Bytes& payload, bool structured = true) {
    Session s(cat);
    Bytes in = client_flags();
    if (structured) append(in, option(kOptStructuredReply));
    append(in, option(opt, payload));
    EXPECT_EQ(s.feed(in), Step::kNeedMore);
    auto r = s.replies();
    if (structured) r.erase(r.begin());
    return r;
  }
  static std::vector<std::string> contexts(const std::vector<OptReply>& r, std::vector<uint32_t>* ids = nullptr) {
    std::vector<std::string> v;
    for (auto& x : r)
      if (x.type == kRepMetaContext) {
        v.emplace_back(x.data.begin() + 4, x.data.end());
        if (ids) ids->push_back(get_be32(x.data.data()));
      }
    return v;
  }
};

TEST_F(MetaTest, ListWithoutQueriesListsEverything) {
  std::vector<uint32_t> ids;
  auto r = run(kOptListMetaContext, meta_payload("", {}));
  EXPECT_EQ(contexts(r, &ids), std::vector<std::string>{"base:allocation"});
  EXPECT_EQ(ids, std::vector<uint32_t>{0}) << "LIST uses the reserved id 0";
  EXPECT_EQ(r.back().type, kRepAck);
}

TEST_F(MetaTest, ListBaseWildcardAndExactName) {
  for (const char* q : {"base:", "base:allocation"}) {
    auto r = run(kOptListMetaContext, meta_payload("", {q}));
    EXPECT_EQ(contexts(r), std::vector<std::string>{"base:allocation"}) << q;
    EXPECT_EQ(r.back().type, kRepAck);
  }
}

TEST_F(MetaTest, ListIgnoresUnknownNamespacesAndLeaves) {
  auto r = run(kOptListMetaContext, meta_payload("", {"qemu:dirty-bitmap:x", "x-foo:bar", "base:nosuch"}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
}

TEST_F(MetaTest, ListReportsEachContextOnce) {
  auto r = run(kOptListMetaContext, meta_payload("", {"base:", "base:allocation", "base:allocation"}));
  EXPECT_EQ(contexts(r).size(), 1u);
}

TEST_F(MetaTest, ExportWithoutBlockStatusHasNoContexts) {
  auto r = run(kOptListMetaContext, meta_payload("second", {}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
}

TEST_F(MetaTest, UnknownExport) {
  for (uint32_t opt : {kOptListMetaContext, kOptSetMetaContext}) {
    auto r = run(opt, meta_payload("nope", {"base:allocation"}));
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].type, kRepErrUnknown);
  }
}

TEST_F(MetaTest, RequireStructuredReplies) {
  for (uint32_t opt : {kOptListMetaContext, kOptSetMetaContext}) {
    auto r = run(opt, meta_payload("", {"base:allocation"}), false);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].type, kRepErrInvalid);
  }
}

TEST_F(MetaTest, ExtendedHeadersAlsoQualify) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptExtendedHeaders));
  append(in, option(kOptSetMetaContext, meta_payload("", {"base:allocation"})));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_TRUE(s.hs.negotiated().base_allocation);
  EXPECT_TRUE(s.hs.negotiated().extended_headers);
}

TEST_F(MetaTest, MalformedRequests) {
  std::vector<Bytes> bad;
  bad.push_back({});
  bad.push_back({0, 0, 0, 0});                             // no query count
  bad.push_back({0, 0, 0, 5, 'a'});                        // name past end
  bad.push_back({0, 0, 0, 0, 0, 0, 0, 1});                 // one query promised, none present
  bad.push_back({0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 'b'});  // query past end
  bad.push_back({0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff});     // absurd count
  Bytes trailing = meta_payload("", {"base:allocation"});
  trailing.push_back(0);
  bad.push_back(trailing);
  bad.push_back(meta_payload("", {"nocolon"}));
  bad.push_back(meta_payload("", {":allocation"}));
  for (uint32_t opt : {kOptListMetaContext, kOptSetMetaContext})
    for (const Bytes& p : bad) {
      auto r = run(opt, p);
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].type, kRepErrInvalid) << "size " << p.size();
    }
}

TEST_F(MetaTest, SetSelectsBaseAllocation) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptSetMetaContext, meta_payload("", {"base:allocation", "qemu:x", "base:allocation"})));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  auto r = s.replies();
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[1].type, kRepMetaContext);
  EXPECT_EQ(get_be32(r[1].data.data()), Handshake::kBaseAllocationId);
  EXPECT_EQ(std::string(r[1].data.begin() + 4, r[1].data.end()), "base:allocation");
  EXPECT_EQ(r[2].type, kRepAck);
  const Negotiated& n = s.hs.negotiated();
  EXPECT_TRUE(n.base_allocation);
  EXPECT_EQ(n.base_allocation_id, Handshake::kBaseAllocationId);
}

TEST_F(MetaTest, SetWildcardAndEmptySelectNothing) {
  for (auto queries : {std::vector<std::string>{"base:"}, std::vector<std::string>{}}) {
    Session s(cat);
    Bytes in = client_flags();
    append(in, option(kOptStructuredReply));
    append(in, option(kOptSetMetaContext, meta_payload("", queries)));
    append(in, option(kOptGo, info_payload("")));
    ASSERT_EQ(s.feed(in), Step::kDone);
    auto r = s.replies();
    ASSERT_EQ(r.size(), 4u);
    EXPECT_EQ(r[1].type, kRepAck);
    EXPECT_FALSE(s.hs.negotiated().base_allocation);
  }
}

TEST_F(MetaTest, SetForAnotherExportDoesNotCarryOver) {
  cat.at("second").can_block_status = true;
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptSetMetaContext, meta_payload("second", {"base:allocation"})));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_FALSE(s.hs.negotiated().base_allocation);
}

TEST_F(MetaTest, FailedSetClearsEarlierSelection) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptSetMetaContext, meta_payload("", {"base:allocation"})));
  append(in, option(kOptSetMetaContext, meta_payload("", {"broken"})));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_FALSE(s.hs.negotiated().base_allocation);
}

TEST_F(MetaTest, LaterSetReplacesSelection) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptSetMetaContext, meta_payload("", {"base:allocation"})));
  append(in, option(kOptSetMetaContext, meta_payload("", {"x-other:thing"})));
  append(in, option(kOptGo, info_payload("")));
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_FALSE(s.hs.negotiated().base_allocation);
}

TEST_F(MetaTest, ExportNameKeepsSelection) {
  Session s(cat);
  Bytes in = client_flags();
  append(in, option(kOptStructuredReply));
  append(in, option(kOptSetMetaContext, meta_payload("", {"base:allocation"})));
  append(in, option(kOptExportName));
  ASSERT_EQ(s.feed(in), Step::kDone);
  EXPECT_TRUE(s.hs.negotiated().base_allocation);
  EXPECT_TRUE(s.hs.negotiated().structured_replies);
}

}  // namespace
}  // namespace blkstack::nbd::test
