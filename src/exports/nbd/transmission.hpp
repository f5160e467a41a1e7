// Transmission phase, sans-IO: request header parsing, request validation
// against what was negotiated, and reply encoders that write headers into a
// caller buffer (bulk data is never copied: the caller sends it with writev
// right after the header these functions produce).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "exports/nbd/handshake.hpp"
#include "exports/nbd/protocol.hpp"

namespace blkstack::nbd {

// ---- Requests ------------------------------------------------------------------
inline constexpr size_t kCompactRequestSize = 28;
inline constexpr size_t kExtendedRequestSize = 32;

struct RequestHeader {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t length;  // compact: zero-extended 32-bit field
};

enum class Parse { kNeedMore, kOk, kBadMagic };
// Parses one request header from the front of `in`; `extended` selects the
// 32-byte form. kOk: `out` filled, `consumed` = header size. kNeedMore and
// kBadMagic consume nothing; kBadMagic is reported as soon as the first four
// bytes are present (the stream cannot be resynchronised: close).
Parse parse_request(std::span<const uint8_t> in, bool extended, RequestHeader& out, size_t& consumed);

struct Verdict {
  uint32_t error = 0;            // NBD error to reply with, 0 = execute it
  bool payload_follows = false;  // the client sends payload_len bytes after the header
  uint64_t payload_len = 0;      // always consume (or discard) these, even when error != 0
  bool fatal = false;            // cannot resync: reply (if possible) then close
  bool disconnect = false;       // NBD_CMD_DISC: no reply; finish outstanding requests, close
};

// Largest payload we will read past (discarding) to answer a rejected request
// and stay in sync: the spec asks servers not to treat payloads up to 2^25 as
// denial of service even above the advertised maximum.
uint64_t payload_discard_limit(const ExportInfo& e);

// Checks one request against the negotiated session. Pure: the caller keeps the
// rule that nothing after a DISC is read. Reads with error != 0 must be answered
// with an error chunk (not a simple reply) when structured replies are in use.
Verdict validate(const RequestHeader& req, const Negotiated& neg);

// Maps a host errno (either sign) onto the NBD error set; 0 stays 0.
uint32_t errno_to_nbd(int negative_or_positive_errno);

// ---- Replies --------------------------------------------------------------------
// Every encoder returns the number of bytes written, or 0 when the arguments
// violate the spec (e.g. zero-length hole, error 0) or `out` is too small.
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kCompactChunkHeaderSize = 20;
inline constexpr size_t kExtendedChunkHeaderSize = 32;
inline constexpr size_t kMaxReplyHeaderSize = kExtendedChunkHeaderSize + 12;  // largest fixed part (OFFSET_HOLE)
using ReplyBuffer = std::array<uint8_t, kMaxReplyHeaderSize>;  // fits every fixed-size encoder

// The request a chunk answers. `extended` picks the 32-byte header, which
// echoes the request offset; the compact header ignores `offset`.
struct ReplyTo {
  uint64_t cookie = 0;
  uint64_t offset = 0;
  bool extended = false;
};

size_t encode_simple_reply(std::span<uint8_t> out, uint64_t cookie, uint32_t error);
size_t encode_chunk_header(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint16_t type,
                           uint64_t payload_len);
// Header plus the 8-byte data offset of NBD_REPLY_TYPE_OFFSET_DATA; `data_len`
// bytes of data must follow on the wire.
size_t encode_offset_data(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint64_t data_offset,
                          uint64_t data_len);
size_t encode_offset_hole(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint64_t hole_offset,
                          uint32_t hole_len);
// NBD_REPLY_TYPE_ERROR with an optional message (cut to 4096 bytes and to what
// fits in `out`).
size_t encode_error(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint32_t error,
                    std::string_view message = {});
size_t encode_error_offset(std::span<uint8_t> out, const ReplyTo& to, uint16_t flags, uint32_t error,
                           uint64_t error_offset, std::string_view message = {});
size_t encode_none(std::span<uint8_t> out, const ReplyTo& to);  // always carries NBD_REPLY_FLAG_DONE

// ---- Block status -------------------------------------------------------------------
struct Extent {
  uint64_t length;
  uint32_t flags;  // kStateHole | kStateZero for base:allocation
};

struct BlockStatusQuery {
  uint64_t length = 0;    // the request's length
  bool req_one = false;   // NBD_CMD_FLAG_REQ_ONE
  uint32_t align = 1;     // descriptor lengths are kept multiples of this (min block)
  uint32_t context_id = 0;
  uint16_t flags = kReplyFlagDone;  // chunk flags
};

struct BlockStatusResult {
  size_t bytes = 0;         // chunk size written (0: nothing to report or `out` too small)
  size_t descriptors = 0;   // descriptors in the chunk
  uint64_t covered = 0;     // bytes of the export the chunk describes, from the request offset
};

// Upper bound on descriptors per chunk (spec: SHOULD NOT exceed 2^20).
inline constexpr size_t kMaxBlockStatusDescriptors = size_t(1) << 20;

// Encodes one NBD_REPLY_TYPE_BLOCK_STATUS (compact) or _EXT (extended) chunk
// from `extents`, which describe the export consecutively from the request
// offset. Zero-length extents are skipped; the total is clamped to the request
// length (so with REQ_ONE the single descriptor never exceeds it); compact
// descriptors longer than 32 bits are split into aligned pieces. Stops early
// when `out` or kMaxBlockStatusDescriptors is exhausted (a short reply is
// legal: the client asks again from offset + covered).
BlockStatusResult encode_block_status(std::span<uint8_t> out, const ReplyTo& to, const BlockStatusQuery& q,
                                      std::span<const Extent> extents);

}  // namespace blkstack::nbd
