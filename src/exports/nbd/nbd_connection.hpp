// One NBD client connection on one reactor: the handshake (sans-IO, in
// handshake.cpp), optional TLS, then the transmission phase with any number
// of requests in flight on the device lane of this reactor. Replies go out in
// completion order, gathered into as few sendmsg calls as possible.
#pragma once

#include <sys/socket.h>

#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "core/fd.hpp"
#include "daemon/buffer_pool.hpp"
#include "daemon/io_queue.hpp"
#include "daemon/reactor.hpp"
#include "exports/nbd/nbd_export.hpp"
#include "exports/nbd/tls.hpp"
#include "exports/nbd/transmission.hpp"

namespace blkstack::nbd {

class ConnectionSet;

class Connection final : public Reactor::Deferred {
 public:
  // Takes ownership of fd. Runs on r's thread.
  static void start(Reactor& r, int fd, std::shared_ptr<const Catalog> catalog, ConnectionSet& set);
  // Graceful end: no new requests; in-flight ones finish and are answered.
  void shutdown();
  // Abrupt end: both directions shut, queued replies dropped; requests in
  // the device still finish before the object goes.
  void fail(std::string_view why);

  void run_deferred() override;  // flush replies

  // What this connection serves (null during the handshake) and the
  // catalog it negotiates from.
  const NbdExport* exported() const { return export_.get(); }
  const Catalog& catalog() const { return *catalog_; }

 private:
  struct Request;
  struct Out;
  // A ring operation of this connection: its completion calls one member.
  template <void (Connection::*Done)(int)>
  class MemberOp final : public Reactor::Op {
   public:
    explicit MemberOp(Connection& c) : c_(c) {}
    void complete(int res, uint32_t) override { (c_.*Done)(res); }

   private:
    Connection& c_;
  };

  Connection(Reactor& r, int fd, std::shared_ptr<const Catalog> catalog, ConnectionSet& set);
  ~Connection();

  // ---- input ----
  void arm_recv();
  void on_recv(int res);
  void process_input();
  bool handshake_input();
  bool start_tls();
  bool tls_handshake_step();
  void decrypt_input();
  bool transmission_input();
  bool take_payload();
  void dispatch(const RequestHeader& h);

  // ---- requests ----
  Request* new_request(const RequestHeader& h);
  void free_request(Request* r);
  void start_read(Request* r);
  bool may_report_holes(const RequestHeader& h, uint64_t holes_gen) const;
  void read_header(Out& o, const RequestHeader& h) const;
  bool splice_read(Request* r);
  bool open_pipe();
  void start_write(Request* r);
  void start_trim(Request* r);
  void start_zeroes(Request* r);
  void start_cache(Request* r);
  void block_status(Request* r);
  void status_done(Request* r, int ret);  // an allocation query completed
  void read_layout_step(Request* r, int ret);
  void block_status_step(Request* r, int ret);
  void next_status_query(Request* r);
  void ask_layout(Request* r, uint64_t len);
  void request_done(Request* r, int ret);
  friend struct Request;

  // ---- replies ----
  void reply_ok(Request* r);
  void reply_error(Request* r, uint32_t nbd_error, std::string_view message = {});
  void reply_read(Request* r);
  void reply_block_status(Request* r);
  void reply_bytes(std::vector<uint8_t> bytes);
  Out& push_out();
  void finish_request(Request* r, bool failed);
  void flush_output();
  bool splice_out();
  bool wait_writable();
  void on_sent(int res);
  void on_writable(int res);
  void after_output();

  // ---- lifetime ----
  void maybe_destroy();

  Reactor& reactor_;
  int fd_;
  std::shared_ptr<const Catalog> catalog_;
  ConnectionSet& set_;

  std::unique_ptr<Handshake> handshake_;
  Negotiated neg_;
  std::shared_ptr<NbdExport> export_;
  BlockDevice::Lane* lane_ = nullptr;
  StatsShard* stats_ = nullptr;
  std::unique_ptr<TlsSession> tls_;
  std::unique_ptr<TlsSession> tls_pending_;  // STARTTLS acknowledged, not yet sent
  bool tls_handshaking_ = false;

  // Received plaintext: [rpos_, wpos_) unread.
  std::unique_ptr<uint8_t[]> in_;
  size_t in_cap_ = 0, rpos_ = 0, wpos_ = 0;
  std::unique_ptr<uint8_t[]> raw_;  // TLS: ciphertext lands here first
  MemberOp<&Connection::on_recv> recv_op_{*this};
  bool recv_pending_ = false;
  // A write waiting for the rest of its payload, or payload to throw away.
  Request* payload_req_ = nullptr;
  uint64_t payload_done_ = 0;
  uint64_t discard_left_ = 0;
  bool direct_recv_ = false;  // recv_pending_ targets payload_req_'s buffer

  // Zero-copy reads (splice_read): the device's in-memory file, and the pipe
  // its pages pass through, by reference, on their way to the socket.
  int splice_src_ = -1;
  UniqueFd pipe_r_, pipe_w_;
  uint64_t pipe_bytes_ = 0;  // its capacity
  MemberOp<&Connection::on_writable> writable_op_{*this};

  std::deque<Out> out_;
  std::vector<iovec> iov_;
  msghdr msg_{};
  MemberOp<&Connection::on_sent> send_op_{*this};
  bool send_pending_ = false;
  uint64_t tls_sent_ = 0;  // ciphertext bytes of the send in flight

  std::vector<std::unique_ptr<Request>> free_requests_;
  unsigned in_flight_ = 0;        // requests not yet answered
  bool blocked_ = false;          // input paused: no buffer or too many requests
  bool stopping_ = false;         // no more requests are read
  bool dead_ = false;             // the socket is unusable
  bool destroyed_ = false;
  std::string close_reason_;

  friend class ConnectionSet;
};

// The connections of one reactor (reactor thread only).
class ConnectionSet {
 public:
  void add(Connection* c) { all_.push_back(c); }
  void remove(Connection* c);
  void shutdown_if(const std::function<bool(const Connection&)>& pred);
  // Cuts off at once (no more replies) the connections `pred` picks.
  void fail_if(const std::function<bool(const Connection&)>& pred, std::string_view why);
  size_t count_if(const std::function<bool(const Connection&)>& pred) const;
  size_t size() const { return all_.size(); }

 private:
  std::vector<Connection*> matching(const std::function<bool(const Connection&)>& pred) const;
  std::vector<Connection*> all_;
};

}  // namespace blkstack::nbd
