// Block layouts of the quantized types, byte for byte as llama.cpp stores them
// in GGUF files (ggml-common.h). Halves are raw IEEE binary16 bits (uint16_t);
// every struct is little-endian and has no padding (checked below).
//
// Naming follows ggml: d = scale ("delta"), m / dmin = minimum, qs = low bits
// of the quants, qh = high bits. "K" types group 256 values into a super-block
// whose sub-block scales are themselves quantized.
#pragma once

#include <cstdint>

namespace engram {

constexpr int kQK = 32;    // elements per block of the legacy types (Q4_0 ... Q8_0)
constexpr int kQK_K = 256; // elements per super-block of the K types
constexpr int kKScaleSize = 12;  // bytes of packed 6-bit scales + mins in Q4_K / Q5_K

// value = d * (q - 8), q in [0, 15]. qs[j] holds element j (low nibble) and j+16 (high nibble).
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};

// value = d * q + m, q in [0, 15]; nibbles as in Q4_0.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};

// value = d * (q - 16), q in [0, 31]. Low 4 bits as in Q4_0; bit j of the
// little-endian u32 qh is the 5th bit of element j.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};

// value = d * q + m, q in [0, 31]; bits as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};

// value = d * q, q a signed byte.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};

// 8 sub-blocks of 32: value = d * sc[j] * q - dmin * m[j], q in [0, 15], with
// 6-bit sc/m packed in `scales` (see k_scale_min below). qs holds
// 4 chunks of 64 values: byte l of chunk c is value 64c+l (low) and 64c+32+l (high).
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};

// As Q4_K with a 5th bit: bit 2c of qh[l] is the high bit of value 64c+l,
// bit 2c+1 that of value 64c+32+l.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};

// 16 sub-blocks of 16: value = d * scales[j] * (q - 32), q in [0, 63].
// Per half (128 values) h: ql[64h + l] has value 128h+l (low nibble) and
// 128h+64+l (high); ql[64h + 32 + l] has 128h+32+l and 128h+96+l; qh[32h + l]
// holds the top 2 bits of 128h+l, +32, +64, +96 in bit pairs 0, 2, 4, 6.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};

// Intermediate type for dot products with K-quant weights (not stored in files):
// value = d * qs, with bsums the sums of each group of 16 quants.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must be 18 bytes");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block must be 20 bytes");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block must be 22 bytes");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block must be 24 bytes");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block must be 144 bytes");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block must be 176 bytes");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block must be 210 bytes");
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block must be 292 bytes");

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block.
// Sub-blocks 0-3 keep them in the low 6 bits of bytes j and j+4; sub-blocks
// 4-7 in the nibbles of byte j+4, with their top 2 bits in the spare high bits
// of bytes j-4 (scale) and j (min).
inline void k_scale_min(int j, const uint8_t* scales, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

}  // namespace engram
