// The cache-blocked GEMM (gemm.h) against the scalar reference matmul
// (kernels_ref.h), for every weight type it supports, odd shapes (tiles left
// partly empty in both directions) and every Highway target.
//
// Tolerances follow kernels_test.cpp: a float sum of n terms, however
// grouped, is within about n u sum|terms| of the exact value. For quantized
// weights the block sums are exact integers and only their scaling and
// summation round: a few roundings per block. A separate test uses values
// whose every product and partial sum is an integer below 2^24, where the
// result must match the reference exactly.
#include "kernels/gemm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/for_each_target.h"
#include "kernels/kernels.h"
#include "kernels/kernels_ref.h"
#include "kernels/test_weights.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace engram::kernels {
namespace {

using test::random_floats;
using test::Weights;

constexpr double kU = 1.0 / (1 << 24);  // unit roundoff of float

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0,
                           GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K};



Weights make_weights(GgmlType type, int64_t n_in, int64_t n_out, uint32_t seed) {
  Weights w{type, n_in, n_out, std::vector<uint8_t>(*row_bytes(type, n_in) * static_cast<size_t>(n_out))};
  const auto values = random_floats(static_cast<size_t>(n_in * n_out), -1, 1, seed);
  for (int64_t o = 0; o < n_out; ++o) {
    quantize_row(type, values.data() + o * n_in, w.bytes.data() + static_cast<size_t>(o) * *row_bytes(type, n_in), n_in);
  }
  return w;
}

// The smallest n_in > 0 that is a multiple of the type's activation block.
int64_t block_of(GgmlType type) {
  switch (ref::activation_type(type, 256)) {
    case GgmlType::Q8_0: return kQK;
    case GgmlType::Q8_K: return kQK_K;
    default: return 1;
  }
}

// sum over the row of |every term the kernel rounds|, in double.
double abs_terms(GgmlType type, const uint8_t* row, const float* x, int64_t n) {
  double s = 0;
  switch (ref::activation_type(type, n)) {
    case GgmlType::Q8_0: {
      std::vector<uint8_t> xq(*row_bytes(GgmlType::Q8_0, n));
      quantize_row(GgmlType::Q8_0, x, xq.data(), n);
      for (int64_t b = 0; b < n / kQK; ++b) {
        BlockQ8_0 xb;
        std::memcpy(&xb, xq.data() + b * sizeof xb, sizeof xb);
        double block = 0;
        for (int j = 0; j < kQK; ++j) block += std::abs(ref::weight_quant(type, row, b, j) * xb.qs[j]);
        s += std::fabs(ref::half_to_float(ref::weight_scale(type, row, b)) * ref::half_to_float(xb.d)) * block;
      }
      return s;
    }
    case GgmlType::Q8_K: {
      const auto xq = ref::quantize_q8_K(x, n);
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        double scaled = 0, offsets = 0, d = 0, dmin = 0;
        if (type == GgmlType::Q4_K) {
          BlockQ4_K w;
          std::memcpy(&w, row + b * sizeof w, sizeof w);
          for (int i = 0; i < kQK_K; ++i) {
            int q, sc, m;
            ref::q4_K_quant(w, i, &q, &sc, &m);
            scaled += std::abs(sc * q * xq[b].qs[i]);
            offsets += std::abs(m * xq[b].qs[i]);
          }
          d = ref::half_to_float(w.d);
          dmin = ref::half_to_float(w.dmin);
        } else {  // Q6_K: q - 32 may be summed as q and -32 separately
          BlockQ6_K w;
          std::memcpy(&w, row + b * sizeof w, sizeof w);
          for (int i = 0; i < kQK_K; ++i) {
            int q, sc;
            ref::q6_K_quant(w, i, &q, &sc);
            scaled += std::abs(sc * (q + 32) * xq[b].qs[i]) + std::abs(sc * 32 * xq[b].qs[i]);
          }
          d = ref::half_to_float(w.d);
        }
        s += std::fabs(d * xq[b].d) * scaled + std::fabs(dmin * xq[b].d) * offsets;
      }
      return s;
    }
    default: {
      const auto w = ref::row_to_f32(type, row, n);
      for (int64_t i = 0; i < n; ++i) s += std::fabs(static_cast<double>(w[i]) * x[i]);
      return s;
    }
  }
}

// Roundings per element of a dot of n elements: one per block (scale
// product, conversion, accumulation: 3) plus the final lane sums.
double tolerance(GgmlType type, int64_t n, double abs_sum) {
  const int64_t steps = block_of(type) == 1 ? n : 3 * (n / block_of(type));
  return static_cast<double>(steps + 24) * kU * abs_sum;
}

void check_gemm(GgmlType type, int64_t n_in, int64_t n_out, const std::vector<int>& token_counts, uint32_t seed) {
  const Weights w = make_weights(type, n_in, n_out, seed);
  const TensorView W = w.view();
  ASSERT_TRUE(gemm_supports(type, n_in)) << type_traits(type).name << " n_in=" << n_in;
  for (int n_tokens : token_counts) {
    const auto x = random_floats(static_cast<size_t>(n_tokens * n_in), -2, 2, seed + 1000 + n_tokens);
    std::vector<float> want(static_cast<size_t>(n_tokens * n_out));
    ref::matmul(W, x.data(), want.data(), n_tokens);
    std::vector<double> tol(want.size());
    for (int t = 0; t < n_tokens; ++t) {
      for (int64_t o = 0; o < n_out; ++o) {
        tol[t * n_out + o] = tolerance(type, n_in, abs_terms(type, w.row(o), x.data() + t * n_in, n_in));
      }
    }
    for_each_target([&] {
      for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        std::vector<float> got(want.size(), NAN);
        gemm(W, x.data(), got.data(), n_tokens, pool);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_NEAR(got[i], want[i], tol[i])
              << type_traits(type).name << " n_in=" << n_in << " n_out=" << n_out << " n_tokens=" << n_tokens
              << " threads=" << threads << " t=" << i / n_out << " o=" << i % n_out;
        }
        // matmul takes this path from kGemmMinTokens on: the same result.
        if (n_tokens >= kGemmMinTokens) {
          std::vector<float> via_matmul(want.size(), NAN);
          matmul(W, x.data(), via_matmul.data(), n_tokens, pool);
          ASSERT_EQ(std::memcmp(via_matmul.data(), got.data(), got.size() * sizeof(float)), 0);
        }
      }
    });
  }
}

std::vector<int> one_to(int n) {
  std::vector<int> v;
  for (int i = 1; i <= n; ++i) v.push_back(i);
  return v;
}

TEST(Gemm, EveryTokenCountMatchesReference) {
  // 37 rows: tiles of 4 leave one; tokens 1..37 cover every tile remainder.
  for (GgmlType type : kTypes) {
    SCOPED_TRACE(type_traits(type).name);
    check_gemm(type, 2 * std::max<int64_t>(block_of(type), 64), 37, one_to(37), 7);
  }
}

TEST(Gemm, OddShapesMatchReference) {
  for (GgmlType type : kTypes) {
    SCOPED_TRACE(type_traits(type).name);
    const int64_t block = block_of(type);
    // Float rows: shorter than a vector, not a multiple of one, and longer
    // than the 512-float reduction chunk. Quantized: one and several blocks.
    const std::vector<int64_t> n_ins = block == 1 ? std::vector<int64_t>{1, 67, 1100}
                                                  : std::vector<int64_t>{block, 3 * block, 1536};
    for (int64_t n_in : n_ins) {
      for (int64_t n_out : {1, 6, 50}) check_gemm(type, n_in, n_out, {1, 8, 13}, 11 + static_cast<uint32_t>(n_in));
    }
  }
}

// Activations x with x[0] of each block = largest magnitude, +-127 (or -127
// for Q8_K), the rest integers in [-4, 4]: they quantize to scale 1 and
// quants equal to x. With weight scales 1 (or 0.5 / 2 for the 32-blocks),
// every product and partial sum is an integer below 2^24, exact in float.
std::vector<float> exact_activations(GgmlType type, int64_t n, int n_tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x(static_cast<size_t>(n * n_tokens));
  const int64_t block = block_of(type);
  for (size_t i = 0; i < x.size(); ++i) {
    const bool first = static_cast<int64_t>(i) % block == 0;
    x[i] = first ? (block == kQK_K || rng() % 2 ? -127.0f : 127.0f) : static_cast<float>(static_cast<int>(rng() % 9) - 4);
  }
  return x;
}

// Random block bytes with power-of-two scales.
Weights exact_weights(GgmlType type, int64_t n_in, int64_t n_out, uint32_t seed) {
  std::mt19937 rng(seed);
  Weights w{type, n_in, n_out, std::vector<uint8_t>(*row_bytes(type, n_in) * static_cast<size_t>(n_out))};
  for (uint8_t& byte : w.bytes) byte = static_cast<uint8_t>(rng());
  const uint16_t kPow2[] = {0x3800, 0x3C00, 0x4000};  // 0.5, 1, 2 as halves
  const uint16_t one = 0x3C00;
  const size_t n_blocks = w.bytes.size() / *row_bytes(type, block_of(type));
  const size_t block_bytes = *row_bytes(type, block_of(type));
  for (size_t b = 0; b < n_blocks; ++b) {
    uint8_t* blk = w.bytes.data() + b * block_bytes;
    switch (type) {
      case GgmlType::Q8_0: {
        std::memcpy(blk, &kPow2[b % 3], 2);
        auto* qs = reinterpret_cast<int8_t*>(blk + 2);
        for (int j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(qs[j] % 16);  // keeps 2^24 out of reach
        break;
      }
      case GgmlType::Q4_0:
        std::memcpy(blk, &kPow2[b % 3], 2);
        break;
      case GgmlType::Q4_K:
        std::memcpy(blk + offsetof(BlockQ4_K, d), &one, 2);
        std::memcpy(blk + offsetof(BlockQ4_K, dmin), &one, 2);
        break;
      case GgmlType::Q6_K:
        std::memcpy(blk + offsetof(BlockQ6_K, d), &one, 2);
        break;
      default:
        ADD_FAILURE() << "not a block type";
    }
  }
  return w;
}

TEST(Gemm, IntegerBlockSumsAreExact) {
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    const int64_t n_in = 2 * kQK_K;
    const int64_t n_out = 9;
    const int n_tokens = 11;
    const Weights w = exact_weights(type, n_in, n_out, 5);
    const auto x = exact_activations(type, n_in, n_tokens, 6);
    std::vector<float> want(static_cast<size_t>(n_tokens * n_out));
    ref::matmul(w.view(), x.data(), want.data(), n_tokens);
    double largest = 0;
    for (float v : want) largest = std::max<double>(largest, std::fabs(v));
    ASSERT_LT(largest, 1 << 22) << type_traits(type).name;
    ASSERT_GT(largest, 1000) << type_traits(type).name;  // not trivially zero
    for_each_target([&] {
      ThreadPool pool(2);
      std::vector<float> got(want.size(), NAN);
      gemm(w.view(), x.data(), got.data(), n_tokens, pool);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << type_traits(type).name << " i=" << i;
    });
  }
}

// The largest products the integer kernels can meet: Q4_0 nibbles of 15 and
// 0 (weights +7 and -8) against activations of +-127, in every group of
// every block. The AVX2 kernel adds a block's byte products in int16 lanes
// before widening: these sums are the ones closest to overflowing them.
TEST(Gemm, ExtremeQuantsDoNotSaturate) {
  const int64_t n_in = 4 * kQK, n_out = 17;
  const int n_tokens = 9;
  Weights w{GgmlType::Q4_0, n_in, n_out, std::vector<uint8_t>(*row_bytes(GgmlType::Q4_0, n_in) * n_out)};
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t b = 0; b < n_in / kQK; ++b) {
      BlockQ4_0 blk;
      blk.d = 0x3C00;  // 1.0
      std::memset(blk.qs, o % 2 == 0 ? 0xFF : 0x00, sizeof blk.qs);
      std::memcpy(w.bytes.data() + (o * (n_in / kQK) + b) * sizeof blk, &blk, sizeof blk);
    }
  }
  std::vector<float> x(static_cast<size_t>(n_tokens * n_in));
  for (size_t i = 0; i < x.size(); ++i) x[i] = (i / n_in) % 2 == 0 ? 1.0f : -1.0f;  // quantized to +-127
  std::vector<float> want(static_cast<size_t>(n_tokens * n_out));
  ref::matmul(w.view(), x.data(), want.data(), n_tokens);
  // Row o, token t: n_in * (7 or -8) * (+-1), up to the activations' fp16 scale.
  EXPECT_NEAR(want[0], 7.0 * n_in, 1e-3 * n_in);
  EXPECT_NEAR(want[1], -8.0 * n_in, 1e-3 * n_in);
  for_each_target([&] {
    ThreadPool pool(2);
    std::vector<float> got(want.size(), NAN);
    gemm(w.view(), x.data(), got.data(), n_tokens, pool);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * std::fabs(want[i])) << "i=" << i;
  });
}

// Byte for byte the quant layer's Q8_0 quantization, including halves that
// round away from zero (blocks with amax 127 have scale 1: x.5 are ties),
// an all-zero block, and values of every magnitude.
TEST(Gemm, QuantizesActivationsLikeQuantLayer) {
  const int64_t n = 8 * kQK;
  std::vector<float> x = random_floats(static_cast<size_t>(n), -3, 3, 17);
  for (int j = 0; j < kQK; ++j) x[kQK + j] = j == 0 ? 127.0f : static_cast<float>(j % 9) - 4.5f;
  std::fill(x.begin() + 2 * kQK, x.begin() + 3 * kQK, 0.0f);
  for (int j = 0; j < kQK; ++j) x[3 * kQK + j] = std::ldexp(x[3 * kQK + j], -20);
  for (int j = 0; j < kQK; ++j) x[4 * kQK + j] = -1000.0f * x[4 * kQK + j];
  std::vector<uint8_t> want(*row_bytes(GgmlType::Q8_0, n));
  quantize_row(GgmlType::Q8_0, x.data(), want.data(), n);
  for_each_target([&] {
    std::vector<uint8_t> got(want.size(), 0xAA);
    quantize_activations(GgmlType::Q8_0, x.data(), got.data(), n);
    EXPECT_EQ(got, want);
  });
}

TEST(Gemm, SupportsOnlyWhatItImplements) {
  EXPECT_TRUE(gemm_supports(GgmlType::F16, 5));
  EXPECT_TRUE(gemm_supports(GgmlType::Q8_0, 64));
  EXPECT_FALSE(gemm_supports(GgmlType::Q8_0, 48));  // activations not quantized: per-row path
  EXPECT_TRUE(gemm_supports(GgmlType::Q4_K, 512));
  EXPECT_FALSE(gemm_supports(GgmlType::Q4_K, 128));
  EXPECT_FALSE(gemm_supports(GgmlType::Q5_K, 512));
}

}  // namespace
}  // namespace engram::kernels
