// IEEE binary16 and bfloat16 <-> float32, rounding as ggml does.
#include "quant/fp_contract_off.h"

#include <bit>
#include <cstdint>

#include "quant/quant.h"

namespace engram {

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F;
  const uint32_t mantissa = h & 0x3FF;
  if (exponent == 0x1F) {
    // Inf keeps its sign; a NaN keeps its payload and comes back quiet, as
    // the hardware conversion and ggml's arithmetic conversion both do.
    const uint32_t quiet = mantissa != 0 ? 0x400000u : 0u;
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13) | quiet);
  }
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 0x1.0p-24f;
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(magnitude));
  }
  // Normal: rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

namespace {

// Rounds `value >> shift` to nearest, ties to even (shift >= 1).
uint32_t shift_round_even(uint32_t value, int shift) {
  const uint32_t kept = value >> shift;
  const uint32_t rest = value & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1))) ? 1 : 0);
}

}  // namespace

uint16_t fp32_to_fp16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t magnitude = bits & 0x7FFFFFFF;

  if (magnitude > 0x7F800000) return sign | 0x7E00;       // NaN -> canonical quiet NaN (as ggml)
  if (magnitude >= 0x47800000) return sign | 0x7C00;      // >= 2^16 (or inf): beyond the largest half
  const int exponent = static_cast<int>(magnitude >> 23);  // biased by 127
  const uint32_t mantissa = (magnitude & 0x7FFFFF) | 0x800000;
  if (exponent < 113) {
    // Below 2^-14: a half subnormal counts units of 2^-24, i.e. mantissa * 2^(exponent-126).
    const int shift = 126 - exponent;
    if (shift > 24) return sign;  // < 2^-25: rounds to zero
    return static_cast<uint16_t>(sign | shift_round_even(mantissa, shift));
  }
  // Normal half: 10 mantissa bits; a carry out of the mantissa correctly bumps
  // the exponent (up to 0x7C00 = inf for values >= 65520).
  const uint32_t rebased = (static_cast<uint32_t>(exponent - 112) << 10) << 13 | (magnitude & 0x7FFFFF);
  return static_cast<uint16_t>(sign | shift_round_even(rebased, 13));
}

float bf16_to_fp32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t fp32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN: keep, force quiet
  // Round to nearest even on the 16 dropped bits (may carry into the exponent, up to inf).
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

}  // namespace engram
