// Helpers for the NBD protocol tests: a fixed export catalog, client-side
// message builders and a parser for the server's option replies, written
// straight from the spec so the tests do not reuse the code under test.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "exports/nbd/handshake.hpp"
#include "exports/nbd/protocol.hpp"
#include "nbd_map_catalog.hpp"

namespace blkstack::nbd::test {

using Bytes = std::vector<uint8_t>;

inline void append_be(Bytes& b, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) b.push_back(uint8_t(v >> (8 * i)));
}
inline void append(Bytes& b, std::string_view s) { b.insert(b.end(), s.begin(), s.end()); }
inline void append(Bytes& b, const Bytes& s) { b.insert(b.end(), s.begin(), s.end()); }

// "" (default, writable, everything on) and "second" (read-only, 4K blocks).
inline MapCatalog standard_catalog() {
  MapCatalog c;
  ExportInfo a;
  a.name = "";
  a.description = "default export";
  a.size = 1ull << 30;
  a.can_flush = a.can_fua = a.can_trim = a.can_write_zeroes = a.can_fast_zero = true;
  a.can_cache = a.can_multi_conn = a.can_block_status = true;
  c.add(a);
  ExportInfo b;
  b.name = "second";
  b.description = "the second one";
  b.size = 64ull << 20;
  b.read_only = true;
  b.rotational = true;
  b.can_flush = true;
  b.min_block = 4096;
  b.preferred_block = 65536;
  b.max_block = 1u << 20;
  c.add(b);
  return c;
}

inline Bytes client_flags(uint32_t f = kClientFlagFixedNewstyle | kClientFlagNoZeroes) {
  Bytes b;
  append_be(b, f, 4);
  return b;
}
inline Bytes option(uint32_t opt, const Bytes& data = {}) {
  Bytes b;
  append_be(b, kIHaveOpt, 8);
  append_be(b, opt, 4);
  append_be(b, data.size(), 4);
  append(b, data);
  return b;
}
inline Bytes info_payload(std::string_view name, std::vector<uint16_t> reqs = {}) {
  Bytes b;
  append_be(b, name.size(), 4);
  append(b, name);
  append_be(b, reqs.size(), 2);
  for (uint16_t r : reqs) append_be(b, r, 2);
  return b;
}
inline Bytes meta_payload(std::string_view name, std::vector<std::string> queries) {
  Bytes b;
  append_be(b, name.size(), 4);
  append(b, name);
  append_be(b, queries.size(), 4);
  for (auto& q : queries) {
    append_be(b, q.size(), 4);
    append(b, q);
  }
  return b;
}

struct OptReply {
  uint32_t opt = 0, type = 0;
  Bytes data;
  std::string text() const { return std::string(data.begin(), data.end()); }
};

// Splits server bytes into option replies; fails the test on garbage.
inline std::vector<OptReply> parse_replies(const Bytes& out, size_t from = 0) {
  std::vector<OptReply> v;
  size_t i = from;
  while (i < out.size()) {
    if (out.size() - i < 20) {
      ADD_FAILURE() << "truncated option reply";
      break;
    }
    EXPECT_EQ(get_be64(&out[i]), kOptReplyMagic);
    OptReply r;
    r.opt = get_be32(&out[i + 8]);
    r.type = get_be32(&out[i + 12]);
    uint32_t len = get_be32(&out[i + 16]);
    if (out.size() - i - 20 < len) {
      ADD_FAILURE() << "option reply data truncated";
      break;
    }
    r.data.assign(out.begin() + i + 20, out.begin() + i + 20 + len);
    v.push_back(r);
    i += 20 + len;
  }
  return v;
}

// Drives a Handshake the way a transport would.
struct Session {
  explicit Session(const ExportCatalog& c, TlsMode m = TlsMode::kOff) : hs(c, m) {
    greeting = hs.out();
    hs.out().clear();
  }
  // Feeds `in` whole; returns the step and leaves the bytes produced in `out`.
  Handshake::Step feed(const Bytes& in) {
    size_t consumed = 0;
    auto s = hs.feed(in, consumed);
    last_consumed = consumed;
    out.insert(out.end(), hs.out().begin(), hs.out().end());
    hs.out().clear();
    return s;
  }
  std::vector<OptReply> replies() const { return parse_replies(out); }
  Handshake hs;
  Bytes greeting, out;
  size_t last_consumed = 0;
};

}  // namespace blkstack::nbd::test
