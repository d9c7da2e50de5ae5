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

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "quant/blocks.h"
#include "quant/quant.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kernels.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

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

HWY_INLINE float HalfToF32(uint16_t h) { return hn::GetLane(LoadAsF32(D1(), Half{&h}, 0)); }

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
      const hn::Vec<DI16> q[4] = {
          hn::Sub(hn::BitCast(d16, hn::Or(hn::And(lo, low4), hn::ShiftLeft<4>(hn::And(hi, low2)))), bias),
          hn::Sub(hn::BitCast(d16, hn::Or(hn::And(lo32, low4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(hi), low2)))), bias),
          hn::Sub(hn::BitCast(d16, hn::Or(hn::ShiftRight<4>(lo), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(hi), low2)))), bias),
          hn::Sub(hn::BitCast(d16, hn::Or(hn::ShiftRight<4>(lo32), hn::ShiftLeft<4>(hn::ShiftRight<6>(hi)))), bias)};
      const int group = static_cast<int>(l / 16);  // N <= 16 divides 16: one scale per vector
      for (int k = 0; k < 4; ++k) {
        auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
        sum0 = hn::ReorderWidenMulAccumulate(d32, q[k], LoadI8AsI16(d16, xq + 32 * k + l), sum0, sum1);
        acc = hn::Add(acc, hn::Mul(hn::Add(sum0, sum1), hn::Set(d32, sc[group + 2 * k])));
      }
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

float DotQ4_KQ8Impl(const void* w, const void* x, size_t nb) {
  return DotQ8KT(static_cast<const BlockQ4_K*>(w), static_cast<const BlockQ8_K*>(x), nb);
}
float DotQ6_KQ8Impl(const void* w, const void* x, size_t nb) {
  return DotQ8KT(static_cast<const BlockQ6_K*>(w), static_cast<const BlockQ8_K*>(x), nb);
}

float DotQ8_0Q8Impl(const void* w, const void* x, size_t nb) {
  return DotQ8T(static_cast<const BlockQ8_0*>(w), static_cast<const BlockQ8_0*>(x), nb);
}
float DotQ4_0Q8Impl(const void* w, const void* x, size_t nb) {
  return DotQ8T(static_cast<const BlockQ4_0*>(w), static_cast<const BlockQ8_0*>(x), nb);
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
HWY_EXPORT(DotQ8_0Q8Impl);
HWY_EXPORT(DotQ4_0Q8Impl);
HWY_EXPORT(DotQ4_KQ8Impl);
HWY_EXPORT(DotQ6_KQ8Impl);
HWY_EXPORT(TargetImpl);

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

const char* active_target() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetImpl)()); }

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
  if (activation_type(type, n) == GgmlType::Q8_0) {
    quantize_row(GgmlType::Q8_0, x, dst, n);
    return;
  }
  // Q8_K as ggml's quantize_row_q8_K_ref: scale -127 / (the value of largest
  // magnitude, signed), round to nearest even, and the sum of each 16 quants.
  auto* out = static_cast<BlockQ8_K*>(dst);
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ8_K blk{};
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (amax != 0.0f) {
      const float iscale = -127.0f / max;
      for (int j = 0; j < kQK_K; ++j) {
        blk.qs[j] = static_cast<int8_t>(std::min(127, static_cast<int>(std::nearbyint(iscale * x[j]))));
      }
      for (int g = 0; g < kQK_K / 16; ++g) {
        int sum = 0;
        for (int j = 0; j < 16; ++j) sum += blk.qs[16 * g + j];
        blk.bsums[g] = static_cast<int16_t>(sum);
      }
      blk.d = 1.0f / iscale;
    }
    std::memcpy(out + b, &blk, sizeof blk);
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
  std::vector<uint8_t> xq(nt * xq_row);  // [n_tokens] rows of Q8_0 / Q8_K blocks
  for (size_t t = 0; t < nt; ++t) {
    quantize_activations(W.type, x + t * static_cast<size_t>(n_in), xq.data() + t * xq_row, n_in);
  }
  const auto* base = static_cast<const uint8_t*>(W.data);
  constexpr size_t kGrain = 16;
  pool.parallel_for(no, [&](size_t begin, size_t end, int) {
    for (size_t o = begin; o < end; ++o) {
      const uint8_t* row = base + o * row_size;
      for (size_t t = 0; t < nt; ++t) y[t * no + o] = dot_row_q8(W.type, row, xq.data() + t * xq_row, n_in);
    }
  }, kGrain);
}

}  // namespace

void matmul(const TensorView& W, const float* x, float* y, int n_tokens, ThreadPool& pool) {
  if (activation_type(W.type, W.ne[0]) != GgmlType::F32) {
    matmul_q8(W, x, y, n_tokens, pool);
    return;
  }
  const int64_t n_in = W.ne[0];
  const int64_t n_out = W.ne[1];
  const size_t row_size = W.row_size();
  const auto* base = static_cast<const uint8_t*>(W.data);
  // F32 rows are used in place; every other type is converted once per row
  // into the chunk's scratch and reused for all tokens (prefill). A single
  // token of F16/BF16 is cheaper to dot directly.
  const bool in_place = W.type == GgmlType::F32 ||
                        (n_tokens == 1 && (W.type == GgmlType::F16 || W.type == GgmlType::BF16));
  const size_t nt = static_cast<size_t>(n_tokens);
  const size_t ni = static_cast<size_t>(n_in);
  const size_t no = static_cast<size_t>(n_out);
  // Rows per grain: neighbouring threads then rarely write the same cache
  // line of y.
  constexpr size_t kGrain = 16;
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
