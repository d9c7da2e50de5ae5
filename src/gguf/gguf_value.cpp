// Metadata values: type names and printing (for `engram info` and error messages).
#include <charconv>
#include <cstdio>

#include "gguf/gguf.h"

namespace engram::gguf {

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8: return "u8";
    case ValueType::INT8: return "i8";
    case ValueType::UINT16: return "u16";
    case ValueType::INT16: return "i16";
    case ValueType::UINT32: return "u32";
    case ValueType::INT32: return "i32";
    case ValueType::FLOAT32: return "f32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::UINT64: return "u64";
    case ValueType::INT64: return "i64";
    case ValueType::FLOAT64: return "f64";
  }
  return "unknown";
}

namespace {

bool is_integer_type(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::UINT16: case ValueType::INT16:
    case ValueType::UINT32: case ValueType::INT32: case ValueType::UINT64: case ValueType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_float_type(ValueType t) { return t == ValueType::FLOAT32 || t == ValueType::FLOAT64; }

// Shortest text that reads back to the same number; an f32 value prints as a
// float so 1e-5 stays "1e-05" rather than its widened double expansion.
std::string format_float(double v, ValueType t) {
  char buf[64];
  std::to_chars_result r = t == ValueType::FLOAT32 ? std::to_chars(buf, buf + sizeof buf, static_cast<float>(v))
                                                   : std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// A string in double quotes with control characters and quotes escaped, so
// tokens such as "\n" or "<0x0A>" print on one line.
std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

template <class T, class Format>
std::string format_array(const std::vector<T>& items, size_t max_items, Format format) {
  std::string out = "[";
  size_t shown = items.size() < max_items ? items.size() : max_items;
  for (size_t i = 0; i < shown; ++i) {
    if (i) out += ", ";
    out += format(items[i]);
  }
  if (shown < items.size()) out += (shown ? ", ... " : "... ") + std::to_string(items.size() - shown) + " more";
  return out + "]";
}

}  // namespace

bool Value::is_integer() const { return is_integer_type(type); }
bool Value::is_float() const { return is_float_type(type); }

size_t Value::array_size() const {
  if (!is_array()) return 0;
  return std::visit(
      [](const auto& d) -> size_t {
        using D = std::decay_t<decltype(d)>;
        if constexpr (requires { d.size(); } && !std::is_same_v<D, std::string>) return d.size();
        else return 0;
      },
      data);
}

std::string Value::to_string(size_t max_array_items) const {
  const ValueType t = is_array() ? array_type : type;
  auto int_text = [](auto v) { return std::to_string(v); };
  auto float_text = [t](double v) { return format_float(v, t); };
  auto bool_text = [](bool v) { return std::string(v ? "true" : "false"); };
  return std::visit(
      [&](const auto& d) -> std::string {
        using D = std::decay_t<decltype(d)>;
        if constexpr (std::is_same_v<D, uint64_t> || std::is_same_v<D, int64_t>) return int_text(d);
        else if constexpr (std::is_same_v<D, double>) return float_text(d);
        else if constexpr (std::is_same_v<D, bool>) return bool_text(d);
        else if constexpr (std::is_same_v<D, std::string>) return quote(d);
        else if constexpr (std::is_same_v<D, std::vector<uint64_t>> || std::is_same_v<D, std::vector<int64_t>>)
          return format_array(d, max_array_items, int_text);
        else if constexpr (std::is_same_v<D, std::vector<double>>) return format_array(d, max_array_items, float_text);
        else if constexpr (std::is_same_v<D, std::vector<bool>>) return format_array(d, max_array_items, bool_text);
        else return format_array(d, max_array_items, quote);
      },
      data);
}

}  // namespace engram::gguf
