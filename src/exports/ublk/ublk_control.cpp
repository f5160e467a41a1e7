#include "exports/ublk/ublk_control.hpp"

#include <fcntl.h>

#include <cstring>

namespace blkstack::ublk {

Result<std::unique_ptr<Control>> Control::open(const char* path) {
  std::unique_ptr<Control> c(new Control);
  c->fd_.reset(::open(path, O_RDWR | O_CLOEXEC));
  if (!c->fd_.valid()) {
    if (errno == ENOENT) return error(-ENODEV, "{} does not exist: is the ublk_drv module loaded?", path);
    return errno_error(path);
  }
  io_uring_params p{};
  p.flags = IORING_SETUP_SQE128;
  if (Status s = c->ring_.init(8, p, 0); !s) return error(s.code(), "ublk control ring: {}", s.message());
  return c;
}

Result<int> Control::command(uint32_t op, uint32_t dev_id, void* data, uint16_t len, uint64_t inline_data) {
  // Unprivileged devices: the char device path leads the buffer.
  std::vector<uint8_t> buf;
  CtrlCmd cmd{};
  cmd.dev_id = dev_id;
  cmd.queue_id = 0xffff;
  cmd.data[0] = inline_data;
  if (unprivileged_ && op != kUCmdAddDev && op != kUCmdGetFeatures) {
    std::string path = char_dev_path(dev_id);
    buf.assign(path.begin(), path.end());
    buf.push_back(0);
    cmd.dev_path_len = static_cast<uint16_t>(buf.size());
    if (data) buf.insert(buf.end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + len);
    cmd.addr = reinterpret_cast<uint64_t>(buf.data());
    cmd.len = static_cast<uint16_t>(buf.size());
  } else {
    cmd.addr = reinterpret_cast<uint64_t>(data);
    cmd.len = len;
  }
  io_uring* ring = ring_.get();
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  std::memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_.get();
  sqe->off = op;  // cmd_op shares the off field
  std::memcpy(sqe->cmd, &cmd, sizeof(cmd));
  int r = io_uring_submit_and_wait(ring, 1);
  if (r < 0) return Status(r, fmt::format("io_uring_submit: {}", strerror(-r)));
  io_uring_cqe* cqe = nullptr;
  r = io_uring_wait_cqe(ring, &cqe);
  if (r < 0) return Status(r, fmt::format("io_uring_wait_cqe: {}", strerror(-r)));
  int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  if (unprivileged_ && data && !buf.empty()) std::memcpy(data, buf.data() + cmd.dev_path_len, len);
  return res;
}

namespace {
Status check(const Result<int>& r, const char* what, uint32_t dev_id) {
  if (!r) return r.status();
  if (*r < 0) return error(*r, "ublk {} (device {}): {}", what, static_cast<int>(dev_id), strerror(-*r));
  return {};
}
}  // namespace

Result<uint64_t> Control::get_features() {
  uint64_t features = 0;
  auto r = command(kUCmdGetFeatures, 0, &features, sizeof(features));
  if (Status s = check(r, "GET_FEATURES", 0); !s) return s;
  return features;
}

Status Control::add_dev(DevInfo& info) {
  return check(command(kUCmdAddDev, info.dev_id, &info, sizeof(info)), "ADD_DEV", info.dev_id);
}

Status Control::set_params(uint32_t dev_id, const Params& p) {
  Params copy = p;
  copy.len = sizeof(Params);
  return check(command(kUCmdSetParams, dev_id, &copy, sizeof(copy)), "SET_PARAMS", dev_id);
}

Result<Params> Control::get_params(uint32_t dev_id) {
  Params p{};
  p.len = sizeof(Params);
  if (Status s = check(command(kUCmdGetParams, dev_id, &p, sizeof(p)), "GET_PARAMS", dev_id); !s) return s;
  return p;
}

Result<DevInfo> Control::get_dev_info(uint32_t dev_id) {
  DevInfo info{};
  // GET_DEV_INFO2 carries the char device path (needed for unprivileged
  // devices); older kernels only know GET_DEV_INFO.
  auto r = command(unprivileged_ ? kUCmdGetDevInfo2 : kUCmdGetDevInfo, dev_id, &info, sizeof(info));
  if (Status s = check(r, "GET_DEV_INFO", dev_id); !s) return s;
  return info;
}

Status Control::start_dev(uint32_t dev_id, int pid) {
  return check(command(kUCmdStartDev, dev_id, nullptr, 0, static_cast<uint64_t>(pid)), "START_DEV", dev_id);
}

Status Control::stop_dev(uint32_t dev_id) { return check(command(kUCmdStopDev, dev_id, nullptr, 0), "STOP_DEV", dev_id); }

Status Control::del_dev(uint32_t dev_id) { return check(command(kUCmdDelDev, dev_id, nullptr, 0), "DEL_DEV", dev_id); }

Status Control::start_user_recovery(uint32_t dev_id) {
  return check(command(kUCmdStartUserRecovery, dev_id, nullptr, 0), "START_USER_RECOVERY", dev_id);
}

Status Control::end_user_recovery(uint32_t dev_id, int pid) {
  return check(command(kUCmdEndUserRecovery, dev_id, nullptr, 0, static_cast<uint64_t>(pid)), "END_USER_RECOVERY",
               dev_id);
}

}  // namespace blkstack::ublk
