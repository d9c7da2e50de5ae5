// Attention kernels over many keys at once (kernels.h: max_dot_i8_cols,
// dot_cols, exp_shift_sum, add_weighted_rows), written once with Highway like
// kernels.cpp.
//
// Keys are read column-major ([k_dim][n_rows]) so that one vector holds the
// same dimension of Lanes consecutive keys: the dot products of a query with
// Lanes keys then build up lane-wise, one broadcast q[d] and one fused
// multiply-add per dimension, with no horizontal sum per key (attention heads
// are narrow, 32 to 128 dimensions, so a per-key reduction would cost as much
// as the key's multiply-adds).

#include "kernels/kernels.h"
#include "kernels/hwy_targets.h"

#include <algorithm>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/score.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace engram::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lanes(df) int8 values at p as float32.
template <class DF>
HWY_INLINE hn::Vec<DF> LoadI8AsF32(DF df, const int8_t* p) {
  const hn::Rebind<int32_t, DF> di32;
  const hn::Rebind<int8_t, DF> di8;
  return hn::ConvertTo(df, hn::PromoteTo(di32, hn::LoadU(di8, p)));
}

// Scaled dot products of q with the kRowVecs * Lanes(df) keys from row r on
// (kRowVecs 1 or 4), folded into best by max. Four row vectors per pass share
// each q[d] broadcast and keep independent multiply-add chains in flight.
// Named accumulators, not an array: SVE vectors are sizeless types, which
// cannot be array elements.
template <int kRowVecs, class DF>
HWY_INLINE hn::Vec<DF> MaxDotRows(DF df, const int8_t* HWY_RESTRICT cols, const float* HWY_RESTRICT scale,
                                  size_t n_rows, size_t k_dim, const float* HWY_RESTRICT q, size_t r,
                                  hn::Vec<DF> best) {
  static_assert(kRowVecs == 1 || kRowVecs == 4);
  const size_t N = hn::Lanes(df);
  auto acc0 = hn::Zero(df), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (size_t d = 0; d < k_dim; ++d) {
    const auto qd = hn::Set(df, q[d]);
    const int8_t* col = cols + d * n_rows + r;
    acc0 = hn::MulAdd(qd, LoadI8AsF32(df, col), acc0);
    if constexpr (kRowVecs == 4) {
      acc1 = hn::MulAdd(qd, LoadI8AsF32(df, col + N), acc1);
      acc2 = hn::MulAdd(qd, LoadI8AsF32(df, col + 2 * N), acc2);
      acc3 = hn::MulAdd(qd, LoadI8AsF32(df, col + 3 * N), acc3);
    }
  }
  best = hn::Max(best, hn::Mul(acc0, hn::LoadU(df, scale + r)));
  if constexpr (kRowVecs == 4) {
    best = hn::Max(best, hn::Mul(acc1, hn::LoadU(df, scale + r + N)));
    best = hn::Max(best, hn::Mul(acc2, hn::LoadU(df, scale + r + 2 * N)));
    best = hn::Max(best, hn::Mul(acc3, hn::LoadU(df, scale + r + 3 * N)));
  }
  return best;
}

float MaxDotI8ColsImpl(const int8_t* cols, const float* scale, size_t n_rows, size_t k_dim, const float* q) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const size_t N = hn::Lanes(df);
  auto best = hn::Set(df, -std::numeric_limits<float>::infinity());
  size_t r = 0;
  for (; r + 4 * N <= n_rows; r += 4 * N) best = MaxDotRows<4>(df, cols, scale, n_rows, k_dim, q, r, best);
  for (; r + N <= n_rows; r += N) best = MaxDotRows<1>(df, cols, scale, n_rows, k_dim, q, r, best);
  float m = hn::GetLane(hn::MaxOfLanes(df, best));
  auto last = hn::Set(d1, m);
  for (; r < n_rows; ++r) last = MaxDotRows<1>(d1, cols, scale, n_rows, k_dim, q, r, last);
  return hn::GetLane(last);
}

// out[r] = scale * sum_d q[d] * kT[d * col_stride + r] for kRowVecs (1 or
// 4) vectors of rows from r on; named accumulators as in MaxDotRows.
template <int kRowVecs, class DF>
HWY_INLINE void DotColsRows(DF df, const float* HWY_RESTRICT kT, size_t col_stride, size_t dim,
                            const float* HWY_RESTRICT q, float scale, size_t r, float* HWY_RESTRICT out) {
  static_assert(kRowVecs == 1 || kRowVecs == 4);
  const size_t N = hn::Lanes(df);
  auto acc0 = hn::Zero(df), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (size_t d = 0; d < dim; ++d) {
    const auto qd = hn::Set(df, q[d]);
    const float* col = kT + d * col_stride + r;
    acc0 = hn::MulAdd(qd, hn::LoadU(df, col), acc0);
    if constexpr (kRowVecs == 4) {
      acc1 = hn::MulAdd(qd, hn::LoadU(df, col + N), acc1);
      acc2 = hn::MulAdd(qd, hn::LoadU(df, col + 2 * N), acc2);
      acc3 = hn::MulAdd(qd, hn::LoadU(df, col + 3 * N), acc3);
    }
  }
  const auto s = hn::Set(df, scale);
  hn::StoreU(hn::Mul(acc0, s), df, out + r);
  if constexpr (kRowVecs == 4) {
    hn::StoreU(hn::Mul(acc1, s), df, out + r + N);
    hn::StoreU(hn::Mul(acc2, s), df, out + r + 2 * N);
    hn::StoreU(hn::Mul(acc3, s), df, out + r + 3 * N);
  }
}

void DotColsImpl(const float* kT, size_t col_stride, size_t n_rows, size_t dim, const float* q, float scale,
                 float* out) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const size_t N = hn::Lanes(df);
  size_t r = 0;
  for (; r + 4 * N <= n_rows; r += 4 * N) DotColsRows<4>(df, kT, col_stride, dim, q, scale, r, out);
  for (; r + N <= n_rows; r += N) DotColsRows<1>(df, kT, col_stride, dim, q, scale, r, out);
  for (; r < n_rows; ++r) DotColsRows<1>(d1, kT, col_stride, dim, q, scale, r, out);
}

// As kernels.cpp's SafeExp: clamped so that -inf (a masked score) gives 0.
template <class D, class V>
HWY_INLINE V ClampedExp(D d, V x) {
  x = hn::Min(hn::Max(x, hn::Set(d, -110.0f)), hn::Set(d, 88.0f));
  return hn::Exp(d, x);
}

float ExpShiftSumImpl(float* x, size_t n, float shift) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const size_t N = hn::Lanes(df);
  auto acc = hn::Zero(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = ClampedExp(df, hn::Sub(hn::LoadU(df, x + i), hn::Set(df, shift)));
    hn::StoreU(e, df, x + i);
    acc = hn::Add(acc, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; i < n; ++i) {
    const auto e = ClampedExp(d1, hn::Sub(hn::LoadU(d1, x + i), hn::Set(d1, shift)));
    hn::StoreU(e, d1, x + i);
    sum += hn::GetLane(e);
  }
  return sum;
}

// acc[0..dim) += sum_r w[r] * v[r * v_stride + ...]: the output stays in
// registers across all rows when dim fits in kMaxVecs vectors.
template <class DF>
HWY_INLINE void AddWeightedRowsSpan(DF df, const float* HWY_RESTRICT w, const float* HWY_RESTRICT v,
                                    size_t v_stride, size_t n_rows, size_t d0, size_t n_vecs,
                                    float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(df);
#if ENGRAM_TARGET_IS_SVE
  // SVE vectors are sizeless and cannot be array elements: one output vector
  // at a time, each kept in a register across the rows.
  for (size_t j = 0; j < n_vecs; ++j) {
    auto a = hn::LoadU(df, acc + d0 + j * N);
    for (size_t r = 0; r < n_rows; ++r) a = hn::MulAdd(hn::Set(df, w[r]), hn::LoadU(df, v + r * v_stride + d0 + j * N), a);
    hn::StoreU(a, df, acc + d0 + j * N);
  }
#else
  constexpr size_t kMaxVecs = 8;
  hn::Vec<DF> a[kMaxVecs];
  for (size_t j = 0; j < n_vecs; ++j) a[j] = hn::LoadU(df, acc + d0 + j * N);
  for (size_t r = 0; r < n_rows; ++r) {
    const auto wr = hn::Set(df, w[r]);
    const float* row = v + r * v_stride + d0;
    for (size_t j = 0; j < n_vecs; ++j) a[j] = hn::MulAdd(wr, hn::LoadU(df, row + j * N), a[j]);
  }
  for (size_t j = 0; j < n_vecs; ++j) hn::StoreU(a[j], df, acc + d0 + j * N);
#endif
}

void AddWeightedRowsImpl(const float* w, const float* v, size_t v_stride, size_t n_rows, size_t dim, float* acc) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const size_t N = hn::Lanes(df);
  size_t d0 = 0;
  for (; d0 + N <= dim; d0 += 8 * N) {
    const size_t n_vecs = std::min<size_t>(8, (dim - d0) / N);
    AddWeightedRowsSpan(df, w, v, v_stride, n_rows, d0, n_vecs, acc);
    if (n_vecs < 8) {
      d0 += n_vecs * N;
      break;
    }
  }
  for (; d0 < dim; ++d0) AddWeightedRowsSpan(d1, w, v, v_stride, n_rows, d0, 1, acc);
}

}  // namespace HWY_NAMESPACE
}  // namespace engram::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace engram::kernels {

HWY_EXPORT(MaxDotI8ColsImpl);
HWY_EXPORT(DotColsImpl);
HWY_EXPORT(ExpShiftSumImpl);
HWY_EXPORT(AddWeightedRowsImpl);

void dot_cols(const float* kT, size_t col_stride, size_t n_rows, size_t dim, const float* q, float scale,
              float* out) {
  HWY_DYNAMIC_DISPATCH(DotColsImpl)(kT, col_stride, n_rows, dim, q, scale, out);
}

float exp_shift_sum(float* x, size_t n, float shift) { return HWY_DYNAMIC_DISPATCH(ExpShiftSumImpl)(x, n, shift); }

void add_weighted_rows(const float* w, const float* v, size_t v_stride, size_t n_rows, size_t dim, float* acc) {
  HWY_DYNAMIC_DISPATCH(AddWeightedRowsImpl)(w, v, v_stride, n_rows, dim, acc);
}

float max_dot_i8_cols(const int8_t* cols, const float* row_scale, size_t n_rows, size_t k_dim, const float* q) {
  return HWY_DYNAMIC_DISPATCH(MaxDotI8ColsImpl)(cols, row_scale, n_rows, k_dim, q);
}

}  // namespace engram::kernels
#endif  // HWY_ONCE
