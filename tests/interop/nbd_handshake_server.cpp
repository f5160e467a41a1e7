// Minimal blocking NBD server for interop checks against real clients
// (nbdinfo, qemu-nbd --list): runs Handshake over a Unix socket against a
// fixed two-export catalog, then in the transmission phase answers every
// request with an error and closes on NBD_CMD_DISC. One connection at a time;
// exits by itself after --lifetime seconds so a failed script leaves nothing
// running. Logs one line per connection describing the outcome.
//
//   nbd_handshake_server SOCKET [--tls-require] [--log FILE] [--lifetime SECONDS]
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "exports/nbd/handshake.hpp"
#include "exports/nbd/protocol.hpp"
#include "exports/nbd/transmission.hpp"
#include "nbd_map_catalog.hpp"

using namespace blkstack::nbd;

namespace {

// "" (1 GiB, every feature) and "second" (100 MiB, rotational, 512/4K/1M blocks).
blkstack::nbd::test::MapCatalog fixed_catalog() {
  blkstack::nbd::test::MapCatalog c;
  ExportInfo a;
  a.name = "";
  a.description = "blkstack default export";
  a.size = 1ull << 30;
  a.can_flush = a.can_fua = a.can_trim = a.can_write_zeroes = a.can_cache = a.can_block_status = true;
  c.add(a);
  ExportInfo b;
  b.name = "second";
  b.description = "blkstack second export";
  b.size = 100ull << 20;
  b.can_flush = b.can_fua = b.can_write_zeroes = b.can_fast_zero = b.can_multi_conn = true;
  b.rotational = b.can_block_status = true;
  b.min_block = 512;
  b.preferred_block = 4096;
  b.max_block = 1u << 20;
  c.add(b);
  return c;
}

bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Reads what is available, waiting at most 10 s; false on EOF, error or timeout.
bool read_some(int fd, std::vector<uint8_t>& buf) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 10000) <= 0) return false;
  uint8_t tmp[16384];
  ssize_t r = ::read(fd, tmp, sizeof tmp);
  if (r <= 0) return false;
  buf.insert(buf.end(), tmp, tmp + r);
  return true;
}

// Transmission phase: error every request, stop at DISC. Returns a log word.
std::string serve_transmission(int fd, const Negotiated& neg, std::vector<uint8_t> buf) {
  for (;;) {
    RequestHeader h{};
    size_t used = 0;
    Parse p = parse_request(buf, neg.extended_headers, h, used);
    if (p == Parse::kBadMagic) return "bad-request-magic";
    if (p == Parse::kNeedMore) {
      if (!read_some(fd, buf)) return "eof";
      continue;
    }
    buf.erase(buf.begin(), buf.begin() + used);
    Verdict v = validate(h, neg);
    if (v.disconnect) return "disc";
    uint32_t err = v.error ? v.error : kEinval;  // this server executes nothing
    ReplyBuffer rb{};
    size_t n = neg.structured_replies
                   ? encode_error(rb, {h.cookie, h.offset, neg.extended_headers}, kReplyFlagDone, err)
                   : encode_simple_reply(rb, h.cookie, err);
    if (v.fatal) {
      write_all(fd, rb.data(), n);
      return "fatal";
    }
    for (uint64_t left = v.payload_follows ? v.payload_len : 0; left > 0;) {  // skip the payload
      if (buf.empty() && !read_some(fd, buf)) return "eof";
      size_t k = size_t(std::min<uint64_t>(left, buf.size()));
      buf.erase(buf.begin(), buf.begin() + k);
      left -= k;
    }
    if (!write_all(fd, rb.data(), n)) return "write-error";
  }
}

void serve(int fd, const ExportCatalog& cat, TlsMode mode, FILE* log) {
  Handshake hs(cat, mode);
  std::vector<uint8_t> buf;
  for (;;) {
    if (!write_all(fd, hs.out().data(), hs.out().size())) {
      // e.g. a client that closes right after NBD_OPT_ABORT, which the spec permits
      std::fprintf(log, "handshake: client went away before our reply (%s)\n",
                   hs.close_reason().empty() ? "negotiating" : hs.close_reason().c_str());
      return;
    }
    hs.out().clear();
    size_t used = 0;
    Handshake::Step s = hs.feed(buf, used);
    buf.erase(buf.begin(), buf.begin() + used);
    if (!hs.out().empty()) continue;  // flush replies before deciding
    if (s == Handshake::Step::kNeedMore) {
      if (!read_some(fd, buf)) {
        std::fprintf(log, "handshake: client went away\n");
        return;
      }
      continue;
    }
    if (s == Handshake::Step::kStartTls) {
      std::fprintf(log, "handshake: STARTTLS accepted but this test server has no TLS\n");
      return;
    }
    if (s == Handshake::Step::kClose) {
      std::fprintf(log, "handshake: close: %s\n", hs.close_reason().c_str());
      return;
    }
    const Negotiated& n = hs.negotiated();
    std::fprintf(log,
                 "handshake: done export='%s' structured=%d extended=%d base_allocation=%d flags=0x%04x "
                 "block_size_agreed=%d\n",
                 n.exp->name.c_str(), n.structured_replies, n.extended_headers, n.base_allocation,
                 n.transmission_flags, n.block_size_agreed);
    std::fflush(log);
    std::string end = serve_transmission(fd, n, std::move(buf));
    std::fprintf(log, "transmission: %s\n", end.c_str());
    return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SOCKET [--tls-require] [--log FILE] [--lifetime SECONDS]\n", argv[0]);
    return 2;
  }
  const char* path = argv[1];
  TlsMode mode = TlsMode::kOff;
  FILE* log = stderr;
  int lifetime = 120;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--tls-require") {
      mode = TlsMode::kRequire;
    } else if (a == "--log" && i + 1 < argc) {
      log = std::fopen(argv[++i], "a");
      if (!log) return 2;
      setvbuf(log, nullptr, _IOLBF, 0);
    } else if (a == "--lifetime" && i + 1 < argc) {
      lifetime = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  auto cat = fixed_catalog();
  int ls = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof sa.sun_path) return 2;
  std::strcpy(sa.sun_path, path);
  ::unlink(path);
  if (ls < 0 || ::bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(ls, 8) != 0) {
    std::perror("listen");
    return 1;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(lifetime);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{ls, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    int fd = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    serve(fd, cat, mode, log);
    ::close(fd);
  }
  ::close(ls);
  ::unlink(path);
  return 0;
}
