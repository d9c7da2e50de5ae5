// Peak-measuring loops, with Highway for every SIMD target (see kernels.cpp
// for how foreach_target / HWY_DYNAMIC_DISPATCH work).
#include "kernels/peak.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/peak.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace engram::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

uint64_t SumWordsImpl(const uint64_t* HWY_RESTRICT p, size_t n) {
  const hn::ScalableTag<uint64_t> d;
  const size_t N = hn::Lanes(d);
  // Four independent sums keep several loads in flight.
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    s0 = hn::Add(s0, hn::LoadU(d, p + i));
    s1 = hn::Add(s1, hn::LoadU(d, p + i + N));
    s2 = hn::Add(s2, hn::LoadU(d, p + i + 2 * N));
    s3 = hn::Add(s3, hn::LoadU(d, p + i + 3 * N));
  }
  uint64_t sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
  for (; i < n; ++i) sum += p[i];
  return sum;
}

// 8 independent accumulators: enough to cover the FMA latency (4-5 cycles)
// times the number of FMA ports (2) on current x86 and ARM cores.
float FmaRoundsImpl(size_t rounds, double* flops) {
  const hn::ScalableTag<float> d;
  const auto m = hn::Set(d, 0.999999f), a = hn::Set(d, 1e-7f);
  auto x0 = hn::Set(d, 1.f), x1 = hn::Set(d, 2.f), x2 = hn::Set(d, 3.f), x3 = hn::Set(d, 4.f);
  auto x4 = hn::Set(d, 5.f), x5 = hn::Set(d, 6.f), x6 = hn::Set(d, 7.f), x7 = hn::Set(d, 8.f);
  for (size_t r = 0; r < rounds; ++r) {
    x0 = hn::MulAdd(x0, m, a);
    x1 = hn::MulAdd(x1, m, a);
    x2 = hn::MulAdd(x2, m, a);
    x3 = hn::MulAdd(x3, m, a);
    x4 = hn::MulAdd(x4, m, a);
    x5 = hn::MulAdd(x5, m, a);
    x6 = hn::MulAdd(x6, m, a);
    x7 = hn::MulAdd(x7, m, a);
  }
  *flops = 2.0 * 8.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(rounds);
  const auto s = hn::Add(hn::Add(hn::Add(x0, x1), hn::Add(x2, x3)), hn::Add(hn::Add(x4, x5), hn::Add(x6, x7)));
  return hn::GetLane(hn::SumOfLanes(d, s));
}

int32_t Int8MaddRoundsImpl(size_t rounds, double* ops) {
  const hn::ScalableTag<int16_t> d16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  // Products of +-1: a lane of a sum moves by at most 2 per round, so the
  // int32 sums do not overflow below 2^30 rounds (callers run far fewer).
  const auto a = hn::Set(d16, static_cast<int16_t>(1));
  const auto b = hn::Set(d16, static_cast<int16_t>(-1));
  auto s0 = hn::Zero(d32), s1 = hn::Zero(d32), s2 = hn::Zero(d32), s3 = hn::Zero(d32);
  auto t0 = hn::Zero(d32), t1 = hn::Zero(d32), t2 = hn::Zero(d32), t3 = hn::Zero(d32);
  auto u0 = hn::Zero(d32), u1 = hn::Zero(d32), u2 = hn::Zero(d32), u3 = hn::Zero(d32);
  auto v0 = hn::Zero(d32), v1 = hn::Zero(d32), v2 = hn::Zero(d32), v3 = hn::Zero(d32);
  for (size_t r = 0; r < rounds; ++r) {
    s0 = hn::ReorderWidenMulAccumulate(d32, a, b, s0, t0);
    s1 = hn::ReorderWidenMulAccumulate(d32, b, a, s1, t1);
    s2 = hn::ReorderWidenMulAccumulate(d32, a, a, s2, t2);
    s3 = hn::ReorderWidenMulAccumulate(d32, b, b, s3, t3);
    u0 = hn::ReorderWidenMulAccumulate(d32, a, b, u0, v0);
    u1 = hn::ReorderWidenMulAccumulate(d32, b, a, u1, v1);
    u2 = hn::ReorderWidenMulAccumulate(d32, a, a, u2, v2);
    u3 = hn::ReorderWidenMulAccumulate(d32, b, b, u3, v3);
  }
  *ops = 2.0 * 8.0 * static_cast<double>(hn::Lanes(d16)) * static_cast<double>(rounds);
  auto s = hn::Add(hn::Add(hn::Add(s0, s1), hn::Add(s2, s3)), hn::Add(hn::Add(t0, t1), hn::Add(t2, t3)));
  s = hn::Add(s, hn::Add(hn::Add(hn::Add(u0, u1), hn::Add(u2, u3)), hn::Add(hn::Add(v0, v1), hn::Add(v2, v3))));
  return hn::GetLane(hn::SumOfLanes(d32, s));
}

}  // namespace HWY_NAMESPACE
}  // namespace engram::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace engram::kernels {

HWY_EXPORT(SumWordsImpl);
HWY_EXPORT(FmaRoundsImpl);
HWY_EXPORT(Int8MaddRoundsImpl);

uint64_t sum_words(const uint64_t* words, size_t n) { return HWY_DYNAMIC_DISPATCH(SumWordsImpl)(words, n); }
float fma_rounds(size_t rounds, double* flops) { return HWY_DYNAMIC_DISPATCH(FmaRoundsImpl)(rounds, flops); }
int32_t int8_madd_rounds(size_t rounds, double* ops) {
  return HWY_DYNAMIC_DISPATCH(Int8MaddRoundsImpl)(rounds, ops);
}

}  // namespace engram::kernels

#endif  // HWY_ONCE
