// Model forward passes against llama.cpp's logits (../shared/ref, README
// sections 1, 2 and 4), plus loader errors and batching/threading invariants.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "memory/memory.h"
#include "model/model.h"
#include "model_test_support.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::argmax;
using test::kVocab;
using test::load_or_fail;
using test::models_dir;
using test::teacher_forced;

struct Diff {
  float max = 0;
  double mean = 0;
};
Diff compare(const std::vector<float>& a, const std::vector<float>& b) {
  Diff d;
  EXPECT_EQ(a.size(), b.size());
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const float e = std::fabs(a[i] - b[i]);
    d.max = std::max(d.max, e);
    d.mean += e;
  }
  d.mean /= std::max<size_t>(n, 1);
  return d;
}

// README section 4 tolerances by weight type (the name's suffix).
struct Tolerance {
  float max_abs;
  double mean_abs;  // only bounded for quantized types
};
Tolerance tolerance_for(const std::string& name) {
  if (name.ends_with("-f32")) return {1e-3f, 1.0};
  if (name.ends_with("-f16")) return {1e-2f, 1.0};
  if (name.ends_with("-bf16")) return {5e-2f, 1.0};
  return {0.3f, 0.05};
}

class TinyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyModel, TeacherForcedLogitsAndGreedyIdsMatchLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  const std::string name = GetParam();
  const json manifest = json::parse(test::read_text_file(models_dir() / (name + ".json")));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  const auto margins = manifest["checks"]["top1_top2_gap_per_greedy_step"].get<std::vector<double>>();
  const std::vector<float> expected = test::read_f32_file(models_dir() / (name + ".logits.f32"));
  ASSERT_EQ(expected.size(), (prompt.size() + greedy.size()) * kVocab);

  auto model = load_or_fail(models_dir() / (name + ".gguf"));
  ASSERT_TRUE(model);
  EXPECT_EQ(model->config().n_vocab, kVocab);
  ThreadPool pool(2);
  const std::vector<float> logits = teacher_forced(*model, prompt, greedy, pool);

  const Tolerance tol = tolerance_for(name);
  const Diff d = compare(logits, expected);
  std::printf("[ %s ] max abs diff %.3g, mean abs diff %.3g\n", name.c_str(), d.max, d.mean);
  EXPECT_LE(d.max, tol.max_abs) << name;
  EXPECT_LE(d.mean, tol.mean_abs) << name;

  // Greedy ids: while our picks equal greedy_ids, free-running greedy sees
  // exactly the teacher-forced inputs, so our greedy token at step k is the
  // argmax of teacher-forced row n_prompt-1+k. Steps are compared until the
  // reference margin drops below the tolerance (after that, the reference's
  // own rounding noise may decide).
  size_t checked = 0;
  for (size_t k = 0; k < greedy.size() && margins[k] >= tol.max_abs; ++k, ++checked) {
    const float* row = logits.data() + (prompt.size() - 1 + k) * kVocab;
    ASSERT_EQ(argmax(row, kVocab), greedy[k]) << name << " greedy step " << k;
  }
  std::printf("[ %s ] greedy ids equal for the %zu steps with margin >= %.3g\n", name.c_str(), checked, tol.max_abs);
}

INSTANTIATE_TEST_SUITE_P(Ref, TinyModel,
                         ::testing::Values("tiny-llama-f32", "tiny-llama-f16", "tiny-llama-bf16", "tiny-llama-q8_0",
                                           "tiny-llama-q4_0", "tiny-llama-q4_k_m", "tiny-llama-q6_k", "tiny-qwen2-f32",
                                           "tiny-qwen2-q8_0", "tiny-qwen3-f32"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

class Stories : public ::testing::TestWithParam<std::string> {};

TEST_P(Stories, TeacherForcedLogitsAndGreedyIdsMatchLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  const std::string slug = GetParam();
  const fs::path dir = test::ref_dir() / "stories260K";
  const json manifest = json::parse(test::read_text_file(dir / (slug + ".json")));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  const std::vector<float> expected = test::read_f32_file(dir / (slug + ".llamacpp.logits.f32"));
  ASSERT_EQ(expected.size(), (prompt.size() + greedy.size()) * kVocab);

  auto model = load_or_fail(models_dir() / "stories260K.gguf");
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  const std::vector<float> logits = teacher_forced(*model, prompt, greedy, pool);
  const Diff d = compare(logits, expected);
  std::printf("[ stories260K %s ] max abs diff %.3g, mean abs diff %.3g\n", slug.c_str(), d.max, d.mean);
  EXPECT_LE(d.max, 1e-3f);

  // Every greedy step exact (see TinyModel for why the teacher-forced argmax
  // is our free-running greedy choice), and no BOS stop happened early.
  for (size_t k = 0; k < greedy.size(); ++k) {
    const int id = argmax(logits.data() + (prompt.size() - 1 + k) * kVocab, kVocab);
    ASSERT_EQ(id, greedy[k]) << slug << " greedy step " << k;
  }
  const int next = argmax(logits.data() + (logits.size() / kVocab - 1) * kVocab, kVocab);
  EXPECT_EQ(next, manifest["next_id_after_greedy"].get<int>());
}

INSTANTIATE_TEST_SUITE_P(Ref, Stories, ::testing::Values("once_upon_a_time", "lily_and_ben_were", "empty"));

TEST(Model, FreeRunningGreedyMatchesReference) {
  ENGRAM_REQUIRE_REF();
  const json manifest = json::parse(test::read_text_file(models_dir() / "tiny-llama-f32.json"));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  auto model = load_or_fail(models_dir() / "tiny-llama-f32.gguf");
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  auto memory = make_dense_memory(model->memory_layout(64));
  std::vector<float> logits(kVocab);
  ASSERT_TRUE(model->forward(prompt, 0, 0, *memory, logits.data(), false, pool).is_ok());
  std::vector<TokenId> ours;
  for (size_t k = 0; k < greedy.size(); ++k) {
    const TokenId next = argmax(logits.data(), kVocab);
    ours.push_back(next);
    const int64_t pos = static_cast<int64_t>(prompt.size() + k);
    ASSERT_TRUE(model->forward(std::span<const TokenId>(&next, 1), pos, 0, *memory, logits.data(), false, pool).is_ok());
  }
  EXPECT_EQ(ours, greedy);
  EXPECT_EQ(memory->n_positions(0), static_cast<int64_t>(prompt.size() + greedy.size()));
}

// The prompt as one batch equals the prompt fed token by token.
class BatchVsTokens : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchVsTokens, PromptBatchEqualsTokenByToken) {
  ENGRAM_REQUIRE_REF();
  const std::string name = GetParam();
  const json manifest = json::parse(test::read_text_file(models_dir() / (name + ".json")));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  auto model = load_or_fail(models_dir() / (name + ".gguf"));
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  const std::vector<float> batch = teacher_forced(*model, prompt, {}, pool);
  const std::vector<float> single = teacher_forced(*model, {prompt[0]}, {prompt.begin() + 1, prompt.end()}, pool);
  const Diff d = compare(batch, single);
  std::printf("[ %s ] batch vs token-by-token max abs diff %.3g\n", name.c_str(), d.max);
  EXPECT_LE(d.max, 1e-4f);
}

INSTANTIATE_TEST_SUITE_P(Ref, BatchVsTokens, ::testing::Values("tiny-llama-f32", "tiny-qwen2-f32", "tiny-qwen3-f32"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

TEST(Model, PrefixWithoutLogitsThenLastToken) {
  ENGRAM_REQUIRE_REF();
  const json manifest = json::parse(test::read_text_file(models_dir() / "tiny-qwen2-f32.json"));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  auto model = load_or_fail(models_dir() / "tiny-qwen2-f32.gguf");
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  const std::vector<float> all = teacher_forced(*model, prompt, {}, pool);
  auto memory = make_dense_memory(model->memory_layout(32));
  const std::span<const TokenId> ids(prompt);
  ASSERT_TRUE(model->forward(ids.first(ids.size() - 1), 0, 0, *memory, nullptr, false, pool).is_ok());
  std::vector<float> last(kVocab);
  ASSERT_TRUE(model->forward(ids.last(1), static_cast<int64_t>(ids.size() - 1), 0, *memory, last.data(), false, pool)
                  .is_ok());
  const std::vector<float> expected(all.end() - kVocab, all.end());
  EXPECT_LE(compare(last, expected).max, 1e-4f);
}

TEST(Model, OneAndTwoThreadsGiveIdenticalLogits) {
  ENGRAM_REQUIRE_REF();
  const json manifest = json::parse(test::read_text_file(models_dir() / "tiny-qwen3-f32.json"));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  const std::vector<TokenId> fed(greedy.begin(), greedy.begin() + 4);
  auto model = load_or_fail(models_dir() / "tiny-qwen3-f32.gguf");
  ASSERT_TRUE(model);
  ThreadPool one(1), two(2);
  EXPECT_EQ(teacher_forced(*model, prompt, fed, one), teacher_forced(*model, prompt, fed, two));
}

// Weights copied into huge pages (--load copy) are the same bytes as the
// mapped file, so the logits must be bit-identical.
TEST(Model, CopiedAndMappedWeightsGiveIdenticalLogits) {
  ENGRAM_REQUIRE_REF();
  const json manifest = json::parse(test::read_text_file(models_dir() / "tiny-llama-q8_0.json"));
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const fs::path path = models_dir() / "tiny-llama-q8_0.gguf";
  auto mapped = Model::load(path.string(), LoadMode::kMap);
  auto copied = Model::load(path.string(), LoadMode::kCopy);
  ASSERT_TRUE(mapped.has_value()) << mapped.error().message;
  ASSERT_TRUE(copied.has_value()) << copied.error().message;
  EXPECT_EQ((*mapped)->file().load_mode(), LoadMode::kMap);
  EXPECT_EQ((*copied)->file().load_mode(), LoadMode::kCopy);
  ThreadPool pool(2);
  EXPECT_EQ(teacher_forced(**mapped, prompt, {}, pool), teacher_forced(**copied, prompt, {}, pool));
}

TEST(Model, ConfigAndSizesFollowTheFile) {
  ENGRAM_REQUIRE_REF();
  const json manifest = json::parse(test::read_text_file(models_dir() / "tiny-llama-f32.json"));
  auto model = load_or_fail(models_dir() / "tiny-llama-f32.gguf");
  ASSERT_TRUE(model);
  const ModelConfig& c = model->config();
  const json& hp = manifest["hparams"];
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_embd, hp["n_embd"].get<int>());
  EXPECT_EQ(c.n_layer, hp["n_layer"].get<int>());
  EXPECT_EQ(c.n_head, hp["n_head"].get<int>());
  EXPECT_EQ(c.n_head_kv, hp["n_head_kv"].get<int>());
  EXPECT_EQ(c.n_ff, hp["n_ff"].get<int>());
  EXPECT_EQ(c.head_dim, hp["head_dim"].get<int>());
  EXPECT_EQ(c.rope.n_dims, hp["n_rot"].get<int>());
  EXPECT_EQ(c.n_ctx_train, hp["n_ctx"].get<int64_t>());
  EXPECT_FLOAT_EQ(c.norm_eps, hp["rms_eps"].get<float>());
  EXPECT_FALSE(c.rope.neox);
  EXPECT_EQ(model->tokenizer().n_vocab(), kVocab);

  uint64_t params = 0;
  for (const auto& [tensor, ne] : manifest["tensor_shapes_ggml_ne"].items()) {
    uint64_t n = 1;
    for (int64_t d : ne.get<std::vector<int64_t>>()) n *= static_cast<uint64_t>(d);
    params += n;
  }
  EXPECT_EQ(model->parameter_count(), params);
  EXPECT_EQ(model->weight_bytes(), params * 4);  // all F32
  // 4 layers x 2 kv heads x (64 + 64) floats.
  EXPECT_EQ(model->kv_bytes_per_token(), size_t{4} * 2 * 128 * 4);
  const MemoryLayout m = model->memory_layout(100, 3);
  EXPECT_EQ(m.n_layer, 4);
  EXPECT_EQ(m.n_kv_head, 2);
  EXPECT_EQ(m.k_dim, 64);
  EXPECT_EQ(m.v_dim, 64);
  EXPECT_EQ(m.n_ctx, 100);
  EXPECT_EQ(m.n_seq, 3);

  auto qwen2 = load_or_fail(models_dir() / "tiny-qwen2-f32.gguf");
  ASSERT_TRUE(qwen2);
  EXPECT_TRUE(qwen2->config().rope.neox);
  EXPECT_FLOAT_EQ(qwen2->config().norm_eps, 1e-6f);
}

TEST(Model, ForwardErrorsAreValues) {
  ENGRAM_REQUIRE_REF();
  auto model = load_or_fail(models_dir() / "tiny-llama-f32.gguf");
  ASSERT_TRUE(model);
  ThreadPool pool(1);
  std::vector<float> logits(8 * kVocab);
  // The memory fills up.
  auto small = make_dense_memory(model->memory_layout(4));
  const std::vector<TokenId> five = {1, 403, 407, 261, 378};
  Status full = model->forward(five, 0, 0, *small, logits.data(), true, pool);
  ASSERT_FALSE(full.is_ok());
  EXPECT_NE(full.message().find("context full"), std::string::npos) << full.message();
  // Token outside the vocabulary.
  auto memory = make_dense_memory(model->memory_layout(8));
  const std::vector<TokenId> bad = {1, 512};
  Status oov = model->forward(bad, 0, 0, *memory, logits.data(), true, pool);
  ASSERT_FALSE(oov.is_ok());
  EXPECT_NE(oov.message().find("512"), std::string::npos) << oov.message();
  // A memory built for another model.
  MemoryLayout other = model->memory_layout(8);
  other.k_dim = 32;
  auto wrong = make_dense_memory(other);
  EXPECT_FALSE(model->forward(five, 0, 0, *wrong, logits.data(), true, pool).is_ok());
}

TEST(Model, ArchitectureDecidesTheLoader) {
  ENGRAM_REQUIRE_REF();
  // deepseek2 (MLA + MoE) loads; its memory holds one latent "KV head".
  for (const char* name : {"tiny-deepseek2-v2lite-f32.gguf", "tiny-deepseek2-v3-f32.gguf"}) {
    auto m = load_or_fail(models_dir() / name);
    ASSERT_TRUE(m) << name;
    EXPECT_EQ(m->config().arch, "deepseek2");
    EXPECT_EQ(m->memory_layout(8).n_kv_head, 1);
  }
  // An architecture without a loader is named, with the file and the list.
  auto src = gguf::File::open((models_dir() / "tiny-llama-f32.gguf").string());
  ASSERT_TRUE(src.has_value());
  gguf::Writer w;
  w.copy_metadata(*src);
  w.set_string("general.architecture", "mamba");
  const fs::path dir = test::temp_dir("model-arch");
  const std::string path = (dir / "mamba.gguf").string();
  ASSERT_TRUE(w.write(path).is_ok());
  auto m = Model::load(path);
  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message.find("unsupported architecture 'mamba'"), std::string::npos) << m.error().message;
  EXPECT_NE(m.error().message.find(path), std::string::npos) << m.error().message;
  EXPECT_NE(m.error().message.find("deepseek2"), std::string::npos) << m.error().message;  // in the supported list
  fs::remove_all(dir);

  auto missing = Model::load((models_dir() / "no-such-model.gguf").string());
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message.find("no-such-model.gguf"), std::string::npos);
}

// Rewrites tiny-llama-f32.gguf through gguf::Writer, letting `edit` drop or
// change tensors, and returns the load error.
template <class Edit>
std::string load_error_of_edited_copy(const std::string& tag, Edit edit) {
  auto src = gguf::File::open((models_dir() / "tiny-llama-f32.gguf").string());
  EXPECT_TRUE(src.has_value());
  if (!src) return "";
  gguf::Writer w;
  w.copy_metadata(*src);
  for (const gguf::TensorInfo& t : src->tensors()) {
    const uint8_t* data = src->tensor_data(t);
    std::vector<uint8_t> bytes(data, data + t.n_bytes);
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
    GgmlType type = t.type;
    if (!edit(t.name, ne, type, bytes)) continue;
    Status s = w.add_tensor(t.name, type, ne, std::move(bytes));
    EXPECT_TRUE(s.is_ok()) << s.message();
  }
  const fs::path dir = test::temp_dir("model-" + tag);
  const std::string path = (dir / "broken.gguf").string();
  EXPECT_TRUE(w.write(path).is_ok());
  auto m = Model::load(path);
  std::string message = m ? "" : m.error().message;
  fs::remove_all(dir);
  return message;
}

TEST(Model, MissingTensorIsNamed) {
  ENGRAM_REQUIRE_REF();
  const std::string msg = load_error_of_edited_copy(
      "missing", [](const std::string& name, auto&, auto&, auto&) { return name != "blk.2.ffn_up.weight"; });
  EXPECT_NE(msg.find("blk.2.ffn_up.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
}

TEST(Model, WrongShapeIsNamed) {
  ENGRAM_REQUIRE_REF();
  const std::string msg = load_error_of_edited_copy(
      "shape", [](const std::string& name, std::vector<int64_t>& ne, auto&, std::vector<uint8_t>& bytes) {
        if (name == "blk.1.attn_k.weight") {  // [256, 128] -> [256, 64]
          ne = {256, 64};
          bytes.resize(bytes.size() / 2);
        }
        return true;
      });
  EXPECT_NE(msg.find("blk.1.attn_k.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;
}

TEST(Model, UnsupportedTensorTypeIsNamed) {
  ENGRAM_REQUIRE_REF();
  const std::string msg = load_error_of_edited_copy(
      "type", [](const std::string& name, auto&, GgmlType& type, auto&) {
        if (name == "blk.0.attn_q.weight") type = GgmlType::I32;  // same bytes per element as F32
        return true;
      });
  EXPECT_NE(msg.find("blk.0.attn_q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("i32"), std::string::npos) << msg;
}

}  // namespace
}  // namespace engram
