// Dequantization and quantization of rows, with llama.cpp's exact block
// layouts (see blocks.h). Dequantization is bit-exact with ggml's reference
// (dequantize_row_*); quantization follows ggml's reference quantizers
// (quantize_row_*_ref), so a file we quantize matches llama-quantize's
// output without an importance matrix.
#pragma once

#include <cstdint>
#include <span>
#include <string>

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

// Re-encodes every 2-D+ weight of a GGUF model to `type` (norms, biases and
// 1-D tensors stay F32; tensors whose row length is not a multiple of the
// block size keep their type) and writes OUT. Returns a summary line.
Expected<std::string> quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type, int n_threads);

}  // namespace engram
