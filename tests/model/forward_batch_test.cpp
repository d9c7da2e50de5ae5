// Model::forward_batch (continuous batching): several sequences in one pass
// give the logits that forward() gives on each alone, for every architecture
// (llama, qwen2, qwen3 and deepseek2 with their batched bodies; a model that
// keeps the default segment-by-segment implementation too), and bad segments
// are errors that name the segment.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "memory/memory.h"
#include "model/deepseek2.h"
#include "model/model.h"
#include "model_test_support.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

// The reference model `name` of ../shared/ref/models.
std::unique_ptr<Model> load_ref_or_fail(const std::string& name) {
  return test::load_or_fail(test::models_dir() / (name + ".gguf"));
}

// BOS then `n - 1` seeded random ids of the vocabulary.
std::vector<TokenId> random_tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<TokenId> id(3, n_vocab - 1);
  std::vector<TokenId> t = {1};
  while (static_cast<int>(t.size()) < n) t.push_back(id(rng));
  return t;
}

// A model that keeps Model's default forward_batch (segment by segment) and
// forwards everything else to a real model.
class DefaultBatchModel final : public Model {
 public:
  explicit DefaultBatchModel(Model& inner) : inner_(inner) { config_ = inner.config(); }
  Status forward(std::span<const TokenId> tokens, int64_t pos0, int seq, Memory& memory, float* logits,
                 bool all_logits, ThreadPool& pool) override {
    return inner_.forward(tokens, pos0, seq, memory, logits, all_logits, pool);
  }

 private:
  Model& inner_;
};

// Three sequences in one memory: seq 0 already holds 7 tokens and decodes
// one, seq 1 starts with a 9-token prefill chunk, seq 2 holds 12 and adds a
// 5-token chunk. Then a second step with one decode token each, in another
// segment order. Every step's logits must equal forward() per segment.
void expect_batch_equals_separate(Model& batched, Model& reference) {
  const ModelConfig& c = reference.config();
  const int V = c.n_vocab;
  ThreadPool pool(2);
  const int64_t n_ctx = 32;
  auto mem_batch = make_dense_memory(reference.memory_layout(n_ctx, 3));
  auto mem_ref = make_dense_memory(reference.memory_layout(n_ctx, 3));

  const std::vector<TokenId> s0 = random_tokens(9, V, 10), s1 = random_tokens(10, V, 11), s2 = random_tokens(18, V, 12);
  // History before the batch: seq 0 positions 0..6, seq 2 positions 0..11.
  for (Memory* m : {mem_batch.get(), mem_ref.get()}) {
    ASSERT_TRUE(reference.forward({s0.data(), 7}, 0, 0, *m, nullptr, false, pool).is_ok());
    ASSERT_TRUE(reference.forward({s2.data(), 12}, 0, 2, *m, nullptr, false, pool).is_ok());
  }

  struct Step {
    std::vector<BatchSegment> segments;
    std::vector<TokenId> tokens;
  };
  std::vector<Step> steps(2);
  auto add = [](Step& st, int seq, int64_t pos0, const std::vector<TokenId>& src, int n) {
    st.segments.push_back({seq, pos0, n});
    st.tokens.insert(st.tokens.end(), src.begin() + pos0, src.begin() + pos0 + n);
  };
  add(steps[0], 0, 7, s0, 1);   // decode
  add(steps[0], 1, 0, s1, 9);   // prefill chunk that starts its sequence
  add(steps[0], 2, 12, s2, 5);  // prefill chunk after a history
  add(steps[1], 2, 17, s2, 1);
  add(steps[1], 0, 8, s0, 1);
  add(steps[1], 1, 9, s1, 1);

  for (size_t k = 0; k < steps.size(); ++k) {
    const Step& st = steps[k];
    std::vector<float> got(st.segments.size() * V, NAN);
    Status s = batched.forward_batch(st.tokens, st.segments, *mem_batch, got.data(), pool);
    ASSERT_TRUE(s.is_ok()) << s.message();

    std::vector<float> want(st.segments.size() * V);
    size_t first = 0;
    for (size_t i = 0; i < st.segments.size(); ++i) {
      const BatchSegment& seg = st.segments[i];
      Status r = reference.forward(std::span<const TokenId>(st.tokens).subspan(first, static_cast<size_t>(seg.n)),
                                   seg.pos0, seg.seq, *mem_ref, want.data() + i * V, false, pool);
      ASSERT_TRUE(r.is_ok()) << r.message();
      first += static_cast<size_t>(seg.n);
    }
    float max_diff = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const float d = std::fabs(got[i] - want[i]);
      if (!(d <= max_diff)) max_diff = d;  // a NaN (a row never written) sticks and fails below
    }
    EXPECT_LT(max_diff, 1e-4f) << "step " << k;
    for (const BatchSegment& seg : st.segments)
      EXPECT_EQ(mem_batch->n_positions(seg.seq), mem_ref->n_positions(seg.seq)) << "step " << k << " seq " << seg.seq;
  }
}

class ForwardBatch : public ::testing::TestWithParam<const char*> {};

TEST_P(ForwardBatch, EqualsForwardOnEachSequence) {
  ENGRAM_REQUIRE_REF();
  auto model = load_ref_or_fail(GetParam());
  ASSERT_TRUE(model);
  expect_batch_equals_separate(*model, *model);
}

TEST_P(ForwardBatch, DefaultSegmentBySegmentEqualsForward) {
  ENGRAM_REQUIRE_REF();
  auto model = load_ref_or_fail(GetParam());
  ASSERT_TRUE(model);
  DefaultBatchModel by_segment(*model);
  expect_batch_equals_separate(by_segment, *model);
}

INSTANTIATE_TEST_SUITE_P(Ref, ForwardBatch,
                         ::testing::Values("stories260K", "tiny-llama-f32", "tiny-llama-q8_0", "tiny-qwen2-f32",
                                           "tiny-qwen3-f32", "tiny-deepseek2-v2lite-f32", "tiny-deepseek2-v3-f32"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// Decompressed MLA prefill is exact only for a batch that starts its
// sequence: a batch mixing such a segment with others still matches.
TEST(ForwardBatchDeepseek2, DecompressedPrefillInAMixedBatch) {
  ENGRAM_REQUIRE_REF();
  auto model = load_ref_or_fail("tiny-deepseek2-v3-f32");
  ASSERT_TRUE(model);
  ASSERT_TRUE(set_mla_prefill(*model, MlaPrefill::DECOMPRESSED).is_ok());
  expect_batch_equals_separate(*model, *model);
}

TEST(ForwardBatchErrors, BadSegmentsAreNamed) {
  ENGRAM_REQUIRE_REF();
  auto model = load_ref_or_fail("stories260K");
  ASSERT_TRUE(model);
  DefaultBatchModel by_segment(*model);
  ThreadPool pool(1);
  auto memory = make_dense_memory(model->memory_layout(16, 2));
  const std::vector<TokenId> tokens = {1, 400, 401, 402};
  std::vector<float> logits(4 * model->config().n_vocab);

  struct Case {
    std::vector<BatchSegment> segments;
    std::vector<std::string> words;  // every one must be in the message
  };
  const std::vector<Case> cases = {
      {{{0, 0, 2}, {1, 0, 0}}, {"segment 1", "0 tokens"}},
      {{{0, 0, 2}, {1, 0, 1}}, {"cover 3", "4 tokens"}},
      {{{0, 0, 3}, {1, 0, 2}}, {"segment 1", "runs past", "4 tokens"}},
      {{{0, 0, 2}, {2, 0, 2}}, {"segment 1", "sequence 2", "0..1"}},
      {{{0, 0, 2}, {0, 2, 2}}, {"segment 1", "sequence 0", "segment 0"}},
      {{{0, -1, 2}, {1, 0, 2}}, {"segment 0", "negative position -1"}},
  };
  for (Model* m : {static_cast<Model*>(model.get()), static_cast<Model*>(&by_segment)}) {
    for (const Case& c : cases) {
      Status s = m->forward_batch(tokens, c.segments, *memory, logits.data(), pool);
      ASSERT_FALSE(s.is_ok());
      for (const std::string& w : c.words) EXPECT_NE(s.message().find(w), std::string::npos) << s.message();
    }
    // Nothing was stored by a rejected batch.
    EXPECT_EQ(memory->n_positions(0), 0);
    EXPECT_EQ(memory->n_positions(1), 0);
  }
  // A token outside the vocabulary and a memory too small are errors too.
  const std::vector<TokenId> oov = {1, 512};
  const BatchSegment one[] = {{0, 0, 2}};
  Status s = model->forward_batch(oov, one, *memory, logits.data(), pool);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("512"), std::string::npos) << s.message();
  const BatchSegment late[] = {{0, 0, 2}, {1, 15, 2}};
  s = model->forward_batch(tokens, late, *memory, logits.data(), pool);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("context full"), std::string::npos) << s.message();
  // No segments, no tokens: nothing to do.
  EXPECT_TRUE(model->forward_batch({}, {}, *memory, logits.data(), pool).is_ok());
}

}  // namespace
}  // namespace engram
