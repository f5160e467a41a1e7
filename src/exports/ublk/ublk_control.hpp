// /dev/ublk-control: creating, configuring, starting, stopping, deleting and
// recovering ublk devices. Control commands are io_uring URING_CMDs (128-byte
// SQEs) issued synchronously on a private ring: this is the control path.
#pragma once

#include <string>
#include <vector>

#include "blkstack/status.hpp"
#include "core/fd.hpp"
#include "core/uring.hpp"
#include "exports/ublk/ublk_uapi.hpp"

namespace blkstack::ublk {

class Control {
 public:
  static Result<std::unique_ptr<Control>> open(const char* path = "/dev/ublk-control");

  Result<uint64_t> get_features();
  // dev_id -1: the kernel picks. info is updated (dev_id, flags...).
  Status add_dev(DevInfo& info);
  Status set_params(uint32_t dev_id, const Params& p);
  Result<Params> get_params(uint32_t dev_id);
  Result<DevInfo> get_dev_info(uint32_t dev_id);
  // Blocks until every queue has fetched all its tags.
  Status start_dev(uint32_t dev_id, int pid);
  Status stop_dev(uint32_t dev_id);
  Status del_dev(uint32_t dev_id);
  Status start_user_recovery(uint32_t dev_id);
  Status end_user_recovery(uint32_t dev_id, int pid);
  // Unprivileged devices name their char device in every command.
  void set_unprivileged(bool on) { unprivileged_ = on; }

 private:
  Control() = default;
  // Issues one command; data/len: the command's buffer (in or out).
  Result<int> command(uint32_t op, uint32_t dev_id, void* data, uint16_t len, uint64_t inline_data = 0);

  UniqueFd fd_;
  Ring ring_;
  bool unprivileged_ = false;
};

inline std::string char_dev_path(uint32_t dev_id) { return "/dev/ublkc" + std::to_string(dev_id); }
inline std::string block_dev_path(uint32_t dev_id) { return "/dev/ublkb" + std::to_string(dev_id); }

}  // namespace blkstack::ublk
