// RoPE pairing and scaling, checked against the defining formulas.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "model/rope.h"

namespace engram::transformer {
namespace {

RopeConfig base_config(bool neox) {
  RopeConfig c;
  c.n_dims = 8;
  c.neox = neox;
  c.freq_base = 10000.f;
  c.n_ctx_orig = 4096;
  return c;
}

// One head of head_dim 10 (2 dims past n_dims stay untouched).
std::vector<float> rotate(const RopeConfig& c, const std::vector<float>& x, int64_t pos) {
  Rope rope(c);
  std::vector<float> y = x, cache;
  rope.apply(y.data(), 1, 1, static_cast<int>(y.size()), pos, cache);
  return y;
}

TEST(Rope, NormRotatesAdjacentPairs) {
  const RopeConfig c = base_config(false);
  const int64_t pos = 3;
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const auto y = rotate(c, x, pos);
  for (int i = 0; i < 4; ++i) {
    const double theta = pos * std::pow(10000.0, -2.0 * i / 8);
    const double a = x[2 * i], b = x[2 * i + 1];
    EXPECT_NEAR(y[2 * i], a * std::cos(theta) - b * std::sin(theta), 1e-5) << i;
    EXPECT_NEAR(y[2 * i + 1], a * std::sin(theta) + b * std::cos(theta), 1e-5) << i;
  }
  EXPECT_EQ(y[8], 9.f);
  EXPECT_EQ(y[9], 10.f);
}

TEST(Rope, NeoxRotatesHalves) {
  const RopeConfig c = base_config(true);
  const int64_t pos = 5;
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const auto y = rotate(c, x, pos);
  for (int i = 0; i < 4; ++i) {
    const double theta = pos * std::pow(10000.0, -2.0 * i / 8);
    const double a = x[i], b = x[i + 4];
    EXPECT_NEAR(y[i], a * std::cos(theta) - b * std::sin(theta), 1e-5) << i;
    EXPECT_NEAR(y[i + 4], a * std::sin(theta) + b * std::cos(theta), 1e-5) << i;
  }
  EXPECT_EQ(y[8], 9.f);
}

TEST(Rope, LinearScalingInterpolatesPositions) {
  RopeConfig scaled = base_config(false);
  scaled.scaling = RopeScaling::LINEAR;
  scaled.freq_scale = 0.25f;
  std::vector<float> x = {1, -2, 3, 0.5f, -1, 2, 0.25f, 4, 0, 0};
  const auto a = rotate(scaled, x, 8);
  const auto b = rotate(base_config(false), x, 2);  // 8 * 0.25
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << i;
}

TEST(Rope, YarnExtrapolatesFastPairsAndInterpolatesSlowOnes) {
  RopeConfig c = base_config(false);
  c.n_dims = 64;
  c.scaling = RopeScaling::YARN;
  c.freq_scale = 0.25f;
  c.yarn_ext_factor = 1.f;
  c.yarn_attn_factor = 1.f;
  c.n_ctx_orig = 4096;
  float dims[2];
  yarn_corr_dims(c.n_dims, c.n_ctx_orig, c.freq_base, c.yarn_beta_fast, c.yarn_beta_slow, dims);
  ASSERT_GT(dims[0], 1.f);
  ASSERT_LT(dims[1], 31.f);
  Rope rope(c);
  const int64_t pos = 100;
  std::vector<float> cache(64);
  rope.angles(pos, cache.data());
  const double mscale = 1.0 + 0.1 * std::log(4.0);
  for (int i : {0, 31}) {
    const double theta_extrap = pos * std::pow(10000.0, -2.0 * i / 64);
    // Pair 0 is below the ramp: pure extrapolation. Pair 31 is above: pure interpolation.
    const double theta = i == 0 ? theta_extrap : theta_extrap * 0.25;
    EXPECT_NEAR(cache[2 * i], std::cos(theta) * mscale, 1e-4) << i;
    EXPECT_NEAR(cache[2 * i + 1], std::sin(theta) * mscale, 1e-4) << i;
  }
}

// A key rotated at p and then moved by delta equals the key rotated at
// p + delta (what Engram memory's position remapping relies on), for every
// pairing and scaling, several heads at once, delta of either sign.
TEST(Rope, RotateByMovesKeysToTheShiftedPosition) {
  const float freq_factors[4] = {1.f, 1.5f, 2.f, 8.f};
  struct Case { const char* name; RopeConfig c; const float* ff; };
  std::vector<Case> cases;
  cases.push_back({"norm", base_config(false), nullptr});
  cases.push_back({"neox", base_config(true), nullptr});
  RopeConfig linear = base_config(true);
  linear.scaling = RopeScaling::LINEAR;
  linear.freq_scale = 0.25f;
  cases.push_back({"linear", linear, nullptr});
  cases.push_back({"freq_factors", base_config(false), freq_factors});
  RopeConfig yarn = base_config(false);
  yarn.scaling = RopeScaling::YARN;
  yarn.freq_scale = 0.25f;
  yarn.yarn_ext_factor = 1.f;
  yarn.n_ctx_orig = 64;
  cases.push_back({"yarn", yarn, nullptr});

  const int n_heads = 3, head_dim = 10;
  std::vector<float> x(n_heads * head_dim);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(1.7f * static_cast<float>(i) + 0.3f);
  for (const Case& k : cases) {
    Rope rope(k.c, k.ff);
    for (auto [pos, delta] : {std::pair<int64_t, int64_t>{3000, -2900}, {17, 480}, {100, 0}, {5, 4000}}) {
      std::vector<float> moved = x, direct = x, cache;
      rope.apply(moved.data(), 1, n_heads, head_dim, pos, cache);
      rope.rotate_by(moved.data(), n_heads, head_dim, delta, cache);
      rope.apply(direct.data(), 1, n_heads, head_dim, pos + delta, cache);
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_NEAR(moved[i], direct[i], 2e-3) << k.name << " pos " << pos << " delta " << delta << " i " << i;
    }
  }
}

}  // namespace
}  // namespace engram::transformer
