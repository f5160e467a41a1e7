// One NBD connection made with libnbd: the handle, and connecting to a URI
// within a deadline. libnbd's own nbd_connect_uri() blocks without a bound,
// so a server that accepts and then says nothing would hang blkio_connect();
// we drive the asynchronous connect ourselves and give up when time is up.
#pragma once

#include <libnbd.h>

#include <memory>
#include <string>

#include "blkstack/status.hpp"

namespace blkstack {

struct NbdHandleCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using NbdHandle = std::unique_ptr<nbd_handle, NbdHandleCloser>;

// The last libnbd error as a Status (libnbd keeps it per thread).
Status nbd_error(std::string_view what);

// The URI with `export_name` as its path (percent-encoded). Fails when the
// URI already names an export: two names for one export is a mistake.
Result<std::string> uri_with_export(const std::string& uri, const std::string& export_name);

// Connects to `uri` and completes the handshake (NBD_OPT_GO) within
// `timeout_s` seconds (0: no bound).
Result<NbdHandle> nbd_connect_within(const std::string& uri, int timeout_s);

}  // namespace blkstack
