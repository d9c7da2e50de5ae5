#include "runtime/generate.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

class Stories : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::ref_dir().empty()) GTEST_SKIP() << "reference data ../shared/ref not found beside the repository";
    auto m = Model::load((test::ref_dir() / "models" / "stories260K.gguf").string());
    ASSERT_TRUE(m) << m.error().message;
    model_ = std::move(*m);
    manifest_ = nlohmann::json::parse(
        test::read_text_file(test::ref_dir() / "stories260K" / "once_upon_a_time.json"));
    prompt_ = manifest_["prompt_ids"].get<std::vector<TokenId>>();
    greedy_ = manifest_["greedy_ids"].get<std::vector<TokenId>>();
  }

  GenerateParams greedy(int n) const {
    GenerateParams p;
    p.n_predict = n;
    p.sampler.temperature = 0;
    return p;
  }

  std::vector<TokenId> run(Session& s, const GenerateParams& p, GenerateStats* stats_out = nullptr) {
    std::vector<TokenId> out;
    auto stats = generate(s, prompt_, p, [&](TokenId id) {
      out.push_back(id);
      return true;
    });
    EXPECT_TRUE(stats) << stats.error().message;
    if (stats && stats_out) *stats_out = *stats;
    return out;
  }

  std::unique_ptr<Model> model_;
  nlohmann::json manifest_;
  std::vector<TokenId> prompt_, greedy_;
  ThreadPool pool_{1};
};

TEST_F(Stories, GreedyMatchesReferenceIdsAndStats) {
  Session s(*model_, pool_);
  EXPECT_EQ(s.n_ctx(), 512);  // the model's context_length
  GenerateStats stats;
  auto ids = run(s, greedy(static_cast<int>(greedy_.size())), &stats);
  EXPECT_EQ(ids, greedy_);
  EXPECT_EQ(stats.n_prompt, static_cast<int>(prompt_.size()));
  EXPECT_EQ(stats.n_generated, static_cast<int>(greedy_.size()));
  EXPECT_EQ(stats.stop, StopReason::N_PREDICT);
  EXPECT_GT(stats.generate_tokens_per_second(), 0);
  // The last token is never decoded: prompt + n - 1 positions are in memory.
  EXPECT_EQ(s.n_past(), static_cast<int64_t>(prompt_.size() + greedy_.size() - 1));
}

TEST_F(Stories, PromptBatchSizeDoesNotChangeOutput) {
  for (int batch : {1, 2, 512}) {
    Session s(*model_, pool_);
    GenerateParams p = greedy(20);
    p.n_batch = batch;
    auto ids = run(s, p);
    EXPECT_EQ(ids, std::vector<TokenId>(greedy_.begin(), greedy_.begin() + 20)) << "batch " << batch;
  }
}

TEST_F(Stories, PromptLongerThanContextIsAnError) {
  Session s(*model_, pool_, 3);
  auto stats = generate(s, prompt_, greedy(5), [](TokenId) { return true; });
  ASSERT_FALSE(stats);
  EXPECT_NE(stats.error().message.find("prompt has 5 tokens but the context holds 3"), std::string::npos)
      << stats.error().message;
}

TEST_F(Stories, StopsWhenContextIsFull) {
  Session s(*model_, pool_, 10);
  GenerateStats stats;
  auto ids = run(s, greedy(-1), &stats);
  EXPECT_EQ(stats.stop, StopReason::CONTEXT_FULL);
  // 5 prompt positions + 5 decoded tokens fill 10; the sixth token was sampled from the last logits.
  EXPECT_EQ(ids.size(), 6u);
  EXPECT_EQ(ids, std::vector<TokenId>(greedy_.begin(), greedy_.begin() + 6));
}

TEST_F(Stories, CallbackCanStopAndZeroPredictGeneratesNothing) {
  Session s(*model_, pool_);
  int calls = 0;
  auto stats = generate(s, prompt_, greedy(50), [&](TokenId) { return ++calls < 3; });
  ASSERT_TRUE(stats);
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(stats->stop, StopReason::CALLER);

  Session s2(*model_, pool_);
  GenerateStats st;
  EXPECT_TRUE(run(s2, greedy(0), &st).empty());
  EXPECT_EQ(st.n_generated, 0);
}

TEST_F(Stories, SessionLogitsMatchLlamaCpp) {
  Session s(*model_, pool_);
  std::vector<float> logits;
  std::vector<TokenId> seq = prompt_;
  seq.insert(seq.end(), greedy_.begin(), greedy_.begin() + 10);
  ASSERT_TRUE(s.decode(seq, 4, &logits));
  auto ref = test::read_f32_file(test::ref_dir() / "stories260K" / "once_upon_a_time.llamacpp.logits.f32");
  ASSERT_EQ(logits.size(), seq.size() * 512);
  float diff = 0;
  for (size_t i = 0; i < logits.size(); ++i) diff = std::max(diff, std::fabs(logits[i] - ref[i]));
  EXPECT_LT(diff, 1e-3f);
  // logits() is the last row.
  EXPECT_TRUE(std::equal(s.logits().begin(), s.logits().end(), logits.end() - 512));
  // Past the context: an error, not a crash.
  Session small(*model_, pool_, 4);
  EXPECT_FALSE(small.decode(seq, 512));
}

TEST_F(Stories, RewindForgetsTheTailAndGivesTheSameLogitsAgain) {
  ThreadPool pool(1);
  Session s(*model_, pool, 256);
  ASSERT_TRUE(s.decode(prompt_, 64).is_ok());
  const int64_t doc = s.n_past();
  const std::vector<TokenId> question = {greedy_[0], greedy_[1], greedy_[2]};
  ASSERT_TRUE(s.decode(question, 64).is_ok());
  const std::vector<float> first(s.logits().begin(), s.logits().end());
  s.rewind(doc);
  EXPECT_EQ(s.n_past(), doc);
  EXPECT_EQ(s.memory().n_positions(0), doc);
  ASSERT_TRUE(s.decode(question, 64).is_ok());
  ASSERT_EQ(s.logits().size(), first.size());
  for (size_t i = 0; i < first.size(); ++i) ASSERT_FLOAT_EQ(s.logits()[i], first[i]) << "logit " << i;
}

TEST_F(Stories, SeededSamplingIsRepeatable) {
  auto sample = [&](uint64_t seed) {
    Session s(*model_, pool_);
    GenerateParams p;
    p.n_predict = 30;
    p.sampler.temperature = 1.0f;
    p.sampler.seed = seed;
    return run(s, p);
  };
  EXPECT_EQ(sample(7), sample(7));
  EXPECT_NE(sample(7), sample(8));
}

TEST_F(Stories, PrinterReproducesRunCText) {
  TokenPrinter printer(model_->tokenizer());
  std::string text;
  for (TokenId id : prompt_) text += printer.push(id);
  for (TokenId id : greedy_) text += printer.push(id);
  text += printer.flush();
  text += "\n";
  EXPECT_EQ(text, test::read_text_file(test::ref_dir() / "stories260K" / "once_upon_a_time.runc.txt"));
}

TEST_F(Stories, PrinterHoldsBackIncompleteUtf8) {
  // Byte tokens <0xE2> <0x96> <0x81> spell U+2581 in three tokens: nothing
  // may be printed until the character is complete.
  const Tokenizer& tok = model_->tokenizer();
  auto byte_token = [&](int b) {
    for (TokenId id = 0; id < tok.n_vocab(); ++id) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      if (tok.token_text(id) == name) return id;
    }
    return TokenId{-1};
  };
  TokenPrinter printer(tok);
  EXPECT_EQ(printer.push(byte_token(0xE2)), "");
  EXPECT_EQ(printer.push(byte_token(0x96)), "");
  EXPECT_EQ(printer.push(byte_token(0x81)), "\xE2\x96\x81");
  // A control byte alone is dropped, as run.c does; BOS prints nothing.
  EXPECT_EQ(printer.push(byte_token(0x01)), "");
  EXPECT_EQ(printer.push(tok.bos()), "");
}

}  // namespace
}  // namespace engram
