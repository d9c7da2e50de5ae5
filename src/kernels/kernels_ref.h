// Plain scalar reference versions of every kernel in kernels.h, written for
// obviousness rather than speed: one loop each, sums accumulated in double.
// tests/kernels checks the SIMD kernels against these on every target.
//
// The half and bfloat16 conversions here are written out independently of
// both Highway and the quant layer; only block-quantized rows go through
// engram::dequantize_row (tested against ggml in tests/quant).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

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

// y[t, o] = sum_i W[o, i] * x[t, i], single-threaded.
inline void matmul(const TensorView& W, const float* x, float* y, int n_tokens) {
  const int64_t n_in = W.ne[0], n_out = W.ne[1];
  for (int64_t o = 0; o < n_out; ++o) {
    for (int t = 0; t < n_tokens; ++t) y[t * n_out + o] = dot_row(W.type, W.row(o), x + t * n_in, n_in);
  }
}

inline void get_row(const TensorView& W, int64_t i, float* out) {
  const std::vector<float> row = row_to_f32(W.type, W.row(i), W.ne[0]);
  std::memcpy(out, row.data(), row.size() * sizeof(float));
}

}  // namespace engram::kernels::ref
