// Dequantization and quantization of rows, with llama.cpp's exact block
// layouts (see blocks.h). Dequantization is bit-exact with ggml's reference
// (dequantize_row_*); quantization follows ggml's reference quantizers
// (quantize_row_*_ref), so a file we quantize matches llama-quantize's
// output without an importance matrix.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"
#include "tensor/ggml_type.h"
#include "util/status.h"

namespace engram {

// IEEE half and bfloat16 conversions, as ggml rounds them (round to nearest even).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

// True for the types dequantize_row handles.
bool can_dequantize(GgmlType type);
// True for the types quantize_row handles.
bool can_quantize(GgmlType type);

// dst[0..n) = values of the row at src. n must be a multiple of the block size
// and the type must satisfy can_dequantize (checked with assert).
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// Writes row_bytes(type, n) bytes to dst. Same preconditions with can_quantize.
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n);

// What `engram quantize` produces: a main tensor type plus llama.cpp's rules
// for the tensors that get more bits (see quantize_model.cpp).
struct QuantizeTarget {
  std::string name;     // canonical name: "q8_0", "q4_k_m", "f16", ...
  GgmlType type;        // type of most weights
  uint32_t file_type;   // llama.cpp's LLAMA_FTYPE_* written to general.file_type
};

// Accepts (case-insensitive) q8_0, q4_0, q4_1, q5_0, q5_1, q4_k (= q4_k_m),
// q4_k_m, q5_k (= q5_k_m), q5_k_m, q6_k, f16, bf16.
Expected<QuantizeTarget> parse_quantize_target(std::string_view name);

// Re-encodes the weights of a GGUF model as llama-quantize does without an
// importance matrix and writes OUT: 2-D+ tensors named *weight (not norms,
// not expert gates) get the target's type or the type llama.cpp's mix picks
// (output.weight in Q6_K, some attn_v / ffn_down in Q6_K for *_K_M); 1-D
// tensors and norms keep their type. Rows are quantized on n_threads threads
// (<= 0: all). Returns a summary line (tensors, bytes in and out).
Expected<std::string> quantize_model(const std::string& in_path, const std::string& out_path,
                                     const QuantizeTarget& target, int n_threads);
// What the type choice of quantize_model needs to know about a model besides
// its tensors (the values of these GGUF keys).
struct QuantizeModelInfo {
  std::string arch;   // general.architecture
  int n_layer = 0;    // {arch}.block_count
  int n_expert = 0;   // {arch}.expert_count (0: not a mixture of experts)
  int n_head = 0;     // {arch}.attention.head_count
  int n_head_kv = 0;  // {arch}.attention.head_count_kv
};

// The type quantize_model gives each of `tensors` (a whole model's tensors,
// in any order; their `type` is the source type) for `target`: the result is
// in the order of `tensors`. For writers that build a model tensor by tensor
// (engram gen-model) and must match what quantizing an F32 file would give.
std::vector<GgmlType> quantized_tensor_types(const QuantizeTarget& target, const QuantizeModelInfo& model,
                                             std::span<const gguf::TensorInfo> tensors);

// Same, with a plain type (Q4_K means Q4_K_M, Q5_K means Q5_K_M).
Expected<std::string> quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type, int n_threads);

}  // namespace engram
