// GGUF v2/v3 files: a memory-mapped reader and a writer.
//
// Layout (all little-endian):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | n_dims x u64 ne | u32 type | u64 offset }
//   padding to general.alignment (default 32) | tensor data
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
//
// The reader validates everything before exposing it: a truncated or corrupted
// file yields an Error naming the file and the problem, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tensor/tensor.h"
#include "util/mapped_file.h"
#include "util/status.h"

namespace engram::gguf {

enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view value_type_name(ValueType t);

// One metadata value. Scalars are widened into the matching variant member;
// arrays keep their element type and a vector of scalars or strings.
struct Value {
  ValueType type = ValueType::UINT8;
  ValueType array_type = ValueType::UINT8;  // element type when type == ARRAY
  std::variant<uint64_t, int64_t, double, bool, std::string,
               std::vector<uint64_t>, std::vector<int64_t>, std::vector<double>,
               std::vector<bool>, std::vector<std::string>> data;

  bool is_integer() const;  // any of the 8 integer scalar types
  bool is_float() const;
  bool is_array() const { return type == ValueType::ARRAY; }
  size_t array_size() const;
  std::string to_string(size_t max_array_items = 8) const;  // for `engram info`
};

struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  int n_dims = 0;
  std::array<int64_t, 4> ne{1, 1, 1, 1};
  uint64_t offset = 0;  // relative to the start of the data section
  uint64_t n_bytes = 0;
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class File {
 public:
  // Maps (or copies, see LoadMode) and validates a file. Errors name the path and the problem.
  static Expected<File> open(const std::string& path, LoadMode mode = LoadMode::kMap);
  // Parses bytes already in memory (the fuzzer, tests). `bytes` must outlive the File.
  static Expected<File> parse(std::span<const uint8_t> bytes, std::string name = "<memory>");

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return name_; }
  size_t file_size() const { return bytes_.size(); }
  uint64_t data_offset() const { return data_offset_; }
  // How open() brought the bytes in: kMap or kCopy (kMap when parsed from memory).
  LoadMode load_mode() const { return mapping_ ? mapping_->mode() : LoadMode::kMap; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed getters. A missing key or a value of the wrong kind is an Error
  // naming the key, the type found and the type wanted. Integer getters accept
  // any integer type whose value fits; get_float accepts floats and integers.
  Expected<int64_t> get_int(std::string_view key) const;
  Expected<uint32_t> get_u32(std::string_view key) const;
  Expected<double> get_float(std::string_view key) const;
  Expected<bool> get_bool(std::string_view key) const;
  Expected<std::string> get_string(std::string_view key) const;
  Expected<std::vector<std::string>> get_string_array(std::string_view key) const;
  Expected<std::vector<double>> get_float_array(std::string_view key) const;
  Expected<std::vector<int64_t>> get_int_array(std::string_view key) const;
  // With a default for optional keys; still an Error if present with the wrong kind.
  Expected<int64_t> get_int_or(std::string_view key, int64_t fallback) const;
  Expected<double> get_float_or(std::string_view key, double fallback) const;
  Expected<bool> get_bool_or(std::string_view key, bool fallback) const;

  // Tensors, in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  const uint8_t* tensor_data(const TensorInfo& t) const { return bytes_.data() + data_offset_ + t.offset; }
  TensorView view(const TensorInfo& t) const;

 private:
  std::shared_ptr<MappedFile> mapping_;  // null when parsed from memory
  std::span<const uint8_t> bytes_;
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;

  friend class Parser;
};

// Builds a GGUF v3 file in memory and writes it. Used by convert-llama2c,
// quantize, the engram model exporter and tests.
class Writer {
 public:
  void set(std::string key, Value value);  // replaces an existing key, keeps order
  void set_u32(std::string key, uint32_t v);
  void set_i32(std::string key, int32_t v);
  void set_u64(std::string key, uint64_t v);
  void set_f32(std::string key, float v);
  void set_bool(std::string key, bool v);
  void set_string(std::string key, std::string v);
  void set_string_array(std::string key, std::vector<std::string> v);
  void set_f32_array(std::string key, const std::vector<float>& v);
  void set_i32_array(std::string key, const std::vector<int32_t>& v);
  // Copies every metadata key of `src` (for quantize).
  void copy_metadata(const File& src);

  // `data` must hold exactly row_bytes(type, ne[0]) * rows bytes.
  Status add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, std::vector<uint8_t> data);
  Status add_tensor_f32(std::string name, std::vector<int64_t> ne, std::span<const float> data);
  // A tensor whose bytes are produced while the file is written: `fill` is
  // called once, in tensor order, with a buffer of exactly row_bytes(type,
  // ne[0]) * rows bytes. write() then holds one tensor at a time, so a model
  // larger than memory can be written (engram gen-model). An error from
  // `fill` fails write(); serialize() leaves that tensor's bytes zero.
  using TensorFill = std::function<Status(std::span<uint8_t> out)>;
  Status add_tensor_streamed(std::string name, GgmlType type, std::vector<int64_t> ne, TensorFill fill);

  std::vector<uint8_t> serialize() const;
  Status write(const std::string& path) const;  // writes to path.tmp, then renames

  uint64_t alignment = 32;

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  struct PendingTensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::vector<uint8_t> data;
    uint64_t n_bytes = 0;
    TensorFill fill;  // set for streamed tensors (data stays empty)
  };
  std::vector<PendingTensor> tensors_;
  // Checks a new tensor's name, type and shape; its size in bytes.
  Expected<uint64_t> check_new_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne) const;
  // Everything before the data section (padded), with the alignment used.
  std::vector<uint8_t> header(uint64_t align) const;
};

}  // namespace engram::gguf
