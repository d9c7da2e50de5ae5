// Cache-blocked GEMM micro-kernels (see gemm.h), written once and compiled
// for every SIMD target like kernels.cpp: foreach_target.h re-includes this
// file per target and the HWY_ONCE section dispatches to the best one.
//
// Float weights (F32, and F16 / BF16 converted a panel at a time) use generic
// Highway code. Quantized weights use integer micro-kernels on x86 targets
// with AVX2 (256-bit; the AVX-512 targets on 512-bit vectors; Q8_0 / Q4_0
// panels repacked 16 rows to a vector with VNNI (AVX3_DL) and on AVX2, and
// Q4_K / Q6_K ones with VNNI): the unsigned x
// signed byte multiply-adds that make these fast have no Highway op in the
// Highway we build against (Debian's 1.0.3). Other targets return false from
// GemmQ8Impl and the caller runs the per-row dot (dot_row_q8) tile by tile
// instead, which keeps the cache blocking.
//
// A tile is R weight rows x T tokens; its R*T accumulators stay in
// registers over the whole reduction. Shapes that do not fill a tile use the
// same template instantiated for fewer rows or tokens, chosen from a table.

// GCC 12's AVX-512 intrinsics (_mm512_castsi256_si512, _mm512_cvtepi32_ps
// ...) start from _mm512_undefined_*() and then trip its own uninitialized-
// use warnings; they must be silenced where the intrinsic headers are read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/gemm.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/hwy_targets.h"
#include "kernels/kernels.h"
#include "quant/blocks.h"
#include "quant/quant.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/gemm.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

#if HWY_ARCH_X86
#include <immintrin.h>
#endif

// Re-evaluated for every target this file is compiled for.
#undef ENGRAM_GEMM_AVX2
#undef ENGRAM_GEMM_AVX512
#undef ENGRAM_GEMM_VNNI
#undef ENGRAM_VNNI_ATTR
#undef ENGRAM_BF16_ATTR
// AVX3_DL (Ice Lake, Zen 4 and later; built because CMake defines
// HWY_WANT_AVX3_DL for this file) adds AVX-512 VNNI.
#if HWY_ARCH_X86 && HWY_TARGET == HWY_AVX3_DL
#define ENGRAM_GEMM_VNNI 1
#else
#define ENGRAM_GEMM_VNNI 0
#endif
#if HWY_ARCH_X86 && (HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL)
#define ENGRAM_GEMM_AVX2 1
#else
#define ENGRAM_GEMM_AVX2 0
#endif
// AVX-512 (F, BW, DQ, VL): the same kernels on 512-bit vectors, two blocks
// (or sub-blocks) per instruction.
#if HWY_ARCH_X86 && (HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL)
#define ENGRAM_GEMM_AVX512 1
#else
#define ENGRAM_GEMM_AVX512 0
#endif

HWY_BEFORE_NAMESPACE();
namespace engram::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// AVX-512 targets have 32 vector registers, the others 16 (or emulate).
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr size_t kVectorRegisters = 32;
#else
constexpr size_t kVectorRegisters = 16;
#endif

// Calls tile(r0, rows, t0, tokens) over n_rows x n_tokens in tiles of at
// most R x T. Tokens are the outer loop: a tile of activation rows is then
// reused by every row tile of the panel while it is in L1.
template <size_t R, size_t T, class Tile>
HWY_INLINE void ForEachTile(size_t n_rows, size_t n_tokens, const Tile& tile) {
  for (size_t t0 = 0; t0 < n_tokens; t0 += T) {
    const size_t nt = std::min(T, n_tokens - t0);
    for (size_t r0 = 0; r0 < n_rows; r0 += R) tile(r0, std::min(R, n_rows - r0), t0, nt);
  }
}

// Table of Kernel::Tile<r, t> for r in 1..R, t in 1..T; entry (r-1)*T + t-1.
template <class Kernel, size_t R, size_t T, size_t... I>
constexpr auto MakeTileTable(std::index_sequence<I...>) {
  return std::array<typename Kernel::TileFn, sizeof...(I)>{&Kernel::template Tile<I / T + 1, I % T + 1>...};
}

// ---- Float weights ----
//
// Outer-product micro-kernel over a packed panel. PackPanel stores a chunk
// of a panel's weights k-major, kPanelVecs vectors of rows per k (rows past
// the panel's end are zeros), so a tile of T tokens x PanelRows() rows
// accumulates acc[t][v] += broadcast(x[t][k]) * panel[k][v]: no horizontal
// sums, and each token's results are contiguous in y. The panel chunk (kChunk
// x PanelRows() floats, 64 KiB with AVX-512) stays in L2 while every token
// tile of the chunk passes over it.

using DF = hn::ScalableTag<float>;

#if HWY_HAVE_SCALABLE
// Sizeless vectors cannot form arrays: one vector of rows, one token.
constexpr size_t kPanelVecs = 1, kFloatTokens = 1;
#else
// T x 2 accumulators, 2 weight vectors and a broadcast: 12 tokens fill 32
// registers (AVX-512), 6 fill 16.
constexpr size_t kPanelVecs = 2, kFloatTokens = kVectorRegisters >= 32 ? 12 : 6;
#endif

// Reduction chunk of the float path.
constexpr size_t kChunk = 512;

HWY_INLINE size_t PanelRows() { return kPanelVecs * hn::Lanes(DF()); }

#if ENGRAM_GEMM_AVX512
// A 16 x 16 block of 32-bit words transposed: row j at dst + j * dst_stride
// = word j of each row i at src + i * src_stride (strides in bytes; dst
// 64-byte aligned). Pairs within 128-bit lanes, then quads, then the lanes.
HWY_INLINE void TransposeWords16x16(const void* src, size_t src_stride, void* dst, size_t dst_stride) {
  __m512i r[16];
  for (size_t i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(static_cast<const char*>(src) + i * src_stride);
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // r[4i + e], 128-bit lane L: rows 4i .. 4i + 3 of column 4L + e.
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  __m512i out[16];
  for (int e = 0; e < 4; ++e) {
    const __m512i ab_low = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x44);  // lanes 0, 1 of each
    const __m512i ab_high = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xEE);
    const __m512i cd_low = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x44);
    const __m512i cd_high = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xEE);
    out[e] = _mm512_shuffle_i32x4(ab_low, cd_low, 0x88);
    out[4 + e] = _mm512_shuffle_i32x4(ab_low, cd_low, 0xDD);
    out[8 + e] = _mm512_shuffle_i32x4(ab_high, cd_high, 0x88);
    out[12 + e] = _mm512_shuffle_i32x4(ab_high, cd_high, 0xDD);
  }
  for (size_t j = 0; j < 16; ++j) _mm512_store_si512(static_cast<char*>(dst) + j * dst_stride, out[j]);
}

#endif

// panel[k * PanelRows() + r] = w[r * ldw + k] for r < nr, k < kn; 0 for r >= nr.
// With AVX-512, whole 16-row groups go 16 floats at a time through a transpose.
HWY_INLINE void PackPanel(const float* HWY_RESTRICT w, size_t ldw, size_t nr, size_t kn, float* HWY_RESTRICT panel) {
  const size_t pr = PanelRows();
  size_t r = 0;
#if ENGRAM_GEMM_AVX512
  static_assert(kPanelVecs == 2);  // 32 rows: two 16-row groups
  const size_t whole = kn / 16 * 16;
  for (; r + 16 <= nr; r += 16) {
    for (size_t k = 0; k < whole; k += 16) {
      TransposeWords16x16(w + r * ldw + k, ldw * sizeof(float), panel + k * pr + r, pr * sizeof(float));
    }
    for (size_t i = r; i < r + 16; ++i) {
      for (size_t k = whole; k < kn; ++k) panel[k * pr + i] = w[i * ldw + k];
    }
  }
#endif
  for (; r < pr; ++r) {
    float* dst = panel + r;
    if (r < nr) {
      const float* src = w + r * ldw;
      for (size_t k = 0; k < kn; ++k) dst[k * pr] = src[k];
    } else {
      for (size_t k = 0; k < kn; ++k) dst[k * pr] = 0.0f;
    }
  }
}

// y[0, count) (+)= acc's first count lanes.
HWY_INLINE void StoreRows(DF d, hn::Vec<DF> acc, float* HWY_RESTRICT y, size_t count, bool accumulate) {
  if (count >= hn::Lanes(d)) {
    hn::StoreU(accumulate ? hn::Add(hn::LoadU(d, y), acc) : acc, d, y);
    return;
  }
  HWY_ALIGN float lanes[HWY_MAX_BYTES / sizeof(float)];
  hn::Store(acc, d, lanes);
  for (size_t j = 0; j < count; ++j) y[j] = accumulate ? y[j] + lanes[j] : lanes[j];
}

struct FloatKernel {
  // y[t * ldy + r] (+)= sum_{k<kn} panel[k][r] * x[t * ldx + k] for t < T,
  // r < nr; adds to y when `accumulate` (a later chunk of the reduction).
  using TileFn = void (*)(const float*, size_t, const float*, size_t, float*, size_t, size_t, bool);

  template <size_t T>
  static HWY_NOINLINE void Tile(const float* HWY_RESTRICT panel, size_t kn, const float* HWY_RESTRICT x, size_t ldx,
                                float* HWY_RESTRICT y, size_t ldy, size_t nr, bool accumulate) {
    const DF d;
    const size_t N = hn::Lanes(d);
#if HWY_HAVE_SCALABLE
    static_assert(T == 1 && kPanelVecs == 1);
    auto acc = hn::Zero(d);
    for (size_t k = 0; k < kn; ++k) acc = hn::MulAdd(hn::LoadU(d, panel + k * N), hn::Set(d, x[k]), acc);
    StoreRows(d, acc, y, nr, accumulate);
#else
    hn::Vec<DF> acc[T][kPanelVecs];
    for (size_t t = 0; t < T; ++t) {
      for (size_t v = 0; v < kPanelVecs; ++v) acc[t][v] = hn::Zero(d);
    }
    for (size_t k = 0; k < kn; ++k) {
      const float* pk = panel + k * kPanelVecs * N;
      hn::Vec<DF> wv[kPanelVecs];
      for (size_t v = 0; v < kPanelVecs; ++v) wv[v] = hn::Load(d, pk + v * N);
      for (size_t t = 0; t < T; ++t) {
        const auto xb = hn::Set(d, x[t * ldx + k]);
        for (size_t v = 0; v < kPanelVecs; ++v) acc[t][v] = hn::MulAdd(wv[v], xb, acc[t][v]);
      }
    }
    for (size_t t = 0; t < T; ++t) {
      for (size_t v = 0; v < kPanelVecs && v * N < nr; ++v) {
        StoreRows(d, acc[t][v], y + t * ldy + v * N, nr - v * N, accumulate);
      }
    }
#endif
  }
};

template <size_t... I>
constexpr auto MakeFloatTiles(std::index_sequence<I...>) {
  return std::array<FloatKernel::TileFn, sizeof...(I)>{&FloatKernel::template Tile<I + 1>...};
}

// Floats of scratch GemmF32Impl needs (one packed panel chunk).
size_t GemmF32ScratchImpl() { return kChunk * PanelRows(); }

// y[t * ldy + r] = sum_i w[r * ldw + i] * x[t * ldx + i] for r < n_rows,
// t < n_tokens, i < n. scratch: GemmF32ScratchImpl() floats, 64-byte aligned.
void GemmF32Impl(const float* w, size_t ldw, size_t n_rows, const float* x, size_t ldx, size_t n_tokens, size_t n,
                 float* y, size_t ldy, float* scratch) {
  static constexpr auto kTiles = MakeFloatTiles(std::make_index_sequence<kFloatTokens>());
  const size_t pr = PanelRows();
  for (size_t r0 = 0; r0 < n_rows; r0 += pr) {
    const size_t nr = std::min(pr, n_rows - r0);
    for (size_t k0 = 0; k0 < n || k0 == 0; k0 += kChunk) {
      const size_t kn = std::min(kChunk, n - k0);
      PackPanel(w + r0 * ldw + k0, ldw, nr, kn, scratch);
      for (size_t t0 = 0; t0 < n_tokens; t0 += kFloatTokens) {
        const size_t nt = std::min(kFloatTokens, n_tokens - t0);
        kTiles[nt - 1](scratch, kn, x + t0 * ldx + k0, ldx, y + t0 * ldy + r0, ldy, nr, k0 > 0);
      }
      if (n == 0) break;
    }
  }
}

// ---- BF16 weights x bf16 activations (AVX512_BF16) ----
//
// vdpbf16ps takes 32 bf16 pairs into 16 float lanes, lane j += a[2j] * b[2j]
// + a[2j + 1] * b[2j + 1] (each product exact in float): twice the work of a
// float FMA per instruction, and the weights need no widening. The panel is
// packed as pairs, panel[p * kBF16PanelRows + r] = elements (2p, 2p + 1) of
// row r as one 32-bit word, and a tile accumulates acc[t][v] += pairs of
// rows v * 16 .. v * 16 + 15 . broadcast(pair p of token t), the float
// kernel's outer product. AVX3_DL (Zen 4 and later, Sapphire Rapids) builds
// it; a run-time check skips CPUs of that target without AVX512_BF16.

#if ENGRAM_GEMM_VNNI
#define ENGRAM_BF16_ATTR __attribute__((target("avx512bf16")))

constexpr size_t kBF16PanelRows = 32;     // two vectors of 16 float lanes
constexpr size_t kBF16Tokens = 12;        // 24 accumulators, 2 weight vectors, a broadcast
constexpr size_t kBF16ChunkPairs = 512;   // 64 KiB of packed panel: stays in L2

// panel[p * kBF16PanelRows + r] = elements k0 + 2p, k0 + 2p + 1 of row r
// (at w + r * ldw) for p < np; zero past nr rows and past the row's n
// elements. Whole 16-row groups go 16 pairs at a time through a transpose.
HWY_INLINE void PackBF16Panel(const uint16_t* HWY_RESTRICT w, size_t ldw, size_t nr, size_t k0, size_t np,
                              size_t n, uint32_t* HWY_RESTRICT panel) {
  const size_t left = n - k0;
  const size_t whole = std::min(np, left / 2) / 16 * 16;  // pairs every full group can transpose
  for (size_t r0 = 0; r0 < kBF16PanelRows; r0 += 16) {
    size_t p = 0;
    if (r0 + 16 <= nr) {
      for (; p < whole; p += 16) {
        TransposeWords16x16(w + r0 * ldw + k0 + 2 * p, ldw * sizeof(uint16_t), panel + p * kBF16PanelRows + r0,
                            kBF16PanelRows * sizeof(uint32_t));
      }
    }
    for (size_t r = r0; r < r0 + 16; ++r) {
      uint32_t* dst = panel + r;
      const uint16_t* src = w + r * ldw + k0;
      for (size_t q = p; q < np; ++q) {
        const uint32_t low = r < nr && 2 * q < left ? src[2 * q] : 0;
        const uint32_t high = r < nr && 2 * q + 1 < left ? src[2 * q + 1] : 0;
        dst[q * kBF16PanelRows] = low | high << 16;
      }
    }
  }
}

struct BF16Kernel {
  // y[t * ldy + r] (+)= sum_{p<np} panel pair p of row r . (x[t * ldx +
  // 2p], x[t * ldx + 2p + 1]) for t < T, r < nr; adds to y when `accumulate`
  // (a later chunk). ldx is even.
  using TileFn = void (*)(const uint32_t*, size_t, const uint16_t*, size_t, float*, size_t, size_t, bool);

  template <size_t T>
  static ENGRAM_BF16_ATTR HWY_NOINLINE void Tile(const uint32_t* HWY_RESTRICT panel, size_t np,
                                                 const uint16_t* HWY_RESTRICT x, size_t ldx, float* HWY_RESTRICT y,
                                                 size_t ldy, size_t nr, bool accumulate) {
    __m512 acc[T][2];
    for (size_t t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    for (size_t p = 0; p < np; ++p) {
      const auto w0 = reinterpret_cast<__m512bh>(_mm512_load_si512(panel + p * kBF16PanelRows));
      const auto w1 = reinterpret_cast<__m512bh>(_mm512_load_si512(panel + p * kBF16PanelRows + 16));
      for (size_t t = 0; t < T; ++t) {
        int32_t pair;
        std::memcpy(&pair, x + t * ldx + 2 * p, sizeof pair);
        const auto xb = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
        acc[t][0] = _mm512_dpbf16_ps(acc[t][0], w0, xb);
        acc[t][1] = _mm512_dpbf16_ps(acc[t][1], w1, xb);
      }
    }
    for (size_t t = 0; t < T; ++t) {
      for (size_t v = 0; v < 2 && v * 16 < nr; ++v) {
        const size_t count = std::min<size_t>(16, nr - v * 16);
        const auto mask = static_cast<__mmask16>((1u << count) - 1);
        float* dst = y + t * ldy + v * 16;
        const __m512 sum = accumulate ? _mm512_add_ps(acc[t][v], _mm512_maskz_loadu_ps(mask, dst)) : acc[t][v];
        _mm512_mask_storeu_ps(dst, mask, sum);
      }
    }
  }
};

template <size_t... I>
constexpr auto MakeBF16Tiles(std::index_sequence<I...>) {
  return std::array<BF16Kernel::TileFn, sizeof...(I)>{&BF16Kernel::template Tile<I + 1>...};
}
#endif  // ENGRAM_GEMM_VNNI

// Whether GemmBF16Impl runs here: AVX3_DL on a CPU with AVX512_BF16.
bool HasBF16DotImpl() {
#if ENGRAM_GEMM_VNNI
  return cpu_has_avx512_bf16();
#else
  return false;
#endif
}

// 32-bit words of scratch GemmBF16Impl needs (one packed panel chunk).
size_t GemmBF16ScratchImpl() {
#if ENGRAM_GEMM_VNNI
  return kBF16ChunkPairs * kBF16PanelRows;
#else
  return 0;
#endif
}

// y[t * ldy + r] = sum_i w[r * ldw + i] * x[t * ldx + i] for r < n_rows,
// t < n_tokens, i < n (bf16 weights and activations, float sums). ldx is
// even; an odd n's activation rows end in a zero pad. scratch:
// GemmBF16ScratchImpl() words, 64-byte aligned. Requires HasBF16DotImpl().
void GemmBF16Impl(const uint16_t* w, size_t ldw, size_t n_rows, const uint16_t* x, size_t ldx, size_t n_tokens,
                  size_t n, float* y, size_t ldy, uint32_t* scratch) {
#if ENGRAM_GEMM_VNNI
  static constexpr auto kTiles = MakeBF16Tiles(std::make_index_sequence<kBF16Tokens>());
  const size_t pairs = (n + 1) / 2;
  for (size_t r0 = 0; r0 < n_rows; r0 += kBF16PanelRows) {
    const size_t nr = std::min(kBF16PanelRows, n_rows - r0);
    for (size_t p0 = 0; p0 < pairs; p0 += kBF16ChunkPairs) {
      const size_t np = std::min(kBF16ChunkPairs, pairs - p0);
      PackBF16Panel(w + r0 * ldw, ldw, nr, 2 * p0, np, n, scratch);
      for (size_t t0 = 0; t0 < n_tokens; t0 += kBF16Tokens) {
        const size_t nt = std::min(kBF16Tokens, n_tokens - t0);
        kTiles[nt - 1](scratch, np, x + t0 * ldx + 2 * p0, ldx, y + t0 * ldy + r0, ldy, nr, p0 > 0);
      }
    }
  }
#else
  (void)w, (void)ldw, (void)n_rows, (void)x, (void)ldx, (void)n_tokens, (void)n, (void)y, (void)ldy, (void)scratch;
#endif
}

// ---- Quantized weights x Q8 activations (x86 with AVX2) ----

#if ENGRAM_GEMM_AVX2

// A quantized tile: y[t * ldy + r] = dot of weight row r (at w + r * w_stride)
// with activation row t (at x + t * x_stride), nb blocks each.
using QuantTileFn = void (*)(const uint8_t*, size_t, const uint8_t*, size_t, size_t, float*, size_t);

// Tiles of 4 rows x 3 tokens with 16 registers, 4 x 4 with 32.
constexpr size_t kQuantRows = 4, kQuantTokens = kVectorRegisters >= 32 ? 4 : 3;

HWY_INLINE float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

HWY_INLINE __m256i LoadBytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

template <class Block>
HWY_INLINE const Block& BlockAt(const uint8_t* row, size_t b) {
  return reinterpret_cast<const Block*>(row)[b];
}

// The 32 quants of a block as signed bytes.
HWY_INLINE __m256i SignedQuants(const BlockQ8_0& b) { return LoadBytes(b.qs); }
HWY_INLINE __m256i SignedQuants(const BlockQ4_0& b) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  // Low nibbles are elements 0..15, high nibbles 16..31.
  const __m256i nibbles = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  return _mm256_sub_epi8(_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

// Q8_0 and Q4_0 weights with Q8_0 activations. vpmaddubsw multiplies
// unsigned by signed bytes, so the weight's sign moves onto the activation:
// |w| * (x * sign(w)). Pair sums are at most 2 * 128 * 127 < 2^15: exact.
template <class Block>
struct Q8_0Kernel {
  using TileFn = QuantTileFn;
  template <size_t R, size_t T>
  static HWY_NOINLINE void Tile(const uint8_t* HWY_RESTRICT w, size_t w_stride, const uint8_t* HWY_RESTRICT x,
                                size_t x_stride, size_t nb, float* HWY_RESTRICT y, size_t ldy) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[R][T];
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    for (size_t b = 0; b < nb; ++b) {
      __m256i wq[R], wabs[R];
      float wd[R];
      for (size_t r = 0; r < R; ++r) {
        const Block& blk = BlockAt<Block>(w + r * w_stride, b);
        wq[r] = SignedQuants(blk);
        wabs[r] = _mm256_sign_epi8(wq[r], wq[r]);
        wd[r] = _cvtsh_ss(blk.d);
      }
      for (size_t t = 0; t < T; ++t) {
        const BlockQ8_0& xb = BlockAt<BlockQ8_0>(x + t * x_stride, b);
        const __m256i xq = LoadBytes(xb.qs);
        const float xd = _cvtsh_ss(xb.d);
        for (size_t r = 0; r < R; ++r) {
          const __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(xq, wq[r])), ones);
          acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * xd), _mm256_cvtepi32_ps(sum), acc[r][t]);
        }
      }
    }
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) y[t * ldy + r] = HorizontalSum(acc[r][t]);
    }
  }
};

// Q4_K weights with Q8_K activations. Per super-block:
//   d * xd * sum_j sc[j] * (q . xq)_j  -  dmin * xd * sum_j m[j] * sum(xq)_j
// with quants q in [0, 15] used directly as vpmaddubsw's unsigned operand;
// the mins term comes from the activations' 16-element sums (bsums).
struct Q4_KKernel {
  using TileFn = QuantTileFn;
  template <size_t R, size_t T>
  static HWY_NOINLINE void Tile(const uint8_t* HWY_RESTRICT w, size_t w_stride, const uint8_t* HWY_RESTRICT x,
                                size_t x_stride, size_t nb, float* HWY_RESTRICT y, size_t ldy) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[R][T];
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    for (size_t b = 0; b < nb; ++b) {
      const BlockQ4_K* blk[R];
      __m256i scale[R][8];  // sub-block j's 6-bit scale in every int16 lane
      __m256i mins[R];      // int16 lanes 2j and 2j+1: sub-block j's min (pairs with bsums)
      for (size_t r = 0; r < R; ++r) {
        blk[r] = &BlockAt<BlockQ4_K>(w + r * w_stride, b);
        alignas(32) int16_t m16[16];
        for (int j = 0; j < 8; ++j) {
          uint8_t sc, m;
          k_scale_min(j, blk[r]->scales, &sc, &m);
          scale[r][j] = _mm256_set1_epi16(sc);
          m16[2 * j] = m16[2 * j + 1] = m;
        }
        mins[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(m16));
      }
      __m256i sum[R][T];
      for (size_t r = 0; r < R; ++r) {
        for (size_t t = 0; t < T; ++t) sum[r][t] = _mm256_setzero_si256();
      }
      for (int c = 0; c < 4; ++c) {  // chunk of 64 values: sub-blocks 2c (low nibbles) and 2c+1 (high)
        __m256i lo[R], hi[R];
        for (size_t r = 0; r < R; ++r) {
          const __m256i q = LoadBytes(blk[r]->qs + 32 * c);
          lo[r] = _mm256_and_si256(q, low4);
          hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
        }
        for (size_t t = 0; t < T; ++t) {
          const int8_t* xq = BlockAt<BlockQ8_K>(x + t * x_stride, b).qs + 64 * c;
          const __m256i x0 = LoadBytes(xq), x1 = LoadBytes(xq + 32);
          for (size_t r = 0; r < R; ++r) {
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], x0), scale[r][2 * c]);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], x1), scale[r][2 * c + 1]);
            sum[r][t] = _mm256_add_epi32(sum[r][t], _mm256_add_epi32(p0, p1));
          }
        }
      }
      for (size_t t = 0; t < T; ++t) {
        const BlockQ8_K& xb = BlockAt<BlockQ8_K>(x + t * x_stride, b);
        const __m256i bsums = LoadBytes(xb.bsums);
        for (size_t r = 0; r < R; ++r) {
          const __m256i min_sum = _mm256_madd_epi16(bsums, mins[r]);
          acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(blk[r]->d) * xb.d), _mm256_cvtepi32_ps(sum[r][t]),
                                      acc[r][t]);
          acc[r][t] = _mm256_fnmadd_ps(_mm256_set1_ps(_cvtsh_ss(blk[r]->dmin) * xb.d), _mm256_cvtepi32_ps(min_sum),
                                       acc[r][t]);
        }
      }
    }
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) y[t * ldy + r] = HorizontalSum(acc[r][t]);
    }
  }
};

// Q6_K weights with Q8_K activations. Quants q in [0, 63] are vpmaddubsw's
// unsigned operand; the offset -32 is applied once per super-block as
// 32 * sum_g scale[g] * bsums[g]. Pair sums are at most 2 * 63 * 127 < 2^15.
struct Q6_KKernel {
  using TileFn = QuantTileFn;
  template <size_t R, size_t T>
  static HWY_NOINLINE void Tile(const uint8_t* HWY_RESTRICT w, size_t w_stride, const uint8_t* HWY_RESTRICT x,
                                size_t x_stride, size_t nb, float* HWY_RESTRICT y, size_t ldy) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(3);
    __m256 acc[R][T];
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    for (size_t b = 0; b < nb; ++b) {
      const BlockQ6_K* blk[R];
      __m256i scale[R][8];  // groups 2k (int16 lanes 0-7) and 2k+1 (lanes 8-15)
      __m256i scales16[R];  // all 16 group scales as int16
      for (size_t r = 0; r < R; ++r) {
        blk[r] = &BlockAt<BlockQ6_K>(w + r * w_stride, b);
        const int8_t* sc = blk[r]->scales;
        for (int k = 0; k < 8; ++k) scale[r][k] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
        scales16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
      }
      __m256i sum[R][T];
      for (size_t r = 0; r < R; ++r) {
        for (size_t t = 0; t < T; ++t) sum[r][t] = _mm256_setzero_si256();
      }
      for (int h = 0; h < 2; ++h) {  // half of 128 values: 4 runs of 32 (see BlockQ6_K)
        __m256i q[R][4];
        for (size_t r = 0; r < R; ++r) {
          const __m256i ql0 = LoadBytes(blk[r]->ql + 64 * h), ql1 = LoadBytes(blk[r]->ql + 64 * h + 32);
          const __m256i qh = LoadBytes(blk[r]->qh + 32 * h);
          const auto high2 = [&](int shift) {
            return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, shift), low2), 4);
          };
          q[r][0] = _mm256_or_si256(_mm256_and_si256(ql0, low4), high2(0));
          q[r][1] = _mm256_or_si256(_mm256_and_si256(ql1, low4), high2(2));
          q[r][2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), high2(4));
          q[r][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4), high2(6));
        }
        for (size_t t = 0; t < T; ++t) {
          const int8_t* xq = BlockAt<BlockQ8_K>(x + t * x_stride, b).qs + 128 * h;
          for (int k = 0; k < 4; ++k) {
            const __m256i xv = LoadBytes(xq + 32 * k);
            for (size_t r = 0; r < R; ++r) {
              const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r][k], xv), scale[r][4 * h + k]);
              sum[r][t] = _mm256_add_epi32(sum[r][t], p);
            }
          }
        }
      }
      for (size_t t = 0; t < T; ++t) {
        const BlockQ8_K& xb = BlockAt<BlockQ8_K>(x + t * x_stride, b);
        const __m256i bsums = LoadBytes(xb.bsums);
        for (size_t r = 0; r < R; ++r) {
          const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16[r]), 5);
          const __m256i total = _mm256_sub_epi32(sum[r][t], offset);
          acc[r][t] =
              _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(blk[r]->d) * xb.d), _mm256_cvtepi32_ps(total), acc[r][t]);
        }
      }
    }
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) y[t * ldy + r] = HorizontalSum(acc[r][t]);
    }
  }
};

#if ENGRAM_GEMM_AVX512

HWY_INLINE __m512i Concat(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

// Lanes 0-7 = lo, 8-15 = hi.
HWY_INLINE __m512 ConcatScales(float lo, float hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(lo)), _mm256_set1_ps(hi), 1);
}

// Q8_0Kernel with blocks b and b+1 in the low and high halves of one vector
// (an odd last block alone, the high half zero). AVX-512 has no vpsignb:
// the activation is negated under the mask of the weight's negative bytes.
template <class Block>
struct Q8_0Kernel512 {
  using TileFn = QuantTileFn;
  template <size_t R, size_t T>
  static HWY_NOINLINE void Tile(const uint8_t* HWY_RESTRICT w, size_t w_stride, const uint8_t* HWY_RESTRICT x,
                                size_t x_stride, size_t nb, float* HWY_RESTRICT y, size_t ldy) {
    const __m512i ones = _mm512_set1_epi16(1);
    __m512 acc[R][T];
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    }
    for (size_t b = 0; b < nb; b += 2) {
      const bool pair = b + 1 < nb;
      __m512i wabs[R];
      __mmask64 wneg[R];
      __m512 wd[R];
      for (size_t r = 0; r < R; ++r) {
        const Block* blk = &BlockAt<Block>(w + r * w_stride, b);
        const __m512i wq = pair ? Concat(SignedQuants(blk[0]), SignedQuants(blk[1]))
                                : _mm512_zextsi256_si512(SignedQuants(blk[0]));
        wabs[r] = _mm512_abs_epi8(wq);
        wneg[r] = _mm512_movepi8_mask(wq);
        wd[r] = ConcatScales(_cvtsh_ss(blk[0].d), pair ? _cvtsh_ss(blk[1].d) : 0.0f);
      }
      for (size_t t = 0; t < T; ++t) {
        const BlockQ8_0* xb = &BlockAt<BlockQ8_0>(x + t * x_stride, b);
        const __m512i xq = pair ? Concat(LoadBytes(xb[0].qs), LoadBytes(xb[1].qs))
                                : _mm512_zextsi256_si512(LoadBytes(xb[0].qs));
        const __m512 xd = ConcatScales(_cvtsh_ss(xb[0].d), pair ? _cvtsh_ss(xb[1].d) : 0.0f);
        for (size_t r = 0; r < R; ++r) {
          const __m512i xs = _mm512_mask_sub_epi8(xq, wneg[r], _mm512_setzero_si512(), xq);
          const __m512i sum = _mm512_madd_epi16(_mm512_maddubs_epi16(wabs[r], xs), ones);
          acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(wd[r], xd), _mm512_cvtepi32_ps(sum), acc[r][t]);
        }
      }
    }
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
  }
};

// Q4_KKernel with sub-blocks 2c and 2c+1 (64 consecutive activations) in
// one vector.
struct Q4_KKernel512 {
  using TileFn = QuantTileFn;
  template <size_t R, size_t T>
  static HWY_NOINLINE void Tile(const uint8_t* HWY_RESTRICT w, size_t w_stride, const uint8_t* HWY_RESTRICT x,
                                size_t x_stride, size_t nb, float* HWY_RESTRICT y, size_t ldy) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m512 acc[R][T];
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    }
    for (size_t b = 0; b < nb; ++b) {
      const BlockQ4_K* blk[R];
      __m512i scale[R][4];  // int16 lanes 0-15: sub-block 2c's scale, 16-31: 2c+1's
      __m256i mins[R];      // int16 lanes 2j and 2j+1: sub-block j's min (pairs with bsums)
      for (size_t r = 0; r < R; ++r) {
        blk[r] = &BlockAt<BlockQ4_K>(w + r * w_stride, b);
        alignas(32) int16_t m16[16];
        uint8_t sc[8];
        for (int j = 0; j < 8; ++j) {
          uint8_t m;
          k_scale_min(j, blk[r]->scales, &sc[j], &m);
          m16[2 * j] = m16[2 * j + 1] = m;
        }
        for (int c = 0; c < 4; ++c) scale[r][c] = Concat(_mm256_set1_epi16(sc[2 * c]), _mm256_set1_epi16(sc[2 * c + 1]));
        mins[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(m16));
      }
      __m512i sum[R][T];
      for (size_t r = 0; r < R; ++r) {
        for (size_t t = 0; t < T; ++t) sum[r][t] = _mm512_setzero_si512();
      }
      for (int c = 0; c < 4; ++c) {
        __m512i q[R];
        for (size_t r = 0; r < R; ++r) {
          const __m256i packed = LoadBytes(blk[r]->qs + 32 * c);
          q[r] = Concat(_mm256_and_si256(packed, low4), _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4));
        }
        for (size_t t = 0; t < T; ++t) {
          const __m512i xv = _mm512_loadu_si512(BlockAt<BlockQ8_K>(x + t * x_stride, b).qs + 64 * c);
          for (size_t r = 0; r < R; ++r) {
            sum[r][t] = _mm512_add_epi32(sum[r][t], _mm512_madd_epi16(_mm512_maddubs_epi16(q[r], xv), scale[r][c]));
          }
        }
      }
      for (size_t t = 0; t < T; ++t) {
        const BlockQ8_K& xb = BlockAt<BlockQ8_K>(x + t * x_stride, b);
        const __m256i bsums = LoadBytes(xb.bsums);
        for (size_t r = 0; r < R; ++r) {
          const __m512i min_sum = _mm512_zextsi256_si512(_mm256_madd_epi16(bsums, mins[r]));
          acc[r][t] = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(blk[r]->d) * xb.d), _mm512_cvtepi32_ps(sum[r][t]),
                                      acc[r][t]);
          acc[r][t] = _mm512_fnmadd_ps(_mm512_set1_ps(_cvtsh_ss(blk[r]->dmin) * xb.d), _mm512_cvtepi32_ps(min_sum),
                                       acc[r][t]);
        }
      }
    }
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
  }
};

// Q6_KKernel with two runs of 32 (64 consecutive activations, four groups
// of 16) in one vector.
struct Q6_KKernel512 {
  using TileFn = QuantTileFn;
  template <size_t R, size_t T>
  static HWY_NOINLINE void Tile(const uint8_t* HWY_RESTRICT w, size_t w_stride, const uint8_t* HWY_RESTRICT x,
                                size_t x_stride, size_t nb, float* HWY_RESTRICT y, size_t ldy) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(3);
    // Index i of quarter k picks group scale 4k + i / 8 (8 int16 lanes per group of 16 values).
    __m512i pick[4];
    for (int k = 0; k < 4; ++k) {
      alignas(64) int16_t idx[32];
      for (int i = 0; i < 32; ++i) idx[i] = static_cast<int16_t>(4 * k + i / 8);
      pick[k] = _mm512_load_si512(idx);
    }
    __m512 acc[R][T];
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    }
    for (size_t b = 0; b < nb; ++b) {
      const BlockQ6_K* blk[R];
      __m512i scale[R][4];  // values 64k .. 64k+63: their four group scales, 8 int16 lanes each
      __m256i scales16[R];  // all 16 group scales as int16
      for (size_t r = 0; r < R; ++r) {
        blk[r] = &BlockAt<BlockQ6_K>(w + r * w_stride, b);
        scales16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[r]->scales)));
        const __m512i all = _mm512_castsi256_si512(scales16[r]);
        for (int k = 0; k < 4; ++k) scale[r][k] = _mm512_permutexvar_epi16(pick[k], all);
      }
      __m512i sum[R][T];
      for (size_t r = 0; r < R; ++r) {
        for (size_t t = 0; t < T; ++t) sum[r][t] = _mm512_setzero_si512();
      }
      for (int h = 0; h < 2; ++h) {
        __m512i q[R][2];  // values 128h + 0..63 and 128h + 64..127
        for (size_t r = 0; r < R; ++r) {
          const __m256i ql0 = LoadBytes(blk[r]->ql + 64 * h), ql1 = LoadBytes(blk[r]->ql + 64 * h + 32);
          const __m256i qh = LoadBytes(blk[r]->qh + 32 * h);
          const auto high2 = [&](int shift) {
            return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, shift), low2), 4);
          };
          q[r][0] = Concat(_mm256_or_si256(_mm256_and_si256(ql0, low4), high2(0)),
                           _mm256_or_si256(_mm256_and_si256(ql1, low4), high2(2)));
          q[r][1] = Concat(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), high2(4)),
                           _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4), high2(6)));
        }
        for (size_t t = 0; t < T; ++t) {
          const int8_t* xq = BlockAt<BlockQ8_K>(x + t * x_stride, b).qs + 128 * h;
          const __m512i x0 = _mm512_loadu_si512(xq), x1 = _mm512_loadu_si512(xq + 64);
          for (size_t r = 0; r < R; ++r) {
            const __m512i p0 = _mm512_madd_epi16(_mm512_maddubs_epi16(q[r][0], x0), scale[r][2 * h]);
            const __m512i p1 = _mm512_madd_epi16(_mm512_maddubs_epi16(q[r][1], x1), scale[r][2 * h + 1]);
            sum[r][t] = _mm512_add_epi32(sum[r][t], _mm512_add_epi32(p0, p1));
          }
        }
      }
      for (size_t t = 0; t < T; ++t) {
        const BlockQ8_K& xb = BlockAt<BlockQ8_K>(x + t * x_stride, b);
        const __m256i bsums = LoadBytes(xb.bsums);
        for (size_t r = 0; r < R; ++r) {
          const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16[r]), 5);
          const __m512i total = _mm512_sub_epi32(sum[r][t], _mm512_zextsi256_si512(offset));
          acc[r][t] =
              _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(blk[r]->d) * xb.d), _mm512_cvtepi32_ps(total), acc[r][t]);
        }
      }
    }
    for (size_t r = 0; r < R; ++r) {
      for (size_t t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
  }
};

template <class Block>
using Q8_0Best = Q8_0Kernel512<Block>;
using Q4_KBest = Q4_KKernel512;
using Q6_KBest = Q6_KKernel512;
#else
template <class Block>
using Q8_0Best = Q8_0Kernel<Block>;
using Q4_KBest = Q4_KKernel;
using Q6_KBest = Q6_KKernel;
#endif  // ENGRAM_GEMM_AVX512

// ---- Interleaved panels, Q8_0 and Q4_0 (VNNI and AVX2) ----
//
// The tile kernels above keep one accumulator per (row, token) and pay a
// float scale step and a horizontal sum for each. Here a panel of 16 rows is
// first repacked so that one vector holds 4 quants of each of the 16 rows
// (lane r = row r): broadcasting 4 activation bytes against it advances all
// 16 row sums of a token with one vpdpbusd (on AVX2, a pair of 256-bit
// multiply-adds per half: see InterleavedTileMaddubs), one block's scales are
// one vector, and a token's 16 results are one store. The weights become the
// unsigned operand (Q8_0: w + 128, the sign bit flipped; Q4_0: the nibble
// q): (w + k) . x = w . x + k sum(x), so each (token, block) sum starts at
// -k sum(x) (k = 128 or 8), from the activations' block sums.

constexpr size_t kLaneRows = 16;  // rows per interleaved group: one int32 lane each

// Block b of a 16-row group.
struct InterleavedBlock {
  float d[kLaneRows];                 // row scales (0 for rows past the panel)
  uint8_t q[kQK / 4][kLaneRows][4];  // quants 4g .. 4g+3 of row r at q[g][r], unsigned
};

HWY_INLINE void UnsignedQuants(const BlockQ8_0& b, uint8_t* q) {
  for (size_t i = 0; i < kQK; ++i) q[i] = static_cast<uint8_t>(b.qs[i] ^ 0x80);
}
HWY_INLINE void UnsignedQuants(const BlockQ4_0& b, uint8_t* q) {
  for (size_t i = 0; i < kQK / 2; ++i) {
    q[i] = b.qs[i] & 0x0F;
    q[i + kQK / 2] = b.qs[i] >> 4;
  }
}

// Repacks rows [0, nr) (nr <= 16) of nb blocks into `out` (nb blocks).
template <class Block>
void InterleaveRows(const uint8_t* w, size_t w_stride, size_t nr, size_t nb, InterleavedBlock* out) {
  for (size_t b = 0; b < nb; ++b) {
    InterleavedBlock& ib = out[b];
    for (size_t r = 0; r < kLaneRows; ++r) {
      uint8_t q[kQK] = {};
      ib.d[r] = 0.0f;
      if (r < nr) {
        const Block& blk = BlockAt<Block>(w + r * w_stride, b);
        UnsignedQuants(blk, q);
        ib.d[r] = _cvtsh_ss(blk.d);
      }
      for (size_t g = 0; g < kQK / 4; ++g) std::memcpy(ib.q[g][r], q + 4 * g, 4);
    }
  }
}

// Activations as the interleaved kernel reads them: x's Q8_0 blocks, and per
// (token, block) the float scale and -k * the sum of the quants.
struct InterleavedActivations {
  const uint8_t* x;       // Q8_0 rows, x_stride bytes apart
  size_t x_stride;
  const float* scale;     // [token][block]
  const int32_t* start;   // [token][block]
  size_t nb;
};

using InterleavedTileFn = void (*)(const InterleavedBlock*, const InterleavedActivations&, size_t, float*, size_t,
                                   size_t);

// Tiles::kTiles[t - 1] multiplies a 16-row group with t <= Tiles::kTokens tokens.
template <class Block, class Tiles>
void InterleavedGemm(const uint8_t* w, size_t w_stride, size_t n_rows, const InterleavedActivations& a,
                     size_t n_tokens, float* y, size_t ldy) {
  // One 16-row group repacked at a time (nb * 576 bytes: L2), reused by
  // every token tile.
  thread_local std::vector<InterleavedBlock> packed;
  packed.resize(a.nb);
  for (size_t r0 = 0; r0 < n_rows; r0 += kLaneRows) {
    const size_t nr = std::min(kLaneRows, n_rows - r0);
    InterleaveRows<Block>(w + r0 * w_stride, w_stride, nr, a.nb, packed.data());
    for (size_t t0 = 0; t0 < n_tokens; t0 += Tiles::kTokens) {
      const size_t nt = std::min(Tiles::kTokens, n_tokens - t0);
      Tiles::kTiles[nt - 1](packed.data(), a, t0, y + t0 * ldy + r0, ldy, nr);
    }
  }
}

template <template <size_t> class Tile, size_t... I>
constexpr auto MakeInterleavedTiles(std::index_sequence<I...>) {
  return std::array<InterleavedTileFn, sizeof...(I)>{&Tile<I + 1>::Run...};
}

// Also AVX3 (AVX-512 without VNNI: Skylake-SP/X) for Q4_0, whose 512-bit
// per-(row, token) tiles below reach less than these panels.
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3
// AVX2 has no vpdpbusd; vpmaddubsw (unsigned x signed bytes into int16 pairs)
// and vpmaddwd take its place. Per group and token: a broadcast, then for
// each half of the 16 rows
//   Q4_0: one multiply and one int16 add. The nibbles q in [0, 15] are the
//         unsigned operand, and a block's 8 groups add up in int16 (at most
//         16 * 15 * 127 < 2^15) before one vpmaddwd per block widens them;
//   Q8_0: the stored w + 128 would saturate vpmaddubsw, so the signed w is
//         restored (xor 0x80) and its sign moved onto the activations,
//         |w| * (x * sign(w)) as in the tiles above, widened every group;
//         the weights are then signed, so the sums start at 0.
template <class Block, size_t T>
struct InterleavedTileMaddubs {
  static constexpr bool kQ4 = std::is_same_v<Block, BlockQ4_0>;

  static HWY_NOINLINE void Run(const InterleavedBlock* HWY_RESTRICT w, const InterleavedActivations& a, size_t t0,
                               float* HWY_RESTRICT y, size_t ldy, size_t nr) {
    const __m256i ones = _mm256_set1_epi16(1), sign_bit = _mm256_set1_epi8(static_cast<char>(0x80));
    __m256 acc[T][2];  // rows 0-7 and 8-15
    for (size_t t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (size_t b = 0; b < a.nb; ++b) {
      const InterleavedBlock& wb = w[b];
      __m256i sum[T][2];  // Q4_0: int16 lanes; Q8_0: int32
      for (size_t t = 0; t < T; ++t) sum[t][0] = sum[t][1] = _mm256_setzero_si256();
      for (size_t g = 0; g < kQK / 4; ++g) {
        __m256i wq[2] = {LoadBytes(wb.q[g][0]), LoadBytes(wb.q[g][8])};
        __m256i magnitude[2];
        if constexpr (!kQ4) {
          for (size_t h = 0; h < 2; ++h) {
            wq[h] = _mm256_xor_si256(wq[h], sign_bit);
            magnitude[h] = _mm256_abs_epi8(wq[h]);
          }
        }
        for (size_t t = 0; t < T; ++t) {
          int32_t x4;
          std::memcpy(&x4, BlockAt<BlockQ8_0>(a.x + (t0 + t) * a.x_stride, b).qs + 4 * g, 4);
          const __m256i xb = _mm256_set1_epi32(x4);
          for (size_t h = 0; h < 2; ++h) {
            if constexpr (kQ4) {
              sum[t][h] = _mm256_add_epi16(sum[t][h], _mm256_maddubs_epi16(wq[h], xb));
            } else {
              const __m256i pairs = _mm256_maddubs_epi16(magnitude[h], _mm256_sign_epi8(xb, wq[h]));
              sum[t][h] = _mm256_add_epi32(sum[t][h], _mm256_madd_epi16(pairs, ones));
            }
          }
        }
      }
      const __m256 d[2] = {_mm256_loadu_ps(wb.d), _mm256_loadu_ps(wb.d + 8)};
      for (size_t t = 0; t < T; ++t) {
        const __m256 x_scale = _mm256_set1_ps(a.scale[(t0 + t) * a.nb + b]);
        for (size_t h = 0; h < 2; ++h) {
          __m256i total = sum[t][h];
          if constexpr (kQ4) {
            total = _mm256_add_epi32(_mm256_madd_epi16(total, ones), _mm256_set1_epi32(a.start[(t0 + t) * a.nb + b]));
          }
          acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d[h], x_scale), acc[t][h]);
        }
      }
    }
    for (size_t t = 0; t < T; ++t) {
      alignas(32) float rows[kLaneRows];
      _mm256_store_ps(rows, acc[t][0]);
      _mm256_store_ps(rows + 8, acc[t][1]);
      std::memcpy(y + t * ldy, rows, nr * sizeof(float));
    }
  }
};

template <size_t T>
using InterleavedTileQ4_0 = InterleavedTileMaddubs<BlockQ4_0, T>;
template <size_t T>
using InterleavedTileQ8_0 = InterleavedTileMaddubs<BlockQ8_0, T>;

// Tokens per tile with 16 registers: T float and T int accumulator pairs,
// the two weight vectors and the broadcast; Q8_0 also keeps |w|. Measured on
// 1B models' pp512 (AVX2, t/s): Q4_0 with 2, 3, 4 tokens 96, 115, 97; Q8_0
// with 2 and 3 tokens 97 and 98.
struct MaddubsTilesQ4_0 {
  static constexpr size_t kTokens = 3;
  static constexpr auto kTiles = MakeInterleavedTiles<InterleavedTileQ4_0>(std::make_index_sequence<kTokens>());
};
struct MaddubsTilesQ8_0 {
  static constexpr size_t kTokens = 2;
  static constexpr auto kTiles = MakeInterleavedTiles<InterleavedTileQ8_0>(std::make_index_sequence<kTokens>());
};
#endif  // AVX2, AVX3

// Q8_0 / Q4_0 weights through the interleaved kernels of these tile sets
// (see GemmQ8Impl for the arguments); false for other types, or without the
// activations' block scales and sums.
template <class Q8Tiles, class Q4Tiles>
bool InterleavedQ8Gemm(GgmlType type, const uint8_t* w, size_t w_stride, size_t n_rows, const uint8_t* x,
                       size_t x_stride, size_t n_tokens, size_t n_in, float* y, size_t ldy, const float* x_scale,
                       const int32_t* x_start) {
  if (x_scale == nullptr || x_start == nullptr) return false;
  const InterleavedActivations a{x, x_stride, x_scale, x_start, n_in / kQK};
  if (type == GgmlType::Q8_0) {
    InterleavedGemm<BlockQ8_0, Q8Tiles>(w, w_stride, n_rows, a, n_tokens, y, ldy);
    return true;
  }
  if (type == GgmlType::Q4_0) {
    InterleavedGemm<BlockQ4_0, Q4Tiles>(w, w_stride, n_rows, a, n_tokens, y, ldy);
    return true;
  }
  return false;
}

#if ENGRAM_GEMM_VNNI

// AVX-512 VNNI: vpdpbusd adds four unsigned x signed byte products straight
// into an int32 lane, one instruction where vpmaddubsw + vpmaddwd took two.
// Highway's AVX3_DL target string names avxvnni (the VEX form), not
// avx512vnni, hence the extra attribute.
#define ENGRAM_VNNI_ATTR __attribute__((target("avx512vnni")))

// y[t * ldy + r] = row r . token t0 + t for t < T, r < nr (16-row group).
template <size_t T>
struct InterleavedTileVnni {
  static ENGRAM_VNNI_ATTR HWY_NOINLINE void Run(const InterleavedBlock* HWY_RESTRICT w,
                                                const InterleavedActivations& a, size_t t0, float* HWY_RESTRICT y,
                                                size_t ldy, size_t nr) {
    __m512 acc[T];
    for (size_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (size_t b = 0; b < a.nb; ++b) {
      const InterleavedBlock& wb = w[b];
      __m512i sum[T];
      for (size_t t = 0; t < T; ++t) sum[t] = _mm512_set1_epi32(a.start[(t0 + t) * a.nb + b]);
      for (size_t g = 0; g < kQK / 4; ++g) {
        const __m512i wq = _mm512_loadu_si512(wb.q[g]);
        for (size_t t = 0; t < T; ++t) {
          int32_t x4;
          std::memcpy(&x4, BlockAt<BlockQ8_0>(a.x + (t0 + t) * a.x_stride, b).qs + 4 * g, 4);
          sum[t] = _mm512_dpbusd_epi32(sum[t], wq, _mm512_set1_epi32(x4));
        }
      }
      const __m512 wd = _mm512_loadu_ps(wb.d);
      for (size_t t = 0; t < T; ++t) {
        const __m512 scale = _mm512_mul_ps(wd, _mm512_set1_ps(a.scale[(t0 + t) * a.nb + b]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), scale, acc[t]);
      }
    }
    const __mmask16 rows = static_cast<__mmask16>((1u << nr) - 1);
    for (size_t t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
  }
};

// Tokens per VNNI tile: T float + T int32 accumulators, the weight vector
// and the broadcast fit in 32 registers with room to spare.
struct VnniTiles {
  static constexpr size_t kTokens = 8;
  static constexpr auto kTiles = MakeInterleavedTiles<InterleavedTileVnni>(std::make_index_sequence<kTokens>());
};

// ---- Interleaved panels (VNNI), Q4_K and Q6_K ----
//
// The same 16-rows-per-vector layout for super-blocks of 256. Both types are
//   row . x = xd * (d * sum_j sc[j] * (q . x)_j - c * sum_g mm[g] * bsums[g])
// with unsigned quants q, sub-blocks j of kSub values with integer scales
// sc[j], and a correction over the activations' 16-value sums bsums[g]:
//   Q4_K: sub-blocks of 32, c = dmin, mm[g] = m[g / 2] (the sub-block's min);
//   Q6_K: sub-blocks of 16, c = d, mm[g] = 32 * sc[g] (q - 32 in the format).
// A sub-block's integer sum is multiplied by its scale in int32 (vpmulld);
// the correction is 8 vpdpwssd over pairs of bsums.

struct InterleavedKBlock {
  float d[kLaneRows];                     // per row: d
  float c[kLaneRows];                     // per row: the correction's scale
  int32_t sc[16][kLaneRows];              // per sub-block j (8 or 16) and row
  int16_t mm[8][kLaneRows][2];            // mm[2p], mm[2p + 1] of row r at mm[p][r]
  uint8_t q[kQK_K / 4][kLaneRows][4];     // quants 4g .. 4g+3 of row r at q[g][r]
};

// One row's super-block, unpacked.
struct UnpackedK {
  uint8_t q[kQK_K];
  int32_t sc[16];
  int16_t mm[16];
  float d, c;
};

template <class Block>
struct KLayout;

template <>
struct KLayout<BlockQ4_K> {
  static constexpr size_t kSub = 32;
  static void Unpack(const BlockQ4_K& b, UnpackedK& u) {
    for (size_t e = 0; e < kQK_K; ++e) {
      const size_t c = e / 64, l = e % 64;
      u.q[e] = l < 32 ? b.qs[32 * c + l] & 0x0F : b.qs[32 * c + l - 32] >> 4;
    }
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      k_scale_min(j, b.scales, &sc, &m);
      u.sc[j] = sc;
      u.mm[2 * j] = u.mm[2 * j + 1] = m;
    }
    u.d = _cvtsh_ss(b.d);
    u.c = _cvtsh_ss(b.dmin);
  }
};

template <>
struct KLayout<BlockQ6_K> {
  static constexpr size_t kSub = 16;
  static void Unpack(const BlockQ6_K& b, UnpackedK& u) {
    for (size_t e = 0; e < kQK_K; ++e) {
      const size_t h = e / 128, k = e % 128 / 32, l = e % 32;
      const uint8_t packed = b.ql[64 * h + 32 * (k % 2) + l];
      const uint8_t low4 = k < 2 ? packed & 0x0F : packed >> 4;
      const uint8_t high2 = (b.qh[32 * h + l] >> (2 * k)) & 3;
      u.q[e] = static_cast<uint8_t>(low4 | high2 << 4);
    }
    for (int g = 0; g < 16; ++g) {
      u.sc[g] = b.scales[g];
      u.mm[g] = static_cast<int16_t>(32 * b.scales[g]);
    }
    u.d = u.c = _cvtsh_ss(b.d);
  }
};

// Repacks rows [0, nr) (nr <= 16) of nb super-blocks into `out`.
template <class Block>
void InterleaveKRows(const uint8_t* w, size_t w_stride, size_t nr, size_t nb, InterleavedKBlock* out) {
  constexpr size_t kNumSub = kQK_K / KLayout<Block>::kSub;
  for (size_t b = 0; b < nb; ++b) {
    InterleavedKBlock& ib = out[b];
    for (size_t r = 0; r < kLaneRows; ++r) {
      UnpackedK u{};
      if (r < nr) KLayout<Block>::Unpack(BlockAt<Block>(w + r * w_stride, b), u);
      ib.d[r] = u.d;
      ib.c[r] = u.c;
      for (size_t j = 0; j < kNumSub; ++j) ib.sc[j][r] = u.sc[j];
      for (size_t p = 0; p < 8; ++p) {
        ib.mm[p][r][0] = u.mm[2 * p];
        ib.mm[p][r][1] = u.mm[2 * p + 1];
      }
      for (size_t g = 0; g < kQK_K / 4; ++g) std::memcpy(ib.q[g][r], u.q + 4 * g, 4);
    }
  }
}

using InterleavedKTileFn = void (*)(const InterleavedKBlock*, const uint8_t*, size_t, size_t, float*, size_t, size_t);

HWY_INLINE __m512i Broadcast4Bytes(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// y[t * ldy + r] = row r . token t for t < T, r < nr; x: T rows of nb Q8_K
// blocks, x_stride bytes apart.
template <size_t kSub, size_t T>
ENGRAM_VNNI_ATTR HWY_NOINLINE void InterleavedKTile(const InterleavedKBlock* HWY_RESTRICT w,
                                                    const uint8_t* HWY_RESTRICT x, size_t x_stride, size_t nb,
                                                    float* HWY_RESTRICT y, size_t ldy, size_t nr) {
  constexpr size_t kNumSub = kQK_K / kSub, kGroups = kSub / 4;
  __m512 acc[T];
  for (size_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (size_t b = 0; b < nb; ++b) {
    const InterleavedKBlock& wb = w[b];
    const BlockQ8_K* xb[T];
    for (size_t t = 0; t < T; ++t) xb[t] = &BlockAt<BlockQ8_K>(x + t * x_stride, b);
    __m512i total[T], correction[T];
    for (size_t t = 0; t < T; ++t) total[t] = correction[t] = _mm512_setzero_si512();
    for (size_t j = 0; j < kNumSub; ++j) {
      __m512i sum[T];
      for (size_t t = 0; t < T; ++t) sum[t] = _mm512_setzero_si512();
      for (size_t g = 0; g < kGroups; ++g) {
        const __m512i wq = _mm512_loadu_si512(wb.q[j * kGroups + g]);
        for (size_t t = 0; t < T; ++t) {
          sum[t] = _mm512_dpbusd_epi32(sum[t], wq, Broadcast4Bytes(xb[t]->qs + j * kSub + 4 * g));
        }
      }
      const __m512i sc = _mm512_loadu_si512(wb.sc[j]);
      for (size_t t = 0; t < T; ++t) total[t] = _mm512_add_epi32(total[t], _mm512_mullo_epi32(sum[t], sc));
    }
    for (size_t p = 0; p < 8; ++p) {
      const __m512i mm = _mm512_loadu_si512(wb.mm[p]);
      for (size_t t = 0; t < T; ++t) {
        correction[t] = _mm512_dpwssd_epi32(correction[t], mm, Broadcast4Bytes(xb[t]->bsums + 2 * p));
      }
    }
    const __m512 d = _mm512_loadu_ps(wb.d), c = _mm512_loadu_ps(wb.c);
    for (size_t t = 0; t < T; ++t) {
      const __m512 xd = _mm512_set1_ps(xb[t]->d);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[t]), _mm512_mul_ps(d, xd), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(correction[t]), _mm512_mul_ps(c, xd), acc[t]);
    }
  }
  const __mmask16 rows = static_cast<__mmask16>((1u << nr) - 1);
  for (size_t t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
}

// Tokens per K-quant tile: 3 T accumulators (float, total, correction) and
// T sub-block sums.
constexpr size_t kInterleavedKTokens = 6;

template <size_t kSub, size_t... I>
constexpr auto MakeInterleavedKTiles(std::index_sequence<I...>) {
  return std::array<InterleavedKTileFn, sizeof...(I)>{&InterleavedKTile<kSub, I + 1>...};
}

template <class Block>
void InterleavedKGemm(const uint8_t* w, size_t w_stride, size_t n_rows, const uint8_t* x, size_t x_stride,
                      size_t n_tokens, size_t nb, float* y, size_t ldy) {
  static constexpr auto kTiles =
      MakeInterleavedKTiles<KLayout<Block>::kSub>(std::make_index_sequence<kInterleavedKTokens>());
  thread_local std::vector<InterleavedKBlock> packed;
  packed.resize(nb);
  for (size_t r0 = 0; r0 < n_rows; r0 += kLaneRows) {
    const size_t nr = std::min(kLaneRows, n_rows - r0);
    InterleaveKRows<Block>(w + r0 * w_stride, w_stride, nr, nb, packed.data());
    for (size_t t0 = 0; t0 < n_tokens; t0 += kInterleavedKTokens) {
      const size_t nt = std::min(kInterleavedKTokens, n_tokens - t0);
      kTiles[nt - 1](packed.data(), x + t0 * x_stride, x_stride, nb, y + t0 * ldy + r0, ldy, nr);
    }
  }
}

#endif  // ENGRAM_GEMM_VNNI

template <class Kernel>
void QuantTiles(const uint8_t* w, size_t w_stride, size_t n_rows, const uint8_t* x, size_t x_stride, size_t n_tokens,
                size_t nb, float* y, size_t ldy) {
  constexpr size_t R = kQuantRows, T = kQuantTokens;
  static constexpr auto kTiles = MakeTileTable<Kernel, R, T>(std::make_index_sequence<R * T>());
  ForEachTile<R, T>(n_rows, n_tokens, [&](size_t r0, size_t nr, size_t t0, size_t nt) {
    kTiles[(nr - 1) * T + nt - 1](w + r0 * w_stride, w_stride, x + t0 * x_stride, x_stride, nb, y + t0 * ldy + r0, ldy);
  });
}

#endif  // ENGRAM_GEMM_AVX2

// y[t * ldy + r] = dot_row_q8(type, row r, activations t) for r < n_rows,
// t < n_tokens; rows w_stride bytes apart, activation rows x_stride bytes
// apart (quantize_activations output). False where this target has no
// integer micro-kernels: the caller then computes the tile itself.
// x_scale / x_start: per (token, block) of Q8_0 activations, their scale and
// -k * the sum of their quants (k = 128 for Q8_0 weights, 8 for Q4_0); null
// for other types.
bool GemmQ8Impl(GgmlType type, const uint8_t* w, size_t w_stride, size_t n_rows, const uint8_t* x, size_t x_stride,
                size_t n_tokens, size_t n_in, float* y, size_t ldy, const float* x_scale, const int32_t* x_start) {
#if ENGRAM_GEMM_VNNI
  if (InterleavedQ8Gemm<VnniTiles, VnniTiles>(type, w, w_stride, n_rows, x, x_stride, n_tokens, n_in, y, ldy, x_scale,
                                              x_start)) {
    return true;
  }
  if (type == GgmlType::Q4_K) {
    InterleavedKGemm<BlockQ4_K>(w, w_stride, n_rows, x, x_stride, n_tokens, n_in / kQK_K, y, ldy);
    return true;
  }
  if (type == GgmlType::Q6_K) {
    InterleavedKGemm<BlockQ6_K>(w, w_stride, n_rows, x, x_stride, n_tokens, n_in / kQK_K, y, ldy);
    return true;
  }
#elif HWY_ARCH_X86 && (HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3)
  // On AVX3 only Q4_0 gains from the panels (pp512 of a 1B model: 1.6x);
  // Q8_0's 512-bit tiles below are as fast (0.98-0.99x with the panels).
  const bool use_panels = HWY_TARGET == HWY_AVX2 || type == GgmlType::Q4_0;
  if (use_panels && InterleavedQ8Gemm<MaddubsTilesQ8_0, MaddubsTilesQ4_0>(type, w, w_stride, n_rows, x, x_stride,
                                                                          n_tokens, n_in, y, ldy, x_scale, x_start)) {
    return true;
  }
#else
  (void)x_scale, (void)x_start;
#endif
#if ENGRAM_GEMM_AVX2
  switch (type) {
    case GgmlType::Q8_0:
      QuantTiles<Q8_0Best<BlockQ8_0>>(w, w_stride, n_rows, x, x_stride, n_tokens, n_in / kQK, y, ldy);
      return true;
    case GgmlType::Q4_0:
      QuantTiles<Q8_0Best<BlockQ4_0>>(w, w_stride, n_rows, x, x_stride, n_tokens, n_in / kQK, y, ldy);
      return true;
    case GgmlType::Q4_K:
      QuantTiles<Q4_KBest>(w, w_stride, n_rows, x, x_stride, n_tokens, n_in / kQK_K, y, ldy);
      return true;
    case GgmlType::Q6_K:
      QuantTiles<Q6_KBest>(w, w_stride, n_rows, x, x_stride, n_tokens, n_in / kQK_K, y, ldy);
      return true;
    default:
      return false;
  }
#else
  (void)type, (void)w, (void)w_stride, (void)n_rows, (void)x, (void)x_stride, (void)n_tokens, (void)n_in, (void)y,
      (void)ldy;
  return false;
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace engram::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace engram::kernels {

HWY_EXPORT(GemmF32Impl);
HWY_EXPORT(GemmF32ScratchImpl);
HWY_EXPORT(GemmQ8Impl);
HWY_EXPORT(GemmBF16Impl);
HWY_EXPORT(GemmBF16ScratchImpl);
HWY_EXPORT(HasBF16DotImpl);

namespace {

// Weight bytes of one panel: the rows a thread multiplies with every token
// tile before moving on. Small enough for L1 next to a tile of activations.
constexpr size_t kPanelBytes = 32 * 1024;
// Rows per parallel_for grain: a multiple of every tile height, so threads
// split on tile boundaries and rarely share a cache line of y.
constexpr size_t kRowGrain = 16;
// Float weight rows per parallel_for grain and widening step: a multiple of
// every target's packed panel height (2 vectors: 8 to 32 rows).
constexpr size_t kFloatPanel = 64;

// A multiple of 16: the interleaved VNNI kernels repack 16 rows at a time.
size_t panel_rows(size_t bytes_per_row) {
  const size_t rows = kPanelBytes / std::max<size_t>(bytes_per_row, 1) / 16 * 16;
  return std::clamp<size_t>(rows, 16, 256);
}

// A matmul's activations, quantized once for every weight row: Q8_0 / Q8_K
// rows and, for Q8_0 / Q4_0 weights, each block's scale and weight-offset
// correction (see GemmQ8Impl) for the VNNI kernels.
struct QuantizedActivations {
  size_t row_bytes = 0;
  std::vector<uint8_t> rows;     // [n_tokens] rows of Q8_0 / Q8_K blocks
  std::vector<float> scale;      // [n_tokens][block], Q8_0 / Q4_0 weights only
  std::vector<int32_t> start;    // [n_tokens][block], likewise
};

QuantizedActivations quantize_for(GgmlType type, const float* x, int64_t n_in, size_t nt, ThreadPool& pool) {
  QuantizedActivations q;
  q.row_bytes = *row_bytes(activation_type(type, n_in), n_in);
  q.rows.resize(nt * q.row_bytes);
  const bool q8_blocks = type == GgmlType::Q8_0 || type == GgmlType::Q4_0;
  const size_t nb = static_cast<size_t>(n_in) / kQK;
  q.scale.resize(q8_blocks ? nt * nb : 0);
  q.start.resize(q.scale.size());
  const int32_t offset = type == GgmlType::Q8_0 ? 128 : 8;
  pool.parallel_for(nt, [&](size_t begin, size_t end, int) {
    for (size_t t = begin; t < end; ++t) {
      quantize_activations(type, x + t * static_cast<size_t>(n_in), q.rows.data() + t * q.row_bytes, n_in);
      if (!q8_blocks) continue;
      const auto* blocks = reinterpret_cast<const BlockQ8_0*>(q.rows.data() + t * q.row_bytes);
      for (size_t b = 0; b < nb; ++b) {
        int32_t sum = 0;
        for (int8_t v : blocks[b].qs) sum += v;
        q.scale[t * nb + b] = fp16_to_fp32(blocks[b].d);
        q.start[t * nb + b] = -offset * sum;
      }
    }
  });
  return q;
}

void gemm_quantized(const TensorView& W, const float* x, float* y, size_t nt, ThreadPool& pool) {
  const int64_t n_in = W.ne[0];
  const size_t no = static_cast<size_t>(W.ne[1]);
  const size_t row_size = W.row_size();
  const QuantizedActivations xq = quantize_for(W.type, x, n_in, nt, pool);
  const size_t xq_row = xq.row_bytes;
  const float* x_scale = xq.scale.empty() ? nullptr : xq.scale.data();
  const int32_t* x_start = xq.start.empty() ? nullptr : xq.start.data();
  const auto* base = static_cast<const uint8_t*>(W.data);
  const size_t panel = panel_rows(row_size);
  pool.parallel_for(no, [&](size_t begin, size_t end, int) {
    for (size_t o0 = begin; o0 < end; o0 += panel) {
      const size_t rows = std::min(panel, end - o0);
      const uint8_t* w = base + o0 * row_size;
      if (HWY_DYNAMIC_DISPATCH(GemmQ8Impl)(W.type, w, row_size, rows, xq.rows.data(), xq_row, nt,
                                           static_cast<size_t>(n_in), y + o0, no, x_scale, x_start)) {
        continue;
      }
      for (size_t t = 0; t < nt; ++t) {
        for (size_t r = 0; r < rows; ++r) {
          y[t * no + o0 + r] = dot_row_q8(W.type, w + r * row_size, xq.rows.data() + t * xq_row, n_in);
        }
      }
    }
  }, kRowGrain);
}

// BF16 weights on a CPU with bf16 dot products: the activations rounded to
// bf16 once, the weights packed straight from the file.
// False (nothing done) on other CPUs.
bool gemm_bf16(const TensorView& W, const float* x, float* y, size_t nt, ThreadPool& pool) {
  if (!bf16_dot_available()) return false;
  const size_t ni = static_cast<size_t>(W.ne[0]);
  const size_t no = static_cast<size_t>(W.ne[1]);
  const size_t ldx = (ni + 1) / 2 * 2;
  std::vector<uint16_t> x_bf16(nt * ldx, 0);  // [nt][ldx]: an odd row ends in a zero pad
  pool.parallel_for(nt, [&](size_t begin, size_t end, int) {
    for (size_t t = begin; t < end; ++t) f32_to_bf16(x + t * ni, x_bf16.data() + t * ldx, ni);
  });
  const auto* w = static_cast<const uint16_t*>(W.data);
  const size_t scratch_words = HWY_DYNAMIC_DISPATCH(GemmBF16ScratchImpl)();
  pool.parallel_for(no, [&](size_t begin, size_t end, int) {
    const auto panel = hwy::AllocateAligned<uint32_t>(scratch_words);
    HWY_DYNAMIC_DISPATCH(GemmBF16Impl)(w + begin * ni, ni, end - begin, x_bf16.data(), ldx, nt, ni, y + begin, no,
                                       panel.get());
  }, kFloatPanel);
  return true;
}

void gemm_float(const TensorView& W, const float* x, float* y, size_t nt, ThreadPool& pool) {
  const size_t ni = static_cast<size_t>(W.ne[0]);
  const size_t no = static_cast<size_t>(W.ne[1]);
  const bool in_place = W.type == GgmlType::F32;
  const size_t pack_floats = HWY_DYNAMIC_DISPATCH(GemmF32ScratchImpl)();
  pool.parallel_for(no, [&](size_t begin, size_t end, int) {
    // F16 / BF16 rows are widened kFloatPanel at a time, then packed.
    std::vector<float> widened(in_place ? 0 : std::min(kFloatPanel, end - begin) * ni);
    const auto pack = hwy::AllocateAligned<float>(pack_floats);
    for (size_t o0 = begin; o0 < end; o0 += kFloatPanel) {
      const size_t rows = std::min(kFloatPanel, end - o0);
      const float* w = static_cast<const float*>(W.data) + o0 * ni;
      if (!in_place) {
        for (size_t r = 0; r < rows; ++r) get_row(W, static_cast<int64_t>(o0 + r), widened.data() + r * ni);
        w = widened.data();
      }
      HWY_DYNAMIC_DISPATCH(GemmF32Impl)(w, ni, rows, x, ni, nt, ni, y + o0, no, pack.get());
    }
  }, kFloatPanel);
}

}  // namespace

bool bf16_dot_available() { return HWY_DYNAMIC_DISPATCH(HasBF16DotImpl)(); }

bool gemm_supports(GgmlType type, int64_t n_in) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      return n_in > 0;
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_K:
    case GgmlType::Q6_K:
      return activation_type(type, n_in) != GgmlType::F32;
    default:
      return false;
  }
}

void gemm_f32(const float* w, size_t ldw, size_t n_rows, const float* x, size_t ldx, size_t n_tokens, size_t n,
              float* y, size_t ldy, std::vector<float>& scratch) {
  if (n_rows == 0 || n_tokens == 0) return;
  // The packed panel is read with aligned loads: align inside the vector.
  constexpr size_t kAlignFloats = HWY_ALIGNMENT / sizeof(float);
  const size_t floats = HWY_DYNAMIC_DISPATCH(GemmF32ScratchImpl)() + kAlignFloats;
  if (scratch.size() < floats) scratch.resize(floats);
  const auto misalign = reinterpret_cast<uintptr_t>(scratch.data()) % HWY_ALIGNMENT;
  float* panel = scratch.data() + (misalign == 0 ? 0 : (HWY_ALIGNMENT - misalign) / sizeof(float));
  HWY_DYNAMIC_DISPATCH(GemmF32Impl)(w, ldw, n_rows, x, ldx, n_tokens, n, y, ldy, panel);
}

void gemm(const TensorView& W, const float* x, float* y, int n_tokens, ThreadPool& pool) {
  if (n_tokens <= 0 || W.ne[1] <= 0) return;
  const size_t nt = static_cast<size_t>(n_tokens);
  if (activation_type(W.type, W.ne[0]) != GgmlType::F32) {
    gemm_quantized(W, x, y, nt, pool);
  } else if (W.type == GgmlType::BF16) {
    if (gemm_bf16(W, x, y, nt, pool)) return;
    // bf16 activations on every CPU (see matmul), widened back to float here.
    std::vector<float> rounded(nt * static_cast<size_t>(W.ne[0]));
    round_to_bf16(x, rounded.data(), rounded.size());
    gemm_float(W, rounded.data(), y, nt, pool);
  } else {
    gemm_float(W, x, y, nt, pool);
  }
}

}  // namespace engram::kernels

#endif  // HWY_ONCE

#pragma GCC diagnostic pop
