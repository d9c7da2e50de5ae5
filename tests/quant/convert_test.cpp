// fp16 / bf16 conversions: exhaustive over all halves, rounding ties, special
// values, and agreement with two independent float->half conversions.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "quant/quant.h"

namespace engram {
namespace {

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
float float_of(uint32_t u) { return std::bit_cast<float>(u); }

// The compiler's own IEEE half type, an independent conversion to check
// against. GCC 12 has no _Float16 in C++ on aarch64 (only in C), but has the
// Arm ACLE type __fp16 there.
#if defined(__aarch64__)
using NativeHalf = __fp16;
#define ENGRAM_HAVE_NATIVE_HALF 1
#elif defined(__FLT16_MAX__)
using NativeHalf = _Float16;
#define ENGRAM_HAVE_NATIVE_HALF 1
#endif

// Value of a half computed from its fields with ldexp (independent of the code under test).
double half_value(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  double v = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return sign ? -v : v;
}

// Float -> half with the "scale to infinity and back" float trick (Maratyszcza's
// FP16 library, which ggml also uses): an independent implementation to compare against.
uint16_t reference_fp32_to_fp16(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bits_of(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = float_of((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = bits_of(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : exp_bits + mantissa_bits));
}

TEST(Fp16, EveryHalfDecodesToItsValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    const int exponent = (h >> 10) & 0x1F;
    if (exponent == 0x1F) {
      if ((h & 0x3FF) == 0) EXPECT_EQ(f, (h & 0x8000) ? -INFINITY : INFINITY) << h;
      else EXPECT_TRUE(std::isnan(f)) << h;
      continue;
    }
    EXPECT_EQ(static_cast<double>(f), half_value(static_cast<uint16_t>(h))) << "half 0x" << std::hex << h;
    EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
  }
}

TEST(Fp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t back = fp32_to_fp16(fp16_to_fp32(static_cast<uint16_t>(h)));
    const bool is_nan = ((h >> 10) & 0x1F) == 0x1F && (h & 0x3FF) != 0;
    if (is_nan) {
      EXPECT_EQ(back, (h & 0x8000) | 0x7E00) << h;  // ggml canonicalises NaN
    } else {
      EXPECT_EQ(back, h) << "half 0x" << std::hex << h;
    }
  }
}

TEST(Fp16, KnownValues) {
  EXPECT_EQ(fp32_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(fp32_to_fp16(0.5f), 0x3800);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);       // largest half
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7BFF);      // just below the tie to inf
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);       // tie rounds to even = inf
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(-INFINITY), 0xFC00);
  EXPECT_EQ(fp32_to_fp16(0x1.0p-14f), 0x0400);     // smallest normal
  EXPECT_EQ(fp32_to_fp16(0x1.0p-24f), 0x0001);     // smallest subnormal
  EXPECT_EQ(fp32_to_fp16(0x1.0p-25f), 0x0000);     // tie between 0 and 2^-24 -> even (0)
  EXPECT_EQ(fp32_to_fp16(0x1.8p-25f), 0x0001);     // above the tie
  EXPECT_EQ(fp32_to_fp16(0x1.8p-24f), 0x0002);     // 1.5 units: tie -> even (2)
  EXPECT_EQ(fp32_to_fp16(0x1.0p-149f), 0x0000);    // float subnormal
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()), 0x7E00);
  EXPECT_EQ(fp16_to_fp32(0x3555), 0x1.554p-2f);    // 0.333251953125
}

TEST(Fp16, TiesRoundToEven) {
  // Midpoints between consecutive halves: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(fp32_to_fp16(1.0f + 0x1.0p-11f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * 0x1.0p-11f), 0x3C02);
  EXPECT_EQ(fp32_to_fp16(std::nextafter(1.0f + 0x1.0p-11f, 2.0f)), 0x3C01);
  // Every midpoint between two finite halves of the same sign, and its neighbours.
  for (uint32_t h = 0; h < 0x7BFF; ++h) {
    const float lo = fp16_to_fp32(static_cast<uint16_t>(h)), hi = fp16_to_fp32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);  // exact in float
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    ASSERT_EQ(fp32_to_fp16(mid), even) << h;
    ASSERT_EQ(fp32_to_fp16(std::nextafter(mid, 0.0f)), h) << h;
    ASSERT_EQ(fp32_to_fp16(std::nextafter(mid, INFINITY)), h + 1) << h;
    ASSERT_EQ(fp32_to_fp16(-mid), even | 0x8000) << h;
  }
}

TEST(Fp16, AgreesWithIndependentConversions) {
  std::mt19937 rng(7);
  for (int i = 0; i < 500000; ++i) {
    const float f = float_of(static_cast<uint32_t>(rng()));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), reference_fp32_to_fp16(f)) << "bits 0x" << std::hex << bits_of(f);
#if defined(ENGRAM_HAVE_NATIVE_HALF)
    const NativeHalf h = static_cast<NativeHalf>(f);
    uint16_t hb;
    std::memcpy(&hb, &h, 2);
    ASSERT_EQ(fp32_to_fp16(f), hb) << "bits 0x" << std::hex << bits_of(f);
#endif
  }
  // Densely over the half range, where the rounding matters.
  for (uint32_t u = 0x33000000u; u < 0x47800000u; u += 211) {
    ASSERT_EQ(fp32_to_fp16(float_of(u)), reference_fp32_to_fp16(float_of(u))) << std::hex << u;
  }
}

TEST(Bf16, KnownValuesAndRounding) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(fp32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_fp32(0x4049), 3.140625f);
  // Ties to even on the 16 dropped bits.
  EXPECT_EQ(fp32_to_bf16(float_of(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(float_of(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(float_of(0x3F808001u)), 0x3F81);
  EXPECT_EQ(fp32_to_bf16(float_of(0x3F807FFFu)), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(float_of(0x7F7FFFFFu)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_EQ(fp32_to_bf16(float_of(0x00000001u)), 0x0000);  // subnormals are not flushed...
  EXPECT_EQ(fp32_to_bf16(float_of(0x00018000u)), 0x0002);  // ...but rounded
  // NaN: high bits kept, forced quiet (ggml_compute_fp32_to_bf16).
  EXPECT_EQ(fp32_to_bf16(float_of(0x7F800001u)), 0x7FC0);
  EXPECT_EQ(fp32_to_bf16(float_of(0xFF812345u)), 0xFFC1);
  EXPECT_EQ(fp32_to_bf16(float_of(0x7FC00000u)), 0x7FC0);
}

TEST(Bf16, EveryBf16RoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(h));
    EXPECT_EQ(bits_of(f), h << 16);
    const bool is_nan = (h & 0x7FFF) > 0x7F80;
    EXPECT_EQ(fp32_to_bf16(f), is_nan ? (h | 0x40) : h) << h;
  }
}

}  // namespace
}  // namespace engram
