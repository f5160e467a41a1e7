// TLS for NBD with GnuTLS, as nbdkit and QEMU do it: X.509 certificates or
// pre-shared keys. The session runs over memory buffers (ciphertext in and
// out), because the socket I/O belongs to the reactor's io_uring.
#pragma once

#include <gnutls/gnutls.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blkstack/status.hpp"

namespace blkstack::nbd {

struct TlsOptions {
  std::string creds_dir;   // holds server-cert.pem, server-key.pem and optionally ca-cert.pem
  std::string cert_file;   // or these three explicitly
  std::string key_file;
  std::string ca_file;     // present: clients must show a certificate it signed
  std::string psk_file;    // username:hexkey lines (psktool format)
  bool verify_peer = false;
};

class TlsContext {
 public:
  static Result<std::shared_ptr<TlsContext>> create(const TlsOptions& options);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  gnutls_certificate_credentials_t cert() const { return cert_; }
  gnutls_psk_server_credentials_t psk() const { return psk_; }
  bool verify_peer() const { return verify_peer_; }
  const std::string& psk_file() const { return psk_file_; }

 private:
  TlsContext() = default;
  gnutls_certificate_credentials_t cert_ = nullptr;
  gnutls_psk_server_credentials_t psk_ = nullptr;
  bool verify_peer_ = false;
  std::string psk_file_;
};

class TlsSession {
 public:
  static Result<std::unique_ptr<TlsSession>> create(const TlsContext& ctx);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Ciphertext that arrived from the peer.
  void feed(const uint8_t* data, size_t len) { in_.insert(in_.end(), data, data + len); }
  // Drives the handshake: 1 done, 0 needs more input, negative: failed.
  int handshake();
  // Plaintext into buf: bytes read, 0 when more ciphertext is needed,
  // -EPIPE when the peer closed the TLS session, other negative errors.
  long read(uint8_t* buf, size_t len);
  bool has_buffered_plaintext() const { return gnutls_record_check_pending(session_) > 0; }
  // Encrypts all of buf into ciphertext_out(); negative on error.
  int write(const uint8_t* buf, size_t len);
  void cork() { gnutls_record_cork(session_); }
  int uncork();
  // Ciphertext waiting to be sent; the caller erases what it has sent.
  std::vector<uint8_t>& ciphertext_out() { return out_; }
  std::string error_text() const { return last_error_; }

 private:
  TlsSession() = default;
  static ssize_t pull(gnutls_transport_ptr_t self, void* buf, size_t len);
  static ssize_t push(gnutls_transport_ptr_t self, const void* buf, size_t len);

  gnutls_session_t session_ = nullptr;
  std::vector<uint8_t> in_;  // ciphertext not yet consumed
  size_t in_pos_ = 0;
  std::vector<uint8_t> out_;
  std::string last_error_;
};

}  // namespace blkstack::nbd
