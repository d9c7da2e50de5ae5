// Plain scalar reference versions of every kernel in kernels.h, written for
// obviousness rather than speed: one loop each, sums accumulated in double.
// tests/kernels checks the SIMD kernels against these on every target.
//
// The half and bfloat16 conversions here are written out independently of
// both Highway and the quant layer; only block-quantized rows go through
// engram::dequantize_row (tested against ggml in tests/quant).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "quant/blocks.h"
#include "quant/quant.h"
#include "tensor/tensor.h"

namespace engram::kernels::ref {

// IEEE half (1 sign, 5 exponent, 10 mantissa bits) to float, exactly.
inline float half_to_float(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);  // zero / subnormal
  if (exponent == 31) return mantissa ? std::numeric_limits<float>::quiet_NaN() : sign * std::numeric_limits<float>::infinity();
  return sign * std::ldexp(static_cast<float>(1024 + mantissa), exponent - 25);
}

// bfloat16 is the top half of a float32.
inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float dot(const float* a, const float* b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(sum);
}

inline float dot_f16(const uint16_t* a, const float* b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += static_cast<double>(half_to_float(a[i])) * b[i];
  return static_cast<float>(sum);
}

inline float dot_bf16(const uint16_t* a, const float* b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += static_cast<double>(bf16_to_float(a[i])) * b[i];
  return static_cast<float>(sum);
}

inline float max_dot_i8_cols(const int8_t* cols, const float* row_scale, size_t n_rows, size_t k_dim,
                             const float* q) {
  float best = -std::numeric_limits<float>::infinity();
  for (size_t r = 0; r < n_rows; ++r) {
    double sum = 0;
    for (size_t d = 0; d < k_dim; ++d) sum += static_cast<double>(q[d]) * cols[d * n_rows + r];
    best = std::max(best, static_cast<float>(sum * row_scale[r]));
  }
  return best;
}

inline void dot_cols(const float* kT, size_t col_stride, size_t n_rows, size_t dim, const float* q, float scale,
                     float* out) {
  for (size_t r = 0; r < n_rows; ++r) {
    double sum = 0;
    for (size_t d = 0; d < dim; ++d) sum += static_cast<double>(q[d]) * kT[d * col_stride + r];
    out[r] = static_cast<float>(sum * scale);
  }
}

inline float exp_shift_sum(float* x, size_t n, float shift) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - shift));
    sum += x[i];
  }
  return static_cast<float>(sum);
}

inline void add_weighted_rows(const float* w, const float* v, size_t v_stride, size_t n_rows, size_t dim,
                              float* acc) {
  for (size_t d = 0; d < dim; ++d) {
    double sum = acc[d];
    for (size_t r = 0; r < n_rows; ++r) sum += static_cast<double>(w[r]) * v[r * v_stride + d];
    acc[d] = static_cast<float>(sum);
  }
}

inline void axpy(float alpha, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

inline void scale(float* x, float alpha, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}

inline void add(const float* a, const float* b, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

inline void mul(const float* a, const float* b, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

inline void rms_norm(const float* x, const float* w, float* out, size_t n, float eps) {
  if (n == 0) return;
  double sum_sq = 0;
  for (size_t i = 0; i < n; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(n) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i] * inv * (w ? w[i] : 1.0f));
}

inline float max_value(const float* x, size_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// All entries -inf (fully masked) gives the uniform distribution.
inline void softmax(float* x, size_t n) {
  if (n == 0) return;
  const float m = max_value(x, n);
  if (m == -std::numeric_limits<float>::infinity()) {
    for (size_t i = 0; i < n; ++i) x[i] = 1.0f / static_cast<float>(n);
    return;
  }
  std::vector<double> e(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += e[i] = std::exp(static_cast<double>(x[i]) - m);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(e[i] / sum);
}

inline void silu_mul(const float* gate, const float* up, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

// Row of `type` as float32.
inline std::vector<float> row_to_f32(GgmlType type, const void* row, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  const auto* bits = static_cast<const uint16_t*>(row);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(out.data(), row, out.size() * sizeof(float));
      break;
    case GgmlType::F16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = half_to_float(bits[i]);
      break;
    case GgmlType::BF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_float(bits[i]);
      break;
    default:
      dequantize_row(type, row, out.data(), n);
  }
  return out;
}

inline float dot_row(GgmlType type, const void* row, const float* x, int64_t n) {
  const std::vector<float> w = row_to_f32(type, row, n);
  return dot(w.data(), x, w.size());
}

// ---- Q8_0 / Q4_0 weights with Q8_0 activations ----

// Quant j of block b of a Q8_0 or Q4_0 row as a signed integer.
inline int weight_quant(GgmlType type, const void* row, int64_t b, int j) {
  const auto* bytes = static_cast<const uint8_t*>(row);
  if (type == GgmlType::Q8_0) {
    BlockQ8_0 blk;
    std::memcpy(&blk, bytes + b * sizeof blk, sizeof blk);
    return blk.qs[j];
  }
  BlockQ4_0 blk;
  std::memcpy(&blk, bytes + b * sizeof blk, sizeof blk);
  const int half = kQK / 2;
  return (j < half ? blk.qs[j] & 0xF : blk.qs[j - half] >> 4) - 8;
}

// Scale (fp16 bits) of block b of a Q8_0 or Q4_0 row: the first field of both.
inline uint16_t weight_scale(GgmlType type, const void* row, int64_t b) {
  const size_t block = type == GgmlType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  uint16_t d;
  std::memcpy(&d, static_cast<const uint8_t*>(row) + b * block, sizeof d);
  return d;
}

// Integer dot product of block b of the weight row with block b of x_q8.
inline int32_t block_sum_q8(GgmlType type, const void* row, const void* x_q8, int64_t b) {
  BlockQ8_0 xb;
  std::memcpy(&xb, static_cast<const uint8_t*>(x_q8) + b * sizeof xb, sizeof xb);
  int32_t sum = 0;
  for (int j = 0; j < kQK; ++j) sum += weight_quant(type, row, b, j) * xb.qs[j];
  return sum;
}

// sum_b (d_w * d_x) * block_sum, the block scale product rounded to float as
// the kernel does, the total accumulated in double.
inline float dot_row_q8(GgmlType type, const void* row, const void* x_q8, int64_t n) {
  double sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    uint16_t xd;
    std::memcpy(&xd, static_cast<const uint8_t*>(x_q8) + b * sizeof(BlockQ8_0), sizeof xd);
    const float scale = half_to_float(weight_scale(type, row, b)) * half_to_float(xd);
    sum += static_cast<double>(scale) * block_sum_q8(type, row, x_q8, b);
  }
  return static_cast<float>(sum);
}

// ---- K-quant weights with Q8_K activations ----

// Q8_K as ggml's quantize_row_q8_K_ref: per 256, d = max / -127 where max is
// the value of largest magnitude, q = min(127, round-half-even(x / d)).
inline std::vector<BlockQ8_K> quantize_q8_K(const float* x, int64_t n) {
  std::vector<BlockQ8_K> out(static_cast<size_t>(n / kQK_K));
  for (size_t b = 0; b < out.size(); ++b, x += kQK_K) {
    BlockQ8_K& blk = out[b];
    blk = BlockQ8_K{};
    float max = 0;
    for (int j = 0; j < kQK_K; ++j) max = std::fabs(x[j]) > std::fabs(max) ? x[j] : max;
    if (max == 0) continue;
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK_K; ++j) {
      const long q = std::lrint(iscale * x[j]);  // default rounding mode: to nearest even
      blk.qs[j] = static_cast<int8_t>(q > 127 ? 127 : q);
      blk.bsums[j / 16] = static_cast<int16_t>(blk.bsums[j / 16] + blk.qs[j]);
    }
    blk.d = 1.0f / iscale;
  }
  return out;
}

// Weight quant i (0..255) of a Q4_K super-block with its sub-block scale and min.
inline void q4_K_quant(const BlockQ4_K& w, int i, int* q, int* sc, int* m) {
  const int chunk = i / 64, l = i % 64;
  const uint8_t byte = w.qs[32 * chunk + l % 32];
  *q = l < 32 ? byte & 0xF : byte >> 4;
  uint8_t s8, m8;
  k_scale_min(i / 32, w.scales, &s8, &m8);
  *sc = s8;
  *m = m8;
}

// Weight quant i (0..255) of a Q6_K super-block (minus 32) with its scale.
inline void q6_K_quant(const BlockQ6_K& w, int i, int* q, int* sc) {
  const int h = i / 128, r = i % 128, k = r / 32, l = r % 32;
  const uint8_t lo = w.ql[64 * h + 32 * (k % 2) + l];
  const int low = k < 2 ? lo & 0xF : lo >> 4;
  const int high = (w.qh[32 * h + l] >> (2 * k)) & 3;
  *q = (low | high << 4) - 32;
  *sc = w.scales[8 * h + 2 * k + l / 16];
}

inline float dot_row_q8_K(GgmlType type, const void* row, const BlockQ8_K* x, int64_t n) {
  double sum = 0;
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const BlockQ8_K& xb = x[b];
    if (type == GgmlType::Q4_K) {
      BlockQ4_K w;
      std::memcpy(&w, static_cast<const uint8_t*>(row) + b * sizeof w, sizeof w);
      int64_t scaled = 0, mins = 0;
      for (int i = 0; i < kQK_K; ++i) {
        int q, sc, m;
        q4_K_quant(w, i, &q, &sc, &m);
        scaled += static_cast<int64_t>(sc) * q * xb.qs[i];
        mins += static_cast<int64_t>(m) * xb.qs[i];
      }
      sum += static_cast<double>(half_to_float(w.d) * xb.d) * scaled -
             static_cast<double>(half_to_float(w.dmin) * xb.d) * mins;
    } else {
      BlockQ6_K w;
      std::memcpy(&w, static_cast<const uint8_t*>(row) + b * sizeof w, sizeof w);
      int64_t scaled = 0;
      for (int i = 0; i < kQK_K; ++i) {
        int q, sc;
        q6_K_quant(w, i, &q, &sc);
        scaled += static_cast<int64_t>(sc) * q * xb.qs[i];
      }
      sum += static_cast<double>(half_to_float(w.d) * xb.d) * scaled;
    }
  }
  return static_cast<float>(sum);
}

inline GgmlType activation_type(GgmlType type, int64_t n) {
  if ((type == GgmlType::Q8_0 || type == GgmlType::Q4_0) && n % kQK == 0) return GgmlType::Q8_0;
  if ((type == GgmlType::Q4_K || type == GgmlType::Q6_K) && n % kQK_K == 0) return GgmlType::Q8_K;
  return GgmlType::F32;
}

// Dot of a weight row with float activations x as matmul computes it:
// x quantized to activation_type first where that is not F32, and rounded
// to bfloat16 for BF16 weights.
inline float matmul_dot(GgmlType type, const void* row, const float* x, int64_t n) {
  switch (activation_type(type, n)) {
    case GgmlType::Q8_0: {
      std::vector<uint8_t> xq(*row_bytes(GgmlType::Q8_0, n));
      quantize_row(GgmlType::Q8_0, x, xq.data(), n);
      return dot_row_q8(type, row, xq.data(), n);
    }
    case GgmlType::Q8_K:
      return dot_row_q8_K(type, row, quantize_q8_K(x, n).data(), n);
    default:
      if (type == GgmlType::BF16) {  // bf16 activations, as llama.cpp
        std::vector<float> rounded(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) rounded[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
        return dot_row(type, row, rounded.data(), n);
      }
      return dot_row(type, row, x, n);
  }
}

// y[t, o] = sum_i W[o, i] * x[t, i], single-threaded, with activations
// quantized as matmul_dot describes.
inline void matmul(const TensorView& W, const float* x, float* y, int n_tokens) {
  const int64_t n_in = W.ne[0], n_out = W.ne[1];
  for (int64_t o = 0; o < n_out; ++o) {
    for (int t = 0; t < n_tokens; ++t) y[t * n_out + o] = matmul_dot(W.type, W.row(o), x + t * n_in, n_in);
  }
}

inline void get_row(const TensorView& W, int64_t i, float* out) {
  const std::vector<float> row = row_to_f32(W.type, W.row(i), W.ne[0]);
  std::memcpy(out, row.data(), row.size() * sizeof(float));
}

}  // namespace engram::kernels::ref
