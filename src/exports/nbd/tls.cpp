#include "exports/nbd/tls.hpp"

#include <sys/stat.h>

#include <cstring>
#include <fstream>

namespace blkstack::nbd {

namespace {

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

Status gnutls_error(int r, std::string_view what) { return error(-EINVAL, "{}: {}", what, gnutls_strerror(r)); }

// PSK lookup: the psktool file format, "username:hexkey" per line.
int psk_lookup(gnutls_session_t session, const char* username, gnutls_datum_t* key) {
  auto* ctx = static_cast<const TlsContext*>(gnutls_session_get_ptr(session));
  std::ifstream in(ctx->psk_file());
  std::string line;
  while (std::getline(in, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos || line.compare(0, colon, username) != 0 || colon != strlen(username)) continue;
    std::string hex = line.substr(colon + 1);
    gnutls_datum_t h{reinterpret_cast<unsigned char*>(hex.data()), static_cast<unsigned>(hex.size())};
    return gnutls_hex_decode2(&h, key) == 0 ? 0 : -1;
  }
  return -1;
}

}  // namespace

Result<std::shared_ptr<TlsContext>> TlsContext::create(const TlsOptions& o) {
  std::shared_ptr<TlsContext> ctx(new TlsContext);
  ctx->verify_peer_ = o.verify_peer;
  if (!o.psk_file.empty()) {
    if (!exists(o.psk_file)) return error(-ENOENT, "TLS PSK file {} does not exist", o.psk_file);
    ctx->psk_file_ = o.psk_file;
    int r = gnutls_psk_allocate_server_credentials(&ctx->psk_);
    if (r < 0) return gnutls_error(r, "gnutls_psk_allocate_server_credentials");
    gnutls_psk_set_server_credentials_function(ctx->psk_, psk_lookup);
    return ctx;
  }
  std::string cert = o.cert_file, key = o.key_file, ca = o.ca_file;
  if (!o.creds_dir.empty()) {
    if (cert.empty()) cert = o.creds_dir + "/server-cert.pem";
    if (key.empty()) key = o.creds_dir + "/server-key.pem";
    if (ca.empty() && exists(o.creds_dir + "/ca-cert.pem")) ca = o.creds_dir + "/ca-cert.pem";
  }
  if (cert.empty() || key.empty()) return error(-EINVAL, "TLS needs a certificate and key (or a PSK file)");
  int r = gnutls_certificate_allocate_credentials(&ctx->cert_);
  if (r < 0) return gnutls_error(r, "gnutls_certificate_allocate_credentials");
  r = gnutls_certificate_set_x509_key_file(ctx->cert_, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
  if (r < 0) return gnutls_error(r, fmt::format("loading {} and {}", cert, key));
  if (!ca.empty()) {
    r = gnutls_certificate_set_x509_trust_file(ctx->cert_, ca.c_str(), GNUTLS_X509_FMT_PEM);
    if (r < 0) return gnutls_error(r, fmt::format("loading CA {}", ca));
  } else if (o.verify_peer) {
    return error(-EINVAL, "verifying client certificates needs a CA certificate");
  }
  return ctx;
}

TlsContext::~TlsContext() {
  if (cert_) gnutls_certificate_free_credentials(cert_);
  if (psk_) gnutls_psk_free_server_credentials(psk_);
}

Result<std::unique_ptr<TlsSession>> TlsSession::create(const TlsContext& ctx) {
  std::unique_ptr<TlsSession> s(new TlsSession);
  int r = gnutls_init(&s->session_, GNUTLS_SERVER | GNUTLS_NONBLOCK);
  if (r < 0) return gnutls_error(r, "gnutls_init");
  gnutls_session_set_ptr(s->session_, const_cast<TlsContext*>(&ctx));
  if (ctx.psk()) {
    r = gnutls_priority_set_direct(s->session_, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nullptr);
    if (r >= 0) r = gnutls_credentials_set(s->session_, GNUTLS_CRD_PSK, ctx.psk());
  } else {
    r = gnutls_set_default_priority(s->session_);
    if (r >= 0) r = gnutls_credentials_set(s->session_, GNUTLS_CRD_CERTIFICATE, ctx.cert());
    if (r >= 0 && ctx.verify_peer()) {
      // Ask for a client certificate and check it against the CA during the
      // handshake itself.
      gnutls_certificate_server_set_request(s->session_, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_verify_cert(s->session_, nullptr, 0);
    }
  }
  if (r < 0) return gnutls_error(r, "TLS session setup");
  gnutls_transport_set_ptr(s->session_, s.get());
  gnutls_transport_set_pull_function(s->session_, &TlsSession::pull);
  gnutls_transport_set_push_function(s->session_, &TlsSession::push);
  return s;
}

TlsSession::~TlsSession() {
  if (session_) gnutls_deinit(session_);
}

ssize_t TlsSession::pull(gnutls_transport_ptr_t self, void* buf, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  size_t avail = s->in_.size() - s->in_pos_;
  if (avail == 0) {
    gnutls_transport_set_errno(s->session_, EAGAIN);
    return -1;
  }
  size_t n = std::min(avail, len);
  std::memcpy(buf, s->in_.data() + s->in_pos_, n);
  s->in_pos_ += n;
  if (s->in_pos_ == s->in_.size()) {
    s->in_.clear();
    s->in_pos_ = 0;
  }
  return static_cast<ssize_t>(n);
}

ssize_t TlsSession::push(gnutls_transport_ptr_t self, const void* buf, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  auto* p = static_cast<const uint8_t*>(buf);
  s->out_.insert(s->out_.end(), p, p + len);
  return static_cast<ssize_t>(len);
}

int TlsSession::handshake() {
  int r = gnutls_handshake(session_);
  if (r == GNUTLS_E_SUCCESS) return 1;
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) return 0;
  if (!gnutls_error_is_fatal(r)) return 0;
  last_error_ = gnutls_strerror(r);
  return -EPROTO;
}

long TlsSession::read(uint8_t* buf, size_t len) {
  ssize_t r = gnutls_record_recv(session_, buf, len);
  if (r > 0) return r;
  if (r == 0) return -EPIPE;  // close_notify
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) return 0;
  if (r == GNUTLS_E_PREMATURE_TERMINATION) return -EPIPE;
  last_error_ = gnutls_strerror(static_cast<int>(r));
  return -EPROTO;
}

int TlsSession::write(const uint8_t* buf, size_t len) {
  while (len > 0) {
    ssize_t r = gnutls_record_send(session_, buf, len);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) continue;
    if (r < 0) {
      last_error_ = gnutls_strerror(static_cast<int>(r));
      return -EPROTO;
    }
    buf += r;
    len -= static_cast<size_t>(r);
  }
  return 0;
}

int TlsSession::uncork() {
  int r = gnutls_record_uncork(session_, GNUTLS_RECORD_WAIT);
  if (r < 0) {
    last_error_ = gnutls_strerror(r);
    return -EPROTO;
  }
  return 0;
}

}  // namespace blkstack::nbd
