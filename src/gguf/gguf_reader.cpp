// GGUF reader: validates a whole file before exposing any of it.
//
// Every count read from the file is checked against the bytes that remain
// before anything is allocated, every size is computed with overflow checks,
// and every read goes through Parser::take, which refuses to step past the end.
#include <algorithm>
#include <cstring>
#include <limits>

#include "gguf/gguf.h"

namespace engram::gguf {
namespace {

constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kDefaultAlignment = 32;
// Smallest possible encodings, used to reject impossible counts up front.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims 0, type, offset

// Bytes one array element takes in the file; strings take at least their length field.
uint64_t element_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
    case ValueType::UINT16: case ValueType::INT16: return 2;
    case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
    case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
    case ValueType::STRING: return 8;
    case ValueType::ARRAY: return 0;
  }
  return 0;
}

bool is_known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // every supported host is little-endian, like the file
  return v;
}

std::string describe_type(const Value& v) {
  if (!v.is_array()) return std::string(value_type_name(v.type));
  return "array of " + std::string(value_type_name(v.array_type));
}

}  // namespace

// Reads one file into a File. Lives in engram::gguf so that File can befriend it.
class Parser {
 public:
  Parser(std::span<const uint8_t> bytes, const std::string& name, File& out) : bytes_(bytes), name_(name), out_(out) {}

  Status run() {
    ENGRAM_RETURN_IF_ERROR(read_header());
    ENGRAM_RETURN_IF_ERROR(read_metadata());
    ENGRAM_RETURN_IF_ERROR(read_alignment());
    ENGRAM_RETURN_IF_ERROR(read_tensor_infos());
    return check_tensor_layout();
  }

 private:
  std::span<const uint8_t> bytes_;
  const std::string& name_;
  File& out_;
  uint64_t pos_ = 0;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
  std::string where_;  // the part being read, for messages: "tensor info 3 ('blk.0.attn_q.weight')"

  template <class... Parts>
  Error fail(Parts&&... parts) const {
    return make_error(name_, ": ", std::forward<Parts>(parts)...);
  }

  uint64_t remaining() const { return bytes_.size() - pos_; }

  // Consumes n bytes, or reports where the file ends too early.
  Status take(uint64_t n, const uint8_t** p) {
    if (n > remaining()) {
      uint64_t end = pos_ + n < pos_ ? std::numeric_limits<uint64_t>::max() : pos_ + n;
      return fail("truncated: ", where_, " ends at byte ", std::to_string(end), " but the file has ",
                  std::to_string(bytes_.size()), " bytes");
    }
    *p = bytes_.data() + pos_;
    pos_ += n;
    return Status::ok();
  }

  template <class T>
  Status read(T* out) {
    const uint8_t* p = nullptr;
    ENGRAM_RETURN_IF_ERROR(take(sizeof(T), &p));
    *out = load_le<T>(p);
    return Status::ok();
  }

  Status read_string(std::string* out, std::string_view what) {
    uint64_t len = 0;
    ENGRAM_RETURN_IF_ERROR(read(&len));
    if (len > remaining())
      return fail(where_, ": ", what, " length ", std::to_string(len), " is larger than the ",
                  std::to_string(remaining()), " bytes left in the file");
    const uint8_t* p = nullptr;
    ENGRAM_RETURN_IF_ERROR(take(len, &p));
    out->assign(reinterpret_cast<const char*>(p), len);
    return Status::ok();
  }

  Status read_header() {
    where_ = "header";
    const uint8_t* magic = nullptr;
    ENGRAM_RETURN_IF_ERROR(take(4, &magic));
    if (std::memcmp(magic, "GGUF", 4) != 0) {
      std::string shown;
      for (int i = 0; i < 4; ++i) shown += (magic[i] >= 0x20 && magic[i] < 0x7f) ? static_cast<char>(magic[i]) : '?';
      return fail("bad magic '", shown, "': not a GGUF file");
    }
    uint32_t version = 0;
    ENGRAM_RETURN_IF_ERROR(read(&version));
    // A big-endian file stores the version byte-swapped: 3 reads as 0x03000000.
    if ((version & 0xffff) == 0 && version != 0)
      return fail("big-endian GGUF files are not supported (version field ", std::to_string(version), ")");
    if (version == 1) return fail("GGUF version 1 is not supported (only versions 2 and 3 are)");
    if (version != 2 && version != 3)
      return fail("unsupported GGUF version ", std::to_string(version), " (only versions 2 and 3 are)");
    out_.version_ = version;
    ENGRAM_RETURN_IF_ERROR(read(&n_tensors_));
    ENGRAM_RETURN_IF_ERROR(read(&n_kv_));
    if (n_kv_ > remaining() / kMinKvBytes)
      return fail("n_kv = ", std::to_string(n_kv_), " is impossible: the ", std::to_string(remaining()),
                  " bytes after the header hold at most ", std::to_string(remaining() / kMinKvBytes), " key/value pairs");
    if (n_tensors_ > remaining() / kMinTensorInfoBytes)
      return fail("n_tensors = ", std::to_string(n_tensors_), " is impossible: the ", std::to_string(remaining()),
                  " bytes after the header hold at most ", std::to_string(remaining() / kMinTensorInfoBytes),
                  " tensor infos");
    return Status::ok();
  }

  Status read_metadata() {
    out_.kv_.reserve(n_kv_);
    for (uint64_t i = 0; i < n_kv_; ++i) {
      where_ = "metadata key " + std::to_string(i);
      std::string key;
      ENGRAM_RETURN_IF_ERROR(read_string(&key, "key"));
      where_ += " ('" + key + "')";
      if (out_.kv_index_.count(key)) return fail("duplicate metadata key '", key, "' (", where_, ")");
      uint32_t type = 0;
      ENGRAM_RETURN_IF_ERROR(read(&type));
      if (!is_known_value_type(type)) return fail(where_, ": unknown value type ", std::to_string(type));
      Value value;
      ENGRAM_RETURN_IF_ERROR(read_value(static_cast<ValueType>(type), &value));
      out_.kv_index_.emplace(key, out_.kv_.size());
      out_.kv_.emplace_back(std::move(key), std::move(value));
    }
    return Status::ok();
  }

  Status read_value(ValueType type, Value* v) {
    v->type = type;
    switch (type) {
      case ValueType::UINT8: return read_scalar<uint8_t, uint64_t>(v);
      case ValueType::INT8: return read_scalar<int8_t, int64_t>(v);
      case ValueType::UINT16: return read_scalar<uint16_t, uint64_t>(v);
      case ValueType::INT16: return read_scalar<int16_t, int64_t>(v);
      case ValueType::UINT32: return read_scalar<uint32_t, uint64_t>(v);
      case ValueType::INT32: return read_scalar<int32_t, int64_t>(v);
      case ValueType::UINT64: return read_scalar<uint64_t, uint64_t>(v);
      case ValueType::INT64: return read_scalar<int64_t, int64_t>(v);
      case ValueType::FLOAT32: return read_scalar<float, double>(v);
      case ValueType::FLOAT64: return read_scalar<double, double>(v);
      case ValueType::BOOL: {
        bool b = false;
        ENGRAM_RETURN_IF_ERROR(read_bool(&b));
        v->data = b;
        return Status::ok();
      }
      case ValueType::STRING: {
        std::string s;
        ENGRAM_RETURN_IF_ERROR(read_string(&s, "string"));
        v->data = std::move(s);
        return Status::ok();
      }
      case ValueType::ARRAY: return read_array(v);
    }
    return fail(where_, ": unknown value type ", std::to_string(static_cast<uint32_t>(type)));
  }

  template <class Raw, class Wide>
  Status read_scalar(Value* v) {
    Raw raw{};
    ENGRAM_RETURN_IF_ERROR(read(&raw));
    v->data = static_cast<Wide>(raw);
    return Status::ok();
  }

  Status read_bool(bool* out) {
    uint8_t raw = 0;
    ENGRAM_RETURN_IF_ERROR(read(&raw));
    if (raw > 1) return fail(where_, ": bool value ", std::to_string(raw), " is neither 0 nor 1");
    *out = raw == 1;
    return Status::ok();
  }

  Status read_array(Value* v) {
    uint32_t elem = 0;
    ENGRAM_RETURN_IF_ERROR(read(&elem));
    if (!is_known_value_type(elem)) return fail(where_, ": unknown array element type ", std::to_string(elem));
    const auto type = static_cast<ValueType>(elem);
    if (type == ValueType::ARRAY) return fail(where_, ": nested arrays (array of array) are not supported");
    uint64_t count = 0;
    ENGRAM_RETURN_IF_ERROR(read(&count));
    if (count > remaining() / element_size(type))
      return fail(where_, ": array of ", std::to_string(count), " ", value_type_name(type), " needs at least ",
                  count > std::numeric_limits<uint64_t>::max() / element_size(type)
                      ? std::string("more than 2^64")
                      : std::to_string(count * element_size(type)),
                  " bytes but only ", std::to_string(remaining()), " are left in the file");
    v->array_type = type;
    switch (type) {
      case ValueType::UINT8: return read_elements<uint8_t, uint64_t>(count, v);
      case ValueType::INT8: return read_elements<int8_t, int64_t>(count, v);
      case ValueType::UINT16: return read_elements<uint16_t, uint64_t>(count, v);
      case ValueType::INT16: return read_elements<int16_t, int64_t>(count, v);
      case ValueType::UINT32: return read_elements<uint32_t, uint64_t>(count, v);
      case ValueType::INT32: return read_elements<int32_t, int64_t>(count, v);
      case ValueType::UINT64: return read_elements<uint64_t, uint64_t>(count, v);
      case ValueType::INT64: return read_elements<int64_t, int64_t>(count, v);
      case ValueType::FLOAT32: return read_elements<float, double>(count, v);
      case ValueType::FLOAT64: return read_elements<double, double>(count, v);
      case ValueType::BOOL: {
        std::vector<bool> items(count);
        for (uint64_t i = 0; i < count; ++i) {
          bool b = false;
          ENGRAM_RETURN_IF_ERROR(read_bool(&b));
          items[i] = b;
        }
        v->data = std::move(items);
        return Status::ok();
      }
      case ValueType::STRING: {
        std::vector<std::string> items(count);
        for (uint64_t i = 0; i < count; ++i) ENGRAM_RETURN_IF_ERROR(read_string(&items[i], "string"));
        v->data = std::move(items);
        return Status::ok();
      }
      case ValueType::ARRAY: break;
    }
    return fail(where_, ": unknown array element type ", std::to_string(elem));
  }

  // Fixed-size elements: the count was checked against the bytes left, so one take covers them all.
  template <class Raw, class Wide>
  Status read_elements(uint64_t count, Value* v) {
    const uint8_t* p = nullptr;
    ENGRAM_RETURN_IF_ERROR(take(count * sizeof(Raw), &p));
    std::vector<Wide> items(count);
    for (uint64_t i = 0; i < count; ++i) items[i] = static_cast<Wide>(load_le<Raw>(p + i * sizeof(Raw)));
    v->data = std::move(items);
    return Status::ok();
  }

  Status read_alignment() {
    out_.alignment_ = kDefaultAlignment;
    const Value* v = out_.find("general.alignment");
    if (!v) return Status::ok();
    if (v->type != ValueType::UINT32)
      return fail("general.alignment has type ", describe_type(*v), " but must be u32");
    uint64_t a = std::get<uint64_t>(v->data);
    if (!is_power_of_two(a)) return fail("general.alignment = ", std::to_string(a), " is not a nonzero power of two");
    out_.alignment_ = a;
    return Status::ok();
  }

  Status read_tensor_infos() {
    out_.tensors_.reserve(n_tensors_);
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      where_ = "tensor info " + std::to_string(i);
      TensorInfo t;
      ENGRAM_RETURN_IF_ERROR(read_string(&t.name, "name"));
      where_ += " ('" + t.name + "')";
      if (out_.tensor_index_.count(t.name)) return fail("duplicate tensor name '", t.name, "' (", where_, ")");
      ENGRAM_RETURN_IF_ERROR(read_tensor_shape(&t));
      uint32_t type = 0;
      ENGRAM_RETURN_IF_ERROR(read(&type));
      if (!is_valid_type_id(type)) return fail(where_, ": unknown tensor type id ", std::to_string(type));
      t.type = static_cast<GgmlType>(type);
      ENGRAM_RETURN_IF_ERROR(read(&t.offset));
      ENGRAM_RETURN_IF_ERROR(compute_size(&t));
      out_.tensor_index_.emplace(t.name, out_.tensors_.size());
      out_.tensors_.push_back(std::move(t));
    }
    return Status::ok();
  }

  Status read_tensor_shape(TensorInfo* t) {
    uint32_t n_dims = 0;
    ENGRAM_RETURN_IF_ERROR(read(&n_dims));
    if (n_dims > kMaxDims)
      return fail(where_, ": ", std::to_string(n_dims), " dimensions (at most ", std::to_string(kMaxDims), " supported)");
    t->n_dims = static_cast<int>(n_dims);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t raw = 0;
      ENGRAM_RETURN_IF_ERROR(read(&raw));
      const auto ne = static_cast<int64_t>(raw);
      if (ne <= 0) return fail(where_, ": ne[", std::to_string(d), "] = ", std::to_string(ne), " must be positive");
      if (n_elements > std::numeric_limits<int64_t>::max() / ne)
        return fail(where_, ": element count overflows (ne[", std::to_string(d), "] = ", std::to_string(ne), ")");
      n_elements *= ne;
      t->ne[d] = ne;
    }
    return Status::ok();
  }

  Status compute_size(TensorInfo* t) {
    const TypeTraits& traits = type_traits(t->type);
    if (t->ne[0] % traits.block_size != 0)
      return fail(where_, ": ne[0] = ", std::to_string(t->ne[0]), " is not a multiple of the ", std::string(traits.name),
                  " block size ", std::to_string(traits.block_size));
    // The element count fits in int64, and so does the row count; the byte
    // size of a row (up to 8 bytes per element) or of the whole tensor may not.
    const uint64_t blocks = static_cast<uint64_t>(t->ne[0] / traits.block_size);
    const uint64_t rows = static_cast<uint64_t>(t->ne[1] * t->ne[2] * t->ne[3]);
    constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
    if (blocks > kMax / traits.block_bytes || blocks * traits.block_bytes > kMax / rows)
      return fail(where_, ": byte size overflows");
    const uint64_t row = blocks * traits.block_bytes;
    t->n_bytes = row * rows;
    if (t->offset % out_.alignment_ != 0)
      return fail(where_, ": offset ", std::to_string(t->offset), " is not a multiple of the alignment ",
                  std::to_string(out_.alignment_));
    return Status::ok();
  }

  // The data section starts at the next aligned byte; every tensor must lie
  // inside the file, and no two may share bytes.
  Status check_tensor_layout() {
    const uint64_t a = out_.alignment_;
    const uint64_t data_offset = pos_ + (a - pos_ % a) % a;  // pos_ <= file size, so no overflow
    out_.data_offset_ = data_offset;
    if (out_.tensors_.empty()) return Status::ok();
    const uint64_t data_size = data_offset <= bytes_.size() ? bytes_.size() - data_offset : 0;
    for (size_t i = 0; i < out_.tensors_.size(); ++i) {
      const TensorInfo& t = out_.tensors_[i];
      if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
        const bool overflow = t.n_bytes > std::numeric_limits<uint64_t>::max() - data_offset - t.offset ||
                              t.offset > std::numeric_limits<uint64_t>::max() - data_offset;
        return fail("truncated: tensor ", std::to_string(i), " ('", t.name, "') data ",
                    overflow ? std::string("ends beyond 2^64")
                             : "at offset " + std::to_string(t.offset) + " ends at byte " +
                                   std::to_string(data_offset + t.offset + t.n_bytes),
                    " but the file has ", std::to_string(bytes_.size()), " bytes");
      }
    }
    std::vector<size_t> order(out_.tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t x, size_t y) { return out_.tensors_[x].offset < out_.tensors_[y].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const TensorInfo& prev = out_.tensors_[order[k - 1]];
      const TensorInfo& next = out_.tensors_[order[k]];
      if (prev.offset + prev.n_bytes > next.offset)
        return fail("tensors '", prev.name, "' (bytes ", std::to_string(prev.offset), "..",
                    std::to_string(prev.offset + prev.n_bytes), ") and '", next.name, "' (from byte ",
                    std::to_string(next.offset), ") overlap");
    }
    return Status::ok();
  }
};

Expected<File> File::open(const std::string& path, LoadMode mode) {
  Expected<MappedFile> mapped = MappedFile::open(path, mode);
  if (!mapped) return mapped.error();
  auto mapping = std::make_shared<MappedFile>(std::move(mapped.value()));
  Expected<File> file = parse(mapping->bytes(), path);
  if (!file) return file.error();
  file->mapping_ = std::move(mapping);
  return file;
}

Expected<File> File::parse(std::span<const uint8_t> bytes, std::string name) {
  File file;
  file.name_ = std::move(name);
  file.bytes_ = bytes;
  Status s = Parser(bytes, file.name_, file).run();
  if (!s) return Error{s.message()};
  return file;
}

const Value* File::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

TensorView File::view(const TensorInfo& t) const {
  TensorView v;
  v.type = t.type;
  v.ne = t.ne;
  v.n_dims = t.n_dims;
  v.data = tensor_data(t);
  v.name = t.name;
  return v;
}

// ---- typed getters ----

namespace {

Error missing_key(const std::string& file, std::string_view key) {
  return make_error(file, ": metadata key '", key, "' not found");
}

Error wrong_type(const std::string& file, std::string_view key, const Value& v, std::string_view wanted) {
  return make_error(file, ": metadata key '", key, "' has type ", describe_type(v), ", expected ", wanted);
}

// An unsigned value as int64, or nullopt when it is too large.
std::optional<int64_t> to_int64(uint64_t u) {
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(u);
}

bool is_integer_array(const Value& v) {
  return v.is_array() && (std::holds_alternative<std::vector<uint64_t>>(v.data) ||
                          std::holds_alternative<std::vector<int64_t>>(v.data));
}

}  // namespace

Expected<int64_t> File::get_int(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (!v->is_integer()) return wrong_type(name_, key, *v, "an integer");
  std::optional<int64_t> i = std::holds_alternative<uint64_t>(v->data) ? to_int64(std::get<uint64_t>(v->data))
                                                                        : std::get<int64_t>(v->data);
  if (!i) return make_error(name_, ": metadata key '", key, "' value ", v->to_string(), " does not fit in i64");
  return *i;
}

Expected<uint32_t> File::get_u32(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (!v->is_integer()) return wrong_type(name_, key, *v, "an integer (u32)");
  constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max();
  const auto* u = std::get_if<uint64_t>(&v->data);
  const auto* i = std::get_if<int64_t>(&v->data);
  const bool fits = u ? *u <= kMax : (*i >= 0 && static_cast<uint64_t>(*i) <= kMax);
  if (!fits) return make_error(name_, ": metadata key '", key, "' value ", v->to_string(), " does not fit in u32");
  return static_cast<uint32_t>(u ? *u : static_cast<uint64_t>(*i));
}

Expected<double> File::get_float(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (const auto* d = std::get_if<double>(&v->data)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&v->data); u && v->is_integer()) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&v->data); i && v->is_integer()) return static_cast<double>(*i);
  return wrong_type(name_, key, *v, "a number");
}

Expected<bool> File::get_bool(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (v->type != ValueType::BOOL) return wrong_type(name_, key, *v, "bool");
  return std::get<bool>(v->data);
}

Expected<std::string> File::get_string(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (v->type != ValueType::STRING) return wrong_type(name_, key, *v, "string");
  return std::get<std::string>(v->data);
}

Expected<std::vector<std::string>> File::get_string_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (!v->is_array() || v->array_type != ValueType::STRING) return wrong_type(name_, key, *v, "array of string");
  return std::get<std::vector<std::string>>(v->data);
}

Expected<std::vector<double>> File::get_float_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (v->is_array()) {
    if (const auto* d = std::get_if<std::vector<double>>(&v->data)) return *d;
    if (const auto* u = std::get_if<std::vector<uint64_t>>(&v->data))
      return std::vector<double>(u->begin(), u->end());
    if (const auto* i = std::get_if<std::vector<int64_t>>(&v->data))
      return std::vector<double>(i->begin(), i->end());
  }
  return wrong_type(name_, key, *v, "array of numbers");
}

Expected<std::vector<int64_t>> File::get_int_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing_key(name_, key);
  if (!is_integer_array(*v)) return wrong_type(name_, key, *v, "array of integers");
  if (const auto* i = std::get_if<std::vector<int64_t>>(&v->data)) return *i;
  const auto& u = std::get<std::vector<uint64_t>>(v->data);
  std::vector<int64_t> out(u.size());
  for (size_t k = 0; k < u.size(); ++k) {
    std::optional<int64_t> x = to_int64(u[k]);
    if (!x)
      return make_error(name_, ": metadata key '", key, "' element ", std::to_string(k), " = ", std::to_string(u[k]),
                        " does not fit in i64");
    out[k] = *x;
  }
  return out;
}

Expected<int64_t> File::get_int_or(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : Expected<int64_t>(fallback);
}

Expected<double> File::get_float_or(std::string_view key, double fallback) const {
  return has(key) ? get_float(key) : Expected<double>(fallback);
}

Expected<bool> File::get_bool_or(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : Expected<bool>(fallback);
}

}  // namespace engram::gguf
