// Compute kernels. Each is written once with Highway and compiled for every
// SIMD target (SSE4, AVX2, AVX-512, NEON, SVE, scalar ...); the best one the
// CPU supports is picked at run time (HWY_DYNAMIC_DISPATCH). The plain scalar
// reference of every kernel lives in kernels_ref.h; tests/kernels compares
// each optimised kernel against it on every target the machine supports.
//
// Vectors are float32 unless the name says otherwise. Nothing here allocates
// on the hot path or holds state; a ThreadPool is passed where work is split.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tensor/tensor.h"
#include "util/status.h"
#include "util/thread_pool.h"

namespace engram::kernels {

float dot(const float* a, const float* b, size_t n);
float dot_f16(const uint16_t* a, const float* b, size_t n);   // a: IEEE half
float dot_bf16(const uint16_t* a, const float* b, size_t n);  // a: bfloat16
void axpy(float alpha, const float* x, float* y, size_t n);   // y += alpha * x
void scale(float* x, float alpha, size_t n);                  // x *= alpha
void add(const float* a, const float* b, float* out, size_t n);
void mul(const float* a, const float* b, float* out, size_t n);
// out = x / sqrt(mean(x^2) + eps) * w  (w may be null: no weight)
void rms_norm(const float* x, const float* w, float* out, size_t n, float eps);
// x = softmax(x), numerically stable (max subtracted)
void softmax(float* x, size_t n);
// out = silu(gate) * up, silu(v) = v / (1 + exp(-v))   (SwiGLU)
void silu_mul(const float* gate, const float* up, float* out, size_t n);
float max_value(const float* x, size_t n);
// dst[0..n) = src as float32 (src: IEEE half bits; exact).
void f16_to_f32(const uint16_t* src, float* dst, size_t n);
// dst[0..n) = src rounded to IEEE half bits, to nearest with ties to even
// (as quant's fp32_to_fp16) for finite values within the half range.
void f32_to_f16(const float* src, uint16_t* dst, size_t n);
// dst[0..n) = src rounded to bfloat16 precision, kept as float32 (as quant's
// fp32_to_bf16 then bf16_to_fp32: nearest, ties to even). May run in place.
void round_to_bf16(const float* src, float* dst, size_t n);
// dst[0..n) = src rounded to bfloat16 bits (as quant's fp32_to_bf16).
void f32_to_bf16(const float* src, uint16_t* dst, size_t n);

// Largest scaled dot product of q[0..k_dim) with n_rows keys stored
// column-major as int8 (Engram memory's key index):
//   max_r row_scale[r] * sum_d q[d] * cols[d * n_rows + r].
// -infinity when n_rows is 0.
float max_dot_i8_cols(const int8_t* cols, const float* row_scale, size_t n_rows, size_t k_dim, const float* q);

// Attention over many keys at once (engram memory's online softmax):
// out[r] = scale * sum_d q[d] * kT[d * col_stride + r] for r < n_rows (keys
// stored column-major, col_stride >= n_rows).
void dot_cols(const float* kT, size_t col_stride, size_t n_rows, size_t dim, const float* q, float scale, float* out);
// x[i] = exp(x[i] - shift) (0 for -infinity); returns the sum.
float exp_shift_sum(float* x, size_t n, float shift);
// acc[d] += sum_r w[r] * v[r * v_stride + d] for d < dim, r < n_rows.
void add_weighted_rows(const float* w, const float* v, size_t v_stride, size_t n_rows, size_t dim, float* acc);

// Dot product of one stored row of `type` (n elements) with a float vector.
float dot_row(GgmlType type, const void* row, const float* x, int64_t n);

// Type matmul quantizes the activations to for weights of `type` with rows
// of n elements, as llama.cpp does: Q8_0 for Q8_0 and Q4_0, Q8_K for Q4_K and
// Q6_K; F32 (not quantized) for every other type. (matmul still rounds the
// activations of BF16 weights to bfloat16 precision, as llama.cpp does, so
// that bf16 x bf16 products can run on the CPU's bf16 dot instructions.)
GgmlType activation_type(GgmlType type, int64_t n);

// dst = x[0..n) quantized to activation_type(type, n) (which must not be
// F32): row_bytes(activation_type(type, n), n) bytes. Q8_0 as the quant
// layer's quantize_row; Q8_K as ggml's quantize_row_q8_K_ref.
void quantize_activations(GgmlType type, const float* x, void* dst, int64_t n);

// Dot product of one row of `type` (n elements) with activations quantized by
// quantize_activations: per block, an exact integer sum times the block
// scales. Requires activation_type(type, n) != F32.
float dot_row_q8(GgmlType type, const void* row, const void* x_q8, int64_t n);

// y[t, o] = sum_i W[o, i] * x[t, i]  for t < n_tokens, o < W.ne[1].
// W: ne = {n_in, n_out}, any type with can_dequantize(). x: [n_tokens, n_in].
// y: [n_tokens, n_out]. Rows of W are split across the pool. Where
// activation_type(W.type, n_in) is not F32, x is first quantized per token;
// for BF16 weights, x is first rounded to bfloat16 (round_to_bf16).
void matmul(const TensorView& W, const float* x, float* y, int n_tokens, ThreadPool& pool);

// out[0..ne[0]) = row i of W, dequantized (embedding lookup).
void get_row(const TensorView& W, int64_t i, float* out);

// Name of the SIMD target chosen at run time, e.g. "AVX2" (for logs and bench).
const char* active_target();
// Caps run-time dispatch at the SIMD target `name` (case-insensitive, as
// active_target names it, e.g. "AVX2"): every kernel then runs the best path
// no better than it. This measures a CPU's lesser paths (an AVX-512 machine
// running what an AVX2 one would) and steps around a faulty kernel. Empty:
// no cap. Process-wide, as Highway's dispatch is. The error lists the
// targets this binary can use on this CPU.
Status limit_targets(std::string_view name);
// Whether the Q8_0 / Q4_0 dot products use Arm's optional dot product
// instruction (sdot, Armv8.2 dotprod) on this CPU; false elsewhere.
bool uses_arm_dotprod();

}  // namespace engram::kernels
