// GGUF v3 writer: metadata and tensors collected in memory, serialized in one go.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <limits>

#include "gguf/gguf.h"

namespace engram::gguf {
namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

uint64_t align_up(uint64_t n, uint64_t a) { return n + (a - n % a) % a; }

// Appends little-endian bytes to a buffer.
class ByteSink {
 public:
  explicit ByteSink(std::vector<uint8_t>& out) : out_(out) {}

  template <class T>
  void put(T v) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof v);  // every supported host is little-endian, like the file
    out_.insert(out_.end(), raw, raw + sizeof raw);
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void put_bytes(const std::vector<uint8_t>& b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void pad_to(uint64_t alignment) { out_.resize(align_up(out_.size(), alignment), 0); }

 private:
  std::vector<uint8_t>& out_;
};

// Writes one scalar of `type` taken from whichever numeric member the variant holds.
template <class Number>
void put_number(ByteSink& sink, ValueType type, Number n) {
  switch (type) {
    case ValueType::UINT8: sink.put(static_cast<uint8_t>(n)); break;
    case ValueType::INT8: sink.put(static_cast<int8_t>(n)); break;
    case ValueType::UINT16: sink.put(static_cast<uint16_t>(n)); break;
    case ValueType::INT16: sink.put(static_cast<int16_t>(n)); break;
    case ValueType::UINT32: sink.put(static_cast<uint32_t>(n)); break;
    case ValueType::INT32: sink.put(static_cast<int32_t>(n)); break;
    case ValueType::UINT64: sink.put(static_cast<uint64_t>(n)); break;
    case ValueType::INT64: sink.put(static_cast<int64_t>(n)); break;
    case ValueType::FLOAT32: sink.put(static_cast<float>(n)); break;
    case ValueType::FLOAT64: sink.put(static_cast<double>(n)); break;
    case ValueType::BOOL: sink.put(static_cast<uint8_t>(n != 0)); break;
    default: break;
  }
}

// Checks that the variant member matches the declared type (a Value built by
// hand could say UINT32 and hold a string), so serialize() never guesses.
bool value_is_consistent(const Value& v) {
  const ValueType t = v.is_array() ? v.array_type : v.type;
  const bool arr = v.is_array();
  switch (t) {
    case ValueType::UINT8: case ValueType::UINT16: case ValueType::UINT32: case ValueType::UINT64:
      return arr ? std::holds_alternative<std::vector<uint64_t>>(v.data) : std::holds_alternative<uint64_t>(v.data);
    case ValueType::INT8: case ValueType::INT16: case ValueType::INT32: case ValueType::INT64:
      return arr ? std::holds_alternative<std::vector<int64_t>>(v.data) : std::holds_alternative<int64_t>(v.data);
    case ValueType::FLOAT32: case ValueType::FLOAT64:
      return arr ? std::holds_alternative<std::vector<double>>(v.data) : std::holds_alternative<double>(v.data);
    case ValueType::BOOL:
      return arr ? std::holds_alternative<std::vector<bool>>(v.data) : std::holds_alternative<bool>(v.data);
    case ValueType::STRING:
      return arr ? std::holds_alternative<std::vector<std::string>>(v.data)
                 : std::holds_alternative<std::string>(v.data);
    case ValueType::ARRAY: return false;  // nested arrays are not part of what we write
  }
  return false;
}

void put_value(ByteSink& sink, const Value& v) {
  sink.put(static_cast<uint32_t>(v.type));
  if (v.is_array()) {
    sink.put(static_cast<uint32_t>(v.array_type));
    sink.put<uint64_t>(v.array_size());
  }
  std::visit(
      [&](const auto& d) {
        using D = std::decay_t<decltype(d)>;
        if constexpr (std::is_same_v<D, std::string>) {
          sink.put_string(d);
        } else if constexpr (std::is_same_v<D, std::vector<std::string>>) {
          for (const auto& s : d) sink.put_string(s);
        } else if constexpr (std::is_arithmetic_v<D>) {
          put_number(sink, v.type, d);
        } else {
          for (auto x : d) put_number(sink, v.array_type, x);
        }
      },
      v.data);
}

Value scalar(ValueType t, auto v) {
  Value out;
  out.type = t;
  out.data = v;
  return out;
}

template <class Wide, class Narrow>
Value array_of(ValueType t, const std::vector<Narrow>& items) {
  Value out;
  out.type = ValueType::ARRAY;
  out.array_type = t;
  out.data = std::vector<Wide>(items.begin(), items.end());
  return out;
}

}  // namespace

void Writer::set(std::string key, Value value) {
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  kv_.emplace_back(std::move(key), std::move(value));
}

void Writer::set_u32(std::string key, uint32_t v) { set(std::move(key), scalar(ValueType::UINT32, uint64_t{v})); }
void Writer::set_i32(std::string key, int32_t v) { set(std::move(key), scalar(ValueType::INT32, int64_t{v})); }
void Writer::set_u64(std::string key, uint64_t v) { set(std::move(key), scalar(ValueType::UINT64, v)); }
void Writer::set_f32(std::string key, float v) { set(std::move(key), scalar(ValueType::FLOAT32, double{v})); }
void Writer::set_bool(std::string key, bool v) { set(std::move(key), scalar(ValueType::BOOL, v)); }
void Writer::set_string(std::string key, std::string v) {
  set(std::move(key), scalar(ValueType::STRING, std::move(v)));
}
void Writer::set_string_array(std::string key, std::vector<std::string> v) {
  Value out;
  out.type = ValueType::ARRAY;
  out.array_type = ValueType::STRING;
  out.data = std::move(v);
  set(std::move(key), std::move(out));
}
void Writer::set_f32_array(std::string key, const std::vector<float>& v) {
  set(std::move(key), array_of<double>(ValueType::FLOAT32, v));
}
void Writer::set_i32_array(std::string key, const std::vector<int32_t>& v) {
  set(std::move(key), array_of<int64_t>(ValueType::INT32, v));
}

void Writer::copy_metadata(const File& src) {
  for (const auto& [key, value] : src.metadata()) set(key, value);
}

Expected<uint64_t> Writer::check_new_tensor(const std::string& name, GgmlType type,
                                            const std::vector<int64_t>& ne) const {
  if (name.empty()) return make_error("gguf writer: tensor with an empty name");
  for (const auto& t : tensors_)
    if (t.name == name) return make_error("gguf writer: duplicate tensor '", name, "'");
  if (!is_valid_type_id(static_cast<uint32_t>(type)))
    return make_error("gguf writer: tensor '", name, "': unknown type id ", std::to_string(static_cast<uint32_t>(type)));
  if (ne.empty() || ne.size() > 4)
    return make_error("gguf writer: tensor '", name, "': ", std::to_string(ne.size()), " dimensions (1 to 4 supported)");
  uint64_t rows = 1;
  for (size_t d = 0; d < ne.size(); ++d) {
    if (ne[d] <= 0) return make_error("gguf writer: tensor '", name, "': ne[", std::to_string(d), "] must be positive");
    if (d > 0) {
      if (rows > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(ne[d]))
        return make_error("gguf writer: tensor '", name, "': size overflows");
      rows *= static_cast<uint64_t>(ne[d]);
    }
  }
  std::optional<size_t> row = row_bytes(type, ne[0]);
  if (!row)
    return make_error("gguf writer: tensor '", name, "': ne[0] = ", std::to_string(ne[0]),
                      " is not a multiple of the block size of ", std::string(type_traits(type).name));
  if (*row != 0 && rows > std::numeric_limits<uint64_t>::max() / *row)
    return make_error("gguf writer: tensor '", name, "': size overflows");
  return *row * rows;
}

Status Writer::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, std::vector<uint8_t> data) {
  Expected<uint64_t> n_bytes = check_new_tensor(name, type, ne);
  if (!n_bytes) return n_bytes.error();
  if (data.size() != *n_bytes)
    return make_error("gguf writer: tensor '", name, "': ", std::to_string(data.size()), " bytes of data, expected ",
                      std::to_string(*n_bytes));
  tensors_.push_back({std::move(name), type, std::move(ne), std::move(data), *n_bytes, {}});
  return Status::ok();
}

Status Writer::add_tensor_streamed(std::string name, GgmlType type, std::vector<int64_t> ne, TensorFill fill) {
  Expected<uint64_t> n_bytes = check_new_tensor(name, type, ne);
  if (!n_bytes) return n_bytes.error();
  if (!fill) return make_error("gguf writer: tensor '", name, "': no fill function");
  tensors_.push_back({std::move(name), type, std::move(ne), {}, *n_bytes, std::move(fill)});
  return Status::ok();
}

Status Writer::add_tensor_f32(std::string name, std::vector<int64_t> ne, std::span<const float> data) {
  std::vector<uint8_t> bytes(data.size_bytes());
  if (!bytes.empty()) std::memcpy(bytes.data(), data.data(), bytes.size());
  return add_tensor(std::move(name), GgmlType::F32, std::move(ne), std::move(bytes));
}

namespace {

uint64_t usable_alignment(uint64_t a) { return is_power_of_two(a) && a <= UINT32_MAX ? a : kDefaultAlignment; }

// Writes all of `bytes` to fd; errno on failure, 0 on success.
int write_all(int fd, const uint8_t* bytes, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

std::vector<uint8_t> Writer::header(uint64_t align) const {
  // general.alignment in the output always states the alignment actually used.
  std::vector<std::pair<std::string, Value>> kv;
  for (const auto& entry : kv_)
    if (value_is_consistent(entry.second)) kv.push_back(entry);
  bool has_alignment_key = false;
  for (auto& [key, value] : kv) {
    if (key == "general.alignment") {
      value = scalar(ValueType::UINT32, uint64_t{align});
      has_alignment_key = true;
    }
  }
  if (!has_alignment_key && align != kDefaultAlignment)
    kv.emplace_back("general.alignment", scalar(ValueType::UINT32, uint64_t{align}));

  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  ByteSink sink(out);
  sink.put<uint32_t>(kVersion);
  sink.put<uint64_t>(tensors_.size());
  sink.put<uint64_t>(kv.size());
  for (const auto& [key, value] : kv) {
    sink.put_string(key);
    put_value(sink, value);
  }
  uint64_t offset = 0;  // each tensor starts aligned within the data section
  for (const auto& t : tensors_) {
    sink.put_string(t.name);
    sink.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t n : t.ne) sink.put<uint64_t>(static_cast<uint64_t>(n));
    sink.put<uint32_t>(static_cast<uint32_t>(t.type));
    sink.put<uint64_t>(offset);
    offset = align_up(offset + t.n_bytes, align);
  }
  sink.pad_to(align);
  return out;
}

// An invalid `alignment` falls back to the default, and a value whose data does
// not match its declared type is left out; write() reports both instead.
std::vector<uint8_t> Writer::serialize() const {
  const uint64_t align = usable_alignment(alignment);
  std::vector<uint8_t> out = header(align);
  ByteSink sink(out);
  for (const auto& t : tensors_) {
    if (t.fill) {
      const size_t at = out.size();
      out.resize(at + t.n_bytes, 0);
      if (!t.fill(std::span<uint8_t>(out.data() + at, t.n_bytes)).is_ok())
        std::fill(out.begin() + static_cast<std::ptrdiff_t>(at), out.end(), uint8_t{0});
    } else {
      sink.put_bytes(t.data);
    }
    sink.pad_to(align);
  }
  return out;
}

Status Writer::write(const std::string& path) const {
  if (!is_power_of_two(alignment) || alignment > UINT32_MAX)
    return make_error(path, ": alignment ", std::to_string(alignment), " is not a power of two that fits in u32");
  for (const auto& [key, value] : kv_)
    if (!value_is_consistent(value))
      return make_error(path, ": metadata key '", key, "': value does not hold data of its declared type ",
                        std::string(value_type_name(value.is_array() ? value.array_type : value.type)));

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return make_error(tmp, ": cannot create: ", std::strerror(errno));
  auto give_up = [&](Status s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  // The header, then one tensor at a time (a streamed one through a reused buffer).
  const std::vector<uint8_t> head = header(alignment);
  if (int err = write_all(fd, head.data(), head.size()); err != 0)
    return give_up(make_error(tmp, ": write failed: ", std::strerror(err)));
  std::vector<uint8_t> buffer;
  const uint8_t zeros[64] = {};
  for (const auto& t : tensors_) {
    const uint8_t* bytes = t.data.data();
    if (t.fill) {
      buffer.assign(t.n_bytes, 0);
      Status filled = t.fill(std::span<uint8_t>(buffer.data(), buffer.size()));
      if (!filled.is_ok()) return give_up(make_error(path, ": tensor '", t.name, "': ", filled.message()));
      bytes = buffer.data();
    }
    const size_t pad = static_cast<size_t>(align_up(t.n_bytes, alignment) - t.n_bytes);
    int err = write_all(fd, bytes, t.n_bytes);
    for (size_t left = pad; err == 0 && left > 0; left -= std::min(left, sizeof zeros))
      err = write_all(fd, zeros, std::min(left, sizeof zeros));
    if (err != 0) return give_up(make_error(tmp, ": write failed: ", std::strerror(err)));
  }
  // fsync before the rename, so a crash never leaves a complete-looking but empty file.
  int err = ::fsync(fd) == 0 ? 0 : errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return make_error(tmp, ": cannot flush: ", std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    ::unlink(tmp.c_str());
    return make_error(path, ": cannot rename ", tmp, " to it: ", std::strerror(err));
  }
  return Status::ok();
}

}  // namespace engram::gguf
