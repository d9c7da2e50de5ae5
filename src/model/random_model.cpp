// Random-weight llama and deepseek2 models, written tensor by tensor.
#include "model/random_model.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>

#include "quant/quant.h"
#include "tensor/ggml_type.h"
#include "util/splitmix.h"

namespace engram {
namespace {

constexpr uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION, as engram quantize writes

// What fills a tensor: ones (norm weights) or random values.
enum class Fill { kOnes, kRandom };

struct TensorPlan {
  gguf::TensorInfo info;  // name, shape; type = F32 (the source) until the type plan
  Fill fill = Fill::kRandom;
  bool routed = false;    // routed experts: a token reads n_used of n_expert slices
};

// ---- Shapes -----------------------------------------------------------------

// ne as GGUF orders it: ne[0] is the row length (input features of a matrix).
void add(std::vector<TensorPlan>& plan, std::string name, std::vector<int64_t> ne, Fill fill = Fill::kRandom,
         bool routed = false) {
  TensorPlan t;
  t.info.name = std::move(name);
  t.info.type = GgmlType::F32;
  t.info.n_dims = static_cast<int>(ne.size());
  for (size_t d = 0; d < ne.size(); ++d) t.info.ne[d] = ne[d];
  t.fill = fill;
  t.routed = routed;
  plan.push_back(std::move(t));
}

std::string blk(int l, const char* name) { return "blk." + std::to_string(l) + "." + name; }

void add_head(std::vector<TensorPlan>& plan, const RandomModelSpec& s) {
  add(plan, "token_embd.weight", {s.n_embd, s.n_vocab});
  add(plan, "output_norm.weight", {s.n_embd}, Fill::kOnes);
  add(plan, "output.weight", {s.n_embd, s.n_vocab});
}

void add_swiglu(std::vector<TensorPlan>& plan, int l, int n_embd, int n_ff) {
  add(plan, blk(l, "ffn_gate.weight"), {n_embd, n_ff});
  add(plan, blk(l, "ffn_up.weight"), {n_embd, n_ff});
  add(plan, blk(l, "ffn_down.weight"), {n_ff, n_embd});
}

std::vector<TensorPlan> llama_tensors(const RandomModelSpec& s) {
  std::vector<TensorPlan> plan;
  add_head(plan, s);
  const int head_dim = s.n_embd / s.n_head;
  for (int l = 0; l < s.n_layer; ++l) {
    add(plan, blk(l, "attn_norm.weight"), {s.n_embd}, Fill::kOnes);
    add(plan, blk(l, "attn_q.weight"), {s.n_embd, s.n_embd});
    add(plan, blk(l, "attn_k.weight"), {s.n_embd, s.n_head_kv * head_dim});
    add(plan, blk(l, "attn_v.weight"), {s.n_embd, s.n_head_kv * head_dim});
    add(plan, blk(l, "attn_output.weight"), {s.n_embd, s.n_embd});
    add(plan, blk(l, "ffn_norm.weight"), {s.n_embd}, Fill::kOnes);
    add_swiglu(plan, l, s.n_embd, s.n_ff);
  }
  return plan;
}

// llama.cpp's deepseek2 tensors in the MLA file form (attn_k_b / attn_v_b).
std::vector<TensorPlan> deepseek2_tensors(const RandomModelSpec& s) {
  std::vector<TensorPlan> plan;
  add_head(plan, s);
  const int k_head = s.qk_nope_dim + s.rope_dims;
  for (int l = 0; l < s.n_layer; ++l) {
    add(plan, blk(l, "attn_norm.weight"), {s.n_embd}, Fill::kOnes);
    if (s.q_lora_rank > 0) {
      add(plan, blk(l, "attn_q_a.weight"), {s.n_embd, s.q_lora_rank});
      add(plan, blk(l, "attn_q_a_norm.weight"), {s.q_lora_rank}, Fill::kOnes);
      add(plan, blk(l, "attn_q_b.weight"), {s.q_lora_rank, s.n_head * k_head});
    } else {
      add(plan, blk(l, "attn_q.weight"), {s.n_embd, s.n_head * k_head});
    }
    add(plan, blk(l, "attn_kv_a_mqa.weight"), {s.n_embd, s.kv_lora_rank + s.rope_dims});
    add(plan, blk(l, "attn_kv_a_norm.weight"), {s.kv_lora_rank}, Fill::kOnes);
    add(plan, blk(l, "attn_k_b.weight"), {s.qk_nope_dim, s.kv_lora_rank, s.n_head});
    add(plan, blk(l, "attn_v_b.weight"), {s.kv_lora_rank, s.v_head_dim, s.n_head});
    add(plan, blk(l, "attn_output.weight"), {s.n_head * s.v_head_dim, s.n_embd});
    add(plan, blk(l, "ffn_norm.weight"), {s.n_embd}, Fill::kOnes);
    if (l < s.n_dense_lead) {
      add_swiglu(plan, l, s.n_embd, s.n_ff);
      continue;
    }
    add(plan, blk(l, "ffn_gate_inp.weight"), {s.n_embd, s.n_expert});
    add(plan, blk(l, "ffn_gate_exps.weight"), {s.n_embd, s.n_ff_exp, s.n_expert}, Fill::kRandom, true);
    add(plan, blk(l, "ffn_up_exps.weight"), {s.n_embd, s.n_ff_exp, s.n_expert}, Fill::kRandom, true);
    add(plan, blk(l, "ffn_down_exps.weight"), {s.n_ff_exp, s.n_embd, s.n_expert}, Fill::kRandom, true);
    if (s.n_expert_shared > 0) {
      const int n_shared = s.n_expert_shared * s.n_ff_exp;
      add(plan, blk(l, "ffn_gate_shexp.weight"), {s.n_embd, n_shared});
      add(plan, blk(l, "ffn_up_shexp.weight"), {s.n_embd, n_shared});
      add(plan, blk(l, "ffn_down_shexp.weight"), {n_shared, s.n_embd});
    }
  }
  return plan;
}

// ---- Metadata -----------------------------------------------------------------

void set_hyperparameters(gguf::Writer& w, const RandomModelSpec& s) {
  const std::string a = s.arch + ".";
  w.set_string("general.architecture", s.arch);
  w.set_string("general.name", s.name.empty() ? "random-" + s.arch : s.name);
  w.set_u32(a + "vocab_size", static_cast<uint32_t>(s.n_vocab));
  w.set_u32(a + "context_length", static_cast<uint32_t>(s.n_ctx));
  w.set_u32(a + "embedding_length", static_cast<uint32_t>(s.n_embd));
  w.set_u32(a + "block_count", static_cast<uint32_t>(s.n_layer));
  w.set_u32(a + "feed_forward_length", static_cast<uint32_t>(s.n_ff));
  w.set_u32(a + "attention.head_count", static_cast<uint32_t>(s.n_head));
  w.set_f32(a + "rope.freq_base", s.rope_freq_base);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", s.norm_eps);
  if (s.arch == "llama") {
    w.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
    w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(s.n_embd / s.n_head));
    return;
  }
  // deepseek2, MLA file form: one KV head holding the latent [c, k_pe];
  // the per-head sizes are in the *_mla keys.
  w.set_u32(a + "attention.head_count_kv", 1);
  w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(s.rope_dims));
  w.set_u32(a + "attention.q_lora_rank", static_cast<uint32_t>(s.q_lora_rank));
  w.set_u32(a + "attention.kv_lora_rank", static_cast<uint32_t>(s.kv_lora_rank));
  w.set_u32(a + "attention.key_length", static_cast<uint32_t>(s.kv_lora_rank + s.rope_dims));
  w.set_u32(a + "attention.value_length", static_cast<uint32_t>(s.kv_lora_rank));
  w.set_u32(a + "attention.key_length_mla", static_cast<uint32_t>(s.qk_nope_dim + s.rope_dims));
  w.set_u32(a + "attention.value_length_mla", static_cast<uint32_t>(s.v_head_dim));
  w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(s.n_dense_lead));
  w.set_u32(a + "expert_count", static_cast<uint32_t>(s.n_expert));
  w.set_u32(a + "expert_used_count", static_cast<uint32_t>(s.n_expert_used));
  w.set_u32(a + "expert_shared_count", static_cast<uint32_t>(s.n_expert_shared));
  w.set_u32(a + "expert_feed_forward_length", static_cast<uint32_t>(s.n_ff_exp));
  w.set_f32(a + "expert_weights_scale", 1.f);
  w.set_bool(a + "expert_weights_norm", false);
  w.set_u32(a + "expert_gating_func", 1);  // softmax (V2)
}

// ---- Random numbers -------------------------------------------------------------

// One row's values: uniform in [-a, a) with a = std * sqrt(3), so the
// standard deviation is `std`. Seeded by (seed, tensor, row) so the result
// does not depend on how rows are split among threads.
void random_row(uint64_t seed, size_t tensor, int64_t row, float std, float* out, int64_t n) {
  uint64_t state = seed ^ (0xD1B54A32D192ED03ull * (tensor + 1)) ^ (0x8CB92BA72F3D8DD7ull * static_cast<uint64_t>(row));
  splitmix64_next(state);
  const float half_width = std * std::sqrt(3.f);
  const float to_unit = 2.f / 16777216.f;  // 24 random bits -> [0, 2)
  for (int64_t i = 0; i < n; i += 2) {
    const uint64_t bits = splitmix64_next(state);
    out[i] = (static_cast<float>(bits & 0xFFFFFF) * to_unit - 1.f) * half_width;
    if (i + 1 < n) out[i + 1] = (static_cast<float>((bits >> 32) & 0xFFFFFF) * to_unit - 1.f) * half_width;
  }
}

// ---- Type plan --------------------------------------------------------------------

struct TypePlan {
  std::string name;
  uint32_t file_type = 0;  // general.file_type
  bool quantized = false;  // general.quantization_version is written (any target but f32)
  std::vector<GgmlType> types;
};

Expected<TypePlan> plan_types(const RandomModelSpec& s, const std::string& type,
                              const std::vector<TensorPlan>& plan) {
  TypePlan out;
  std::vector<gguf::TensorInfo> infos;
  for (const TensorPlan& t : plan) infos.push_back(t.info);
  std::string lower = type;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "f32") {
    out.name = "f32";
    out.types.assign(plan.size(), GgmlType::F32);
    return out;
  }
  Expected<QuantizeTarget> target = parse_quantize_target(lower);
  if (!target) return make_error(target.error().message, " or f32");
  QuantizeModelInfo info;
  info.arch = s.arch;
  info.n_layer = s.n_layer;
  info.n_expert = s.arch == "deepseek2" ? s.n_expert : 0;
  info.n_head = s.n_head;
  info.n_head_kv = s.arch == "llama" ? s.n_head_kv : 1;
  out.name = target->name;
  out.file_type = target->file_type;
  out.quantized = true;  // written for every target, as engram quantize does
  out.types = quantized_tensor_types(*target, info, infos);
  return out;
}

// Fills one tensor of `type`: row by row, random floats quantized, on the pool.
Status fill_tensor(const TensorPlan& t, GgmlType type, size_t index, uint64_t seed, float std, ThreadPool& pool,
                   std::span<uint8_t> out) {
  const int64_t n_cols = t.info.ne[0];
  const int64_t n_rows = t.info.n_elements() / n_cols;
  const std::optional<size_t> row = row_bytes(type, n_cols);
  if (!row || *row * static_cast<size_t>(n_rows) != out.size())
    return make_error("random model: tensor '", t.info.name, "': bad size for its type");
  pool.parallel_for(
      static_cast<size_t>(n_rows),
      [&](size_t begin, size_t end, int) {
        std::vector<float> values(static_cast<size_t>(n_cols));
        for (size_t r = begin; r < end; ++r) {
          if (t.fill == Fill::kOnes) std::fill(values.begin(), values.end(), 1.f);
          else random_row(seed, index, static_cast<int64_t>(r), std, values.data(), n_cols);
          quantize_row(type, values.data(), out.data() + r * *row, n_cols);
        }
      },
      8);
  return Status::ok();
}

Status check(bool ok, const char* what, int value) {
  if (ok) return Status::ok();
  return make_error("random model: ", what, " (got ", std::to_string(value), ")");
}

}  // namespace

// ---- Presets ----------------------------------------------------------------------

std::vector<std::string> random_model_presets(const std::string& arch) {
  if (arch == "llama") return {"tiny", "125m", "1b"};
  if (arch == "deepseek2") return {"tiny", "ds500m"};
  return {};
}

Expected<RandomModelSpec> random_model_preset(const std::string& arch, const std::string& preset) {
  if (arch != "llama" && arch != "deepseek2")
    return make_error("unknown architecture '", arch, "' (expected llama or deepseek2)");
  RandomModelSpec s;
  s.arch = arch;
  if (arch == "llama" && preset == "tiny") {
    s.n_vocab = 512, s.n_embd = 256, s.n_layer = 2, s.n_head = 4, s.n_head_kv = 2, s.n_ff = 512;
  } else if (arch == "llama" && preset == "125m") {
    s.n_vocab = 32000, s.n_embd = 768, s.n_layer = 12, s.n_head = 12, s.n_head_kv = 12, s.n_ff = 2048;
  } else if (arch == "llama" && preset == "1b") {
    s.n_vocab = 32000, s.n_embd = 2048, s.n_layer = 16, s.n_head = 32, s.n_head_kv = 8, s.n_ff = 8192;
  } else if (arch == "deepseek2" && preset == "tiny") {
    s.n_vocab = 512, s.n_embd = 256, s.n_layer = 3, s.n_head = 4, s.n_ff = 256, s.norm_eps = 1e-6f;
    s.q_lora_rank = 0, s.kv_lora_rank = 64, s.rope_dims = 16, s.qk_nope_dim = 32, s.v_head_dim = 32;
    s.n_dense_lead = 1, s.n_expert = 8, s.n_expert_used = 2, s.n_expert_shared = 1, s.n_ff_exp = 32;
  } else if (arch == "deepseek2" && preset == "ds500m") {
    s.n_vocab = 32000, s.n_embd = 1024, s.n_layer = 10, s.n_head = 8, s.n_ff = 4096, s.norm_eps = 1e-6f;
    s.q_lora_rank = 0, s.kv_lora_rank = 512, s.rope_dims = 64, s.qk_nope_dim = 128, s.v_head_dim = 128;
    s.n_dense_lead = 1, s.n_expert = 64, s.n_expert_used = 6, s.n_expert_shared = 2, s.n_ff_exp = 256;
  } else {
    std::string known;
    for (const std::string& p : random_model_presets(arch)) known += (known.empty() ? "" : ", ") + p;
    return make_error("unknown preset '", preset, "' for ", arch, " (expected one of: ", known, ")");
  }
  s.name = "random-" + arch + "-" + preset;
  return s;
}

Status check_random_model_spec(const RandomModelSpec& s) {
  if (s.arch != "llama" && s.arch != "deepseek2")
    return make_error("random model: unknown architecture '", s.arch, "' (expected llama or deepseek2)");
  constexpr int kMax = 1 << 20;
  // 3 special tokens, 256 byte tokens and SentencePiece's space piece "▁".
  ENGRAM_RETURN_IF_ERROR(check(s.n_vocab >= 260 && s.n_vocab <= kMax,
                               "n_vocab must be in [260, 2^20] (special, byte and space tokens)", s.n_vocab));
  ENGRAM_RETURN_IF_ERROR(check(s.n_embd >= 1 && s.n_embd <= kMax, "n_embd must be in [1, 2^20]", s.n_embd));
  ENGRAM_RETURN_IF_ERROR(check(s.n_layer >= 1 && s.n_layer <= 4096, "n_layer must be in [1, 4096]", s.n_layer));
  ENGRAM_RETURN_IF_ERROR(check(s.n_head >= 1 && s.n_head <= 4096, "n_head must be in [1, 4096]", s.n_head));
  ENGRAM_RETURN_IF_ERROR(check(s.n_ff >= 1 && s.n_ff <= kMax, "n_ff must be in [1, 2^20]", s.n_ff));
  ENGRAM_RETURN_IF_ERROR(check(s.n_ctx >= 1 && s.n_ctx <= kMax * 16, "n_ctx must be in [1, 2^24]",
                               static_cast<int>(std::min<int64_t>(s.n_ctx, kMax * 16 + 1))));
  if (s.arch == "llama") {
    ENGRAM_RETURN_IF_ERROR(check(s.n_embd % s.n_head == 0, "n_embd must be a multiple of n_head", s.n_embd));
    ENGRAM_RETURN_IF_ERROR(check((s.n_embd / s.n_head) % 2 == 0, "the head size n_embd / n_head must be even",
                                 s.n_embd / s.n_head));
    ENGRAM_RETURN_IF_ERROR(check(s.n_head_kv >= 1 && s.n_head % s.n_head_kv == 0,
                                 "n_head_kv must divide n_head", s.n_head_kv));
    return Status::ok();
  }
  ENGRAM_RETURN_IF_ERROR(check(s.q_lora_rank >= 0 && s.q_lora_rank <= kMax, "q_lora_rank must be in [0, 2^20]",
                               s.q_lora_rank));
  ENGRAM_RETURN_IF_ERROR(check(s.kv_lora_rank >= 1 && s.kv_lora_rank <= kMax, "kv_lora_rank must be in [1, 2^20]",
                               s.kv_lora_rank));
  ENGRAM_RETURN_IF_ERROR(check(s.rope_dims >= 2 && s.rope_dims % 2 == 0 && s.rope_dims <= 4096,
                               "rope dims must be even and in [2, 4096]", s.rope_dims));
  ENGRAM_RETURN_IF_ERROR(check(s.qk_nope_dim >= 1 && s.qk_nope_dim <= 4096, "qk_nope_dim must be in [1, 4096]",
                               s.qk_nope_dim));
  ENGRAM_RETURN_IF_ERROR(check(s.v_head_dim >= 1 && s.v_head_dim <= 4096, "v_head_dim must be in [1, 4096]",
                               s.v_head_dim));
  ENGRAM_RETURN_IF_ERROR(check(s.n_dense_lead >= 0 && s.n_dense_lead <= s.n_layer,
                               "n_dense_lead must be in [0, n_layer]", s.n_dense_lead));
  if (s.n_dense_lead < s.n_layer) {
    ENGRAM_RETURN_IF_ERROR(check(s.n_expert >= 1 && s.n_expert <= 4096, "n_expert must be in [1, 4096]", s.n_expert));
    ENGRAM_RETURN_IF_ERROR(check(s.n_expert_used >= 1 && s.n_expert_used <= s.n_expert,
                                 "n_expert_used must be in [1, n_expert]", s.n_expert_used));
    ENGRAM_RETURN_IF_ERROR(check(s.n_expert_shared >= 0 && s.n_expert_shared <= 64,
                                 "n_expert_shared must be in [0, 64]", s.n_expert_shared));
    ENGRAM_RETURN_IF_ERROR(check(s.n_ff_exp >= 1 && s.n_ff_exp <= kMax, "n_ff_exp must be in [1, 2^20]", s.n_ff_exp));
  }
  return Status::ok();
}

std::vector<gguf::TensorInfo> random_model_tensors(const RandomModelSpec& spec) {
  std::vector<gguf::TensorInfo> out;
  if (!check_random_model_spec(spec).is_ok()) return out;
  for (const TensorPlan& t : spec.arch == "deepseek2" ? deepseek2_tensors(spec) : llama_tensors(spec))
    out.push_back(t.info);
  return out;
}

// ---- Vocabulary ---------------------------------------------------------------------

void set_random_vocab(gguf::Writer& writer, int n_vocab) {
  const size_t n = static_cast<size_t>(std::max(n_vocab, 0));
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {static_cast<int32_t>(2), 3, 3};  // unknown, control, control
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    tokens.push_back(piece);
    types.push_back(6);  // byte
  }
  // Pieces a SentencePiece merge can reach, shortest first ("▁" is U+2581,
  // SentencePiece's space).
  const std::string space = "\xE2\x96\x81";
  std::vector<std::string> pieces = {space};
  for (char c = 0x21; c < 0x7F; ++c) pieces.emplace_back(1, c);
  std::string letters;
  for (char c = 'a'; c <= 'z'; ++c) letters += c;
  for (char c = 'A'; c <= 'Z'; ++c) letters += c;
  for (char c : letters) pieces.push_back(space + c);
  auto grow = [&](size_t length) {
    std::vector<std::string> words = {""};
    for (size_t i = 0; i < length; ++i) {
      std::vector<std::string> longer;
      for (const std::string& w : words)
        for (char c = 'a'; c <= 'z'; ++c) longer.push_back(w + c);
      words = std::move(longer);
    }
    for (const std::string& w : words) pieces.push_back(w);
    for (const std::string& w : words) pieces.push_back(space + w);
  };
  grow(2);
  if (pieces.size() + tokens.size() < n) grow(3);
  for (size_t i = 0; i < pieces.size() && tokens.size() < n; ++i) {
    tokens.push_back(pieces[i]);
    types.push_back(1);  // normal
  }
  for (size_t i = 0; tokens.size() < n; ++i) {
    tokens.push_back("<unused_" + std::to_string(i) + ">");
    types.push_back(5);  // unused
  }
  tokens.resize(n);
  types.resize(n);
  // Scores rank the normal pieces: earlier (shorter) pieces merge first.
  std::vector<float> scores(n, 0.f);
  for (size_t i = 259; i < n; ++i) scores[i] = types[i] == 1 ? -static_cast<float>(i - 259) : -1e9f;

  writer.set_string("tokenizer.ggml.model", "llama");
  writer.set_string_array("tokenizer.ggml.tokens", std::move(tokens));
  writer.set_f32_array("tokenizer.ggml.scores", scores);
  writer.set_i32_array("tokenizer.ggml.token_type", types);
  writer.set_u32("tokenizer.ggml.bos_token_id", 1);
  writer.set_u32("tokenizer.ggml.eos_token_id", 2);
  writer.set_u32("tokenizer.ggml.unknown_token_id", 0);
  writer.set_bool("tokenizer.ggml.add_bos_token", true);
  writer.set_bool("tokenizer.ggml.add_eos_token", false);
}

// ---- Writing ----------------------------------------------------------------------------

Expected<RandomModelSummary> write_random_model(const RandomModelSpec& spec, const std::string& type, uint64_t seed,
                                                const std::string& path, ThreadPool& pool) {
  ENGRAM_RETURN_IF_ERROR(check_random_model_spec(spec));
  const std::vector<TensorPlan> plan = spec.arch == "llama" ? llama_tensors(spec) : deepseek2_tensors(spec);
  Expected<TypePlan> types = plan_types(spec, type, plan);
  if (!types) return types.error();

  gguf::Writer w;
  set_hyperparameters(w, spec);
  w.set_u32("general.file_type", types->file_type);
  if (types->quantized) w.set_u32("general.quantization_version", kQuantizationVersion);
  set_random_vocab(w, spec.n_vocab);

  RandomModelSummary summary;
  summary.type = types->name;
  summary.n_tensors = static_cast<int>(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    const TensorPlan& t = plan[i];
    const GgmlType ttype = types->types[i];
    const uint64_t n = static_cast<uint64_t>(t.info.n_elements());
    summary.n_params += n;
    summary.n_active += t.routed ? n / static_cast<uint64_t>(spec.n_expert) * static_cast<uint64_t>(spec.n_expert_used) : n;
    const std::optional<size_t> row = row_bytes(ttype, t.info.ne[0]);
    if (!row) return make_error("random model: tensor '", t.info.name, "': rows do not fit its type");
    summary.weight_bytes += *row * static_cast<uint64_t>(t.info.n_elements() / t.info.ne[0]);
    std::vector<int64_t> ne(t.info.ne.begin(), t.info.ne.begin() + t.info.n_dims);
    const float std = spec.weight_std;
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_streamed(
        t.info.name, ttype, std::move(ne), [&t, ttype, i, seed, std, &pool](std::span<uint8_t> out) {
          return fill_tensor(t, ttype, i, seed, std, pool, out);
        }));
  }
  ENGRAM_RETURN_IF_ERROR(w.write(path));
  return summary;
}

}  // namespace engram
