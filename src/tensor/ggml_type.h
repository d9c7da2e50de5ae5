// Tensor element types, numbered exactly as in GGUF files (ggml_type).
//
// Quantized types store rows as a sequence of fixed-size blocks; a row of n
// elements (n a multiple of block_size) takes n / block_size * block_bytes
// bytes. The block layouts themselves live in quant/blocks.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace engram {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct TypeTraits {
  std::string_view name;  // as llama.cpp prints it: "f32", "q4_K", ...
  int64_t block_size;     // elements per block (1 for plain types)
  size_t block_bytes;     // bytes per block
  bool known;             // false for ids GGUF defines that engram cannot compute with
};

// Traits of a type id; unknown ids get known=false and an "unknown" name.
const TypeTraits& type_traits(GgmlType type);
bool is_valid_type_id(uint32_t id);
bool is_quantized(GgmlType type);

// Case-insensitive lookup by name ("q4_k", "Q8_0", "bf16").
std::optional<GgmlType> type_from_name(std::string_view name);

// Bytes of a row of n elements; nullopt when n is not a multiple of the block size.
std::optional<size_t> row_bytes(GgmlType type, int64_t n);

}  // namespace engram
