// Requests against the device: reads (hole-aware and zero-copy), writes,
// trims, zeroes, cache, block status, and their completions.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/clock.hpp"
#include "core/driver.hpp"
#include "exports/nbd/connection_parts.hpp"

namespace blkstack::nbd {

// ---- requests ----

Connection::Request* Connection::new_request(const RequestHeader& h) {
  std::unique_ptr<Request> r;
  if (!free_requests_.empty()) {
    r = std::move(free_requests_.back());
    free_requests_.pop_back();
  } else {
    r = std::make_unique<Request>();
    r->conn = this;
  }
  r->h = h;
  r->pending = 0;
  r->result = 0;
  r->then_flush = false;
  r->extents.clear();
  r->status.clear();
  r->any_hole = false;
  r->start_ns = mono_ns();
  in_flight_++;
  return r.release();
}

void Connection::free_request(Request* r) {
  if (r->buf && lane_) {
    lane_->pool.release(r->buf);
    r->buf = {};
  }
  free_requests_.emplace_back(r);
  // Input paused for want of a buffer or a request slot: try again at the
  // end of this iteration.
  if (blocked_) reactor_.defer(*this);
}

// Whether the reply to read h may have to send holes as holes: structured
// replies, no DF, a large read of a device that can tell, and not all data
// by an earlier answer (under holes generation holes_gen).
bool Connection::may_report_holes(const RequestHeader& h, uint64_t holes_gen) const {
  return neg_.structured_replies && !(h.flags & kCmdFlagDf) && h.length >= kHoleAwareReadMin &&
         export_->reports_holes() && lane_->known_data.data_from(h.offset, holes_gen) < h.length;
}

void Connection::start_read(Request* r) {
  const RequestHeader& h = r->h;
  const uint64_t gen = export_->device().holes_generation();
  if (may_report_holes(h, gen)) {
    // Learn the layout, so holes can be sent as holes: allocation queries
    // on the lane's queue, next to the read (not before it: for a network
    // device each is a round trip). The reply goes out once both are done.
    r->scan = h.offset;
    r->scan_end = h.offset + h.length;
    r->holes_gen = gen;
    r->pending++;
    // The first query asks up to the end of the device (the kernel scans
    // as far as the next hole whatever length is asked): a data extent
    // found is remembered for the requests that follow.
    ask_layout(r, export_->device().device().info().capacity - h.offset);
  }
  r->pending++;
  lane_->io.queue().read(h.offset, r->buf.data, h.length, r, 0);
  lane_->io.kick();
}

// A large read of a device that lives in a file in memory is answered
// without a copy in the daemon: when its turn to be sent comes, the file's
// pages go into the connection's pipe by reference and from there into the
// socket (splice_out); the client's receive is the only copy. Returns false,
// having changed nothing, when the read must take the ordinary path: a
// reply that may have to report holes (structured replies, no DF, and no
// knowledge that the range is all data), or no pipe to be had.
//
// The data is taken from the file as it is sent, as with any read whose
// reply is still on its way: a write that lands before then can show
// through. Only requests in flight at the same time can see that, and NBD
// leaves their order open.
bool Connection::splice_read(Request* r) {
  const RequestHeader& h = r->h;
  if (may_report_holes(h, export_->device().holes_generation())) return false;
  if (!pipe_r_.valid() && !open_pipe()) {
    splice_src_ = -1;
    return false;
  }
  Out& o = push_out();
  read_header(o, h);
  o.spliced = h.length;
  o.file_off = h.offset;
  StatsShard::add(stats_->spliced_reads, 1);
  finish_request(r, false);
  return true;
}

// The pipe for zero-copy reads, as large as the kernel allows us (the
// default 64 KiB otherwise). The socket becomes non-blocking: splice(2)
// into a socket waits for room unless the socket itself says not to (before
// Linux 6.5 SPLICE_F_NONBLOCK only covers the pipe). The ring's socket
// operations do not depend on it.
bool Connection::open_pipe() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  UniqueFd r(p[0]), w(p[1]);
  int size = ::fcntl(w.get(), F_SETPIPE_SZ, kPipeBytes);
  if (size < 0) size = ::fcntl(w.get(), F_GETPIPE_SZ);
  const int fl = ::fcntl(fd_, F_GETFL);
  if (size <= 0 || fl < 0 || ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK) != 0) return false;
  pipe_r_ = std::move(r);
  pipe_w_ = std::move(w);
  pipe_bytes_ = static_cast<uint64_t>(size);
  return true;
}

// One allocation query of a hole-aware read is answered: add it to the
// layout and ask the next, until the range is known (or 64 extents, the rest
// then sent as data). A failed query only ends the scan: the read itself
// decides the reply.
void Connection::read_layout_step(Request* r, int ret) {
  const uint64_t end = r->scan_end;
  bool more = false;
  if (ret >= 0 && r->answer.len > 0) {
    if (!r->answer.hole) lane_->known_data.learn(r->scan, r->scan + r->answer.len, r->holes_gen);
    AllocationExtent x = r->answer;
    x.len = std::min(x.len, end - r->scan);
    x.len -= x.len % export_->info().min_block;
    if (x.len > 0) {
      r->any_hole |= x.hole;
      if (!r->extents.empty() && r->extents.back().hole == x.hole) {
        r->extents.back().len += x.len;
      } else {
        r->extents.push_back(x);
      }
      r->scan += x.len;
      more = r->scan < end && r->extents.size() < 64;
    }
  }
  if (more && !dead_) return ask_layout(r, end - r->scan);
  if (r->scan < end) r->extents.push_back({end - r->scan, false});
  if (!r->any_hole) r->extents.clear();
  request_done(r, 0);
}

void Connection::start_write(Request* r) {
  if (r->h.flags & kCmdFlagFua) StatsShard::add(stats_->fua_writes, 1);
  r->pending = 1;
  lane_->io.queue().write(r->h.offset, r->buf.data, r->h.length, r, (r->h.flags & kCmdFlagFua) ? kReqFua : 0);
  lane_->io.kick();
}

void Connection::start_trim(Request* r) {
  // Trim is advisory: discard the part the device's alignment allows.
  const DeviceInfo& d = export_->device().device().info();
  uint64_t align = static_cast<uint64_t>(std::max(d.discard_alignment, 1));
  uint64_t base = static_cast<uint64_t>(d.discard_alignment_offset);
  uint64_t start = r->h.offset, end = r->h.offset + r->h.length;
  if (start > base) start = base + (start - base + align - 1) / align * align;
  if (end > base) end = base + (end - base) / align * align;
  r->then_flush = r->h.flags & kCmdFlagFua;
  if (start < end) export_->device().holes_may_appear();
  Queue& q = lane_->io.queue();
  for (uint64_t off = start; off < end;) {
    uint64_t len = end - off;
    if (d.max_discard_len) len = std::min(len, d.max_discard_len - d.max_discard_len % align);
    r->pending++;
    q.discard(off, len, r, 0);
    off += len;
  }
  if (r->pending == 0) {
    if (!r->then_flush) return reply_ok(r);
    r->then_flush = false;
    r->pending = 1;
    q.flush(r, 0);
  }
  lane_->io.kick();
}

void Connection::start_zeroes(Request* r) {
  const DeviceInfo& d = export_->device().device().info();
  uint32_t flags = 0;
  if (r->h.flags & kCmdFlagFua) flags |= kReqFua;
  if (r->h.flags & kCmdFlagNoHole) flags |= kReqNoUnmap;
  if (r->h.flags & kCmdFlagFastZero) flags |= kReqNoFallback;
  Queue& q = lane_->io.queue();
  uint64_t max = d.max_write_zeroes_len ? d.max_write_zeroes_len : r->h.length;
  max -= max % export_->info().min_block;
  if (max == 0) max = r->h.length;
  export_->device().holes_may_appear();  // even NO_HOLE: some file systems report zeroed ranges as holes
  for (uint64_t off = r->h.offset, end = off + r->h.length; off < end;) {
    uint64_t len = std::min(max, end - off);
    r->pending++;
    q.write_zeroes(off, len, r, flags);
    off += len;
  }
  if (r->pending == 0) return reply_ok(r);
  lane_->io.kick();
}

void Connection::start_cache(Request* r) {
  // Emulated as nbdkit does: read the range (into one scratch buffer) so the
  // device's cache holds it.
  uint64_t chunk = std::min<uint64_t>(r->h.length, 1 << 20);
  if (chunk == 0) return reply_ok(r);
  r->buf = lane_->pool.alloc(chunk);
  if (!r->buf) return reply_ok(r);  // advisory: nothing lost by skipping it
  Queue& q = lane_->io.queue();
  for (uint64_t off = r->h.offset, end = off + r->h.length; off < end; off += chunk) {
    r->pending++;
    q.read(off, r->buf.data, std::min(chunk, end - off), r, 0);
  }
  lane_->io.kick();
}

void Connection::block_status(Request* r) {
  // Asked of the device one extent at a time, asynchronously (for a network
  // device each answer is a round trip, and the reactor serves everyone
  // else meanwhile); the reply goes out from reply_block_status().
  r->scan = r->h.offset;
  r->scan_end = r->h.offset + r->h.length;
  r->holes_gen = export_->device().holes_generation();
  r->pending = 1;
  next_status_query(r);
}

// The extent at r->scan: from what this reactor already knows when it is
// data, else from the device, asked up to the end of the device so that the
// whole data extent is learnt (the kernel scans that far anyway).
void Connection::next_status_query(Request* r) {
  if (uint64_t known = lane_->known_data.data_from(r->scan, r->holes_gen)) {
    r->answer = {known, false};
    return block_status_step(r, 0);  // ends, or asks the device: the known extent is used up
  }
  ask_layout(r, export_->device().device().info().capacity - r->scan);
}

void Connection::ask_layout(Request* r, uint64_t len) {
  StatsShard::add(stats_->layout_queries, 1);
  lane_->io.queue().block_status(r->scan, len, &r->answer, &r->status_done, 0);
  lane_->io.kick();
}

void Connection::block_status_step(Request* r, int ret) {
  if (ret < 0) return request_done(r, ret);
  const size_t max_ext = (r->h.flags & kCmdFlagReqOne) ? 1 : 1024;
  const AllocationExtent& e = r->answer;
  if (e.len == 0) return request_done(r, 0);
  if (!e.hole) lane_->known_data.learn(r->scan, r->scan + e.len, r->holes_gen);
  const uint64_t len = std::min(e.len, r->scan_end - r->scan);
  uint32_t flags = e.hole ? (kStateHole | kStateZero) : 0;
  if (!r->status.empty() && r->status.back().flags == flags) {
    r->status.back().length += len;
  } else {
    r->status.push_back({len, flags});
  }
  r->scan += len;
  // A reply may cover less than asked (the client asks again): stop at an
  // extent the device ended off the block size, where no query may start.
  if (r->scan < r->scan_end && r->status.size() < max_ext && r->scan % export_->info().min_block == 0 && !dead_) {
    return next_status_query(r);
  }
  request_done(r, 0);
}

void Connection::status_done(Request* r, int ret) {
  if (r->h.type == kCmdRead) return read_layout_step(r, ret);
  block_status_step(r, ret);
}

void Connection::reply_block_status(Request* r) {
  const RequestHeader& h = r->h;
  BlockStatusQuery q;
  q.length = h.length;
  q.req_one = h.flags & kCmdFlagReqOne;
  q.align = export_->info().min_block;
  q.context_id = neg_.base_allocation_id;
  std::vector<uint8_t> bytes(kExtendedChunkHeaderSize + 16 + r->status.size() * 16 * 2);
  ReplyTo to{h.cookie, h.offset, neg_.extended_headers};
  BlockStatusResult res = encode_block_status(bytes, to, q, r->status);
  if (res.bytes == 0) return reply_error(r, kEinval, "no block status to report");
  bytes.resize(res.bytes);
  Out& o = push_out();
  o.owned = std::move(bytes);
  finish_request(r, false);
}

void Connection::request_done(Request* r, int ret) {
  if (ret < 0 && r->result == 0) r->result = ret;
  if (--r->pending > 0) return;
  if (dead_) {
    free_request(r);
    in_flight_--;
    return maybe_destroy();
  }
  if (r->then_flush && r->result == 0) {
    r->then_flush = false;
    r->pending = 1;
    lane_->io.queue().flush(r, 0);
    lane_->io.kick();
    return;
  }
  if (r->result < 0) {
    reply_error(r, errno_to_nbd(r->result));
  } else if (r->h.type == kCmdRead) {
    reply_read(r);
  } else if (r->h.type == kCmdBlockStatus) {
    reply_block_status(r);
  } else {
    reply_ok(r);
  }
  if (stopping_) maybe_destroy();
}

}  // namespace blkstack::nbd
