// Errors as values at I/O and API boundaries.
//
// A Status is either OK or carries a message that names the file, key or
// field at fault. Expected<T> is a value or such a message (C++20 has no
// std::expected; this is the small subset we use).
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace engram {

struct Error {
  std::string message;
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error e) : message_(std::move(e.message)), ok_(false) {}  // NOLINT: implicit by design
  static Status ok() { return Status(); }

  bool is_ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
  bool ok_ = true;
};

template <class T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Expected(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { assert(has_value()); return std::get<0>(v_); }
  const T& value() const& { assert(has_value()); return std::get<0>(v_); }
  T&& value() && { assert(has_value()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { assert(!has_value()); return std::get<1>(v_); }
  Status status() const { return has_value() ? Status() : Status(error()); }

 private:
  std::variant<T, Error> v_;
};

// Builds an Error from pieces: make_error("file.gguf: tensor '", name, "' out of bounds").
template <class... Parts>
Error make_error(Parts&&... parts) {
  std::string s;
  ((s += parts), ...);
  return Error{std::move(s)};
}

}  // namespace engram

// Propagates an error Status out of the enclosing function.
#define ENGRAM_RETURN_IF_ERROR(expr)                          \
  do {                                                        \
    ::engram::Status engram_status_ = (expr);                 \
    if (!engram_status_.is_ok())                              \
      return ::engram::Error{engram_status_.message()};       \
  } while (0)
