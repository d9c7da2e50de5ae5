#include "runtime/perplexity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "test_support.h"

namespace engram {
namespace {

TEST(TokenNll, MatchesLogSoftmaxAndIsStable) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, -1.0f};
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  for (int t = 0; t < 4; ++t) {
    EXPECT_NEAR(token_nll(logits, t), std::log(z) - logits[static_cast<size_t>(t)], 1e-12);
  }
  // Shifting every logit by a constant changes nothing, even far beyond exp's range.
  std::vector<float> big = logits;
  for (float& x : big) x += 1000.0f;
  EXPECT_NEAR(token_nll(big, 2), token_nll(logits, 2), 1e-4);
  EXPECT_TRUE(std::isfinite(token_nll(big, 3)));
}

class StoriesPpl : public ::testing::Test {
 protected:
  void SetUp() override {
    ENGRAM_REQUIRE_REF();
    auto m = Model::load((test::ref_dir() / "models" / "stories260K.gguf").string());
    ASSERT_TRUE(m) << m.error().message;
    model_ = std::move(*m);
    std::string text;
    for (int i = 0; i < 12; ++i) text += "Once upon a time, there was a little girl named Lily. She liked to play. ";
    tokens_ = model_->tokenizer().encode(text, true, false);
    ASSERT_GT(tokens_.size(), 200u);
    ASSERT_LT(tokens_.size(), 512u);
  }

  std::unique_ptr<Model> model_;
  std::vector<TokenId> tokens_;
  ThreadPool pool_{1};
};

// Perplexity equals exp(mean NLL) computed independently from all the
// session's logits of one decode call, per range and overall.
TEST_F(StoriesPpl, EqualsExpMeanNllOfSessionLogits) {
  const int64_t n = static_cast<int64_t>(tokens_.size());
  Session ref(*model_, pool_, n);
  std::vector<float> logits;
  ASSERT_TRUE(ref.decode(tokens_, 512, &logits).is_ok());
  const size_t V = static_cast<size_t>(ref.n_vocab());
  auto nll_at = [&](int64_t p) {  // token p from row p-1, in long double
    const float* row = logits.data() + static_cast<size_t>(p - 1) * V;
    long double mx = row[0], z = 0;
    for (size_t i = 0; i < V; ++i) mx = std::max<long double>(mx, row[i]);
    for (size_t i = 0; i < V; ++i) z += std::exp(static_cast<long double>(row[i]) - mx);
    return static_cast<double>(std::log(z) + mx - row[tokens_[static_cast<size_t>(p)]]);
  };
  const std::vector<int64_t> bounds = {100, 150};
  double sums[3] = {0, 0, 0}, total = 0;
  int64_t counts[3] = {0, 0, 0};
  for (int64_t p = 1; p < n; ++p) {
    const int r = p < 100 ? 0 : p < 150 ? 1 : 2;
    const double v = nll_at(p);
    sums[r] += v;
    ++counts[r];
    total += v;
  }

  for (int batch : {512, 37}) {  // one chunk, and many chunks that do not divide the text
    Session s(*model_, pool_, n);
    PerplexityParams pp;
    pp.n_batch = batch;
    pp.boundaries = bounds;
    int64_t last_done = 0;
    pp.progress = [&](int64_t done, int64_t total_tokens) {
      EXPECT_GT(done, last_done);
      EXPECT_EQ(total_tokens, n);
      last_done = done;
    };
    auto r = perplexity(s, tokens_, pp);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(last_done, n);
    ASSERT_EQ(r->ranges.size(), 3u);
    EXPECT_EQ(r->ranges[0].begin, 1);
    EXPECT_EQ(r->ranges[0].end, 100);
    EXPECT_EQ(r->ranges[2].end, n);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(r->ranges[static_cast<size_t>(i)].count, counts[i]);
      EXPECT_NEAR(r->ranges[static_cast<size_t>(i)].perplexity(), std::exp(sums[i] / counts[i]),
                  2e-4 * std::exp(sums[i] / counts[i]))
          << "batch " << batch << " range " << i;
    }
    EXPECT_EQ(r->all.count, n - 1);
    EXPECT_NEAR(r->all.perplexity(), std::exp(total / (n - 1)), 2e-4 * std::exp(total / (n - 1)));
    EXPECT_GT(r->all.perplexity(), 1.0);
    EXPECT_LT(r->all.perplexity(), 512.0);  // better than uniform over the vocabulary
    EXPECT_GT(r->memory_bytes, 0u);
  }
}

TEST_F(StoriesPpl, RejectsBadBoundariesAndTooLongText) {
  Session s(*model_, pool_, static_cast<int64_t>(tokens_.size()));
  PerplexityParams pp;
  pp.boundaries = {100, 50};
  auto r = perplexity(s, tokens_, pp);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("increasing"), std::string::npos) << r.error().message;

  Session small(*model_, pool_, 64);
  auto r2 = perplexity(small, tokens_, PerplexityParams{});
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message.find("context holds 64"), std::string::npos) << r2.error().message;

  const std::vector<TokenId> one = {1};
  EXPECT_FALSE(perplexity(s, one, PerplexityParams{}));
}

}  // namespace
}  // namespace engram
