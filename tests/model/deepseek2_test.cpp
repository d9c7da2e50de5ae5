// deepseek2 (MLA + mixture of experts) against llama.cpp's logits for the two
// tiny reference models (../shared/ref README section 2): V2-Lite style
// (plain attn_q, softmax gating) and V3 style (q_lora, sigmoid gating with
// selection bias, expert groups, normalised and scaled weights). Also: the
// absorbed and decompressed attention forms agree, the memory holds only
// the latent per token, the engram memory with everything retrieved equals
// dense, and a legacy file with a fused attn_kv_b gives the same logits.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "memory/engram_memory.h"
#include "memory/memory.h"
#include "model/deepseek2.h"
#include "model/model.h"
#include "model_test_support.h"
#include "test_support.h"

namespace engram {
namespace {

using test::max_abs_diff;

namespace fs = std::filesystem;
using nlohmann::json;

using test::argmax;
using test::kVocab;
using test::load_or_fail;
using test::models_dir;
using test::teacher_forced;

constexpr const char* kV2Lite = "tiny-deepseek2-v2lite-f32";
constexpr const char* kV3 = "tiny-deepseek2-v3-f32";

json manifest_of(const std::string& name) { return json::parse(test::read_text_file(models_dir() / (name + ".json"))); }

// Compares a model's teacher-forced logits and greedy picks with the
// reference files of `name` (1e-3 and exact ids, README section 4).
void expect_matches_reference(Model& model, const std::string& name, const std::string& label) {
  const json manifest = manifest_of(name);
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  const std::vector<float> expected = test::read_f32_file(models_dir() / (name + ".logits.f32"));
  ASSERT_EQ(expected.size(), (prompt.size() + greedy.size()) * kVocab);
  ThreadPool pool(2);
  const std::vector<float> logits = teacher_forced(model, prompt, greedy, pool);
  const float d = max_abs_diff(logits, expected);
  std::printf("[ %s ] max abs diff vs llama.cpp %.3g\n", label.c_str(), d);
  EXPECT_LE(d, 1e-3f) << label;
  // While our picks equal greedy_ids, free-running greedy sees exactly the
  // teacher-forced inputs, so step k's pick is the argmax of row n_prompt-1+k.
  // The smallest reference margin is 0.0048 (> 1e-3): every step must match.
  for (size_t k = 0; k < greedy.size(); ++k)
    ASSERT_EQ(argmax(logits.data() + (prompt.size() - 1 + k) * kVocab, kVocab), greedy[k]) << label << " step " << k;
  EXPECT_EQ(argmax(logits.data() + (logits.size() - kVocab), kVocab), manifest["next_id_after_greedy"].get<int>());
}

class Deepseek2Ref : public ::testing::TestWithParam<std::string> {};

TEST_P(Deepseek2Ref, TeacherForcedLogitsAndGreedyIdsMatchLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  auto model = load_or_fail(models_dir() / (GetParam() + ".gguf"));
  ASSERT_TRUE(model);
  EXPECT_EQ(model->config().arch, "deepseek2");
  expect_matches_reference(*model, GetParam(), GetParam());
}

// Absorbed attention over the latent memory (decode form) and the
// decompressed per-head form (DeepSeek's reference) on the same prompt.
TEST_P(Deepseek2Ref, AbsorbedAndDecompressedPrefillAgree) {
  ENGRAM_REQUIRE_REF();
  const json manifest = manifest_of(GetParam());
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  const std::vector<TokenId> fed(greedy.begin(), greedy.begin() + 4);
  auto model = load_or_fail(models_dir() / (GetParam() + ".gguf"));
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  ASSERT_TRUE(set_mla_prefill(*model, MlaPrefill::ABSORBED).is_ok());
  const std::vector<float> absorbed = teacher_forced(*model, prompt, fed, pool);
  ASSERT_TRUE(set_mla_prefill(*model, MlaPrefill::DECOMPRESSED).is_ok());
  // The prompt rows come from the decompressed form; the 4 decode rows then
  // run absorbed over the latents the decompressed prefill stored.
  const std::vector<float> decompressed = teacher_forced(*model, prompt, fed, pool);
  const float d = max_abs_diff(absorbed, decompressed);
  std::printf("[ %s ] absorbed vs decompressed max abs diff %.3g\n", GetParam().c_str(), d);
  EXPECT_LE(d, 1e-4f);
  EXPECT_NE(absorbed, decompressed) << "the two forms should not be the same code path";
}

TEST_P(Deepseek2Ref, PromptBatchEqualsTokenByToken) {
  ENGRAM_REQUIRE_REF();
  const auto prompt = manifest_of(GetParam())["prompt_ids"].get<std::vector<TokenId>>();
  auto model = load_or_fail(models_dir() / (GetParam() + ".gguf"));
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  const std::vector<float> batch = teacher_forced(*model, prompt, {}, pool);
  const std::vector<float> single = teacher_forced(*model, {prompt[0]}, {prompt.begin() + 1, prompt.end()}, pool);
  EXPECT_LE(max_abs_diff(batch, single), 1e-4f);
}

// The engram memory (blocks + retrieval) with top-k covering every block and
// F32 blocks attends to exactly what dense does: the latent cache is what it
// blocks, summarises and retrieves.
TEST_P(Deepseek2Ref, EngramMemoryWithEverythingRetrievedEqualsDense) {
  ENGRAM_REQUIRE_REF();
  const json manifest = manifest_of(GetParam());
  const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
  const auto greedy = manifest["greedy_ids"].get<std::vector<TokenId>>();
  auto model = load_or_fail(models_dir() / (GetParam() + ".gguf"));
  ASSERT_TRUE(model);
  ThreadPool pool(2);
  EngramMemoryOptions o;
  o.sinks = 2;
  o.window = 4;
  o.block_size = 4;
  o.top_k = 64;  // 55 positions: at most 14 blocks
  o.compression = BlockCompression::F32;
  auto engram = [&](const MemoryLayout& l) {
    auto m = make_memory("engram", l, o);
    EXPECT_TRUE(m.has_value()) << (m ? "" : m.error().message);
    return m ? std::move(m).value() : nullptr;
  };
  const std::vector<float> want = teacher_forced(*model, prompt, greedy, pool);
  const std::vector<float> got = teacher_forced(*model, prompt, greedy, pool, engram);
  const float d = max_abs_diff(want, got);
  std::printf("[ %s ] engram memory vs dense max abs diff %.3g\n", GetParam().c_str(), d);
  EXPECT_LE(d, 1e-4f);
}

INSTANTIATE_TEST_SUITE_P(Ref, Deepseek2Ref, ::testing::Values(kV2Lite, kV3), [](const auto& info) {
  std::string s = info.param;
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
});

// The memory stores the latent [c, k_pe] once per token: c is the value too
// (values_in_keys), so per-token memory is (kv_lora_rank + rope) per layer
// times the element size, in the dense memory (f32) and in the engram
// memory's blocks (f32 or f16), against n_head x (key + value) per layer
// for full per-head K/V of the same width.
TEST(Deepseek2, MemoryHoldsTheLatentPerToken) {
  ENGRAM_REQUIRE_REF();
  for (const char* name : {kV2Lite, kV3}) {
    SCOPED_TRACE(name);
    const json manifest = manifest_of(name);
    const json hp = manifest["hparams"];
    auto model = load_or_fail(models_dir() / (std::string(name) + ".gguf"));
    ASSERT_TRUE(model);
    const size_t n_layer = hp["n_layer"], kv_lora = hp["kv_lora_rank"], rope = hp["qk_rope_head_dim"];
    const MemoryLayout m = model->memory_layout(100, 2);
    EXPECT_EQ(m.n_layer, static_cast<int>(n_layer));
    EXPECT_EQ(m.n_kv_head, 1);
    EXPECT_EQ(m.k_dim, static_cast<int>(kv_lora + rope));  // [c, k_pe]
    EXPECT_EQ(m.v_dim, static_cast<int>(kv_lora));         // c: the key row's first kv_lora entries
    EXPECT_TRUE(m.values_in_keys);
    EXPECT_EQ(m.n_ctx, 100);
    EXPECT_EQ(m.n_seq, 2);

    const size_t latent = n_layer * (kv_lora + rope) * sizeof(float);
    const size_t full = n_layer * hp["n_head"].get<size_t>() *
                        (hp["key_length_mla"].get<size_t>() + hp["value_length_mla"].get<size_t>()) * sizeof(float);
    EXPECT_EQ(model->kv_bytes_per_token(), latent);
    EXPECT_EQ(model->full_kv_bytes_per_token(), full);
    EXPECT_LT(latent, full);

    // What a dense memory really holds after a forward pass: its sequence
    // saved and loaded into a fresh memory (no attention scratch there)
    // grows bytes_used by the latent per position plus the dense memory's
    // one presence byte per position.
    const auto prompt = manifest["prompt_ids"].get<std::vector<TokenId>>();
    const int64_t n = static_cast<int64_t>(prompt.size());
    ThreadPool pool(2);
    auto memory = make_dense_memory(model->memory_layout(n));
    std::vector<float> logits(kVocab);
    ASSERT_TRUE(model->forward(prompt, 0, 0, *memory, logits.data(), false, pool).is_ok());
    const auto dir = test::temp_dir("deepseek2-latent");
    const std::string path = (dir / "seq.kv").string();
    ASSERT_TRUE(memory->save_seq(0, path).is_ok());
    auto fresh = make_dense_memory(model->memory_layout(n));
    const size_t empty = fresh->bytes_used();
    Status st = fresh->load_seq(0, path);
    ASSERT_TRUE(st.is_ok()) << st.message();
    EXPECT_EQ(fresh->n_positions(0), n);
    EXPECT_EQ(fresh->bytes_used() - empty - static_cast<size_t>(n), static_cast<size_t>(n) * latent);
    fs::remove_all(dir);

    // Engram memory blocks: one unit per block of the latent rows only.
    size_t engram_per_token[2] = {0, 0};
    for (BlockCompression c : {BlockCompression::F32, BlockCompression::F16}) {
      EngramMemoryOptions o;
      o.block_size = 64;
      o.compression = c;
      EngramMemory engram(model->memory_layout(n), o, EngramMemory::Mode::ENGRAM);
      const size_t element = c == BlockCompression::F32 ? 4 : 2;
      EXPECT_EQ(engram.store()->unit_bytes(), 64 * (kv_lora + rope) * element) << block_compression_name(c);
      engram_per_token[c == BlockCompression::F16] = engram.store()->unit_bytes() / 64 * n_layer;
    }
    std::printf("[ %s ] latent %zu bytes/token (dense f32; engram blocks f32 %zu, fp16 %zu) vs full K/V %zu "
                "bytes/token (%.1fx)\n",
                name, latent, engram_per_token[0], engram_per_token[1], full,
                static_cast<double>(full) / static_cast<double>(latent));
  }
}

TEST(Deepseek2, ActiveParametersCountOnlyRoutedExperts) {
  ENGRAM_REQUIRE_REF();
  const json manifest = manifest_of(kV3);
  auto model = load_or_fail(models_dir() / (std::string(kV3) + ".gguf"));
  ASSERT_TRUE(model);
  const uint64_t n_expert = manifest["hparams"]["n_expert"], n_used = manifest["hparams"]["n_expert_used"];
  uint64_t total = 0, active = 0;
  for (const auto& [tensor, ne] : manifest["tensor_shapes_ggml_ne"].items()) {
    uint64_t n = 1;
    for (int64_t d : ne.get<std::vector<int64_t>>()) n *= static_cast<uint64_t>(d);
    total += n;
    const bool routed = tensor.find("_exps.") != std::string::npos;
    active += routed ? n / n_expert * n_used : n;
  }
  EXPECT_EQ(model->parameter_count(), total);
  EXPECT_EQ(model->active_parameter_count(), active);
  EXPECT_LT(active, total);
}

TEST(Deepseek2, PrefillModeNeedsADeepseek2Model) {
  ENGRAM_REQUIRE_REF();
  auto llama = load_or_fail(models_dir() / "tiny-llama-f32.gguf");
  ASSERT_TRUE(llama);
  Status s = set_mla_prefill(*llama, MlaPrefill::DECOMPRESSED);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("llama"), std::string::npos) << s.message();
  EXPECT_EQ(llama->active_parameter_count(), llama->parameter_count());
}

// Rewrites a reference file through gguf::Writer. `meta` may change or drop
// metadata keys (return false to drop), `edit` tensors (false: drop). Returns
// the path of the new file in `dir`.
std::string rewrite(const std::string& name, const fs::path& dir,
                    const std::function<bool(const std::string&, gguf::Value&)>& meta,
                    const std::function<void(const gguf::File&, gguf::Writer&)>& tensors) {
  auto src = gguf::File::open((models_dir() / (name + ".gguf")).string());
  EXPECT_TRUE(src.has_value());
  if (!src) return "";
  gguf::Writer w;
  for (const auto& [key, value] : src->metadata()) {
    gguf::Value v = value;
    if (meta(key, v)) w.set(key, v);
  }
  tensors(*src, w);
  const std::string path = (dir / "edited.gguf").string();
  Status s = w.write(path);
  EXPECT_TRUE(s.is_ok()) << s.message();
  return path;
}

gguf::Value u32_value(uint32_t x) {
  gguf::Value v;
  v.type = gguf::ValueType::UINT32;
  v.data = uint64_t{x};
  return v;
}

void copy_tensor(const gguf::File& src, const gguf::TensorInfo& t, gguf::Writer& w) {
  const uint8_t* data = src.tensor_data(t);
  std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
  Status s = w.add_tensor(t.name, t.type, ne, std::vector<uint8_t>(data, data + t.n_bytes));
  EXPECT_TRUE(s.is_ok()) << s.message();
}

// Files converted before llama.cpp split W_UK/W_UV store one attn_kv_b
// [kv_lora, n_head * (nope + v)] and per-head key/value sizes in
// key_length/value_length. The same weights in that layout give the same logits.
TEST(Deepseek2, LegacyFusedKvBFileGivesTheSameLogits) {
  ENGRAM_REQUIRE_REF();
  const json hp = manifest_of(kV2Lite)["hparams"];
  const int H = hp["n_head"], R = hp["kv_lora_rank"], nope = hp["qk_nope_head_dim"], dv = hp["v_head_dim"];
  const fs::path dir = test::temp_dir("deepseek2-legacy");
  const std::string path = rewrite(
      kV2Lite, dir,
      [&](const std::string& key, gguf::Value& v) {
        if (key.ends_with("key_length_mla") || key.ends_with("value_length_mla")) return false;
        if (key == "deepseek2.attention.key_length") v = u32_value(static_cast<uint32_t>(nope + 16));
        if (key == "deepseek2.attention.value_length") v = u32_value(static_cast<uint32_t>(dv));
        if (key == "deepseek2.attention.head_count_kv") v = u32_value(static_cast<uint32_t>(H));
        return true;
      },
      [&](const gguf::File& src, gguf::Writer& w) {
        for (const gguf::TensorInfo& t : src.tensors()) {
          if (t.name.ends_with("attn_v_b.weight")) continue;
          if (!t.name.ends_with("attn_k_b.weight")) {
            copy_tensor(src, t, w);
            continue;
          }
          // attn_k_b [nope, R, H] (W_UK_h transposed) + attn_v_b [R, dv, H] -> attn_kv_b [R, H * (nope + dv)].
          const std::string layer = t.name.substr(0, t.name.size() - std::string("attn_k_b.weight").size());
          const auto* kb = reinterpret_cast<const float*>(src.tensor_data(t));
          const auto* vb = reinterpret_cast<const float*>(src.tensor_data(*src.find_tensor(layer + "attn_v_b.weight")));
          std::vector<float> kv(static_cast<size_t>(H) * (nope + dv) * R);
          for (int h = 0; h < H; ++h)
            for (int j = 0; j < R; ++j) {
              for (int i = 0; i < nope; ++i)
                kv[(static_cast<size_t>(h) * (nope + dv) + i) * R + j] = kb[(static_cast<size_t>(h) * R + j) * nope + i];
              for (int o = 0; o < dv; ++o)
                kv[(static_cast<size_t>(h) * (nope + dv) + nope + o) * R + j] = vb[(static_cast<size_t>(h) * dv + o) * R + j];
            }
          Status s = w.add_tensor_f32(layer + "attn_kv_b.weight", {R, int64_t{H} * (nope + dv)}, kv);
          EXPECT_TRUE(s.is_ok()) << s.message();
        }
      });
  auto model = load_or_fail(path);
  ASSERT_TRUE(model);
  EXPECT_EQ(model->memory_layout(8).k_dim, R + 16);  // still the latent, not per-head keys
  expect_matches_reference(*model, kV2Lite, "legacy attn_kv_b");
  fs::remove_all(dir);
}

std::string load_error(const std::string& path) {
  auto m = Model::load(path);
  return m ? "" : m.error().message;
}

TEST(Deepseek2, LoadErrorsNameTheKeyOrTensor) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("deepseek2-errors");
  auto keep_all = [](const gguf::File& src, gguf::Writer& w) {
    for (const gguf::TensorInfo& t : src.tensors()) copy_tensor(src, t, w);
  };
  {
    const std::string msg = load_error(rewrite(
        kV3, dir, [](const std::string&, gguf::Value&) { return true; },
        [](const gguf::File& src, gguf::Writer& w) {
          for (const gguf::TensorInfo& t : src.tensors())
            if (t.name != "blk.2.attn_k_b.weight") copy_tensor(src, t, w);
        }));
    EXPECT_NE(msg.find("blk.2.attn_k_b.weight"), std::string::npos) << msg;
  }
  {
    const std::string msg = load_error(rewrite(
        kV3, dir,
        [](const std::string& key, gguf::Value& v) {
          if (key == "deepseek2.expert_gating_func") v = u32_value(7);
          return true;
        },
        keep_all));
    EXPECT_NE(msg.find("expert_gating_func"), std::string::npos) << msg;
  }
  {
    const std::string msg = load_error(rewrite(
        kV3, dir, [](const std::string& key, gguf::Value&) { return key != "deepseek2.attention.kv_lora_rank"; },
        keep_all));
    EXPECT_NE(msg.find("kv_lora_rank"), std::string::npos) << msg;
  }
  {
    const std::string msg = load_error(rewrite(
        kV3, dir,
        [](const std::string& key, gguf::Value& v) {
          if (key == "deepseek2.expert_group_count") v = u32_value(3);  // 8 experts do not split in 3
          return true;
        },
        keep_all));
    EXPECT_NE(msg.find("expert_group_count"), std::string::npos) << msg;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace engram
