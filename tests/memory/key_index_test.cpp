#include "memory/key_index.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace engram {
namespace {

std::vector<float> random_keys(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> g(0.f, 2.f);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// Every entry scores each query as the max over its keys of q . k, with keys
// rounded per row to int8: within the rounding bound of the exact score.
TEST(KeyIndex, ScoresAreTheMaxDotWithinTheRoundingBound) {
  const int B = 64, kd = 32;
  std::mt19937 rng(1);
  KeyIndex index(B, kd);
  std::vector<std::vector<float>> blocks;
  for (int e = 0; e < 600; ++e) {  // more than two chunks
    blocks.push_back(random_keys(static_cast<size_t>(B) * kd, rng));
    index.append(blocks.back().data());
  }
  ASSERT_EQ(index.size(), 600u);
  for (int e : {0, 255, 256, 599}) {
    const auto q = random_keys(kd, rng);
    double q_abs = 0;
    for (float x : q) q_abs += std::fabs(x);
    float want = -1e30f, bound = 0.f;
    for (int r = 0; r < B; ++r) {
      double dot = 0;
      float row_max = 0.f;
      for (int d = 0; d < kd; ++d) {
        dot += static_cast<double>(q[d]) * blocks[e][static_cast<size_t>(r) * kd + d];
        row_max = std::max(row_max, std::fabs(blocks[e][static_cast<size_t>(r) * kd + d]));
      }
      want = std::max(want, static_cast<float>(dot));
      bound = std::max(bound, static_cast<float>(q_abs * row_max / 127.0 / 2.0));
    }
    EXPECT_NEAR(index.max_dot(static_cast<size_t>(e), q.data()), want, bound * 1.01f + 1e-4f) << "entry " << e;
  }
}

TEST(KeyIndex, TruncateCopyAndRawRoundTrip) {
  const int B = 8, kd = 4;
  std::mt19937 rng(2);
  KeyIndex a(B, kd);
  for (int e = 0; e < 300; ++e) a.append(random_keys(static_cast<size_t>(B) * kd, rng).data());
  KeyIndex b = a;  // deep copy
  a.truncate(10);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_EQ(b.size(), 300u);
  KeyIndex c(B, kd);
  for (size_t e = 0; e < b.size(); ++e) c.append_raw(b.entry_data(e));
  const auto q = random_keys(kd, rng);
  for (size_t e = 0; e < 300; ++e) EXPECT_EQ(c.max_dot(e, q.data()), b.max_dot(e, q.data()));
  for (size_t e = 0; e < 10; ++e) EXPECT_EQ(a.max_dot(e, q.data()), b.max_dot(e, q.data()));
  EXPECT_LT(a.bytes(), b.bytes());
  EXPECT_EQ(a.entry_bytes() % 16, 0u);
}

TEST(KeyIndex, ZeroKeysScoreZero) {
  KeyIndex index(4, 3);
  const std::vector<float> zeros(12, 0.f), q = {1.f, -2.f, 3.f};
  index.append(zeros.data());
  EXPECT_EQ(index.max_dot(0, q.data()), 0.f);
}

}  // namespace
}  // namespace engram
