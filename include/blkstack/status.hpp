// Status and Result: how the core reports failure without exceptions.
//
// Every fallible call returns a negative errno plus a human-readable message.
// The message is only built on the error path, so the success path costs one
// integer compare.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace blkstack {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(int negative_errno, std::string message)
      : code_(negative_errno), message_(std::move(message)) {}

  bool ok() const { return code_ == 0; }
  explicit operator bool() const { return ok(); }
  int code() const { return code_; }  // 0 or a negative errno
  const std::string& message() const { return message_; }

 private:
  int code_ = 0;
  std::string message_;
};

// Builds an error Status with a fmt-style message: error(-EINVAL, "bad {}", x).
template <typename... Args>
Status error(int negative_errno, fmt::format_string<Args...> format, Args&&... args) {
  return Status(negative_errno, fmt::format(format, std::forward<Args>(args)...));
}

// Builds an error Status from errno after a failed system call.
Status errno_error(std::string_view what);

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Status status) : status_(std::move(status)) {}  // NOLINT

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace blkstack
