// SIMD kernels, written once with Highway and compiled for every target.
//
// foreach_target.h re-includes this file once per SIMD target (SSE4, AVX2,
// AVX-512, NEON, SVE, EMU128 ...), each time with a different HWY_NAMESPACE;
// the HWY_ONCE section at the bottom is compiled a single time and holds the
// public functions, which pick the best compiled target the CPU supports via
// HWY_DYNAMIC_DISPATCH.
//
// Loops use whole vectors first and finish the last n % Lanes elements with a
// one-lane descriptor running the same code, so no kernel reads or writes
// past the end of its arrays and the tail rounds like the body.

#include "kernels/kernels.h"
#include "kernels/gemm.h"
#include "kernels/hwy_targets.h"

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__aarch64__)
#include <arm_neon.h>  // the sdot functions, also in the SVE targets
#include <sys/auxv.h>
#endif

#include "quant/blocks.h"
#include "quant/quant.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/cache_control.h>
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace engram::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using D1 = hn::CappedTag<float, 1>;  // one lane: finishes the tail of a loop

// ---- Loading rows of different storage types as float vectors ----

// Row pointers tagged with their storage type; LoadAsF32(d, row, i) loads
// Lanes(d) values starting at element i, widened to float32.
struct Half {  // IEEE half bits
  const uint16_t* bits;
};
struct Brain {  // bfloat16 bits
  const uint16_t* bits;
};

template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const float* p, size_t i) {
  return hn::LoadU(d, p + i);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, Half h, size_t i) {
  const hn::Rebind<hwy::float16_t, D> d16;
  return hn::PromoteTo(d, hn::LoadU(d16, reinterpret_cast<const hwy::float16_t*>(h.bits + i)));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, Brain b, size_t i) {
  const hn::Rebind<hwy::bfloat16_t, D> d16;
  return hn::PromoteTo(d, hn::LoadU(d16, reinterpret_cast<const hwy::bfloat16_t*>(b.bits + i)));
}

// ---- Reductions ----

// sum_i a[i] * b[i]. Four independent accumulators hide the latency of the
// fused multiply-add (and add a little pairwise-summation accuracy).
template <class A>
HWY_INLINE float DotT(A a, const float* HWY_RESTRICT b, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  auto acc0 = hn::Zero(d), acc1 = hn::Zero(d), acc2 = hn::Zero(d), acc3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    acc0 = hn::MulAdd(LoadAsF32(d, a, i), hn::LoadU(d, b + i), acc0);
    acc1 = hn::MulAdd(LoadAsF32(d, a, i + N), hn::LoadU(d, b + i + N), acc1);
    acc2 = hn::MulAdd(LoadAsF32(d, a, i + 2 * N), hn::LoadU(d, b + i + 2 * N), acc2);
    acc3 = hn::MulAdd(LoadAsF32(d, a, i + 3 * N), hn::LoadU(d, b + i + 3 * N), acc3);
  }
  for (; i + N <= n; i += N) {
    acc0 = hn::MulAdd(LoadAsF32(d, a, i), hn::LoadU(d, b + i), acc0);
  }
  acc0 = hn::Add(hn::Add(acc0, acc1), hn::Add(acc2, acc3));
  float sum = hn::GetLane(hn::SumOfLanes(d, acc0));
  const D1 d1;
  for (; i < n; ++i) {
    sum += hn::GetLane(hn::Mul(LoadAsF32(d1, a, i), hn::LoadU(d1, b + i)));
  }
  return sum;
}

float DotImpl(const float* a, const float* b, size_t n) { return DotT(a, b, n); }
float DotF16Impl(const uint16_t* a, const float* b, size_t n) { return DotT(Half{a}, b, n); }
float DotBF16Impl(const uint16_t* a, const float* b, size_t n) { return DotT(Brain{a}, b, n); }

// Generation with F16 / BF16 weights: y[o - begin] = row o . x for rows
// [begin, end), row_size bytes apart, each read once from memory. No software
// prefetch: the hardware's stream prefetcher alone read 7-13% faster (1B F16
// and BF16 generation, session 17), and 4-row interleaving was slower still.
void MatVecHalfImpl(GgmlType type, const uint8_t* w, size_t row_size, const float* x, size_t n, float* y,
                    size_t begin, size_t end) {
  for (size_t o = begin; o < end; ++o) {
    const auto* row = reinterpret_cast<const uint16_t*>(w + o * row_size);
    y[o - begin] = type == GgmlType::BF16 ? DotT(Brain{row}, x, n) : DotT(Half{row}, x, n);
  }
}

// Generation with BF16 weights on AVX512_BF16: y[o - begin] = row o . x for
// rows [begin, end), x already bf16 (matmul rounds it, as llama.cpp). One
// vdpbf16ps takes 32 weights and activations with no widening, a quarter of
// the instructions of the float path. Only where bf16_dot_available().
#if HWY_TARGET == HWY_AVX3_DL
__attribute__((target("avx512bf16"))) HWY_INLINE float DotBF16Pairs(const uint16_t* HWY_RESTRICT w,
                                                                   const uint16_t* HWY_RESTRICT x, size_t n) {
  const auto load = [](const uint16_t* p, __mmask32 mask) {
    return reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, p));
  };
  const __mmask32 all = ~__mmask32{0};
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    for (size_t k = 0; k < 4; ++k) {
      acc[k] = _mm512_dpbf16_ps(acc[k], load(w + i + 32 * k, all), load(x + i + 32 * k, all));
    }
  }
  for (; i < n; i += 32) {
    const __mmask32 mask = n - i >= 32 ? all : static_cast<__mmask32>((1u << (n - i)) - 1);
    acc[0] = _mm512_dpbf16_ps(acc[0], load(w + i, mask), load(x + i, mask));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

__attribute__((target("avx512bf16"))) HWY_NOINLINE void MatVecBF16Rows(const uint8_t* w, size_t row_size,
                                                                      const uint16_t* x, size_t n, float* y,
                                                                      size_t begin, size_t end) {
  for (size_t o = begin; o < end; ++o) {
    y[o - begin] = DotBF16Pairs(reinterpret_cast<const uint16_t*>(w + o * row_size), x, n);
  }
}
#endif

void MatVecBF16Impl(const uint8_t* w, size_t row_size, const uint16_t* x, size_t n, float* y, size_t begin,
                    size_t end) {
#if HWY_TARGET == HWY_AVX3_DL
  if (cpu_has_avx512_bf16()) {
    MatVecBF16Rows(w, row_size, x, n, y, begin, end);
    return;
  }
#endif
  // matmul calls this only where bf16_dot_available(); the plain sum keeps
  // every target's version correct all the same.
  for (size_t o = begin; o < end; ++o) {
    const auto* row = reinterpret_cast<const uint16_t*>(w + o * row_size);
    float sum = 0;
    for (size_t i = 0; i < n; ++i) sum += bf16_to_fp32(row[i]) * bf16_to_fp32(x[i]);
    y[o - begin] = sum;
  }
}

float MaxImpl(const float* x, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const float lowest = -std::numeric_limits<float>::infinity();
  auto m0 = hn::Set(d, lowest), m1 = hn::Set(d, lowest);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    m0 = hn::Max(m0, hn::LoadU(d, x + i));
    m1 = hn::Max(m1, hn::LoadU(d, x + i + N));
  }
  for (; i + N <= n; i += N) m0 = hn::Max(m0, hn::LoadU(d, x + i));
  float m = hn::GetLane(hn::MaxOfLanes(d, hn::Max(m0, m1)));
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// ---- Element-wise kernels: one body, run on full vectors then single lanes ----

// Calls body(d, i) for i = 0, N, 2N ... on full vectors, then for every
// remaining index with a one-lane descriptor.
template <class Body>
HWY_INLINE void ForEachVector(size_t n, const Body& body) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) body(d, i);
  const D1 d1;
  for (; i < n; ++i) body(d1, i);
}

void AxpyImpl(float alpha, const float* x, float* y, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) {
    hn::StoreU(hn::MulAdd(hn::Set(d, alpha), hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  });
}

void ScaleImpl(float* x, float alpha, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) { hn::StoreU(hn::Mul(hn::LoadU(d, x + i), hn::Set(d, alpha)), d, x + i); });
}

void AddImpl(const float* a, const float* b, float* out, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) { hn::StoreU(hn::Add(hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, out + i); });
}

void MulImpl(const float* a, const float* b, float* out, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) { hn::StoreU(hn::Mul(hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, out + i); });
}

// out = x * rsqrt(mean(x^2) + eps) [* w]
void RmsNormImpl(const float* x, const float* w, float* out, size_t n, float eps) {
  if (n == 0) return;
  const float mean_sq = DotT(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean_sq + eps);
  if (w) {
    ForEachVector(n, [&](auto d, size_t i) {
      hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, x + i), hn::Set(d, inv)), hn::LoadU(d, w + i)), d, out + i);
    });
  } else {
    ForEachVector(n, [&](auto d, size_t i) { hn::StoreU(hn::Mul(hn::LoadU(d, x + i), hn::Set(d, inv)), d, out + i); });
  }
}

// hwy's Exp is accurate on [-FLT_MAX, 104] but its range reduction computes an
// integer exponent from x, so clamp first: below -110 Exp returns exactly 0
// (this also maps -inf, the attention mask value, to 0 without overflowing
// the exponent), and e^88 is still a finite float.
template <class D, class V>
HWY_INLINE V SafeExp(D d, V x) {
  x = hn::Min(hn::Max(x, hn::Set(d, -110.0f)), hn::Set(d, 88.0f));
  return hn::Exp(d, x);
}

void SoftmaxImpl(float* x, size_t n) {
  if (n == 0) return;
  const float max = MaxImpl(x, n);
  if (max == -std::numeric_limits<float>::infinity()) {
    // Every entry masked: no distribution is defined; uniform keeps the
    // output finite instead of 0/0.
    const float u = 1.0f / static_cast<float>(n);
    for (size_t i = 0; i < n; ++i) x[i] = u;
    return;
  }
  // e^(x - max) in place, summed in one vector accumulator plus the tail.
  const DF d;
  auto acc = hn::Zero(d);
  float tail_sum = 0.0f;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = SafeExp(d, hn::Sub(hn::LoadU(d, x + i), hn::Set(d, max)));
    hn::StoreU(e, d, x + i);
    acc = hn::Add(acc, e);
  }
  const D1 d1;
  for (; i < n; ++i) {
    const auto e = SafeExp(d1, hn::Sub(hn::LoadU(d1, x + i), hn::Set(d1, max)));
    hn::StoreU(e, d1, x + i);
    tail_sum += hn::GetLane(e);
  }
  const float sum = hn::GetLane(hn::SumOfLanes(d, acc)) + tail_sum;  // >= 1: the max entry gives e^0
  ScaleImpl(x, 1.0f / sum, n);
}

// out = gate / (1 + e^-gate) * up
void SiluMulImpl(const float* gate, const float* up, float* out, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) {
    const auto g = hn::LoadU(d, gate + i);
    const auto silu = hn::Div(g, hn::Add(hn::Set(d, 1.0f), SafeExp(d, hn::Neg(g))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(d, up + i)), d, out + i);
  });
}

// dst[0..n) = src as float32 (src: IEEE half or bf16 bits).
template <class A>
HWY_INLINE void ToF32T(A src, float* dst, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) { hn::StoreU(LoadAsF32(d, src, i), d, dst + i); });
}
void F16ToF32Impl(const uint16_t* src, float* dst, size_t n) { ToF32T(Half{src}, dst, n); }
void BF16ToF32Impl(const uint16_t* src, float* dst, size_t n) { ToF32T(Brain{src}, dst, n); }

// dst[0..n) = src rounded to IEEE half (nearest, ties to even). Highway
// 1.0.3 emulates the conversion where x86 lacks F16C (SSSE3, SSE4) and on
// scalar targets, and that emulation rounds half subnormals wrongly
// (tests/kernels: FloatToHalfRoundsToNearestEven), so those use the scalar one.
void F32ToF16Impl(const float* src, uint16_t* dst, size_t n) {
#if HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3 || HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  for (size_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
  return;
#endif
  ForEachVector(n, [&](auto d, size_t i) {
    const hn::Rebind<hwy::float16_t, decltype(d)> d16;
    hn::StoreU(hn::DemoteTo(d16, hn::LoadU(d, src + i)), d16, reinterpret_cast<hwy::float16_t*>(dst + i));
  });
}

// v rounded to bfloat16 as quant's fp32_to_bf16 (nearest, ties to even; a
// NaN stays a NaN, made quiet): the bf16 bits in the high half of each lane,
// zeros in the low half.
template <class D>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<D>> RoundedBF16Bits(D d, hn::Vec<D> v) {
  const hn::RebindToUnsigned<D> du;
  const auto bits = hn::BitCast(du, v);
  const auto high = hn::Set(du, 0xFFFF0000u);
  const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
  const auto rounded = hn::And(hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), lsb)), high);
  const auto quiet_nan = hn::Or(hn::And(bits, high), hn::Set(du, 0x00400000u));
  return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), quiet_nan, rounded);
}

// dst[0..n) = src rounded to bfloat16 precision, kept as float. May run in place.
void RoundToBF16Impl(const float* src, float* dst, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) {
    hn::StoreU(hn::BitCast(d, RoundedBF16Bits(d, hn::LoadU(d, src + i))), d, dst + i);
  });
}

// dst[0..n) = src rounded to bfloat16 bits.
void F32ToBF16Impl(const float* src, uint16_t* dst, size_t n) {
  ForEachVector(n, [&](auto d, size_t i) {
    const hn::RebindToSigned<decltype(d)> di;
    const hn::Rebind<uint16_t, decltype(d)> d16;
    const auto bf16 = hn::BitCast(di, hn::ShiftRight<16>(RoundedBF16Bits(d, hn::LoadU(d, src + i))));
    hn::StoreU(hn::DemoteTo(d16, bf16), d16, dst + i);
  });
}

// ---- Integer dot products with Q8_0 activations ----
//
// As llama.cpp does for Q8_0 and Q4_0 weights, the activation row is first
// quantized to Q8_0 blocks; each block pair is then one integer dot product
// of 32 int8 x int8 (or 4-bit x int8) terms, exact in int32, scaled by the
// product of the two block scales. int8 lanes are widened to int16 and
// multiplied pairwise into int32 (AVX2 vpmaddwd, NEON smlal; one lane on
// scalar), which every target provides.

// At most half a block of int16 lanes: a Q4_0 half block (16 nibbles) is then
// one or more whole vectors, and wide vectors (AVX-512, SVE) never span blocks.
using DI16 = hn::CappedTag<int16_t, kQK / 2>;
using DI32 = hn::Repartition<int32_t, DI16>;
using DF32 = hn::Rebind<float, DI32>;

// Lanes(d16) int8 values at p, sign-extended to int16.
template <class D16>
HWY_INLINE hn::Vec<D16> LoadI8AsI16(D16 d16, const int8_t* p) {
  const hn::Rebind<int8_t, D16> d8;
  return hn::PromoteTo(d16, hn::LoadU(d8, p));
}

// Lanes(d16) 4-bit quants in [0, 15] from the low or high nibbles at p.
template <bool kHigh, class D16>
HWY_INLINE hn::Vec<D16> LoadNibbles(D16 d16, const uint8_t* p) {
  const hn::Rebind<uint8_t, D16> d8;
  const hn::RebindToUnsigned<D16> du16;
  auto v = hn::PromoteTo(du16, hn::LoadU(d8, p));
  v = kHigh ? hn::ShiftRight<4>(v) : hn::And(v, hn::Set(du16, 0xF));
  return hn::BitCast(d16, v);
}

// Lanes(d16) Q4_0 quants q - 8 in [-8, 7] from the low (elements j) or high
// (elements j + 16) nibbles of the bytes at p.
template <bool kHigh, class D16>
HWY_INLINE hn::Vec<D16> LoadNibblesAsI16(D16 d16, const uint8_t* p) {
  return hn::Sub(LoadNibbles<kHigh>(d16, p), hn::Set(d16, 8));
}

// sum_j w[j] * x[j] of one block, spread over int32 lanes.
HWY_INLINE hn::Vec<DI32> BlockSum(const BlockQ8_0& w, const BlockQ8_0& x) {
  const DI16 d16;
  const DI32 d32;
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (size_t j = 0; j < static_cast<size_t>(kQK); j += hn::Lanes(d16)) {
    sum0 = hn::ReorderWidenMulAccumulate(d32, LoadI8AsI16(d16, w.qs + j), LoadI8AsI16(d16, x.qs + j), sum0, sum1);
  }
  return hn::Add(sum0, sum1);
}

HWY_INLINE hn::Vec<DI32> BlockSum(const BlockQ4_0& w, const BlockQ8_0& x) {
  const DI16 d16;
  const DI32 d32;
  constexpr size_t kHalf = kQK / 2;
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (size_t j = 0; j < kHalf; j += hn::Lanes(d16)) {
    sum0 = hn::ReorderWidenMulAccumulate(d32, LoadNibblesAsI16<false>(d16, w.qs + j), LoadI8AsI16(d16, x.qs + j),
                                         sum0, sum1);
    sum0 = hn::ReorderWidenMulAccumulate(d32, LoadNibblesAsI16<true>(d16, w.qs + j),
                                         LoadI8AsI16(d16, x.qs + kHalf + j), sum0, sum1);
  }
  return hn::Add(sum0, sum1);
}

// One IEEE half as float. The bits are copied into a hwy::float16_t, not
// read through a cast pointer: GCC's SVE float16 loads do not alias the
// uint16_t, and at -O2 it loaded the value before storing it (Q8_0 dots of
// 0 on every SVE target; found with a standalone repro under qemu).
HWY_INLINE float HalfToF32(uint16_t bits) {
  hwy::float16_t h;
  std::memcpy(&h, &bits, sizeof h);
  const hn::Rebind<hwy::float16_t, D1> d16;
  return hn::GetLane(hn::PromoteTo(D1(), hn::LoadU(d16, &h)));
}

// sum over nb blocks of d_w * d_x * (integer block sum). Two float
// accumulators let consecutive blocks' multiply-adds overlap.
template <class Block>
HWY_INLINE float DotQ8T(const Block* HWY_RESTRICT w, const BlockQ8_0* HWY_RESTRICT x, size_t nb) {
  const DF32 df;
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  size_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const float s0 = HalfToF32(w[b].d) * HalfToF32(x[b].d);
    const float s1 = HalfToF32(w[b + 1].d) * HalfToF32(x[b + 1].d);
    acc0 = hn::MulAdd(hn::Set(df, s0), hn::ConvertTo(df, BlockSum(w[b], x[b])), acc0);
    acc1 = hn::MulAdd(hn::Set(df, s1), hn::ConvertTo(df, BlockSum(w[b + 1], x[b + 1])), acc1);
  }
  if (b < nb) {
    const float s = HalfToF32(w[b].d) * HalfToF32(x[b].d);
    acc0 = hn::MulAdd(hn::Set(df, s), hn::ConvertTo(df, BlockSum(w[b], x[b])), acc0);
  }
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
}

// Armv8.2's optional dot product instruction (sdot: 16 int8 x int8 products
// summed into 4 int32 lanes, where the widening path above takes 4
// instructions) is not assumed by Highway's NEON target. These functions are
// compiled for it and called only when the CPU reports it (HWCAP_ASIMDDP),
// from the NEON and the SVE targets alike (SVE's own widening path is the
// fallback on SVE cores without it).
#undef ENGRAM_ARM_DOTPROD
#if HWY_ARCH_ARM_A64 && (HWY_TARGET == HWY_NEON || ENGRAM_TARGET_IS_SVE)
#define ENGRAM_ARM_DOTPROD 1
#define ENGRAM_DOTPROD_ATTR __attribute__((target("arch=armv8.2-a+dotprod")))

constexpr unsigned long kHwcapAsimdDp = 1UL << 20;  // HWCAP_ASIMDDP of the kernel's asm/hwcap.h

HWY_INLINE bool CpuHasDotProd() {
  static const bool has = (getauxval(AT_HWCAP) & kHwcapAsimdDp) != 0;
  return has;
}

ENGRAM_DOTPROD_ATTR inline int32x4_t BlockDotProd(const BlockQ8_0& w, const BlockQ8_0& x) {
  const int32x4_t sum = vdotq_s32(vdupq_n_s32(0), vld1q_s8(w.qs), vld1q_s8(x.qs));
  return vdotq_s32(sum, vld1q_s8(w.qs + 16), vld1q_s8(x.qs + 16));
}

// Q4_0: low nibbles are elements 0..15, high nibbles 16..31; q - 8 signed.
ENGRAM_DOTPROD_ATTR inline int32x4_t BlockDotProd(const BlockQ4_0& w, const BlockQ8_0& x) {
  const uint8x16_t packed = vld1q_u8(w.qs);
  const int8x16_t eight = vdupq_n_s8(8);
  const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0F))), eight);
  const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), eight);
  const int32x4_t sum = vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(x.qs));
  return vdotq_s32(sum, hi, vld1q_s8(x.qs + 16));
}

ENGRAM_DOTPROD_ATTR inline float HalfBitsToF32(uint16_t h) {
  __fp16 f;
  std::memcpy(&f, &h, sizeof f);
  return static_cast<float>(f);
}

// DotQ8T with sdot: the same exact block sums, two float accumulators.
template <class Block>
ENGRAM_DOTPROD_ATTR HWY_NOINLINE float DotQ8DotProd(const Block* HWY_RESTRICT w, const BlockQ8_0* HWY_RESTRICT x,
                                                    size_t nb) {
  float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
  for (size_t b = 0; b < nb; ++b) {
    const float scale = HalfBitsToF32(w[b].d) * HalfBitsToF32(x[b].d);
    acc[b % 2] = vfmaq_n_f32(acc[b % 2], vcvtq_f32_s32(BlockDotProd(w[b], x[b])), scale);
  }
  return vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}
#else
#define ENGRAM_ARM_DOTPROD 0
#endif

bool UsesArmDotProdImpl() {
#if ENGRAM_ARM_DOTPROD
  return CpuHasDotProd();
#else
  return false;
#endif
}

// ---- K-quant weights with Q8_K activations (super-blocks of 256) ----

// Q4_K: value = d * sc[j] * q - dmin * m[j] for sub-block j of 32. With
// x = xd * xq: sum = xd * (d * sum_j sc[j] * (q . xq)_j - dmin * sum_j m[j] * sum(xq)_j).
HWY_INLINE float SuperBlockDot(const BlockQ4_K& w, const BlockQ8_K& x) {
  const DI16 d16;
  const DI32 d32;
  const DF32 df;
  const size_t N = hn::Lanes(d16);
  auto acc = hn::Zero(d32);
  int32_t min_sum = 0;
  for (int j = 0; j < kQK_K / 32; ++j) {
    uint8_t sc, m;
    k_scale_min(j, w.scales, &sc, &m);
    min_sum += m * (x.bsums[2 * j] + x.bsums[2 * j + 1]);
    const uint8_t* q = w.qs + 32 * (j / 2);  // chunk of 64 values: low nibbles then high
    const int8_t* xq = x.qs + 32 * j;
    auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
    for (size_t l = 0; l < 32; l += N) {
      const auto wq = (j % 2) ? LoadNibbles<true>(d16, q + l) : LoadNibbles<false>(d16, q + l);
      sum0 = hn::ReorderWidenMulAccumulate(d32, wq, LoadI8AsI16(d16, xq + l), sum0, sum1);
    }
    acc = hn::Add(acc, hn::Mul(hn::Add(sum0, sum1), hn::Set(d32, sc)));
  }
  const float d = HalfToF32(w.d) * x.d;
  const float dmin = HalfToF32(w.dmin) * x.d;
  return hn::GetLane(hn::SumOfLanes(df, hn::Mul(hn::Set(df, d), hn::ConvertTo(df, acc)))) -
         dmin * static_cast<float>(min_sum);
}

// acc + scale * dot(q, xq) lane-wise, for one quarter of a Q6_K half block.
HWY_INLINE hn::Vec<DI32> AccumulateQ6Quarter(hn::Vec<DI16> q, const int8_t* xq, int8_t scale, hn::Vec<DI32> acc) {
  const DI16 d16;
  const DI32 d32;
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  sum0 = hn::ReorderWidenMulAccumulate(d32, q, LoadI8AsI16(d16, xq), sum0, sum1);
  return hn::Add(acc, hn::Mul(hn::Add(sum0, sum1), hn::Set(d32, scale)));
}

// Q6_K: value = d * scales[g] * (q - 32) for group g of 16, q 6 bits split
// into ql nibbles and qh bit pairs (see blocks.h).
HWY_INLINE float SuperBlockDot(const BlockQ6_K& w, const BlockQ8_K& x) {
  const DI16 d16;
  const DI32 d32;
  const DF32 df;
  const hn::RebindToUnsigned<DI16> du16;
  const hn::Rebind<uint8_t, DI16> d8;
  const size_t N = hn::Lanes(d16);
  const auto low4 = hn::Set(du16, 0xF), low2 = hn::Set(du16, 3);
  const auto bias = hn::Set(d16, 32);
  auto acc = hn::Zero(d32);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = w.ql + 64 * h;
    const uint8_t* qh = w.qh + 32 * h;
    const int8_t* sc = w.scales + 8 * h;
    const int8_t* xq = x.qs + 128 * h;
    for (size_t l = 0; l < 32; l += N) {
      const auto lo = hn::PromoteTo(du16, hn::LoadU(d8, ql + l));
      const auto lo32 = hn::PromoteTo(du16, hn::LoadU(d8, ql + 32 + l));
      const auto hi = hn::PromoteTo(du16, hn::LoadU(d8, qh + l));
      // Four named vectors, not an array: SVE vectors are sizeless types and
      // cannot be array elements (the aarch64 build would not compile).
      const auto q0 = hn::Sub(hn::BitCast(d16, hn::Or(hn::And(lo, low4), hn::ShiftLeft<4>(hn::And(hi, low2)))), bias);
      const auto q1 = hn::Sub(
          hn::BitCast(d16, hn::Or(hn::And(lo32, low4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(hi), low2)))), bias);
      const auto q2 = hn::Sub(
          hn::BitCast(d16, hn::Or(hn::ShiftRight<4>(lo), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(hi), low2)))), bias);
      const auto q3 =
          hn::Sub(hn::BitCast(d16, hn::Or(hn::ShiftRight<4>(lo32), hn::ShiftLeft<4>(hn::ShiftRight<6>(hi)))), bias);
      const int group = static_cast<int>(l / 16);  // N <= 16 divides 16: one scale per vector
      acc = AccumulateQ6Quarter(q0, xq + l, sc[group], acc);
      acc = AccumulateQ6Quarter(q1, xq + 32 + l, sc[group + 2], acc);
      acc = AccumulateQ6Quarter(q2, xq + 64 + l, sc[group + 4], acc);
      acc = AccumulateQ6Quarter(q3, xq + 96 + l, sc[group + 6], acc);
    }
  }
  const float d = HalfToF32(w.d) * x.d;
  return hn::GetLane(hn::SumOfLanes(df, hn::Mul(hn::Set(df, d), hn::ConvertTo(df, acc))));
}

template <class Block>
HWY_INLINE float DotQ8KT(const Block* HWY_RESTRICT w, const BlockQ8_K* HWY_RESTRICT x, size_t nb) {
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b) sum += SuperBlockDot(w[b], x[b]);
  return sum;
}

// ---- x86 (AVX2 / AVX-512): byte multiplies ----
//
// AVX2's vpmaddubsw multiplies 32 unsigned x signed byte pairs and adds
// neighbours into int16, twice the work per instruction of the int16 path
// above. Signed weights use the sign trick: w * x == |w| * (x * sign(w)),
// with |w| read as unsigned. The int16 pair sums cannot saturate because
// activations are in [-127, 127] (quantize_activations never yields -128):
// |w| <= 128 gives at most 2 * 128 * 127 = 32512, unsigned nibbles
// (<= 15) or 6-bit quants (<= 63) far less. Every sum below is therefore the
// exact integer block sum, as on the generic path. 256-bit vectors: one Q8_0
// block or one sub-block of 32 per register.
#undef ENGRAM_X86_BYTE_DOT
#undef ENGRAM_X86_PAIR_MATVEC
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL || \
    (defined(HWY_AVX3_ZEN4) && HWY_TARGET == HWY_AVX3_ZEN4) || (defined(HWY_AVX3_SPR) && HWY_TARGET == HWY_AVX3_SPR)
#define ENGRAM_X86_BYTE_DOT 1

// int32 lanes, each the sum of 4 neighbouring products w[i] * x[i] (signed
// bytes; x != -128).
HWY_INLINE __m256i SignedByteDot(__m256i w, __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

HWY_INLINE __m256i LoadBytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Integer block sums w . x in int32 lanes, per weight block type. Setup(x)
// is computed once per activation block and shared by all weight rows.
template <class Block>
struct BlockDotX86;

template <>
struct BlockDotX86<BlockQ8_0> {
  static HWY_INLINE __m256i Setup(__m256i) { return _mm256_setzero_si256(); }
  static HWY_INLINE __m256i Sum(const BlockQ8_0& w, __m256i x, __m256i) { return SignedByteDot(LoadBytes(w.qs), x); }
};

// Q4_0: the unsigned nibbles q in [0, 15] multiply x directly and the -8
// offset is subtracted once per activation block: (q - 8) . x = q . x - 8 sum(x).
// Low nibbles are elements 0..15, high nibbles 16..31.
template <>
struct BlockDotX86<BlockQ4_0> {
  static HWY_INLINE __m256i Setup(__m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(8), x), _mm256_set1_epi16(1));
  }
  static HWY_INLINE __m256i Sum(const BlockQ4_0& w, __m256i x, __m256i eight_x) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs));
    const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0xF));
    const __m256i qx = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
    return _mm256_sub_epi32(qx, eight_x);
  }
};

HWY_INLINE float HalfToF32X86(uint16_t h) { return _cvtsh_ss(h); }

HWY_INLINE float SumLanes(__m128 s4) {
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

HWY_INLINE float SumLanes(__m256 v) {
  return SumLanes(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

// acc + (w . x) * w.d * xd for one block; x's quants xq, their Setup and
// its scale xd.
template <class Block>
HWY_INLINE __m256 BlockStepQ8X86(const Block& w, __m256i xq, __m256i setup, float xd, __m256 acc) {
  const __m256 sum = _mm256_cvtepi32_ps(BlockDotX86<Block>::Sum(w, xq, setup));
  return _mm256_fmadd_ps(_mm256_set1_ps(HalfToF32X86(w.d) * xd), sum, acc);
}

// What a matrix-vector product needs of an activation block besides its
// quants, computed once for all rows instead of once per row.
struct PreparedQ8_0 {
  int32_t setup[8];  // BlockDotX86<Block>::Setup(quants)
  float d;           // the scale as float
};

// How far ahead of the multiply-adds the weights are prefetched. Measured on
// 1B models (alternating runs): 4 KiB beat 2 KiB by ~10% for Q8_0 and was
// at least as fast for Q4_0; 8 KiB was mixed for Q4_0.
constexpr size_t kPrefetchBytes = 4096;

// Prefetches the `bytes` bytes at p + kPrefetchBytes: a matrix-vector
// product streams its rows once, contiguously, so this runs on into the
// rows after the current one.
HWY_INLINE void PrefetchAhead(const void* p, size_t bytes) {
  const char* ahead = static_cast<const char*>(p) + kPrefetchBytes;
  for (size_t line = 0; line < bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
}

// One row of nb Q8_0 / Q4_0 blocks . x (`prepared`: null, or x's
// PreparedQ8_0 for this Block, and then Q4_0 weights are prefetched). Four
// accumulators, blocks taken round-robin: with one, every block waits for
// the previous block's fused multiply-add (4 cycles of latency), and
// generation was bound by that chain at 60% of the memory bandwidth.
template <class Block>
HWY_INLINE float DotRowQ8X86(const Block* HWY_RESTRICT w, const BlockQ8_0* HWY_RESTRICT x, size_t nb,
                             const PreparedQ8_0* HWY_RESTRICT prepared = nullptr) {
  constexpr size_t kAcc = 4;
  __m256 acc[kAcc];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  const auto step = [&](size_t b, __m256 sum) {
    const __m256i xq = LoadBytes(x[b].qs);
    if (prepared != nullptr) {
      return BlockStepQ8X86(w[b], xq, LoadBytes(prepared[b].setup), prepared[b].d, sum);
    }
    return BlockStepQ8X86(w[b], xq, BlockDotX86<Block>::Setup(xq), HalfToF32X86(x[b].d), sum);
  };
  size_t b = 0;
  for (; b + kAcc <= nb; b += kAcc) {
    // Measured on 1B models (AVX2, tg64): Q4_0 +7%, Q8_0 -2.5%.
    if constexpr (std::is_same_v<Block, BlockQ4_0>) {
      if (prepared != nullptr) PrefetchAhead(w + b, kAcc * sizeof(Block));
    }
    for (size_t k = 0; k < kAcc; ++k) acc[k] = step(b + k, acc[k]);
  }
  for (; b < nb; ++b) acc[0] = step(b, acc[0]);
  return SumLanes(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define ENGRAM_X86_PAIR_MATVEC 1
// AVX3_DL (built because CMake defines HWY_WANT_AVX3_DL for this file) has
// AVX-512 VNNI: vpdpbusd adds four u8 x s8 products into an int32 lane, one
// instruction where vpmaddubsw + vpmaddwd + an add took three. Highway's
// AVX3_DL attribute names avxvnni (the VEX form), hence the extra one.
#undef ENGRAM_PAIR_ATTR
#if HWY_TARGET == HWY_AVX3_DL
#define ENGRAM_PAIR_ATTR __attribute__((target("avx512vnni")))
#else
#define ENGRAM_PAIR_ATTR
#endif

// start + the sums of each int32 lane's four u * s byte products (u
// unsigned, s signed; exact: vpmaddubsw's int16 pairs cannot saturate for
// the |u| <= 128, |s| <= 127 of these products).
ENGRAM_PAIR_ATTR HWY_INLINE __m512i AddByteDots(__m512i start, __m512i u, __m512i s) {
#if HWY_TARGET == HWY_AVX3_DL
  return _mm512_dpbusd_epi32(start, u, s);
#else
  return _mm512_add_epi32(start, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#endif
}

// AVX-512: two blocks per 512-bit vector. Everything that depends only on
// the activations (their quants in the weights' lane order, Q4_0's offset
// sums, the scale of each lane) is prepared once per product; per row and
// pair of blocks what remains is unpacking the weights, one multiply-add
// pair, the two weight scales and one fused multiply-add.
// Plain arrays, read with unaligned loads: a std::vector of vector types
// is not guaranteed 64-byte alignment here.
struct PreparedPair {
  int8_t q[64];       // activation quants, in the lane order of PairLayout
  int32_t setup[16];  // Q4_0: -8 * the sum of each int32 lane's four quants
  float d[16];        // int32 lane i's activation scale
};

template <class Block>
struct PairLayout;

// Q8_0: lanes [block 0: 0..31 | block 1: 0..31]; int32 lanes 8-15 are block 1.
template <>
struct PairLayout<BlockQ8_0> {
  static constexpr __mmask16 kSecond = 0xFF00;
  static HWY_INLINE __m512i Activations(const BlockQ8_0& x0, const BlockQ8_0& x1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(LoadBytes(x0.qs)), LoadBytes(x1.qs), 1);
  }
  static ENGRAM_PAIR_ATTR HWY_INLINE __m512i Sum(const BlockQ8_0* w, const PreparedPair& p) {
    const __m512i wq = Activations(w[0], w[1]);  // the same layout
    const __mmask64 negative = _mm512_movepi8_mask(wq);
    const __m512i xq = _mm512_loadu_si512(p.q);
    const __m512i xs = _mm512_mask_sub_epi8(xq, negative, _mm512_setzero_si512(), xq);
    return AddByteDots(_mm512_setzero_si512(), _mm512_abs_epi8(wq), xs);
  }
};

// Q4_0: 128-bit lanes [block 0: 0..15 | block 1: 0..15 | block 0: 16..31 |
// block 1: 16..31], the order in which the packed nibbles unpack; int32
// lanes 4-7 and 12-15 are block 1.
template <>
struct PairLayout<BlockQ4_0> {
  static constexpr __mmask16 kSecond = 0xF0F0;
  static HWY_INLINE __m512i Activations(const BlockQ8_0& x0, const BlockQ8_0& x1) {
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(LoadBytes(x0.qs)), LoadBytes(x1.qs), 1);
    return _mm512_permutexvar_epi64(_mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0), both);
  }
  static ENGRAM_PAIR_ATTR HWY_INLINE __m512i Sum(const BlockQ4_0* w, const PreparedPair& p) {
    const __m256i packed = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[0].qs))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[1].qs)), 1);
    const __m512i nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(packed), _mm256_srli_epi16(packed, 4), 1);
    const __m512i q = _mm512_and_si512(nibbles, _mm512_set1_epi8(0x0F));
    return AddByteDots(_mm512_loadu_si512(p.setup), q, _mm512_loadu_si512(p.q));
  }
};

// int32 lane i: the scale of the block lane i belongs to.
template <class Block>
HWY_INLINE __m512 PairScales(uint16_t d0, uint16_t d1) {
  const __m256i halves = _mm256_mask_set1_epi16(_mm256_set1_epi16(static_cast<int16_t>(d0)),
                                                PairLayout<Block>::kSecond, static_cast<int16_t>(d1));
  return _mm512_cvtph_ps(halves);
}

template <class Block>
HWY_INLINE void PreparePairs(const BlockQ8_0* x, size_t n_pairs, PreparedPair* out) {
  for (size_t i = 0; i < n_pairs; ++i) {
    const BlockQ8_0& x0 = x[2 * i];
    const BlockQ8_0& x1 = x[2 * i + 1];
    const __m512i q = PairLayout<Block>::Activations(x0, x1);
    _mm512_storeu_si512(out[i].q, q);
    if constexpr (std::is_same_v<Block, BlockQ4_0>) {  // Q8_0's Sum reads no setup
      const __m512i eight_x = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_set1_epi8(8), q), _mm512_set1_epi16(1));
      _mm512_storeu_si512(out[i].setup, _mm512_sub_epi32(_mm512_setzero_si512(), eight_x));
    }
    _mm512_storeu_ps(out[i].d, PairScales<Block>(x0.d, x1.d));
  }
}

// sum + pair i of a row . its prepared activations.
template <class Block>
ENGRAM_PAIR_ATTR HWY_INLINE __m512 PairStep(const Block* HWY_RESTRICT row, const PreparedPair& p, size_t i,
                                            __m512 sum) {
  const __m512 scale = _mm512_mul_ps(PairScales<Block>(row[2 * i].d, row[2 * i + 1].d), _mm512_loadu_ps(p.d));
  return _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(PairLayout<Block>::Sum(row + 2 * i, p)), sum);
}

// Rows [begin, end) . x with pairs prepared; an odd last block on 256 bits.
// Not inlined: it carries the VNNI attribute its callers lack.
template <class Block>
ENGRAM_PAIR_ATTR HWY_NOINLINE void MatVecPairs(const uint8_t* HWY_RESTRICT w, size_t row_size,
                                               const BlockQ8_0* HWY_RESTRICT x, size_t nb, float* HWY_RESTRICT y,
                                               size_t begin, size_t end) {
  thread_local std::vector<PreparedPair> prepared;
  const size_t n_pairs = nb / 2;
  prepared.resize(n_pairs);
  PreparePairs<Block>(x, n_pairs, prepared.data());
  const PreparedPair* p = prepared.data();
  for (size_t o = begin; o < end; ++o) {
    const Block* row = reinterpret_cast<const Block*>(w + o * row_size);
    constexpr size_t kAcc = 4;  // independent chains: see DotRowQ8X86
    __m512 acc[kAcc];
    for (__m512& a : acc) a = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + kAcc <= n_pairs; i += kAcc) {
      PrefetchAhead(row + 2 * i, kAcc * 2 * sizeof(Block));
      for (size_t k = 0; k < kAcc; ++k) acc[k] = PairStep(row, p[i + k], i + k, acc[k]);
    }
    for (; i < n_pairs; ++i) acc[0] = PairStep(row, p[i], i, acc[0]);
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    if (nb % 2 != 0) sum += DotRowQ8X86(row + nb - 1, x + nb - 1, 1);
    y[o - begin] = sum;
  }
}
#else
#define ENGRAM_X86_PAIR_MATVEC 0
#endif

// y[o - begin] = row o . x for rows [begin, end) of Q8_0 / Q4_0 weights.
template <class Block>
HWY_INLINE void MatVecQ8_0X86(const uint8_t* HWY_RESTRICT w, size_t row_size, const BlockQ8_0* HWY_RESTRICT x,
                              size_t nb, float* HWY_RESTRICT y, size_t begin, size_t end) {
#if ENGRAM_X86_PAIR_MATVEC
  if (nb >= 2) return MatVecPairs<Block>(w, row_size, x, nb, y, begin, end);
#endif
  thread_local std::vector<PreparedQ8_0> prepared;
  prepared.resize(nb);
  for (size_t b = 0; b < nb; ++b) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(prepared[b].setup), BlockDotX86<Block>::Setup(LoadBytes(x[b].qs)));
    prepared[b].d = HalfToF32X86(x[b].d);
  }
  for (size_t o = begin; o < end; ++o) {
    y[o - begin] = DotRowQ8X86(reinterpret_cast<const Block*>(w + o * row_size), x, nb, prepared.data());
  }
}

// Bytes (2j, 2j+1) of every 128-bit lane, repeated: with _mm256_shuffle_epi8,
// broadcasts int16 element j of each lane (j < 8) over that lane.
HWY_INLINE __m256i BroadcastI16Mask(int lo_j, int hi_j) {
  const auto mask = [](int j) { return _mm_set1_epi16(static_cast<int16_t>((2 * j + 1) << 8 | 2 * j)); };
  return _mm256_set_m128i(mask(hi_j), mask(lo_j));
}

// The eight 6-bit scales and mins of a Q4_K super-block (see k_scale_min),
// each as int16 lanes 0-7.
struct Q4_KScalesX86 {
  __m128i sc, m;
};

HWY_INLINE Q4_KScalesX86 DecodeScalesX86(const BlockQ4_K& w) {
  // Four 6-bit values per 32-bit word. Scalar on purpose: the integer units
  // are idle here, and DecodeScalesX512's decode in vector registers measured
  // 5-7% slower generation on AVX2, whose vector ports are the bottleneck.
  uint32_t packed[3];
  std::memcpy(packed, w.scales, sizeof packed);
  const uint32_t sc_lo = packed[0] & 0x3F3F3F3F;
  const uint32_t m_lo = packed[1] & 0x3F3F3F3F;
  const uint32_t sc_hi = (packed[2] & 0x0F0F0F0F) | ((packed[0] & 0xC0C0C0C0) >> 2);
  const uint32_t m_hi = ((packed[2] >> 4) & 0x0F0F0F0F) | ((packed[1] & 0xC0C0C0C0) >> 2);
  return {_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(sc_hi), static_cast<int>(sc_lo))),
          _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, static_cast<int>(m_hi), static_cast<int>(m_lo)))};
}

// m[j] * (bsums[2j] + bsums[2j + 1]) in int32 lane j: the mins term of a
// Q4_K super-block before its dmin * x.d.
HWY_INLINE __m256i MinSumsX86(__m128i m16, const BlockQ8_K& x) {
  const __m256i m_pairs = _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
  return _mm256_madd_epi16(LoadBytes(x.bsums), m_pairs);
}

// A half-precision block scale times the activations' scale, in every lane:
// a broadcast half, one conversion, one multiply, where the scalar route
// (convert, multiply, broadcast) took seven instructions in kernels bound by
// their instruction count.
HWY_INLINE __m256 ScaleX86(uint16_t half, float x_scale) {
  return _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16(static_cast<int16_t>(half))), _mm256_set1_ps(x_scale));
}

// Q4_K: acc += d * sum_j sc[j] (q . xq)_j - dmin * sum_j m[j] sum(xq)_j, the
// integer sums exact in int32 lanes (as the generic SuperBlockDot).
HWY_INLINE __m256 SuperBlockDotX86(const BlockQ4_K& w, const BlockQ8_K& x, __m256 acc) {
  const Q4_KScalesX86 decoded = DecodeScalesX86(w);
  const __m256i mins = MinSumsX86(decoded.m, x);
  const __m256i scales = _mm256_broadcastsi128_si256(decoded.sc);
  const __m256i low4 = _mm256_set1_epi8(0xF);
  __m256i sums = _mm256_setzero_si256();
  for (int c = 0; c < 4; ++c) {  // chunks of 64: sub-blocks 2c (low nibbles) and 2c + 1 (high)
    const __m256i q = LoadBytes(w.qs + 32 * c);
    const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(q, low4), LoadBytes(x.qs + 64 * c));
    const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), LoadBytes(x.qs + 64 * c + 32));
    sums = _mm256_add_epi32(sums, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(scales, BroadcastI16Mask(2 * c, 2 * c))));
    sums = _mm256_add_epi32(sums, _mm256_madd_epi16(p1, _mm256_shuffle_epi8(scales, BroadcastI16Mask(2 * c + 1, 2 * c + 1))));
  }
  acc = _mm256_fmadd_ps(ScaleX86(w.d, x.d), _mm256_cvtepi32_ps(sums), acc);
  return _mm256_fnmadd_ps(ScaleX86(w.dmin, x.d), _mm256_cvtepi32_ps(mins), acc);
}

// Q6_K: acc += d * sum_g sc[g] ((q . xq)_g - 32 sum(xq)_g) with q in [0, 63]
// unsigned; the -32 bias comes from the activation group sums (bsums).
HWY_INLINE __m256 SuperBlockDotX86(const BlockQ6_K& w, const BlockQ8_K& x, __m256 acc) {
  const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
  const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
  const __m256i bias = _mm256_madd_epi16(LoadBytes(x.bsums), sc16);  // sc[g] * bsums[g], pairs of groups
  const __m256i low4 = _mm256_set1_epi8(0xF), bits45 = _mm256_set1_epi8(0x30);
  __m256i sums = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    // Groups 8h .. 8h + 7 as int16, in both 128-bit lanes.
    const __m256i scales = _mm256_broadcastsi128_si256(h ? _mm256_extracti128_si256(sc16, 1) : _mm256_castsi256_si128(sc16));
    const __m256i l0 = LoadBytes(w.ql + 64 * h), l1 = LoadBytes(w.ql + 64 * h + 32);
    const __m256i hb = LoadBytes(w.qh + 32 * h);
    const __m256i q[4] = {
        _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), bits45)),
        _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), bits45)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(hb, bits45)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), bits45))};
    for (int k = 0; k < 4; ++k) {  // values 128h + 32k + l: groups 8h + 2k (l < 16) and 8h + 2k + 1
      const __m256i p = _mm256_maddubs_epi16(q[k], LoadBytes(x.qs + 128 * h + 32 * k));
      sums = _mm256_add_epi32(sums, _mm256_madd_epi16(p, _mm256_shuffle_epi8(scales, BroadcastI16Mask(2 * k, 2 * k + 1))));
    }
  }
  sums = _mm256_sub_epi32(sums, _mm256_slli_epi32(bias, 5));
  return _mm256_fmadd_ps(ScaleX86(w.d, x.d), _mm256_cvtepi32_ps(sums), acc);
}

template <class Block>
HWY_INLINE float DotQ8KX86(const Block* HWY_RESTRICT w, const BlockQ8_K* HWY_RESTRICT x, size_t nb) {
  // Two accumulators, as in DotRowQ8X86: each super-block ends in two
  // dependent fused multiply-adds. Named, not acc[b % 2]: an array indexed at
  // run time lives on the stack, a store and a reload per super-block.
  __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
  size_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    even = SuperBlockDotX86(w[b], x[b], even);
    odd = SuperBlockDotX86(w[b + 1], x[b + 1], odd);
  }
  if (b < nb) even = SuperBlockDotX86(w[b], x[b], even);
  return SumLanes(_mm256_add_ps(even, odd));
}

#if ENGRAM_X86_PAIR_MATVEC
// AVX-512 products of K-quant super-blocks, 64 quants per vector. With
// 256-bit vectors, generation of Q4_K models ran at the speed of Q8_0 ones
// while reading 58% of the bytes: bound by the instructions, not the memory.

// A row's running sums: d-scaled (acc) and, for Q4_K, dmin-scaled (mins).
struct SuperBlockSums {
  __m512 acc;
  __m128 mins;
};

// Q4_K. The 64 bytes at qs + 64h hold sub-blocks 4h (low nibbles of the
// first 32 bytes), 4h + 1 (their high nibbles), 4h + 2 and 4h + 3 (the same of
// the next 32). The activations are put in that order once per product.
struct PreparedQ4_K {
  int8_t q[4][64];  // [2h + n]: the activations of sub-blocks 4h + n and 4h + 2 + n
  int16_t sums[8];  // [j]: the sum of sub-block j's activations (at most 32 * 128)
};

HWY_INLINE void PrepareQ4_K(const BlockQ8_K* HWY_RESTRICT x, size_t nb, PreparedQ4_K* HWY_RESTRICT out) {
  for (size_t b = 0; b < nb; ++b) {
    for (int h = 0; h < 2; ++h) {
      for (int n = 0; n < 2; ++n) {
        std::memcpy(out[b].q[2 * h + n], x[b].qs + 32 * (4 * h + n), 32);
        std::memcpy(out[b].q[2 * h + n] + 32, x[b].qs + 32 * (4 * h + 2 + n), 32);
      }
    }
    for (int j = 0; j < 8; ++j) out[b].sums[j] = static_cast<int16_t>(x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
  }
}

// vpshufb mask: int16 element lo_j of the sub-block scales in the low 256
// bits, hi_j in the high 256 bits (the scales broadcast to every 128-bit lane).
HWY_INLINE __m512i BroadcastI16Mask512(int lo_j, int hi_j) {
  const auto mask = [](int j) { return _mm256_set1_epi16(static_cast<int16_t>((2 * j + 1) << 8 | 2 * j)); };
  return _mm512_inserti64x4(_mm512_castsi256_si512(mask(lo_j)), mask(hi_j), 1);
}

// DecodeScalesX86 in vector registers, for the AVX-512 product: there it
// measured faster than the scalar decode (1B Q4_K_M tg64 +1-6%), whose
// stack round trip and lane inserts sit in the dependency chain of each
// super-block. Bytes s[0..11]; byte j of the result is sc[j], 8 + j is m[j]:
//   j < 4:  sc = s[j] & 63,        m = s[j + 4] & 63
//   j >= 4: sc = s[j + 4] & 15 | (s[j - 4] >> 6) << 4,
//           m  = s[j + 4] >> 4 | (s[j] >> 6) << 4
// (16 bytes loaded from s: the quants follow the 12 scale bytes).
HWY_INLINE Q4_KScalesX86 DecodeScalesX512(const BlockQ4_K& w) {
  const __m128i s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
  const __m128i low = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  // Dword 3 takes the high nibbles of s[8..11] (a 16-bit shift, masked below).
  const __m128i nibbles = _mm_blend_epi32(low, _mm_srli_epi16(low, 4), 0b1000);
  const __m128i low_bits =
      _mm_and_si128(nibbles, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
  const __m128i top = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  const __m128i high_bits = _mm_srli_epi16(_mm_and_si128(top, _mm_set1_epi8(static_cast<char>(0xC0))), 2);
  const __m128i bytes = _mm_or_si128(low_bits, high_bits);
  return {_mm_cvtepu8_epi16(bytes), _mm_cvtepu8_epi16(_mm_srli_si128(bytes, 8))};
}

// Per 128-bit lane L (of 4): int16 elements 0-3 = scale a(L), 4-7 = b(L),
// where lanes 0-1 take a0, b0 and lanes 2-3 take a1, b1: a vpshufb mask over
// eight int16 scales held in every 128-bit lane.
HWY_INLINE __m512i SplitScaleMask512(int a0, int b0, int a1, int b1) {
  const auto lane = [](int a, int b) {
    const auto pair = [](int j) { return static_cast<int16_t>((2 * j + 1) << 8 | 2 * j); };
    return _mm256_broadcastsi128_si256(
        _mm_setr_epi16(pair(a), pair(a), pair(a), pair(a), pair(b), pair(b), pair(b), pair(b)));
  };
  return _mm512_inserti64x4(_mm512_castsi256_si512(lane(a0, b0)), lane(a1, b1), 1);
}

// ScaleX86 in 16 lanes.
HWY_INLINE __m512 ScaleX512(uint16_t half, float x_scale) {
  return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_set1_epi16(static_cast<int16_t>(half))), _mm512_set1_ps(x_scale));
}

ENGRAM_PAIR_ATTR HWY_INLINE void SuperBlockStepX512(const BlockQ4_K& w, const BlockQ8_K& x, const PreparedQ4_K& p,
                                                    SuperBlockSums& sums) {
  const Q4_KScalesX86 decoded = DecodeScalesX512(w);
  const __m512i scales = _mm512_broadcast_i32x4(decoded.sc);
  const __m512i low4 = _mm512_set1_epi8(0xF);
  __m512i dots = _mm512_setzero_si512();
  for (int h = 0; h < 2; ++h) {
    const __m512i q = _mm512_loadu_si512(w.qs + 64 * h);
    const __m512i lo = _mm512_and_si512(q, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
#if HWY_TARGET == HWY_AVX3_DL
    // Four products per int32 lane (at most 4 * 15 * 128: exact in int16),
    // packed to int16 beside the other nibbles' and weighted by the scales
    // in one vpdpwssd: 8 instructions per 64 bytes where 13 were.
    const __m512i lo_sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(p.q[2 * h]));
    const __m512i hi_sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, _mm512_loadu_si512(p.q[2 * h + 1]));
    const __m512i sc = _mm512_shuffle_epi8(scales, SplitScaleMask512(4 * h, 4 * h + 1, 4 * h + 2, 4 * h + 3));
    dots = _mm512_dpwssd_epi32(dots, _mm512_packs_epi32(lo_sums, hi_sums), sc);
#else
    const __m512i p_lo = _mm512_maddubs_epi16(lo, _mm512_loadu_si512(p.q[2 * h]));
    const __m512i p_hi = _mm512_maddubs_epi16(hi, _mm512_loadu_si512(p.q[2 * h + 1]));
    const __m512i sc_lo = _mm512_shuffle_epi8(scales, BroadcastI16Mask512(4 * h, 4 * h + 2));
    const __m512i sc_hi = _mm512_shuffle_epi8(scales, BroadcastI16Mask512(4 * h + 1, 4 * h + 3));
    dots = _mm512_add_epi32(dots, _mm512_madd_epi16(p_lo, sc_lo));
    dots = _mm512_add_epi32(dots, _mm512_madd_epi16(p_hi, sc_hi));
#endif
  }
  // With d and dmin widened in vector registers (ScaleX512) and the sub-block
  // sums prepared once per product (not paired up from bsums per row), a
  // 1 MiB product in cache ran 12% faster (37.3 -> 32.6 us).
  const __m512 d = ScaleX512(w.d, x.d);
  const __m128 dmin = _mm_mul_ps(_mm_cvtph_ps(_mm_set1_epi16(static_cast<int16_t>(w.dmin))), _mm_set1_ps(x.d));
  sums.acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dots), sums.acc);
  // sum_j m[j] * sum(x)_j, in pairs of sub-blocks per int32 lane.
  const __m128i min_sums = _mm_madd_epi16(decoded.m, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.sums)));
  sums.mins = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(min_sums), sums.mins);
}

// Q6_K. 64 bytes of ql hold the low 4 bits of values 128h + 0..63 (low
// nibbles) and 128h + 64..127 (high nibbles); their high 2 bits are the 32
// bytes of qh at 32h, shifted by lane. So the activations stay in order, and
// 128-bit lane i of a vector is group 8h + i (first) or 8h + 4 + i (second).
struct PreparedQ6_K {};

HWY_INLINE void PrepareQ6_K(const BlockQ8_K*, size_t, PreparedQ6_K*) {}

// int16 lane l: index of the group scale for 128-bit lane l / 8, first at `first`.
HWY_INLINE __m512i GroupScaleIndex(int first) {
  const __m512i quarter = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16(1), _mm_setzero_si128())),
      _mm256_set_m128i(_mm_set1_epi16(3), _mm_set1_epi16(2)), 1);
  return _mm512_add_epi16(quarter, _mm512_set1_epi16(static_cast<int16_t>(first)));
}

// Per-half int16 shift counts: lo in the low 256 bits, hi in the high.
HWY_INLINE __m512i HalfCounts(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(lo)), _mm256_set1_epi16(static_cast<int16_t>(hi)),
                            1);
}

HWY_INLINE void SuperBlockStepX512(const BlockQ6_K& w, const BlockQ8_K& x, const PreparedQ6_K&, SuperBlockSums& sums) {
  const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)));
  const __m512i scales = _mm512_zextsi256_si512(sc16);
  // The -32 offset: 32 * sc[g] * bsums[g], pairs of groups per int32 lane.
  const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(LoadBytes(x.bsums), sc16), 5);
  const __m512i low4 = _mm512_set1_epi8(0xF), bits45 = _mm512_set1_epi8(0x30);
  __m512i dots = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(bias));
  for (int h = 0; h < 2; ++h) {
    const __m512i l = _mm512_loadu_si512(w.ql + 64 * h);
    const __m512i hb = _mm512_broadcast_i64x4(LoadBytes(w.qh + 32 * h));
    const __m512i first = _mm512_or_si512(_mm512_and_si512(l, low4),
                                          _mm512_and_si512(_mm512_sllv_epi16(hb, HalfCounts(4, 2)), bits45));
    const __m512i second = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4),
                                           _mm512_and_si512(_mm512_srlv_epi16(hb, HalfCounts(0, 2)), bits45));
    const __m512i p_first = _mm512_maddubs_epi16(first, _mm512_loadu_si512(x.qs + 128 * h));
    const __m512i p_second = _mm512_maddubs_epi16(second, _mm512_loadu_si512(x.qs + 128 * h + 64));
    dots = _mm512_add_epi32(dots, _mm512_madd_epi16(p_first, _mm512_permutexvar_epi16(GroupScaleIndex(8 * h), scales)));
    dots = _mm512_add_epi32(dots,
                            _mm512_madd_epi16(p_second, _mm512_permutexvar_epi16(GroupScaleIndex(8 * h + 4), scales)));
  }
  sums.acc = _mm512_fmadd_ps(ScaleX512(w.d, x.d), _mm512_cvtepi32_ps(dots), sums.acc);
}

template <class Block>
struct PreparedK;
template <>
struct PreparedK<BlockQ4_K> {
  using type = PreparedQ4_K;
  static HWY_INLINE void Prepare(const BlockQ8_K* x, size_t nb, PreparedQ4_K* out) { PrepareQ4_K(x, nb, out); }
};
template <>
struct PreparedK<BlockQ6_K> {
  using type = PreparedQ6_K;
  static HWY_INLINE void Prepare(const BlockQ8_K* x, size_t nb, PreparedQ6_K* out) { PrepareQ6_K(x, nb, out); }
};

// y[o - begin] = row o . x for rows [begin, end) of Q4_K or Q6_K weights.
// Not inlined: it carries the VNNI attribute its callers lack.
template <class Block>
ENGRAM_PAIR_ATTR HWY_NOINLINE void MatVecSuperBlocksX512(const uint8_t* HWY_RESTRICT w, size_t row_size,
                                                        const BlockQ8_K* HWY_RESTRICT x, size_t nb,
                                                        float* HWY_RESTRICT y, size_t begin, size_t end) {
  using Prepared = typename PreparedK<Block>::type;
  thread_local std::vector<Prepared> prepared;
  prepared.resize(nb);
  PreparedK<Block>::Prepare(x, nb, prepared.data());
  for (size_t o = begin; o < end; ++o) {
    const Block* row = reinterpret_cast<const Block*>(w + o * row_size);
    // Two chains, named as in DotQ8KX86.
    SuperBlockSums even = {_mm512_setzero_ps(), _mm_setzero_ps()}, odd = even;
    const auto step = [&](size_t b, SuperBlockSums& sums) {
      PrefetchAhead(row + b, sizeof(Block));
      SuperBlockStepX512(row[b], x[b], prepared[b], sums);
    };
    size_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      step(b, even);
      step(b + 1, odd);
    }
    if (b < nb) step(b, even);
    y[o - begin] =
        _mm512_reduce_add_ps(_mm512_add_ps(even.acc, odd.acc)) - SumLanes(_mm_add_ps(even.mins, odd.mins));
  }
}
#endif

#else
#define ENGRAM_X86_BYTE_DOT 0
#endif  // x86 byte multiplies

// One row of weights of Block type with quantized activations x (nb blocks).
template <class Block, class XBlock>
HWY_INLINE float DotRowQ8(const Block* HWY_RESTRICT w, const XBlock* HWY_RESTRICT x, size_t nb) {
#if ENGRAM_X86_BYTE_DOT
  if constexpr (std::is_same_v<XBlock, BlockQ8_0>) {
    return DotRowQ8X86(w, x, nb);
  } else {
    return DotQ8KX86(w, x, nb);
  }
#else
  if constexpr (std::is_same_v<XBlock, BlockQ8_0>) {
#if ENGRAM_ARM_DOTPROD
    if (CpuHasDotProd()) return DotQ8DotProd(w, x, nb);
#endif
    return DotQ8T(w, x, nb);
  } else {
    return DotQ8KT(w, x, nb);
  }
#endif
}

// y[o - begin] for rows o in [begin, end) of a weight matrix (row_size bytes
// per row, nb blocks) with one token's quantized activations.
template <class Block, class XBlock>
HWY_INLINE void MatVecQ8T(const uint8_t* HWY_RESTRICT w, size_t row_size, const XBlock* HWY_RESTRICT x, size_t nb,
                          float* HWY_RESTRICT y, size_t begin, size_t end) {
#if ENGRAM_X86_BYTE_DOT
  if constexpr (std::is_same_v<XBlock, BlockQ8_0>) {
    MatVecQ8_0X86<Block>(w, row_size, x, nb, y, begin, end);
    return;
  }
#endif
#if ENGRAM_X86_PAIR_MATVEC
  if constexpr (std::is_same_v<XBlock, BlockQ8_K>) {
    MatVecSuperBlocksX512<Block>(w, row_size, x, nb, y, begin, end);
    return;
  }
#endif
  // One row at a time: interleaving 2 or 4 rows (sharing the activation
  // loads) measured 3-4x slower here (AMD EPYC, tg of a 125M Q8_0 model).
  for (size_t o = begin; o < end; ++o) y[o - begin] = DotRowQ8(reinterpret_cast<const Block*>(w + o * row_size), x, nb);
}

float DotQ4_KQ8Impl(const void* w, const void* x, size_t nb) {
  return DotRowQ8(static_cast<const BlockQ4_K*>(w), static_cast<const BlockQ8_K*>(x), nb);
}
float DotQ6_KQ8Impl(const void* w, const void* x, size_t nb) {
  return DotRowQ8(static_cast<const BlockQ6_K*>(w), static_cast<const BlockQ8_K*>(x), nb);
}

float DotQ8_0Q8Impl(const void* w, const void* x, size_t nb) {
  return DotRowQ8(static_cast<const BlockQ8_0*>(w), static_cast<const BlockQ8_0*>(x), nb);
}
float DotQ4_0Q8Impl(const void* w, const void* x, size_t nb) {
  return DotRowQ8(static_cast<const BlockQ4_0*>(w), static_cast<const BlockQ8_0*>(x), nb);
}

// ---- Activation quantization (Q8_0, Q8_K), bit-exact with the scalar code ----

// Q8_0 as the quant layer's quantize_row: d = amax / 127 and q = x / d
// rounded half away from zero (std::round), which Highway lacks: truncate,
// then step away from zero where the dropped fraction (exact) is >= 1/2.
void QuantizeQ8_0Impl(const float* HWY_RESTRICT x, void* HWY_RESTRICT dst, size_t nb) {
  const hn::CappedTag<float, kQK> d;  // Lanes(d) divides 32: whole vectors per block
  const hn::Rebind<int32_t, decltype(d)> di;
  const hn::Rebind<int8_t, decltype(d)> d8;
  const size_t N = hn::Lanes(d);
  for (size_t b = 0; b < nb; ++b, x += kQK) {
    auto amax = hn::Zero(d);
    for (size_t j = 0; j < static_cast<size_t>(kQK); j += N) amax = hn::Max(amax, hn::Abs(hn::LoadU(d, x + j)));
    const float scale = hn::GetLane(hn::MaxOfLanes(d, amax)) / 127;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    BlockQ8_0 block;
    block.d = fp32_to_fp16(scale);
    for (size_t j = 0; j < static_cast<size_t>(kQK); j += N) {
      const auto v = hn::Mul(hn::LoadU(d, x + j), hn::Set(d, inv));
      const auto t = hn::Trunc(v);
      const auto away = hn::IfThenElseZero(hn::Ge(hn::Abs(hn::Sub(v, t)), hn::Set(d, 0.5f)), hn::CopySign(hn::Set(d, 1.0f), v));
      hn::StoreU(hn::DemoteTo(d8, hn::ConvertTo(di, hn::Add(t, away))), d8, block.qs + j);
    }
    std::memcpy(static_cast<BlockQ8_0*>(dst) + b, &block, sizeof block);
  }
}

// Q8_K as ggml's quantize_row_q8_K_ref: scale -127 / (the first value of
// largest magnitude, signed), round to nearest even, clamp at 127, and the
// sum of each 16 quants.
void QuantizeQ8_KImpl(const float* HWY_RESTRICT x, void* HWY_RESTRICT dst, size_t nb) {
  const hn::CappedTag<float, 16> d;  // Lanes(d) divides 16: whole vectors per group
  const hn::Rebind<int32_t, decltype(d)> di;
  const hn::Rebind<int8_t, decltype(d)> d8;
  const size_t N = hn::Lanes(d);
  for (size_t b = 0; b < nb; ++b, x += kQK_K) {
    BlockQ8_K block{};
    auto amax_v = hn::Zero(d);
    for (size_t j = 0; j < static_cast<size_t>(kQK_K); j += N) amax_v = hn::Max(amax_v, hn::Abs(hn::LoadU(d, x + j)));
    const float amax = hn::GetLane(hn::MaxOfLanes(d, amax_v));
    if (amax != 0.0f) {
      size_t first = 0;
      while (first + 1 < static_cast<size_t>(kQK_K) && std::fabs(x[first]) != amax) ++first;
      const float iscale = -127.0f / x[first];
      for (size_t g = 0; g < static_cast<size_t>(kQK_K) / 16; ++g) {
        auto sum = hn::Zero(di);
        for (size_t j = 16 * g; j < 16 * g + 16; j += N) {
          const auto q = hn::Min(hn::ConvertTo(di, hn::Round(hn::Mul(hn::Set(d, iscale), hn::LoadU(d, x + j)))),
                                 hn::Set(di, 127));
          sum = hn::Add(sum, q);
          hn::StoreU(hn::DemoteTo(d8, q), d8, block.qs + j);
        }
        block.bsums[g] = static_cast<int16_t>(hn::GetLane(hn::SumOfLanes(di, sum)));
      }
      block.d = 1.0f / iscale;
    }
    std::memcpy(static_cast<BlockQ8_K*>(dst) + b, &block, sizeof block);
  }
}

// Rows [begin, end) of a weight matrix of `type` (one of the four above;
// row_size bytes per row of n elements) times one token's activations xq,
// quantized by quantize_activations: y[o - begin].
void MatVecQ8Impl(GgmlType type, const uint8_t* w, size_t row_size, const void* xq, size_t n, float* y, size_t begin,
                  size_t end) {
  switch (type) {
    case GgmlType::Q8_0:
      return MatVecQ8T<BlockQ8_0>(w, row_size, static_cast<const BlockQ8_0*>(xq), n / kQK, y, begin, end);
    case GgmlType::Q4_0:
      return MatVecQ8T<BlockQ4_0>(w, row_size, static_cast<const BlockQ8_0*>(xq), n / kQK, y, begin, end);
    case GgmlType::Q4_K:
      return MatVecQ8T<BlockQ4_K>(w, row_size, static_cast<const BlockQ8_K*>(xq), n / kQK_K, y, begin, end);
    case GgmlType::Q6_K:
      return MatVecQ8T<BlockQ6_K>(w, row_size, static_cast<const BlockQ8_K*>(xq), n / kQK_K, y, begin, end);
    default:
      for (size_t o = begin; o < end; ++o) y[o - begin] = std::numeric_limits<float>::quiet_NaN();
  }
}

int64_t TargetImpl() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace engram::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace engram::kernels {

HWY_EXPORT(DotImpl);
HWY_EXPORT(DotF16Impl);
HWY_EXPORT(DotBF16Impl);
HWY_EXPORT(MaxImpl);
HWY_EXPORT(AxpyImpl);
HWY_EXPORT(ScaleImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(MulImpl);
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(SiluMulImpl);
HWY_EXPORT(F16ToF32Impl);
HWY_EXPORT(BF16ToF32Impl);
HWY_EXPORT(F32ToF16Impl);
HWY_EXPORT(RoundToBF16Impl);
HWY_EXPORT(F32ToBF16Impl);
HWY_EXPORT(DotQ8_0Q8Impl);
HWY_EXPORT(DotQ4_0Q8Impl);
HWY_EXPORT(DotQ4_KQ8Impl);
HWY_EXPORT(DotQ6_KQ8Impl);
HWY_EXPORT(MatVecQ8Impl);
HWY_EXPORT(MatVecHalfImpl);
HWY_EXPORT(MatVecBF16Impl);
HWY_EXPORT(QuantizeQ8_0Impl);
HWY_EXPORT(QuantizeQ8_KImpl);
HWY_EXPORT(TargetImpl);
HWY_EXPORT(UsesArmDotProdImpl);

float dot(const float* a, const float* b, size_t n) { return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n); }
float dot_f16(const uint16_t* a, const float* b, size_t n) { return HWY_DYNAMIC_DISPATCH(DotF16Impl)(a, b, n); }
float dot_bf16(const uint16_t* a, const float* b, size_t n) { return HWY_DYNAMIC_DISPATCH(DotBF16Impl)(a, b, n); }
void axpy(float alpha, const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(AxpyImpl)(alpha, x, y, n); }
void scale(float* x, float alpha, size_t n) { HWY_DYNAMIC_DISPATCH(ScaleImpl)(x, alpha, n); }
void add(const float* a, const float* b, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(AddImpl)(a, b, out, n); }
void mul(const float* a, const float* b, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(MulImpl)(a, b, out, n); }
void rms_norm(const float* x, const float* w, float* out, size_t n, float eps) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, w, out, n, eps);
}
void softmax(float* x, size_t n) { HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }
void silu_mul(const float* gate, const float* up, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMulImpl)(gate, up, out, n);
}
float max_value(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(MaxImpl)(x, n); }
void f16_to_f32(const uint16_t* src, float* dst, size_t n) { HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(src, dst, n); }
void f32_to_f16(const float* src, uint16_t* dst, size_t n) { HWY_DYNAMIC_DISPATCH(F32ToF16Impl)(src, dst, n); }
void round_to_bf16(const float* src, float* dst, size_t n) { HWY_DYNAMIC_DISPATCH(RoundToBF16Impl)(src, dst, n); }
void f32_to_bf16(const float* src, uint16_t* dst, size_t n) { HWY_DYNAMIC_DISPATCH(F32ToBF16Impl)(src, dst, n); }

const char* active_target() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetImpl)()); }

Status limit_targets(std::string_view name) {
  hwy::DisableTargets(0);
  if (name.empty()) return Status::ok();
  const auto same = [](std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
             return std::toupper(static_cast<unsigned char>(x)) == std::toupper(static_cast<unsigned char>(y));
           });
  };
  std::string known;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    if (same(name, hwy::TargetName(target))) {
      // Highway's target bits: every better target has a lower bit.
      hwy::DisableTargets(target - 1);
      if (same(active_target(), name)) return Status::ok();
      return make_error("kernels '", std::string(name), "': dispatch still picks ", active_target());
    }
    known += (known.empty() ? "" : ", ") + std::string(hwy::TargetName(target));
  }
  return make_error("kernels '", std::string(name), "': not a SIMD target of this build on this CPU (", known, ")");
}
bool uses_arm_dotprod() { return HWY_DYNAMIC_DISPATCH(UsesArmDotProdImpl)(); }

namespace {

// Elements dequantized per step in dot_row: a multiple of every block size
// (32 and 256), small enough for the stack.
constexpr int64_t kDotRowChunk = 256;

// dst[0..n) = row of `type` as float32. F32/F16/BF16 are converted here with
// SIMD; block-quantized types go through the quant layer.
void row_to_f32(GgmlType type, const void* row, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, row, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::F16:
      HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(static_cast<const uint16_t*>(row), dst, static_cast<size_t>(n));
      return;
    case GgmlType::BF16:
      HWY_DYNAMIC_DISPATCH(BF16ToF32Impl)(static_cast<const uint16_t*>(row), dst, static_cast<size_t>(n));
      return;
    default:
      dequantize_row(type, row, dst, n);
  }
}

}  // namespace

float dot_row(GgmlType type, const void* row, const float* x, int64_t n) {
  const size_t un = static_cast<size_t>(n);
  switch (type) {
    case GgmlType::F32:
      return dot(static_cast<const float*>(row), x, un);
    case GgmlType::F16:
      return dot_f16(static_cast<const uint16_t*>(row), x, un);
    case GgmlType::BF16:
      return dot_bf16(static_cast<const uint16_t*>(row), x, un);
    default:
      break;
  }
  // Quantized: dequantize a few blocks at a time into a stack buffer.
  assert(can_dequantize(type) && row_bytes(type, n));
  if (!can_dequantize(type)) return std::numeric_limits<float>::quiet_NaN();
  const TypeTraits& traits = type_traits(type);
  const int64_t chunk = kDotRowChunk / traits.block_size * traits.block_size;
  const size_t chunk_bytes = static_cast<size_t>(chunk / traits.block_size) * traits.block_bytes;
  alignas(64) float buf[kDotRowChunk];
  const uint8_t* src = static_cast<const uint8_t*>(row);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; i += chunk, src += chunk_bytes) {
    const int64_t len = std::min(chunk, n - i);
    dequantize_row(type, src, buf, len);
    sum += dot(buf, x + i, static_cast<size_t>(len));
  }
  return sum;
}

GgmlType activation_type(GgmlType type, int64_t n) {
  switch (type) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
      return n % kQK == 0 ? GgmlType::Q8_0 : GgmlType::F32;
    case GgmlType::Q4_K:
    case GgmlType::Q6_K:
      return n % kQK_K == 0 ? GgmlType::Q8_K : GgmlType::F32;
    default:
      return GgmlType::F32;
  }
}

void quantize_activations(GgmlType type, const float* x, void* dst, int64_t n) {
  // Both as the scalar quantizers (quant layer's quantize_row for Q8_0,
  // ggml's quantize_row_q8_K_ref for Q8_K), byte for byte.
  if (activation_type(type, n) == GgmlType::Q8_0) {
    HWY_DYNAMIC_DISPATCH(QuantizeQ8_0Impl)(x, dst, static_cast<size_t>(n / kQK));
  } else {
    HWY_DYNAMIC_DISPATCH(QuantizeQ8_KImpl)(x, dst, static_cast<size_t>(n / kQK_K));
  }
}

float dot_row_q8(GgmlType type, const void* row, const void* x_q8, int64_t n) {
  assert(activation_type(type, n) != GgmlType::F32);
  switch (type) {
    case GgmlType::Q8_0:
      return HWY_DYNAMIC_DISPATCH(DotQ8_0Q8Impl)(row, x_q8, static_cast<size_t>(n / kQK));
    case GgmlType::Q4_0:
      return HWY_DYNAMIC_DISPATCH(DotQ4_0Q8Impl)(row, x_q8, static_cast<size_t>(n / kQK));
    case GgmlType::Q4_K:
      return HWY_DYNAMIC_DISPATCH(DotQ4_KQ8Impl)(row, x_q8, static_cast<size_t>(n / kQK_K));
    case GgmlType::Q6_K:
      return HWY_DYNAMIC_DISPATCH(DotQ6_KQ8Impl)(row, x_q8, static_cast<size_t>(n / kQK_K));
    default:
      return std::numeric_limits<float>::quiet_NaN();
  }
}

namespace {

// matmul for weights with quantized activations: every token's activations
// are quantized once (Q8_0 or Q8_K), then each weight row is an integer dot
// product per block.
void matmul_q8(const TensorView& W, const float* x, float* y, int n_tokens, ThreadPool& pool) {
  const int64_t n_in = W.ne[0];
  const size_t no = static_cast<size_t>(W.ne[1]);
  const size_t nt = static_cast<size_t>(n_tokens);
  const size_t row_size = W.row_size();
  const size_t xq_row = *row_bytes(activation_type(W.type, n_in), n_in);
  // [n_tokens] rows of Q8_0 / Q8_K blocks. Reused across calls: generation
  // calls matmul hundreds of times per token, and this buffer only grows.
  thread_local std::vector<uint8_t> xq;
  if (xq.size() < nt * xq_row) xq.resize(nt * xq_row);
  for (size_t t = 0; t < nt; ++t) {
    quantize_activations(W.type, x + t * static_cast<size_t>(n_in), xq.data() + t * xq_row, n_in);
  }
  const auto* base = static_cast<const uint8_t*>(W.data);
  // The workers must not name xq: it is thread_local, theirs is empty.
  const uint8_t* xq_data = xq.data();
  constexpr size_t kGrain = 16;
  if (nt == 1) {
    // Generation: each thread's rows in one dispatched call, which prepares
    // what depends only on the activations once for all rows (MatVecQ8Impl).
    const auto mat_vec = HWY_DYNAMIC_DISPATCH(MatVecQ8Impl);
    pool.parallel_for(no, [&](size_t begin, size_t end, int) {
      mat_vec(W.type, base, row_size, xq_data, static_cast<size_t>(n_in), y + begin, begin, end);
    }, kGrain);
    return;
  }
  pool.parallel_for(no, [&](size_t begin, size_t end, int) {
    for (size_t o = begin; o < end; ++o) {
      const uint8_t* row = base + o * row_size;
      for (size_t t = 0; t < nt; ++t) y[t * no + o] = dot_row_q8(W.type, row, xq_data + t * xq_row, n_in);
    }
  }, kGrain);
}

// One token times BF16 weights with the CPU's bf16 dot products: x rounded
// to bf16 once, then each row a run of vdpbf16ps. False where the CPU has none.
bool matmul_bf16_dot(const TensorView& W, const float* x, float* y, ThreadPool& pool) {
  if (!bf16_dot_available()) return false;
  const auto mat_vec = HWY_DYNAMIC_DISPATCH(MatVecBF16Impl);
  const size_t n_in = static_cast<size_t>(W.ne[0]);
  thread_local std::vector<uint16_t> x_bf16;  // grows once, as matmul_q8's buffer
  if (x_bf16.size() < n_in) x_bf16.resize(n_in);
  f32_to_bf16(x, x_bf16.data(), n_in);
  const auto* base = static_cast<const uint8_t*>(W.data);
  const uint16_t* xb = x_bf16.data();  // the workers must not name the thread_local
  constexpr size_t kGrain = 16;
  pool.parallel_for(static_cast<size_t>(W.ne[1]), [&](size_t begin, size_t end, int) {
    mat_vec(base, W.row_size(), xb, n_in, y + begin, begin, end);
  }, kGrain);
  return true;
}

}  // namespace

void matmul(const TensorView& W, const float* x, float* y, int n_tokens, ThreadPool& pool) {
  // Many tokens (prefill): register-tiled, cache-blocked kernels (gemm.cpp).
  if (n_tokens >= kGemmMinTokens && gemm_supports(W.type, W.ne[0])) {
    gemm(W, x, y, n_tokens, pool);
    return;
  }
  if (W.type == GgmlType::BF16 && n_tokens == 1 && matmul_bf16_dot(W, x, y, pool)) return;
  if (W.type == GgmlType::BF16 && n_tokens > 0) {
    // As llama.cpp: bf16 activations for bf16 weights, here as in gemm (which
    // rounds its own, for the CPU's bf16 dot instructions), so that prompt and
    // generation agree. Reused across calls like matmul_q8's buffer; the
    // workers see it only as x.
    thread_local std::vector<float> rounded;
    const size_t count = static_cast<size_t>(n_tokens) * static_cast<size_t>(W.ne[0]);
    if (rounded.size() < count) rounded.resize(count);
    round_to_bf16(x, rounded.data(), count);
    x = rounded.data();
  }
  if (activation_type(W.type, W.ne[0]) != GgmlType::F32) {
    matmul_q8(W, x, y, n_tokens, pool);
    return;
  }
  const int64_t n_in = W.ne[0];
  const int64_t n_out = W.ne[1];
  const size_t row_size = W.row_size();
  const auto* base = static_cast<const uint8_t*>(W.data);
  // Rows per grain: neighbouring threads then rarely write the same cache
  // line of y.
  constexpr size_t kGrain = 16;
  if (n_tokens == 1 && (W.type == GgmlType::F16 || W.type == GgmlType::BF16)) {
    const auto mat_vec = HWY_DYNAMIC_DISPATCH(MatVecHalfImpl);
    pool.parallel_for(static_cast<size_t>(n_out), [&](size_t begin, size_t end, int) {
      mat_vec(W.type, base, row_size, x, static_cast<size_t>(n_in), y + begin, begin, end);
    }, kGrain);
    return;
  }
  // F32 rows are used in place; every other type is converted once per row
  // into the chunk's scratch and reused for all tokens (prefill).
  const bool in_place = W.type == GgmlType::F32;
  const size_t nt = static_cast<size_t>(n_tokens);
  const size_t ni = static_cast<size_t>(n_in);
  const size_t no = static_cast<size_t>(n_out);
  pool.parallel_for(no, [&](size_t begin, size_t end, int) {
    std::vector<float> scratch(in_place ? 0 : ni);
    for (size_t o = begin; o < end; ++o) {
      const uint8_t* row = base + o * row_size;
      if (in_place) {
        for (size_t t = 0; t < nt; ++t) y[t * no + o] = dot_row(W.type, row, x + t * ni, n_in);
      } else {
        row_to_f32(W.type, row, scratch.data(), n_in);
        for (size_t t = 0; t < nt; ++t) y[t * no + o] = dot(scratch.data(), x + t * ni, ni);
      }
    }
  }, kGrain);
}

void get_row(const TensorView& W, int64_t i, float* out) { row_to_f32(W.type, W.row(i), out, W.ne[0]); }

}  // namespace engram::kernels

#endif  // HWY_ONCE
