// What the three parts of an NBD connection share (nbd_connection.cpp:
// lifetime and input; connection_requests.cpp: requests against the device;
// connection_replies.cpp: replies and the socket's output side): its limits,
// a request in flight and a reply waiting to be sent. Private to them.
#pragma once

#include "exports/nbd/nbd_connection.hpp"

namespace blkstack::nbd {

namespace connection_limits {

inline constexpr size_t kInBufferSize = 32 << 10;
inline constexpr size_t kRawBufferSize = 32 << 10;
inline constexpr unsigned kMaxInFlight = 512;          // requests per connection before input pauses
inline constexpr size_t kMaxQueuedReplies = 4096;       // replies waiting for the socket before input pauses
inline constexpr uint64_t kDirectRecvMin = 16 << 10;    // payloads this big are received in place
inline constexpr uint64_t kHoleAwareReadMin = 64 << 10; // reads this big report holes as holes
inline constexpr size_t kMaxIov = 1024;
inline constexpr uint64_t kSpliceReadMin = 64 << 10;  // reads this big from an in-memory file are spliced
inline constexpr int kPipeBytes = 1 << 20;            // asked of F_SETPIPE_SZ (the default limit for users)
inline constexpr uint64_t kPage = 4096;

}  // namespace connection_limits
using namespace connection_limits;

struct Connection::Request final : IoDone {
  Connection* conn = nullptr;
  RequestHeader h{};
  BufferPool::Buffer buf;
  uint64_t start_ns = 0;
  int pending = 0;          // library requests outstanding (a chain of status queries counts once)
  int result = 0;           // the first error among them
  bool then_flush = false;  // TRIM with FUA: a flush follows the discard
  std::vector<AllocationExtent> extents;  // hole-aware reads: the layout of the range

  // Allocation queries (Queue::block_status), one at a time: each answer
  // says where the next one starts. They complete through `status_done`, so
  // a hole-aware read tells its query's completion from its data's.
  struct StatusDone final : IoDone {
    Request* r = nullptr;
    void io_done(int ret) override { r->conn->status_done(r, ret); }
  } status_done;
  AllocationExtent answer{};     // the query in flight writes here
  uint64_t scan = 0, scan_end = 0;  // [scan, scan_end): what is left to learn
  uint64_t holes_gen = 0;        // hole-aware reads: the holes generation when the scan began
  bool any_hole = false;
  std::vector<Extent> status;    // NBD_CMD_BLOCK_STATUS: the reply's extents

  Request() { status_done.r = this; }
  void io_done(int ret) override { conn->request_done(this, ret); }
};

struct Connection::Out {
  uint8_t hdr[kMaxReplyHeaderSize];
  uint8_t hdr_len = 0;
  const uint8_t* data = nullptr;
  uint64_t data_len = 0;
  std::vector<uint8_t> owned;  // negotiation replies, block status payloads
  Request* release = nullptr;  // returned to the pool once sent
  uint64_t spliced = 0;        // zero-copy read: data bytes still to go, from the device file ...
  uint64_t file_off = 0;       // ... at this offset, after the header
  uint64_t in_pipe = 0;        // of which this many are in the pipe
  uint64_t sent = 0;
  uint64_t size() const { return hdr_len + data_len + owned.size(); }
};


}  // namespace blkstack::nbd
