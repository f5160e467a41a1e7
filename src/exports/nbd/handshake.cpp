// Fixed-newstyle negotiation. Every reply is produced only once the option it
// answers has been read completely, so out() always holds whole replies to
// whole options; that is what lets the transport treat feed() as atomic.
#include "exports/nbd/handshake.hpp"

#include <algorithm>
#include <array>

#include "exports/nbd/protocol.hpp"

namespace blkstack::nbd {
namespace {

bool is_pow2(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

bool default_block_sizes(const ExportInfo& e) {
  return e.min_block <= kDefaultMinBlock && e.preferred_block == kDefaultPreferredBlock &&
         e.max_block >= kDefaultMaxPayload;
}

// Byte reader over an option payload that never reads out of bounds.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> d) : d_(d) {}
  bool u16(uint16_t& v) { return take(2) ? (v = get_be16(p_), true) : false; }
  bool u32(uint32_t& v) { return take(4) ? (v = get_be32(p_), true) : false; }
  bool str(size_t n, std::string_view& s) {
    if (!take(n)) return false;
    s = {reinterpret_cast<const char*>(p_), n};
    return true;
  }
  size_t left() const { return d_.size() - pos_; }

 private:
  bool take(size_t n) {
    if (n > left()) return false;
    p_ = d_.data() + pos_;
    pos_ += n;
    return true;
  }
  std::span<const uint8_t> d_;
  size_t pos_ = 0;
  const uint8_t* p_ = nullptr;
};

}  // namespace

const char* export_info_problem(const ExportInfo& e) {
  if (e.name.size() > kMaxString) return "export name longer than 4096 bytes";
  if (e.description.size() > kMaxString) return "export description longer than 4096 bytes";
  if (!is_pow2(e.min_block) || e.min_block > kMaxMinBlock)
    return "minimum block size must be a power of two no larger than 65536";
  if (!is_pow2(e.preferred_block) || e.preferred_block < std::max<uint32_t>(e.min_block, 512))
    return "preferred block size must be a power of two >= max(minimum block, 512)";
  if (e.max_block < e.preferred_block) return "maximum payload must be >= preferred block size";
  if (e.can_fast_zero && !e.can_write_zeroes) return "fast zero requires write zeroes";
  return nullptr;
}

uint16_t transmission_flags(const ExportInfo& e, bool structured) {
  uint16_t f = kFlagHasFlags;
  if (e.read_only) f |= kFlagReadOnly;
  if (e.can_flush) f |= kFlagSendFlush;
  if (e.can_fua) f |= kFlagSendFua;
  if (e.rotational) f |= kFlagRotational;
  // A read-only export cannot honour trim or zeroing; advertising them would
  // only invite requests that must fail with EPERM.
  if (e.can_trim && !e.read_only) f |= kFlagSendTrim;
  if (e.can_write_zeroes && !e.read_only) {
    f |= kFlagSendWriteZeroes;
    if (e.can_fast_zero) f |= kFlagSendFastZero;  // MUST be clear without WRITE_ZEROES
  }
  if (structured) f |= kFlagSendDf;  // DF needs reply chunks; we always honour it
  if (e.can_multi_conn) f |= kFlagCanMultiConn;
  if (e.can_cache) f |= kFlagSendCache;
  return f;
}

Handshake::Handshake(const ExportCatalog& catalog, TlsMode mode) : catalog_(catalog), mode_(mode) {
  out_.resize(18);
  put_be64(out_.data(), kNbdMagic);
  put_be64(out_.data() + 8, kIHaveOpt);
  put_be16(out_.data() + 16, kFlagFixedNewstyle | kFlagNoZeroes);
  buf_.reserve(16);
}

Handshake::Step Handshake::feed(std::span<const uint8_t> in, size_t& consumed) {
  consumed = 0;
  for (;;) {
    switch (state_) {
      case State::kAwaitTls:
        return Step::kStartTls;
      case State::kDone:
        return Step::kDone;
      case State::kClosed:
        return Step::kClose;
      case State::kOptDiscard: {
        size_t n = size_t(std::min<uint64_t>(discard_left_, in.size() - consumed));
        consumed += n;
        discard_left_ -= n;
        if (discard_left_ > 0) return Step::kNeedMore;
        if (Step s = on_option_complete(); s != Step::kNeedMore) return s;
        continue;
      }
      case State::kClientFlags:
      case State::kOptHeader:
      case State::kOptPayload: {
        size_t n = std::min(need_ - buf_.size(), in.size() - consumed);
        buf_.insert(buf_.end(), in.begin() + consumed, in.begin() + consumed + n);
        consumed += n;
        if (buf_.size() < need_) return Step::kNeedMore;
        Step s = state_ == State::kClientFlags ? on_client_flags()
                 : state_ == State::kOptHeader ? on_option_header()
                                               : on_option_complete();
        if (s != Step::kNeedMore) return s;
        continue;
      }
    }
  }
}

void Handshake::tls_started() {
  if (state_ != State::kAwaitTls) return;
  tls_ = true;
  // The spec forbids carrying any pre-TLS negotiation state across the upgrade.
  reset_negotiation();
  next_option();
}

void Handshake::reset_negotiation() {
  structured_ = extended_ = false;
  meta_export_ = nullptr;
  meta_base_allocation_ = false;
}

Handshake::Step Handshake::close(std::string reason) {
  state_ = State::kClosed;
  close_reason_ = std::move(reason);
  buf_.clear();
  buf_.shrink_to_fit();
  return Step::kClose;
}

Handshake::Step Handshake::next_option() {
  state_ = State::kOptHeader;
  buf_.clear();
  // An earlier large option must not pin its buffer for the whole session.
  if (buf_.capacity() > 4096) buf_.shrink_to_fit();
  need_ = 16;
  return Step::kNeedMore;
}

Handshake::Step Handshake::on_client_flags() {
  uint32_t flags = get_be32(buf_.data());
  if (flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes))
    return close("client set unknown handshake flags");
  fixed_newstyle_ = flags & kClientFlagFixedNewstyle;
  no_zeroes_ = flags & kClientFlagNoZeroes;
  // TLS needs fixed newstyle from both sides; a server that insists on TLS
  // therefore has nothing to offer a client that did not set it.
  if (mode_ == TlsMode::kRequire && !fixed_newstyle_)
    return close("TLS is required but the client does not speak fixed newstyle");
  return next_option();
}

bool Handshake::tls_blocks_options() const { return mode_ == TlsMode::kRequire && !tls_; }

Handshake::Step Handshake::on_option_header() {
  if (get_be64(buf_.data()) != kIHaveOpt) return close("bad option magic");
  if (++options_seen_ > kMaxOptions) return close("too many options");
  opt_ = get_be32(buf_.data() + 8);
  opt_len_ = get_be32(buf_.data() + 12);
  buf_.clear();

  if (opt_ == kOptExportName) {
    // No error reply exists for EXPORT_NAME, so every refusal is a close, and
    // a refusal known from the header needs no payload read.
    if (tls_blocks_options()) return close("NBD_OPT_EXPORT_NAME before the required TLS");
    if (extended_) return close("NBD_OPT_EXPORT_NAME after extended headers were negotiated");
    if (opt_len_ > kMaxString) return close("export name longer than 4096 bytes");
  }
  bool parses_payload = opt_ == kOptExportName || opt_ == kOptInfo || opt_ == kOptGo ||
                        opt_ == kOptListMetaContext || opt_ == kOptSetMetaContext;
  if (parses_payload && !tls_blocks_options() && opt_len_ <= kMaxOptionPayload) {
    state_ = State::kOptPayload;
    need_ = opt_len_;
    buf_.reserve(opt_len_);
  } else {
    // Everything else is answered from the header alone; stream the payload
    // past without keeping it.
    state_ = State::kOptDiscard;
    discard_left_ = opt_len_;
  }
  return Step::kNeedMore;
}

Handshake::Step Handshake::on_option_complete() {
  if (state_ == State::kOptDiscard) return finish_without_payload();
  switch (opt_) {
    case kOptExportName:
      return handle_export_name();
    case kOptInfo:
    case kOptGo:
      return handle_info_go();
    default:
      return handle_meta_context();
  }
}

Handshake::Step Handshake::finish_without_payload() {
  if (opt_ == kOptAbort) {
    reply(kRepAck);
    return close("client sent NBD_OPT_ABORT");
  }
  if (opt_ == kOptSetMetaContext) {  // a failed SET still replaces the old selection
    meta_export_ = nullptr;
    meta_base_allocation_ = false;
  }
  if (tls_blocks_options() && opt_ != kOptStartTls) {
    reply_error(kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first");
    return next_option();
  }
  switch (opt_) {
    case kOptStartTls:
      return handle_starttls();
    case kOptList:
      return handle_list();
    case kOptStructuredReply:
      return handle_structured_reply();
    case kOptExtendedHeaders:
      return handle_extended_headers();
    case kOptInfo:
    case kOptGo:
    case kOptListMetaContext:
    case kOptSetMetaContext:
      reply_error(kRepErrTooBig, "option payload too large");
      return next_option();
    default:
      reply_error(kRepErrUnsup, "option not supported");
      return next_option();
  }
}

Handshake::Step Handshake::handle_starttls() {
  if (opt_len_ != 0) {
    reply_error(kRepErrInvalid, "NBD_OPT_STARTTLS carries no data");
    return next_option();
  }
  if (tls_) {
    reply_error(kRepErrInvalid, "TLS is already active");
    return next_option();
  }
  if (mode_ == TlsMode::kOff || !fixed_newstyle_) {
    reply_error(kRepErrPolicy, "TLS is not available on this server");
    return next_option();
  }
  reply(kRepAck);
  state_ = State::kAwaitTls;
  buf_.clear();
  return Step::kStartTls;
}

Handshake::Step Handshake::handle_list() {
  if (opt_len_ != 0) {
    reply_error(kRepErrInvalid, "NBD_OPT_LIST carries no data");
    return next_option();
  }
  for (const ExportInfo* e : catalog_.list()) {
    uint8_t* p = reply_header(kRepServer, uint32_t(4 + e->name.size() + e->description.size()));
    put_be32(p, uint32_t(e->name.size()));
    std::copy(e->name.begin(), e->name.end(), p + 4);
    std::copy(e->description.begin(), e->description.end(), p + 4 + e->name.size());
  }
  reply(kRepAck);
  return next_option();
}

Handshake::Step Handshake::handle_structured_reply() {
  if (opt_len_ != 0) {
    reply_error(kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data");
  } else if (extended_) {
    reply_error(kRepErrExtHeaderReqd, "extended headers already negotiated");
  } else if (structured_) {
    reply_error(kRepErrInvalid, "structured replies already negotiated");
  } else {
    structured_ = true;
    reply(kRepAck);
  }
  return next_option();
}

Handshake::Step Handshake::handle_extended_headers() {
  if (opt_len_ != 0) {
    reply_error(kRepErrInvalid, "NBD_OPT_EXTENDED_HEADERS carries no data");
  } else if (extended_) {
    reply_error(kRepErrInvalid, "extended headers already negotiated");
  } else {
    extended_ = true;
    reply(kRepAck);
  }
  return next_option();
}

Handshake::Step Handshake::handle_export_name() {
  std::string_view name(reinterpret_cast<const char*>(buf_.data()), buf_.size());
  const ExportInfo* e = catalog_.find(name);
  if (!e) return close("NBD_OPT_EXPORT_NAME for an unknown export");
  if (e->block_size_required && !default_block_sizes(*e))
    return close("export requires NBD_INFO_BLOCK_SIZE, which NBD_OPT_EXPORT_NAME cannot carry");
  bool chunks = structured_ || extended_;
  uint16_t flags = transmission_flags(*e, chunks);
  size_t at = out_.size();
  out_.resize(at + 10 + (no_zeroes_ ? 0 : 124), 0);
  put_be64(out_.data() + at, e->size);
  put_be16(out_.data() + at + 8, flags);
  negotiated_ = Negotiated{e, chunks, extended_,
                           meta_base_allocation_ && meta_export_ == e && e->can_block_status,
                           kBaseAllocationId, flags, tls_, false};
  if (!negotiated_.base_allocation) negotiated_.base_allocation_id = 0;
  state_ = State::kDone;
  buf_.clear();
  buf_.shrink_to_fit();
  return Step::kDone;
}

Handshake::Step Handshake::handle_info_go() {
  Reader r(buf_);
  uint32_t name_len = 0;
  std::string_view name;
  uint16_t nreq = 0;
  if (!r.u32(name_len) || !r.str(name_len, name) || !r.u16(nreq) || r.left() != size_t(nreq) * 2) {
    reply_error(kRepErrInvalid, "malformed NBD_OPT_INFO/NBD_OPT_GO payload");
    return next_option();
  }
  if (name.size() > kMaxString) {
    reply_error(kRepErrInvalid, "export name longer than 4096 bytes");
    return next_option();
  }
  bool want_name = false, want_desc = false, want_bs = false;
  for (uint16_t i = 0; i < nreq; ++i) {
    uint16_t t = 0;
    r.u16(t);
    want_name |= t == kInfoName;
    want_desc |= t == kInfoDescription;
    want_bs |= t == kInfoBlockSize;  // unknown types are ignored, as required
  }
  const ExportInfo* e = catalog_.find(name);
  if (!e) {
    reply_error(kRepErrUnknown, "no such export");
    return next_option();
  }
  bool chunks = structured_ || extended_;
  uint16_t flags = transmission_flags(*e, chunks);
  bool refuse_size = opt_ == kOptGo && !want_bs && e->block_size_required && !default_block_sizes(*e);

  uint8_t* p = reply_header(kRepInfo, 12);
  put_be16(p, kInfoExport);
  put_be64(p + 2, e->size);
  put_be16(p + 10, flags);
  if (want_name) {
    p = reply_header(kRepInfo, uint32_t(2 + e->name.size()));
    put_be16(p, kInfoName);
    std::copy(e->name.begin(), e->name.end(), p + 2);
  }
  if (want_desc && !e->description.empty()) {
    p = reply_header(kRepInfo, uint32_t(2 + e->description.size()));
    put_be16(p, kInfoDescription);
    std::copy(e->description.begin(), e->description.end(), p + 2);
  }
  // Also sent unrequested right before BLOCK_SIZE_REQD, as the spec advises,
  // so the client learns the constraints without another round trip.
  if (want_bs || refuse_size) {
    p = reply_header(kRepInfo, 14);
    put_be16(p, kInfoBlockSize);
    put_be32(p + 2, e->min_block);
    put_be32(p + 6, e->preferred_block);
    put_be32(p + 10, e->max_block);
  }
  if (refuse_size) {
    reply_error(kRepErrBlockSizeReqd, "this export requires the client to request NBD_INFO_BLOCK_SIZE");
    return next_option();
  }
  reply(kRepAck);
  if (opt_ == kOptInfo) return next_option();

  bool alloc = meta_base_allocation_ && meta_export_ == e && e->can_block_status;
  negotiated_ = Negotiated{e, chunks, extended_, alloc, alloc ? kBaseAllocationId : 0, flags, tls_, want_bs};
  state_ = State::kDone;
  buf_.clear();
  buf_.shrink_to_fit();
  return Step::kDone;
}

Handshake::Step Handshake::handle_meta_context() {
  const bool set = opt_ == kOptSetMetaContext;
  if (set) {  // replaced even when this request fails
    meta_export_ = nullptr;
    meta_base_allocation_ = false;
  }
  if (!structured_ && !extended_) {
    reply_error(kRepErrInvalid, "negotiate structured replies or extended headers first");
    return next_option();
  }
  Reader r(buf_);
  uint32_t name_len = 0, nqueries = 0;
  std::string_view name;
  if (!r.u32(name_len) || !r.str(name_len, name) || !r.u32(nqueries)) {
    reply_error(kRepErrInvalid, "malformed meta context request");
    return next_option();
  }
  bool match = nqueries == 0 && !set;  // an empty LIST asks for everything
  // Each query takes at least 4 bytes, so this loop is bounded by the payload
  // size however large the declared count is.
  for (uint32_t i = 0; i < nqueries; ++i) {
    uint32_t qlen = 0;
    std::string_view q;
    if (!r.u32(qlen) || !r.str(qlen, q)) {
      reply_error(kRepErrInvalid, "meta context query runs past the option");
      return next_option();
    }
    size_t colon = q.find(':');
    if (colon == std::string_view::npos || colon == 0 || q.size() > kMaxString) {
      reply_error(kRepErrInvalid, "meta context query must be namespace:leaf");
      return next_option();
    }
    if (q.substr(0, colon) != "base") continue;  // unknown namespaces are ignored
    std::string_view leaf = q.substr(colon + 1);
    if (leaf == "allocation" || (leaf.empty() && !set)) match = true;
  }
  if (r.left() != 0 || name.size() > kMaxString) {
    reply_error(kRepErrInvalid, "malformed meta context request");
    return next_option();
  }
  const ExportInfo* e = catalog_.find(name);
  if (!e) {
    reply_error(kRepErrUnknown, "no such export");
    return next_option();
  }
  match = match && e->can_block_status;
  if (set) {
    meta_export_ = e;
    meta_base_allocation_ = match;
  }
  if (match) {
    static constexpr std::string_view kCtx = "base:allocation";
    uint8_t* p = reply_header(kRepMetaContext, uint32_t(4 + kCtx.size()));
    put_be32(p, set ? kBaseAllocationId : 0);
    std::copy(kCtx.begin(), kCtx.end(), p + 4);
  }
  reply(kRepAck);
  return next_option();
}

uint8_t* Handshake::reply_header(uint32_t type, uint32_t length) {
  size_t at = out_.size();
  out_.resize(at + 20 + length);
  uint8_t* p = out_.data() + at;
  put_be64(p, kOptReplyMagic);
  put_be32(p + 8, opt_);
  put_be32(p + 12, type);
  put_be32(p + 16, length);
  return p + 20;
}

void Handshake::reply(uint32_t type, std::span<const uint8_t> data) {
  uint8_t* p = reply_header(type, uint32_t(data.size()));
  std::copy(data.begin(), data.end(), p);
}

void Handshake::reply_error(uint32_t type, std::string_view message) {
  reply(type, {reinterpret_cast<const uint8_t*>(message.data()), message.size()});
}

}  // namespace blkstack::nbd
