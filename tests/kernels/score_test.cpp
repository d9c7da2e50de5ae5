// max_dot_i8_cols (Engram memory's block scoring) against its reference on
// every SIMD target.
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/for_each_target.h"
#include "kernels/kernels.h"
#include "kernels/kernels_ref.h"

namespace engram::kernels {
namespace {

struct Block {
  std::vector<int8_t> cols;  // [k_dim][n_rows]
  std::vector<float> scale;  // [n_rows]
};

Block random_block(size_t n_rows, size_t k_dim, std::mt19937& rng) {
  std::uniform_int_distribution<int> q(-127, 127);
  std::uniform_real_distribution<float> s(0.001f, 0.1f);
  Block b{std::vector<int8_t>(n_rows * k_dim), std::vector<float>(n_rows)};
  for (auto& x : b.cols) x = static_cast<int8_t>(q(rng));
  for (auto& x : b.scale) x = s(rng);
  return b;
}

TEST(ScoreKernel, MaxDotI8ColsMatchesReference) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (size_t n_rows : {1, 3, 8, 17, 64, 100, 128}) {
    for (size_t k_dim : {1, 5, 32, 64, 128}) {
      const Block b = random_block(n_rows, k_dim, rng);
      std::vector<float> q(k_dim);
      for (auto& x : q) x = u(rng);
      const float want = ref::max_dot_i8_cols(b.cols.data(), b.scale.data(), n_rows, k_dim, q.data());
      // |error| of a float dot of k_dim terms: (k_dim + 2) u sum |q_d k_d| * scale, bounded loosely.
      const float tol = 1e-5f * static_cast<float>(k_dim) * 127.f * 0.1f;
      for_each_target([&] {
        const float got = max_dot_i8_cols(b.cols.data(), b.scale.data(), n_rows, k_dim, q.data());
        EXPECT_NEAR(got, want, tol) << "rows " << n_rows << " k_dim " << k_dim;
      });
    }
  }
}

// The row holding the maximum can sit anywhere, including the lanes handled
// after the last whole vector: plant one dominant row in each position.
TEST(ScoreKernel, FindsTheBestRowWherever) {
  std::mt19937 rng(8);
  const size_t n_rows = 45, k_dim = 8;
  std::vector<float> q(k_dim, 1.f);
  for (size_t best = 0; best < n_rows; ++best) {
    Block b = random_block(n_rows, k_dim, rng);
    for (size_t r = 0; r < n_rows; ++r) b.scale[r] = 0.001f;
    for (size_t d = 0; d < k_dim; ++d) b.cols[d * n_rows + best] = 100;
    b.scale[best] = 1.f;
    for_each_target([&] {
      EXPECT_FLOAT_EQ(max_dot_i8_cols(b.cols.data(), b.scale.data(), n_rows, k_dim, q.data()), 800.f) << best;
    });
  }
}

TEST(ScoreKernel, NoRowsIsMinusInfinity) {
  const float q = 1.f;
  for_each_target([&] {
    EXPECT_EQ(max_dot_i8_cols(nullptr, nullptr, 0, 1, &q), -std::numeric_limits<float>::infinity());
  });
}

}  // namespace
}  // namespace engram::kernels

namespace engram::kernels {
namespace {

std::vector<float> uniform(size_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

TEST(AttentionKernels, DotColsMatchesReference) {
  std::mt19937 rng(11);
  for (size_t n_rows : {0, 1, 7, 16, 33, 64, 100, 256}) {
    for (size_t dim : {1, 8, 32, 64, 128}) {
      const size_t stride = n_rows + 3;  // a column stride longer than the rows read
      const auto kT = uniform(dim * stride, -2.f, 2.f, rng);
      const auto q = uniform(dim, -1.f, 1.f, rng);
      std::vector<float> want(n_rows + 1, -7.f);
      ref::dot_cols(kT.data(), stride, n_rows, dim, q.data(), 0.5f, want.data());
      for_each_target([&] {
        std::vector<float> got(n_rows + 1, -7.f);
        dot_cols(kT.data(), stride, n_rows, dim, q.data(), 0.5f, got.data());
        for (size_t r = 0; r < n_rows; ++r)
          EXPECT_NEAR(got[r], want[r], 1e-5f * static_cast<float>(dim) * 2.f) << "row " << r << " dim " << dim;
        EXPECT_EQ(got[n_rows], -7.f) << "wrote past n_rows";
      });
    }
  }
}

TEST(AttentionKernels, ExpShiftSumMatchesReferenceAndMasksMinusInfinity) {
  std::mt19937 rng(12);
  for (size_t n : {0, 1, 5, 16, 37, 256}) {
    auto x = uniform(n, -20.f, 3.f, rng);
    if (n > 2) x[1] = -std::numeric_limits<float>::infinity();
    auto want = x;
    const float want_sum = ref::exp_shift_sum(want.data(), n, 2.5f);
    for_each_target([&] {
      auto got = x;
      const float sum = exp_shift_sum(got.data(), n, 2.5f);
      EXPECT_NEAR(sum, want_sum, 1e-5f * (want_sum + 1.f));
      for (size_t i = 0; i < n; ++i) EXPECT_NEAR(got[i], want[i], 1e-6f * (want[i] + 1e-3f)) << i;
      if (n > 2) EXPECT_EQ(got[1], 0.f);
    });
  }
}

TEST(AttentionKernels, AddWeightedRowsMatchesReference) {
  std::mt19937 rng(13);
  for (size_t n_rows : {0, 1, 9, 64, 256}) {
    for (size_t dim : {1, 3, 8, 32, 100, 128, 300}) {
      const size_t stride = dim + 5;
      const auto v = uniform(n_rows * stride, -1.f, 1.f, rng);
      const auto w = uniform(n_rows, 0.f, 1.f, rng);
      auto want = uniform(dim + 1, -1.f, 1.f, rng);
      const auto start = want;
      ref::add_weighted_rows(w.data(), v.data(), stride, n_rows, dim, want.data());
      for_each_target([&] {
        auto got = start;
        add_weighted_rows(w.data(), v.data(), stride, n_rows, dim, got.data());
        for (size_t d = 0; d < dim; ++d)
          EXPECT_NEAR(got[d], want[d], 1e-5f * static_cast<float>(n_rows + 1)) << "dim " << dim << " d " << d;
        EXPECT_EQ(got[dim], start[dim]) << "wrote past dim";
      });
    }
  }
}

}  // namespace
}  // namespace engram::kernels
