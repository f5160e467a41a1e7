// The control channel of the virtio-blk-vhost-user driver: the Unix socket
// to the back-end and the vhost-user front-end requests on it (features,
// config space, memory table, vring setup). Control path only: callers are
// serialized by the device's control lock; the data path never touches the
// socket.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "blkstack/status.hpp"
#include "core/fd.hpp"
#include "vhost/vhost_user_message.hpp"

namespace blkstack {

class VhostUserClient {
 public:
  // Connects to `path`, bounding both the connect and every later reply by
  // `timeout_s` seconds (0: no bound).
  static Result<VhostUserClient> connect(const std::string& path, int timeout_s);

  int fd() const { return sock_.get(); }

  // Feature negotiation, in protocol order. negotiate_protocol() is only
  // valid when the back-end offered kFeatureProtocolFeatures.
  Result<uint64_t> get_features();
  Status set_features(uint64_t features);
  Result<uint64_t> get_protocol_features();
  Status set_protocol_features(uint64_t features);  // remembers REPLY_ACK
  Status set_owner();
  Result<uint64_t> get_u64(vhost::Request r);  // GET_QUEUE_NUM, GET_MAX_MEM_SLOTS
  // Reads `len` bytes of config space from offset 0 into `out`.
  Status get_config(void* out, uint32_t len);

  // Memory table. Regions are in the front-end's (our) address space, with
  // guest_phys_addr == userspace_addr (identity addressing).
  Status add_mem_reg(const vhost::MemoryRegion& r, int fd);
  Status rem_mem_reg(const vhost::MemoryRegion& r, int fd);
  Status set_mem_table(std::span<const vhost::MemoryRegion> regions, std::span<const int> fds);

  // Vring setup.
  Status set_vring_num(uint32_t index, uint32_t num);
  Status set_vring_base(uint32_t index, uint32_t base);
  Status set_vring_addr(const vhost::VringAddr& a);
  Status set_vring_kick(uint32_t index, int fd);
  Status set_vring_call(uint32_t index, int fd);
  Status set_vring_enable(uint32_t index, bool enable);

  // A round trip that returns once the back-end has handled everything sent
  // before it (a barrier for back-ends without REPLY_ACK).
  Status sync();

 private:
  explicit VhostUserClient(UniqueFd sock, std::string path) : sock_(std::move(sock)), path_(std::move(path)) {}
  // Sends a request that has no reply of its own; with REPLY_ACK, waits for
  // the back-end's verdict.
  Status send_acked(vhost::Message& m, std::span<const int> fds = {});
  Status send(const vhost::Message& m, std::span<const int> fds = {});
  // Receives the reply to `req` and checks its header.
  Status recv_reply(vhost::Request req, vhost::Message& out);
  Status io_error(const char* what, vhost::Request req, int err) const;

  UniqueFd sock_;
  std::string path_;
  bool reply_ack_ = false;
};

}  // namespace blkstack
