#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <vector>

namespace engram {
namespace {

SamplerParams greedy_params() {
  SamplerParams p;
  p.temperature = 0.0f;
  return p;
}

// Draws `n` tokens from the same logits (no history) and counts them.
std::map<TokenId, int> histogram(Sampler& s, const std::vector<float>& logits, int n) {
  std::map<TokenId, int> counts;
  for (int i = 0; i < n; ++i) ++counts[s.sample(logits, {})];
  return counts;
}

TEST(Argmax, PicksLargestAndLowestIdOnTies) {
  EXPECT_EQ(argmax(std::vector<float>{0.1f, 3.0f, -1.0f, 2.0f}), 1);
  EXPECT_EQ(argmax(std::vector<float>{1.0f, 5.0f, 5.0f, 5.0f}), 1);
  EXPECT_EQ(argmax(std::vector<float>{7.0f, 7.0f}), 0);
  EXPECT_EQ(argmax(std::vector<float>{-3.0f, -2.0f, -2.0f}), 1);
}

TEST(Sampler, GreedyIgnoresSeedAndBreaksTiesLow) {
  std::vector<float> logits = {0.0f, 2.5f, 1.0f, 2.5f};
  for (uint64_t seed : {0u, 1u, 99u}) {
    SamplerParams p = greedy_params();
    p.seed = seed;
    Sampler s(p);
    EXPECT_EQ(s.sample(logits, {}), 1);
  }
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplerParams p = greedy_params();
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  // Token 0 (3.0) seen -> 1.5 < 2.0 of token 1: token 1 wins.
  EXPECT_EQ(s.sample(std::vector<float>{3.0f, 2.0f, 0.0f}, std::vector<TokenId>{0}), 1);
  // Negative logits get more negative: -1 seen -> -2 < -1.5.
  EXPECT_EQ(s.sample(std::vector<float>{-1.0f, -1.5f}, std::vector<TokenId>{0}), 1);
  // Without history nothing changes.
  EXPECT_EQ(s.sample(std::vector<float>{3.0f, 2.0f, 0.0f}, {}), 0);
}

TEST(Sampler, PenaltyWindowOnlyCoversLastN) {
  SamplerParams p = greedy_params();
  p.repeat_penalty = 10.0f;
  p.penalty_last_n = 2;
  Sampler s(p);
  // Token 0 was seen, but 3 tokens ago: outside the window, so it still wins.
  EXPECT_EQ(s.sample(std::vector<float>{3.0f, 2.0f, 1.0f}, std::vector<TokenId>{0, 2, 2}), 0);
  EXPECT_EQ(s.sample(std::vector<float>{3.0f, 2.0f, 1.0f}, std::vector<TokenId>{2, 0}), 1);
}

TEST(Sampler, PresencePenaltySubtractsOncePerDistinctToken) {
  SamplerParams p = greedy_params();
  p.presence_penalty = 1.0f;
  Sampler s(p);
  // Token 0 seen three times loses 1.0 once: 3.0 -> 2.0 still beats 1.9.
  EXPECT_EQ(s.sample(std::vector<float>{3.0f, 1.9f}, std::vector<TokenId>{0, 0, 0}), 0);
  // ... but not 2.1.
  EXPECT_EQ(s.sample(std::vector<float>{3.0f, 2.1f}, std::vector<TokenId>{0, 0, 0}), 1);
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 7;
  Sampler s(p);
  std::vector<float> logits = {1.0f, 0.9f, 0.8f, 1.1f, 0.0f};
  auto counts = histogram(s, logits, 2000);
  EXPECT_EQ(std::set<TokenId>({0, 3}), [&] {
    std::set<TokenId> ids;
    for (auto& [id, c] : counts) ids.insert(id);
    return ids;
  }());
  // p(3) / p(0) = e^0.1 ~ 1.105: both must show up in fair proportion.
  EXPECT_GT(counts[3], counts[0] * 0.9);
  EXPECT_LT(counts[3], counts[0] * 1.35);
}

TEST(Sampler, TopPKeepsSmallestSetReachingP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (as logits: their logs).
  std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.min_p = 0.0f;
  p.seed = 3;
  p.top_p = 0.7f;  // 0.5 < 0.7 <= 0.8: keeps ids 1 and 3
  Sampler s(p);
  auto counts = histogram(s, logits, 3000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[3], 0);
  // Renormalised: 0.5/0.8 = 0.625.
  EXPECT_NEAR(counts[1] / 3000.0, 0.625, 0.04);

  p.top_p = 0.4f;  // the top token alone suffices
  Sampler s2(p);
  auto counts2 = histogram(s2, logits, 200);
  EXPECT_EQ(counts2.size(), 1u);
  EXPECT_EQ(counts2.begin()->first, 1);
}

TEST(Sampler, MinPDropsTokensBelowFractionOfTop) {
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.25f;  // threshold 0.125: keeps 0.5, 0.3, 0.15
  p.seed = 11;
  Sampler s(p);
  auto counts = histogram(s, logits, 3000);
  EXPECT_EQ(counts.count(3), 0u);
  EXPECT_EQ(counts.size(), 3u);
  EXPECT_NEAR(counts[0] / 3000.0, 0.5 / 0.95, 0.04);
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  std::vector<float> logits = {1.0f, 0.0f};
  SamplerParams p;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 5;
  p.temperature = 0.25f;  // p0 = 1/(1+e^-4) ~ 0.982
  Sampler cold(p);
  auto c = histogram(cold, logits, 4000);
  EXPECT_NEAR(c[0] / 4000.0, 1.0 / (1.0 + std::exp(-4.0)), 0.015);
  p.temperature = 4.0f;  // p0 = 1/(1+e^-0.25) ~ 0.562
  Sampler hot(p);
  auto h = histogram(hot, logits, 4000);
  EXPECT_NEAR(h[0] / 4000.0, 1.0 / (1.0 + std::exp(-0.25)), 0.03);
}

std::vector<TokenId> draw_sequence(uint64_t seed, int n) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = seed;
  Sampler s(p);
  std::vector<float> flat(64, 0.0f);
  std::vector<TokenId> out;
  for (int i = 0; i < n; ++i) out.push_back(s.sample(flat, out));
  return out;
}

TEST(Sampler, SameSeedSameSequence) {
  EXPECT_EQ(draw_sequence(42, 100), draw_sequence(42, 100));
}

TEST(Sampler, DifferentSeedsDifferOnFlatDistribution) {
  auto a = draw_sequence(1, 100);
  auto b = draw_sequence(2, 100);
  EXPECT_NE(a, b);
  // A flat distribution over 64 tokens: 100 draws hit many distinct ids.
  EXPECT_GT(std::set<TokenId>(a.begin(), a.end()).size(), 30u);
}

TEST(Sampler, AlwaysReturnsValidIdWithAllFiltersOn) {
  SamplerParams p;  // defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05
  p.repeat_penalty = 1.3f;
  p.presence_penalty = 0.5f;
  p.seed = 9;
  Sampler s(p);
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i)) * 5.0f;
  std::vector<TokenId> history;
  for (int i = 0; i < 200; ++i) {
    TokenId id = s.sample(logits, history);
    ASSERT_GE(id, 0);
    ASSERT_LT(id, 100);
    history.push_back(id);
  }
}

}  // namespace
}  // namespace engram
