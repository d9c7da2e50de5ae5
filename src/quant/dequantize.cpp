// Row dequantization, bit-exact with ggml's dequantize_row_*: the same
// products in the same order, each rounded to float (no fused multiply-add).
#include "quant/fp_contract_off.h"

#include <cassert>
#include <cstring>

#include "quant/blocks.h"
#include "quant/quant.h"

namespace engram {
namespace {

// Blocks are copied out of the byte stream, so rows need no particular alignment.
template <class Block>
Block load_block(const void* src, int64_t i) {
  Block b;
  std::memcpy(&b, static_cast<const uint8_t*>(src) + i * static_cast<int64_t>(sizeof(Block)), sizeof(Block));
  return b;
}

void dequantize_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); }

void dequantize_f16(const void* src, float* dst, int64_t n) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    dst[i] = fp16_to_fp32(h);
  }
}

void dequantize_bf16(const void* src, float* dst, int64_t n) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    dst[i] = bf16_to_fp32(h);
  }
}

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const auto b = load_block<BlockQ4_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = static_cast<float>((b.qs[j] & 0x0F) - 8) * d;
      dst[j + kQK / 2] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const auto b = load_block<BlockQ4_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = static_cast<float>(b.qs[j] & 0x0F) * d + m;
      dst[j + kQK / 2] = static_cast<float>(b.qs[j] >> 4) * d + m;
    }
  }
}

// The 5-bit quant j of a Q5_0 / Q5_1 block: low nibble from qs, 5th bit from qh.
template <class Block>
int q5_value(const Block& b, uint32_t qh, int j) {
  const int low = j < kQK / 2 ? (b.qs[j] & 0x0F) : (b.qs[j - kQK / 2] >> 4);
  return low | static_cast<int>(((qh >> j) & 1) << 4);
}

void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const auto b = load_block<BlockQ5_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(q5_value(b, qh, j) - 16) * d;
  }
}

void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const auto b = load_block<BlockQ5_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(q5_value(b, qh, j)) * d + m;
  }
}

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const auto b = load_block<BlockQ8_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(b.qs[j]) * d;
  }
}

void dequantize_q4_k(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const auto b = load_block<BlockQ4_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    // Each 64-value chunk c holds sub-blocks 2c (low nibbles) and 2c+1 (high nibbles).
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = b.qs + 32 * c;
      uint8_t sc, m;
      k_scale_min(2 * c, b.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      k_scale_min(2 * c + 1, b.scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q5_k(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const auto b = load_block<BlockQ5_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    for (int c = 0; c < 4; ++c) {
      const uint8_t* ql = b.qs + 32 * c;
      const uint8_t low_bit = static_cast<uint8_t>(1 << (2 * c));
      const uint8_t high_bit = static_cast<uint8_t>(2 << (2 * c));
      uint8_t sc, m;
      k_scale_min(2 * c, b.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      k_scale_min(2 * c + 1, b.scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * static_cast<float>((ql[l] & 0xF) + (b.qh[l] & low_bit ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * static_cast<float>((ql[l] >> 4) + (b.qh[l] & high_bit ? 16 : 0)) - m2;
    }
  }
}

void dequantize_q6_k(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const auto b = load_block<BlockQ6_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int half = 0; half < 2; ++half, dst += 128) {
      const uint8_t* ql = b.ql + 64 * half;
      const uint8_t* qh = b.qh + 32 * half;
      const int8_t* sc = b.scales + 8 * half;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        // (d * scale) * q, rounded after each product as ggml does.
        dst[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
        dst[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        dst[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        dst[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

using DequantizeFn = void (*)(const void*, float*, int64_t);

DequantizeFn dequantizer(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return dequantize_f32;
    case GgmlType::F16: return dequantize_f16;
    case GgmlType::BF16: return dequantize_bf16;
    case GgmlType::Q4_0: return dequantize_q4_0;
    case GgmlType::Q4_1: return dequantize_q4_1;
    case GgmlType::Q5_0: return dequantize_q5_0;
    case GgmlType::Q5_1: return dequantize_q5_1;
    case GgmlType::Q8_0: return dequantize_q8_0;
    case GgmlType::Q4_K: return dequantize_q4_k;
    case GgmlType::Q5_K: return dequantize_q5_k;
    case GgmlType::Q6_K: return dequantize_q6_k;
    default: return nullptr;
  }
}

}  // namespace

bool can_dequantize(GgmlType type) { return dequantizer(type) != nullptr; }

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const DequantizeFn fn = dequantizer(type);
  assert(fn != nullptr && row_bytes(type, n).has_value());
  if (fn == nullptr || !row_bytes(type, n)) return;
  fn(src, dst, n);
}

}  // namespace engram
