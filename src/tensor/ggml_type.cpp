#include "tensor/ggml_type.h"

#include <array>
#include <cctype>

namespace engram {
namespace {

constexpr TypeTraits kUnknown{"unknown", 1, 0, false};

struct Entry {
  GgmlType type;
  TypeTraits traits;
};

// Block sizes and byte counts follow ggml's type table.
constexpr std::array<Entry, 20> kTypes{{
    {GgmlType::F32, {"f32", 1, 4, true}},
    {GgmlType::F16, {"f16", 1, 2, true}},
    {GgmlType::Q4_0, {"q4_0", 32, 18, true}},
    {GgmlType::Q4_1, {"q4_1", 32, 20, true}},
    {GgmlType::Q5_0, {"q5_0", 32, 22, true}},
    {GgmlType::Q5_1, {"q5_1", 32, 24, true}},
    {GgmlType::Q8_0, {"q8_0", 32, 34, true}},
    {GgmlType::Q8_1, {"q8_1", 32, 36, false}},
    {GgmlType::Q2_K, {"q2_K", 256, 84, false}},
    {GgmlType::Q3_K, {"q3_K", 256, 110, false}},
    {GgmlType::Q4_K, {"q4_K", 256, 144, true}},
    {GgmlType::Q5_K, {"q5_K", 256, 176, true}},
    {GgmlType::Q6_K, {"q6_K", 256, 210, true}},
    {GgmlType::Q8_K, {"q8_K", 256, 292, false}},
    {GgmlType::I8, {"i8", 1, 1, false}},
    {GgmlType::I16, {"i16", 1, 2, false}},
    {GgmlType::I32, {"i32", 1, 4, false}},
    {GgmlType::I64, {"i64", 1, 8, false}},
    {GgmlType::F64, {"f64", 1, 8, false}},
    {GgmlType::BF16, {"bf16", 1, 2, true}},
}};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

}  // namespace

const TypeTraits& type_traits(GgmlType type) {
  for (const auto& e : kTypes)
    if (e.type == type) return e.traits;
  return kUnknown;
}

bool is_valid_type_id(uint32_t id) {
  for (const auto& e : kTypes)
    if (static_cast<uint32_t>(e.type) == id) return true;
  return false;
}

bool is_quantized(GgmlType type) { return type_traits(type).block_size > 1; }

std::optional<GgmlType> type_from_name(std::string_view name) {
  for (const auto& e : kTypes)
    if (iequals(e.traits.name, name)) return e.type;
  return std::nullopt;
}

std::optional<size_t> row_bytes(GgmlType type, int64_t n) {
  const TypeTraits& t = type_traits(type);
  if (t.block_bytes == 0 || n < 0 || n % t.block_size != 0) return std::nullopt;
  return static_cast<size_t>(n / t.block_size) * t.block_bytes;
}

}  // namespace engram
