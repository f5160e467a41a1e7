// Server side of NBD fixed-newstyle negotiation as a sans-IO state machine:
// bytes in, bytes out, no sockets, no threads, no clocks. The transport owns
// the connection, TLS and timeouts; this class owns every protocol decision
// up to the start of the transmission phase.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace blkstack::nbd {

// What the daemon knows about one export, filled in from the device.
struct ExportInfo {
  std::string name, description;
  uint64_t size = 0;
  bool read_only = false, can_flush = false, can_fua = false, can_trim = false,
       can_write_zeroes = false, can_fast_zero = false, can_cache = false,
       can_multi_conn = false, rotational = false, can_block_status = false;  // base:allocation
  uint32_t min_block = 1, preferred_block = 4096, max_block = 32u << 20;    // NBD_INFO_BLOCK_SIZE
  // Policy for clients that never ask for NBD_INFO_BLOCK_SIZE. The spec lets a
  // server with non-default constraints refuse them (GO: NBD_REP_ERR_BLOCK_SIZE_REQD
  // after an informational NBD_INFO_BLOCK_SIZE; EXPORT_NAME: hard disconnect) but
  // says it SHOULD NOT otherwise. Off by default: such clients are served and
  // misaligned requests are failed cleanly by validate().
  bool block_size_required = false;
};

// Returns nullptr when `e` can be advertised as is, otherwise why not (block
// sizes that break the spec's power-of-two/ordering rules, over-long strings).
// The daemon calls this when it builds its catalog; Handshake trusts its input.
const char* export_info_problem(const ExportInfo& e);

class ExportCatalog {
 public:
  virtual ~ExportCatalog() = default;
  virtual const ExportInfo* find(std::string_view name) const = 0;  // "" = default export
  virtual std::vector<const ExportInfo*> list() const = 0;
};

enum class TlsMode { kOff, kOn, kRequire };  // kOn: STARTTLS offered but optional

struct Negotiated {
  const ExportInfo* exp = nullptr;
  // True when reply chunks may be used: set by NBD_OPT_STRUCTURED_REPLY and
  // also by NBD_OPT_EXTENDED_HEADERS (which takes precedence: when
  // extended_headers is true every reply uses the 32-byte extended header).
  bool structured_replies = false;
  bool extended_headers = false;
  bool base_allocation = false;
  uint32_t base_allocation_id = 0;
  uint16_t transmission_flags = 0;  // exactly what the client was sent
  bool tls = false;
  // The client asked for NBD_INFO_BLOCK_SIZE in its NBD_OPT_GO and therefore
  // promised to obey min/preferred/max block (informational: validate()
  // enforces the limits either way).
  bool block_size_agreed = false;
};

// Transmission flags advertised for `e`. `structured` is whether structured
// replies or extended headers were negotiated (NBD_FLAG_SEND_DF depends on it).
uint16_t transmission_flags(const ExportInfo& e, bool structured);

class Handshake {
 public:
  // Largest option payload buffered; longer options are discarded as they
  // stream in and answered with an error (or a close where no reply exists).
  static constexpr size_t kMaxOptionPayload = 64u << 10;
  // More options than this in one handshake is treated as denial of service.
  static constexpr unsigned kMaxOptions = 1024;
  // ID given to base:allocation by NBD_OPT_SET_META_CONTEXT (nonzero on
  // purpose: LIST replies use the reserved 0, so clients mixing them up show).
  static constexpr uint32_t kBaseAllocationId = 1;

  Handshake(const ExportCatalog& catalog, TlsMode mode);

  enum class Step { kNeedMore, kStartTls, kDone, kClose };
  // Consumes client bytes (any split, partial messages are kept internally,
  // at most kMaxOptionPayload + 16 bytes) and appends server bytes to out().
  //  kNeedMore: all of `in` consumed; send out(), read more, feed again.
  //  kStartTls: STARTTLS acknowledged; `consumed` stops right after that
  //             option. Send out(), run the TLS handshake on the bytes after
  //             it, call tls_started(), then feed decrypted bytes.
  //  kDone:     GO or EXPORT_NAME succeeded; send out(); negotiated() is
  //             valid; in[consumed..] belongs to the transmission phase.
  //  kClose:    send out() (may be empty) then close; see close_reason().
  // Once a step other than kNeedMore is returned, later feeds return the same
  // step and consume nothing (kStartTls: until tls_started()).
  Step feed(std::span<const uint8_t> in, size_t& consumed);
  std::vector<uint8_t>& out() { return out_; }
  void tls_started();
  const Negotiated& negotiated() const { return negotiated_; }
  const std::string& close_reason() const { return close_reason_; }
  size_t buffered() const { return buf_.size(); }  // partial client input held

 private:
  enum class State { kClientFlags, kOptHeader, kOptPayload, kOptDiscard, kAwaitTls, kDone, kClosed };

  Step on_client_flags();
  Step on_option_header();
  Step on_option_complete();  // payload buffered in buf_ or discarded
  Step finish_without_payload();
  Step handle_export_name();
  Step handle_info_go();
  Step handle_meta_context();
  Step handle_list();
  Step handle_starttls();
  Step handle_structured_reply();
  Step handle_extended_headers();
  Step close(std::string reason);
  Step next_option();  // back to waiting for an option header

  bool tls_blocks_options() const;
  void reply(uint32_t type, std::span<const uint8_t> data = {});
  void reply_error(uint32_t type, std::string_view message);
  uint8_t* reply_header(uint32_t type, uint32_t length);  // returns where data goes
  void reset_negotiation();

  const ExportCatalog& catalog_;
  TlsMode mode_;
  State state_ = State::kClientFlags;
  std::vector<uint8_t> out_;
  std::vector<uint8_t> buf_;  // current header or option payload
  size_t need_ = 4;           // bytes buf_ must reach in the current state
  uint64_t discard_left_ = 0;
  uint32_t opt_ = 0, opt_len_ = 0;
  unsigned options_seen_ = 0;
  bool fixed_newstyle_ = false, no_zeroes_ = false, tls_ = false;
  // Negotiation state that NBD_OPT_STARTTLS must forget.
  bool structured_ = false, extended_ = false;
  const ExportInfo* meta_export_ = nullptr;
  bool meta_base_allocation_ = false;

  Negotiated negotiated_;
  std::string close_reason_;
};

}  // namespace blkstack::nbd
