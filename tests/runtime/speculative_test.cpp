#include "runtime/speculative.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "model/mtp_test_model.h"
#include "quant/quant.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

fs::path model_path(const std::string& name) { return test::ref_dir() / "models" / (name + ".gguf"); }

std::unique_ptr<Model> load(const fs::path& path) {
  auto m = Model::load(path.string());
  EXPECT_TRUE(m) << m.error().message;
  return m ? std::move(*m) : nullptr;
}

GenerateParams greedy(int n) {
  GenerateParams p;
  p.n_predict = n;
  p.sampler.temperature = 0;
  return p;
}

// Plain greedy generation: the reference every speculative run must equal.
std::vector<TokenId> plain(Model& model, std::span<const TokenId> prompt, const GenerateParams& p,
                           StopReason* stop = nullptr) {
  ThreadPool pool(1);
  Session s(model, pool);
  std::vector<TokenId> out;
  auto stats = generate(s, prompt, p, [&](TokenId id) {
    out.push_back(id);
    return true;
  });
  EXPECT_TRUE(stats) << stats.error().message;
  if (stats && stop) *stop = stats->stop;
  return out;
}

struct SpecRun {
  std::vector<TokenId> ids;
  GenerateStats stats;
  SpeculativeStats spec;
};

SpecRun speculative(Model& target, Drafter& drafter, ThreadPool& pool, std::span<const TokenId> prompt,
                    const GenerateParams& p, int n_draft) {
  Session s(target, pool);
  SpecRun r;
  SpeculativeParams sp;
  sp.n_draft = n_draft;
  auto stats = generate_speculative(s, drafter, prompt, p, sp, &r.spec, [&](TokenId id) {
    r.ids.push_back(id);
    return true;
  });
  EXPECT_TRUE(stats) << stats.error().message;
  if (stats) r.stats = *stats;
  return r;
}

std::vector<TokenId> prompt_of(const Model& m, const char* text) { return m.tokenizer().encode(text, true, false); }

TEST(Speculative, DraftEqualToTargetAcceptsEverythingAndMatchesGreedy) {
  ENGRAM_REQUIRE_REF();
  auto target = load(model_path("stories260K"));
  auto draft = load(model_path("stories260K"));
  ASSERT_TRUE(target && draft);
  const auto prompt = prompt_of(*target, "Once upon a time");
  const GenerateParams p = greedy(60);
  const auto expected = plain(*target, prompt, p);
  ThreadPool pool(1);
  for (int k : {1, 4, 7}) {
    ModelDrafter drafter(*draft, pool, Session(*target, pool).n_ctx());
    SpecRun r = speculative(*target, drafter, pool, prompt, p, k);
    EXPECT_EQ(r.ids, expected) << "n_draft " << k;
    EXPECT_EQ(r.stats.n_generated, static_cast<int>(expected.size()));
    EXPECT_GT(r.spec.drafted, 0);
    EXPECT_EQ(r.spec.accepted, r.spec.drafted) << "n_draft " << k;
    EXPECT_DOUBLE_EQ(r.spec.acceptance_rate(), 1.0);
    // Every call but the last yields k + 1 tokens; the last token is never decoded.
    const int n = static_cast<int>(expected.size());
    EXPECT_LE(r.spec.target_calls, (n - 1 + k) / (k + 1) + 1) << "n_draft " << k;
  }
}

TEST(Speculative, QuantizedDraftGivesTheSameGreedyOutput) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("spec-q8");
  auto q = quantize_model(model_path("stories260K").string(), (dir / "q4.gguf").string(), GgmlType::Q4_0, 1);
  ASSERT_TRUE(q) << q.error().message;
  auto target = load(model_path("stories260K"));
  auto draft = load(dir / "q4.gguf");
  ASSERT_TRUE(target && draft);
  ThreadPool pool(1);
  for (const char* text : {"Once upon a time", "Lily and Ben were", "The cat"}) {
    const auto prompt = prompt_of(*target, text);
    for (int n : {1, 2, 9, 80}) {
      StopReason stop{};
      const auto expected = plain(*target, prompt, greedy(n), &stop);
      ModelDrafter drafter(*draft, pool, Session(*target, pool).n_ctx());
      SpecRun r = speculative(*target, drafter, pool, prompt, greedy(n), 4);
      EXPECT_EQ(r.ids, expected) << text << " n " << n;
      EXPECT_EQ(r.stats.stop, stop) << text << " n " << n;
      EXPECT_LE(r.spec.accepted, r.spec.drafted);
    }
  }
  fs::remove_all(dir);
}

TEST(Speculative, TinyLlamaWithQuantizedReferenceDraft) {
  ENGRAM_REQUIRE_REF();
  auto target = load(model_path("tiny-llama-f32"));
  auto draft = load(model_path("tiny-llama-q4_0"));
  ASSERT_TRUE(target && draft);
  ASSERT_TRUE(check_same_vocabulary(target->tokenizer(), "f32", draft->tokenizer(), "q4_0").is_ok());
  const auto prompt = prompt_of(*target, "Hello world, this is a test");
  const auto expected = plain(*target, prompt, greedy(24));
  ThreadPool pool(2);
  ModelDrafter drafter(*draft, pool, Session(*target, pool).n_ctx());
  SpecRun r = speculative(*target, drafter, pool, prompt, greedy(24), 3);
  EXPECT_EQ(r.ids, expected);
}

TEST(Speculative, PenaltiesStayDeterministicAndEqual) {
  ENGRAM_REQUIRE_REF();
  auto target = load(model_path("stories260K"));
  auto draft = load(model_path("stories260K"));
  ASSERT_TRUE(target && draft);
  const auto prompt = prompt_of(*target, "Once upon a time");
  GenerateParams p = greedy(50);
  p.sampler.repeat_penalty = 1.3f;
  p.sampler.presence_penalty = 0.2f;
  const auto expected = plain(*target, prompt, p);
  ThreadPool pool(1);
  ModelDrafter drafter(*draft, pool, Session(*target, pool).n_ctx());
  SpecRun r = speculative(*target, drafter, pool, prompt, p, 4);
  EXPECT_EQ(r.ids, expected);
  EXPECT_LT(r.spec.accepted, r.spec.drafted);  // the unpenalized draft disagrees sometimes
}

TEST(Speculative, SamplingIsRefused) {
  ENGRAM_REQUIRE_REF();
  auto target = load(model_path("stories260K"));
  ASSERT_TRUE(target);
  ThreadPool pool(1);
  ModelDrafter drafter(*target, pool, 64);
  Session s(*target, pool, 64);
  GenerateParams p = greedy(5);
  p.sampler.temperature = 0.7f;
  const auto prompt = prompt_of(*target, "Once");
  auto r = generate_speculative(s, drafter, prompt, p, {}, nullptr, [](TokenId) { return true; });
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("greedy only"), std::string::npos) << r.error().message;
}

TEST(Speculative, VocabularyMismatchNamesBothFiles) {
  ENGRAM_REQUIRE_REF();
  // stories260K with one token's text changed.
  const fs::path dir = test::temp_dir("spec-vocab");
  auto src = gguf::File::open(model_path("stories260K").string());
  ASSERT_TRUE(src);
  gguf::Writer w;
  w.copy_metadata(*src);
  for (const auto& [key, value] : src->metadata()) {
    if (key != "tokenizer.ggml.tokens") continue;
    auto tokens = std::get<std::vector<std::string>>(value.data);
    tokens.at(300) = "<changed>";
    w.set_string_array(key, tokens);
  }
  for (const gguf::TensorInfo& t : src->tensors()) {
    const uint8_t* data = src->tensor_data(t);
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
    ASSERT_TRUE(w.add_tensor(t.name, t.type, ne, std::vector<uint8_t>(data, data + t.n_bytes)).is_ok());
  }
  ASSERT_TRUE(w.write((dir / "changed.gguf").string()).is_ok());
  auto stories = load(model_path("stories260K"));
  auto changed = load(dir / "changed.gguf");
  ASSERT_TRUE(stories && changed);
  Status s = check_same_vocabulary(stories->tokenizer(), "target.gguf", changed->tokenizer(), "draft.gguf");
  ASSERT_FALSE(s.is_ok());
  for (const char* said : {"target.gguf", "draft.gguf", "token 300", "<changed>"})
    EXPECT_NE(s.message().find(said), std::string::npos) << said << " in: " << s.message();
  EXPECT_TRUE(check_same_vocabulary(stories->tokenizer(), "a", stories->tokenizer(), "b").is_ok());
  fs::remove_all(dir);
}

class Mtp : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::ref_dir().empty()) GTEST_SKIP() << "reference data ../shared/ref not found beside the repository";
    dir_ = test::temp_dir("spec-mtp");
    const std::string path = (dir_ / "mtp.gguf").string();
    Status s = test::write_mtp_model(model_path("tiny-deepseek2-v3-f32").string(), path);
    ASSERT_TRUE(s.is_ok()) << s.message();
    model_ = load(path);
    ASSERT_TRUE(model_);
    ASSERT_EQ(model_->mtp_layers(), 1);
  }
  void TearDown() override {
    model_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path dir_;
  std::unique_ptr<Model> model_;
};

TEST_F(Mtp, RandomWeightDraftsGiveTheSameGreedyOutput) {
  const std::vector<TokenId> prompt = {1, 17, 230, 42, 99, 5, 311};
  ThreadPool pool(1);
  for (int n : {1, 3, 40}) {
    GenerateParams p = greedy(n);
    p.ignore_eos = true;
    p.stop_at_bos = false;
    const auto expected = plain(*model_, prompt, p);
    for (int k : {1, 3}) {
      auto drafter = MtpDrafter::create(*model_, pool, 0);
      ASSERT_TRUE(drafter) << drafter.error().message;
      SpecRun r = speculative(*model_, **drafter, pool, prompt, p, k);
      EXPECT_EQ(r.ids, expected) << "n " << n << " n_draft " << k;
      if (n > 1) EXPECT_GT(r.spec.drafted, 0);
      EXPECT_LE(r.spec.accepted, r.spec.drafted);
    }
  }
  EXPECT_TRUE(model_->last_hidden().empty());  // the drafter turned keep_hidden off again
}

TEST_F(Mtp, NeedsNextNLayers) {
  auto plain_model = load(model_path("tiny-deepseek2-v3-f32"));
  ASSERT_TRUE(plain_model);
  ThreadPool pool(1);
  auto d = MtpDrafter::create(*plain_model, pool, 0);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("next-n"), std::string::npos) << d.error().message;
}

}  // namespace
}  // namespace engram
