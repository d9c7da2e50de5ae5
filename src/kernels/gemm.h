// Cache-blocked matrix multiplication for many tokens at once (prompt
// processing). kernels::matmul routes here when n_tokens >= kGemmMinTokens
// and gemm_supports(W.type, n_in).
//
// Where the per-row path reads every activation row once per weight row, a
// GEMM micro-kernel computes a tile of R weight rows x T tokens together with
// the R*T accumulators in registers, so each weight block loaded is used for
// T tokens and each activation block for R rows. Output rows are split across
// the pool in panels; a panel's weights stay in L1/L2 while every token tile
// streams past them.
//
// Results are those of the per-row path up to float rounding: quantized
// weights use the same activations (quantize_activations) and the same exact
// integer block sums, scaled and summed in float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"
#include "util/thread_pool.h"

namespace engram::kernels {

// Fewest tokens for which matmul uses gemm: below this the tiles are mostly
// empty and the per-row path is as fast.
constexpr int kGemmMinTokens = 8;

// Whether the dispatched kernels multiply bf16 by bf16 with the CPU's
// vdpbf16ps (AVX3_DL on a CPU with AVX512_BF16): gemm's BF16 tiles and
// matmul's one-token BF16 product.
bool bf16_dot_available();

// Whether gemm handles weights of `type` with rows of n_in elements: F32, F16
// and BF16 always; Q8_0, Q4_0, Q4_K and Q6_K when their activations are
// quantized (activation_type(type, n_in) != F32).
bool gemm_supports(GgmlType type, int64_t n_in);

// Same contract as matmul (any n_tokens >= 1); requires gemm_supports.
void gemm(const TensorView& W, const float* x, float* y, int n_tokens, ThreadPool& pool);

// One thread's float GEMM with explicit strides, for tiles the caller
// schedules itself (attention: a chunk of keys times a tile of queries):
//   y[t * ldy + r] = sum_{i < n} w[r * ldw + i] * x[t * ldx + i]
// for r < n_rows, t < n_tokens. `scratch` holds the packed weight panel; it
// is grown on first use, so a caller that keeps it allocates once.
void gemm_f32(const float* w, size_t ldw, size_t n_rows, const float* x, size_t ldx, size_t n_tokens, size_t n,
              float* y, size_t ldy, std::vector<float>& scratch);

}  // namespace engram::kernels
