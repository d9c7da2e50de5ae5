// Random-weight models (engram gen-model): they load, run, match what
// quantizing their F32 form gives, and have the advertised sizes.
#include "model/random_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "memory/memory.h"
#include "model/model.h"
#include "quant/quant.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

RandomModelSpec preset(const std::string& arch, const std::string& name) {
  auto s = random_model_preset(arch, name);
  EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().message);
  return s ? *s : RandomModelSpec{};
}

RandomModelSummary write(const RandomModelSpec& spec, const std::string& type, const fs::path& path,
                         uint64_t seed = 7, int threads = 2) {
  ThreadPool pool(threads);
  auto summary = write_random_model(spec, type, seed, path.string(), pool);
  EXPECT_TRUE(summary.has_value()) << (summary ? "" : summary.error().message);
  return summary ? *summary : RandomModelSummary{};
}

std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

uint64_t parameters(const RandomModelSpec& spec) {
  uint64_t n = 0;
  for (const auto& t : random_model_tensors(spec)) n += static_cast<uint64_t>(t.n_elements());
  return n;
}

// Runs a prompt then `n` greedy tokens; every logit must be finite and every id in range.
void expect_generates(Model& model, int n) {
  const int n_vocab = model.config().n_vocab;
  std::vector<TokenId> prompt = model.tokenizer().encode("Once upon a time", true, false);
  ASSERT_GE(prompt.size(), 2u);
  auto memory = make_dense_memory(model.memory_layout(static_cast<int64_t>(prompt.size()) + n));
  ThreadPool pool(2);
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  ASSERT_TRUE(model.forward(prompt, 0, 0, *memory, logits.data(), false, pool).is_ok());
  int64_t pos = static_cast<int64_t>(prompt.size());
  for (int i = 0; i < n; ++i, ++pos) {
    for (float v : logits) ASSERT_TRUE(std::isfinite(v));
    const TokenId next = static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ASSERT_GE(next, 0);
    ASSERT_LT(next, n_vocab);
    ASSERT_TRUE(model.forward(std::span<const TokenId>(&next, 1), pos, 0, *memory, logits.data(), false, pool).is_ok());
  }
  EXPECT_EQ(memory->n_positions(0), pos);
}

TEST(RandomModel, TinyLlamaLoadsWithItsShapeAndGenerates) {
  const fs::path dir = test::temp_dir("random-model");
  const RandomModelSpec spec = preset("llama", "tiny");
  const RandomModelSummary summary = write(spec, "f32", dir / "m.gguf");
  auto model = Model::load((dir / "m.gguf").string());
  ASSERT_TRUE(model.has_value()) << model.error().message;
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_vocab, spec.n_vocab);
  EXPECT_EQ(c.n_embd, spec.n_embd);
  EXPECT_EQ(c.n_layer, spec.n_layer);
  EXPECT_EQ(c.n_head, spec.n_head);
  EXPECT_EQ(c.n_head_kv, spec.n_head_kv);
  EXPECT_EQ(c.n_ff, spec.n_ff);
  EXPECT_EQ((*model)->tokenizer().n_vocab(), spec.n_vocab);
  EXPECT_EQ((*model)->parameter_count(), summary.n_params);
  EXPECT_EQ(summary.n_params, parameters(spec));
  EXPECT_EQ((*model)->weight_bytes(), summary.weight_bytes);
  expect_generates(**model, 8);
}

TEST(RandomModel, TinyDeepseek2LoadsWithFewActiveParametersAndGenerates) {
  const fs::path dir = test::temp_dir("random-model");
  const RandomModelSpec spec = preset("deepseek2", "tiny");
  const RandomModelSummary summary = write(spec, "f32", dir / "ds.gguf");
  auto model = Model::load((dir / "ds.gguf").string());
  ASSERT_TRUE(model.has_value()) << model.error().message;
  EXPECT_EQ((*model)->config().arch, "deepseek2");
  EXPECT_EQ((*model)->config().n_layer, spec.n_layer);
  EXPECT_EQ((*model)->parameter_count(), summary.n_params);
  EXPECT_EQ((*model)->active_parameter_count(), summary.n_active);
  EXPECT_LT(summary.n_active, summary.n_params);
  // The memory holds MLA latents: one KV head of kv_lora_rank + rope values.
  const MemoryLayout layout = (*model)->memory_layout(16);
  EXPECT_EQ(layout.n_kv_head, 1);
  EXPECT_EQ(layout.k_dim, spec.kv_lora_rank + spec.rope_dims);
  expect_generates(**model, 8);
}

// Generating a type directly equals generating F32 and running engram
// quantize on it: the same tensor types (llama.cpp's mix) and bytes.
class EveryType : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(EveryType, EqualsQuantizingTheF32ModelAndRuns) {
  const auto& [arch, type] = GetParam();
  const fs::path dir = test::temp_dir("random-model");
  const RandomModelSpec spec = preset(arch, "tiny");
  write(spec, "f32", dir / "f32.gguf");
  const RandomModelSummary direct = write(spec, type, dir / "direct.gguf");
  auto target = parse_quantize_target(type);
  ASSERT_TRUE(target.has_value());
  auto quantized = quantize_model((dir / "f32.gguf").string(), (dir / "quantized.gguf").string(), *target, 2);
  ASSERT_TRUE(quantized.has_value()) << quantized.error().message;

  auto a = gguf::File::open((dir / "direct.gguf").string());
  auto b = gguf::File::open((dir / "quantized.gguf").string());
  ASSERT_TRUE(a.has_value() && b.has_value());
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  int n_quantized = 0;
  for (const auto& t : a->tensors()) {
    const gguf::TensorInfo* u = b->find_tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(t.type, u->type) << t.name;
    ASSERT_EQ(t.n_bytes, u->n_bytes) << t.name;
    EXPECT_EQ(0, std::memcmp(a->tensor_data(t), b->tensor_data(*u), t.n_bytes)) << t.name;
    n_quantized += t.type != GgmlType::F32;
  }
  EXPECT_GT(n_quantized, 0);
  EXPECT_EQ(a->get_int("general.file_type").value(), b->get_int("general.file_type").value());
  EXPECT_EQ(direct.type, target->name);

  auto model = Model::load((dir / "direct.gguf").string());
  ASSERT_TRUE(model.has_value()) << model.error().message;
  expect_generates(**model, 4);
}

INSTANTIATE_TEST_SUITE_P(Types, EveryType,
                         ::testing::Combine(::testing::Values("llama"),
                                            ::testing::Values("f16", "bf16", "q8_0", "q4_0", "q4_k_m")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });
INSTANTIATE_TEST_SUITE_P(Deepseek2, EveryType,
                         ::testing::Combine(::testing::Values("deepseek2"), ::testing::Values("q8_0", "q4_k_m")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

TEST(RandomModel, SameSeedSameFileWhateverTheThreads) {
  const fs::path dir = test::temp_dir("random-model");
  const RandomModelSpec spec = preset("llama", "tiny");
  write(spec, "q4_k_m", dir / "a.gguf", 11, 1);
  write(spec, "q4_k_m", dir / "b.gguf", 11, 2);
  write(spec, "q4_k_m", dir / "c.gguf", 12, 2);
  EXPECT_EQ(file_bytes(dir / "a.gguf"), file_bytes(dir / "b.gguf"));
  EXPECT_NE(file_bytes(dir / "a.gguf"), file_bytes(dir / "c.gguf"));
}

TEST(RandomModel, WeightsHaveTheAskedSpreadAndNormsAreOne) {
  const fs::path dir = test::temp_dir("random-model");
  RandomModelSpec spec = preset("llama", "tiny");
  spec.weight_std = 0.05f;
  write(spec, "f32", dir / "m.gguf");
  auto f = gguf::File::open((dir / "m.gguf").string());
  ASSERT_TRUE(f.has_value());
  const gguf::TensorInfo* w = f->find_tensor("blk.0.ffn_up.weight");
  const gguf::TensorInfo* norm = f->find_tensor("blk.1.attn_norm.weight");
  ASSERT_TRUE(w && norm);
  const auto* v = reinterpret_cast<const float*>(f->tensor_data(*w));
  double sum = 0, sq = 0;
  const int64_t n = w->n_elements();
  for (int64_t i = 0; i < n; ++i) sum += v[i], sq += double{v[i]} * v[i];
  EXPECT_NEAR(sum / static_cast<double>(n), 0.0, 0.002);
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(n)), 0.05, 0.002);
  const auto* g = reinterpret_cast<const float*>(f->tensor_data(*norm));
  for (int64_t i = 0; i < norm->n_elements(); ++i) ASSERT_EQ(g[i], 1.f);
}

TEST(RandomModel, PresetsHaveTheAdvertisedSizes) {
  const uint64_t m125 = parameters(preset("llama", "125m"));
  EXPECT_GT(m125, 100'000'000u);
  EXPECT_LT(m125, 160'000'000u);
  const RandomModelSpec b1 = preset("llama", "1b");
  EXPECT_EQ(b1.n_embd, 2048);
  EXPECT_EQ(b1.n_layer, 16);
  EXPECT_LT(b1.n_head_kv, b1.n_head);  // GQA
  const uint64_t n1b = parameters(b1);
  EXPECT_GT(n1b, 900'000'000u);
  EXPECT_LT(n1b, 1'300'000'000u);

  // deepseek2: at least 500M parameters, of which a token reads few.
  const RandomModelSpec ds = preset("deepseek2", "ds500m");
  uint64_t total = 0, routed = 0;
  for (const auto& t : random_model_tensors(ds)) {
    total += static_cast<uint64_t>(t.n_elements());
    if (t.name.ends_with("_exps.weight")) routed += static_cast<uint64_t>(t.n_elements());
  }
  const uint64_t active = total - routed + routed / static_cast<uint64_t>(ds.n_expert) * ds.n_expert_used;
  EXPECT_GE(total, 500'000'000u);
  EXPECT_LT(active * 3, total);
}

TEST(RandomModel, VocabularyRoundTripsTextAndHasExactlyNVocabTokens) {
  const fs::path dir = test::temp_dir("random-model");
  RandomModelSpec spec = preset("llama", "tiny");
  for (int n_vocab : {260, 512, 40000}) {
    spec.n_vocab = n_vocab;
    write(spec, "f32", dir / "v.gguf");
    auto model = Model::load((dir / "v.gguf").string());
    ASSERT_TRUE(model.has_value()) << n_vocab << ": " << model.error().message;
    const Tokenizer& tok = (*model)->tokenizer();
    EXPECT_EQ(tok.n_vocab(), n_vocab);
    const std::string text = "Hello world, caf\xC3\xA9 42!";
    const std::vector<TokenId> ids = tok.encode(text, false, false);
    std::string back;
    for (TokenId id : ids) back += tok.token_to_piece(id);
    EXPECT_NE(back.find("Hello world, caf\xC3\xA9 42!"), std::string::npos) << n_vocab << ": '" << back << "'";
    if (n_vocab >= 512) EXPECT_LT(ids.size(), text.size()) << "pieces should merge";
  }
}

TEST(RandomModel, BadSpecsAndTypesAreErrorsThatNameTheProblem) {
  auto bad_preset = random_model_preset("llama", "7b");
  ASSERT_FALSE(bad_preset.has_value());
  EXPECT_NE(bad_preset.error().message.find("unknown preset '7b'"), std::string::npos);
  EXPECT_NE(bad_preset.error().message.find("125m"), std::string::npos);
  EXPECT_FALSE(random_model_preset("mamba", "tiny").has_value());

  RandomModelSpec spec = preset("llama", "tiny");
  spec.n_head_kv = 3;
  EXPECT_NE(check_random_model_spec(spec).message().find("n_head_kv"), std::string::npos);
  spec = preset("llama", "tiny");
  spec.n_vocab = 100;
  EXPECT_NE(check_random_model_spec(spec).message().find("n_vocab"), std::string::npos);
  spec = preset("deepseek2", "tiny");
  spec.n_expert_used = spec.n_expert + 1;
  EXPECT_NE(check_random_model_spec(spec).message().find("n_expert_used"), std::string::npos);

  const fs::path dir = test::temp_dir("random-model");
  ThreadPool pool(1);
  auto bad_type = write_random_model(preset("llama", "tiny"), "q9_9", 1, (dir / "x.gguf").string(), pool);
  ASSERT_FALSE(bad_type.has_value());
  EXPECT_NE(bad_type.error().message.find("q9_9"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "x.gguf"));
  auto bad_path = write_random_model(preset("llama", "tiny"), "f32", 1, (dir / "no/such/dir/x.gguf").string(), pool);
  ASSERT_FALSE(bad_path.has_value());
  EXPECT_NE(bad_path.error().message.find("no/such/dir"), std::string::npos);
}

}  // namespace
}  // namespace engram
