// One NBD connection made with libnbd: the handle, and connecting to a URI
// within a deadline. libnbd's own nbd_connect_uri() blocks without a bound,
// so a server that accepts and then says nothing would hang blkio_connect();
// we drive the asynchronous connect ourselves and give up when time is up.
#pragma once

#include <libnbd.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "blkstack/request.hpp"
#include "blkstack/status.hpp"

namespace blkstack {

struct NbdHandleCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using NbdHandle = std::unique_ptr<nbd_handle, NbdHandleCloser>;

// A connection as the queues share it.
struct NbdLink {
  explicit NbdLink(NbdHandle h) : handle(std::move(h)) {}
  nbd_handle* get() const { return handle.get(); }

  NbdHandle handle;
  // libnbd may be told of a read only when the socket is readable; told
  // otherwise it stops sending until a reply comes, which may never come.
  // Queues that share the connection hold this from the readiness check to
  // the end of the read, so no other one empties the socket in between.
  std::mutex reading;
  std::atomic<int> queues{0};  // queues using it: > 1 means shared
};

// The last libnbd error as a Status (libnbd keeps it per thread).
Status nbd_error(std::string_view what);

// The URI with `export_name` as its path (percent-encoded). Fails when the
// URI already names an export: two names for one export is a mistake.
Result<std::string> uri_with_export(const std::string& uri, const std::string& export_name);

// Connects to `uri` and completes the handshake (NBD_OPT_GO) within
// `timeout_s` seconds (0: no bound).
// Also asks for the base:allocation meta context (nbd_can_meta_context()
// says whether the server agreed).
Result<NbdHandle> nbd_connect_within(const std::string& uri, int timeout_s);

// An extent callback's answer (base:allocation, asked at `asked`) as ours:
// fills `out` from the first extent when out.len is still 0. STATE_ZERO is a
// hole; STATE_HOLE without STATE_ZERO is data.
void nbd_extent_to_allocation(const char* metacontext, uint64_t asked, uint64_t offset, const uint32_t* entries,
                              size_t nr_entries, AllocationExtent& out);

// One block status query (REQ_ONE) on a handle that nothing else drives,
// answered within `timeout_s` seconds (0: no bound). out.len 0: the server
// said nothing about the offset.
Status nbd_block_status_within(nbd_handle* h, uint64_t offset, uint64_t len, int timeout_s, AllocationExtent& out);

}  // namespace blkstack
