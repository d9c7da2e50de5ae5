// DeepSeek-V2 / V2-Lite / V3 / R1 in llama.cpp's `deepseek2` layout.
//
// Attention is MLA (multi-head latent attention). Per token, attn_kv_a_mqa
// makes a small latent c (kv_lora_rank values, RMS-normed) plus one RoPE'd key
// part k_pe (rope dims) shared by all heads. Head h's key is
// [W_UK_h c, k_pe] and its value W_UV_h c, so the memory only needs
// [c, k_pe] per token: one shared "KV head" of kv_lora_rank + rope values,
// which is what llama.cpp's converter stores (head_count_kv 1, key_length
// kv_lora_rank + rope, value_length kv_lora_rank).
//
// Absorbed form (always used for decode): q_nope . (W_UK_h c) =
// (W_UK_h^T q_nope) . c, so each query head becomes [W_UK_h^T q_nope, q_pe]
// and attends directly over the stored [c, k_pe] (MQA with n_head query heads
// and one KV head); its output lives in latent space and W_UV_h turns it into
// the head's value. Any Memory (dense, window, engram) works unchanged.
//
// The feed-forward is a SwiGLU for the first leading_dense_block_count layers
// and a mixture of experts after that: a router picks n_expert_used of
// n_expert SwiGLU experts per token (softmax or sigmoid gating, optional
// selection bias and group limit), their outputs are summed with the router
// weights, and the shared experts are added.
#include "model/deepseek2.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "kernels/kernels.h"
#include "model/architectures.h"
#include "model/transformer.h"
#include "quant/quant.h"

namespace engram {
namespace {
using namespace transformer;

enum class Gating { SOFTMAX, SIGMOID };

struct MlaConfig {
  int q_lora_rank = 0;     // 0: queries come from a plain attn_q
  int kv_lora_rank = 0;    // latent values per token
  int rope = 0;            // decoupled RoPE dims: q_pe per head, the shared k_pe
  int nope = 0;            // per-head query/key dims without position
  int v_head = 0;          // per-head value size
  bool legacy_kv_b = false;  // file has the fused attn_kv_b instead of attn_k_b / attn_v_b
  float kq_scale = 0.f;    // 1/sqrt(nope + rope), times YaRN mscale^2
  int k_head() const { return nope + rope; }
  int latent() const { return kv_lora_rank + rope; }  // stored per token: [c, k_pe]
};

struct MoeConfig {
  int n_dense_lead = 0;  // layers before this use a dense SwiGLU
  int n_expert = 0;
  int n_used = 0;        // experts per token
  int n_shared = 0;      // shared experts, fused into one SwiGLU of n_shared * n_ff_exp
  int n_ff_exp = 0;
  int n_group = 0;       // expert groups (DeepSeek-V3 group-limited routing); <= 1: none
  int n_group_used = 0;
  Gating gating = Gating::SOFTMAX;
  bool norm_weights = false;
  float weights_scale = 0.f;  // 0: weights not scaled (llama.cpp's rule)
};

struct MlaWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  TensorView wq;                     // ne {n_embd, n_head * k_head}       (no q_lora)
  TensorView wq_a;                   // ne {n_embd, q_lora}
  const float* q_a_norm = nullptr;   // [q_lora]
  TensorView wq_b;                   // ne {q_lora, n_head * k_head}
  TensorView wkv_a;                  // ne {n_embd, kv_lora + rope}: c | k_pe
  const float* kv_a_norm = nullptr;  // [kv_lora]
  TensorView wk_b;                   // ne {nope, kv_lora, n_head}: W_UK_h transposed
  TensorView wv_b;                   // ne {kv_lora, v_head, n_head}: W_UV_h
  TensorView wo;                     // ne {n_head * v_head, n_embd}
};

struct MoeWeights {
  TensorView router;                  // ne {n_embd, n_expert}
  const float* probs_bias = nullptr;  // [n_expert], selection only (V3), or null
  TensorView gate_exps, up_exps;      // ne {n_embd, n_ff_exp, n_expert}
  TensorView gate_up_exps;            // or fused: ne {n_embd, 2 * n_ff_exp, n_expert}, gate rows first
  TensorView down_exps;               // ne {n_ff_exp, n_embd, n_expert}
  SwiGluFfn shared;                   // ne {n_embd, n_shared * n_ff_exp} ...; empty when n_shared == 0
};

struct Layer {
  MlaWeights attn;
  const float* ffn_norm = nullptr;  // [n_embd]
  bool moe = false;
  SwiGluFfn dense;                  // layers < n_dense_lead
  MoeWeights experts;               // the others
};

// A next-n (MTP) block: an ordinary layer whose input is
// eh_proj([enorm(embed(next token)) | hnorm(main hidden)]) and whose output
// goes through its own head (llama.cpp's blk.N.nextn.* tensors, N >= the
// main layer count).
struct MtpLayer {
  Layer block;
  TensorView eh_proj;                 // ne {2 * n_embd, n_embd}
  const float* enorm = nullptr;       // [n_embd]
  const float* hnorm = nullptr;       // [n_embd]
  Head head;                          // nextn.embed_tokens / shared_head_norm / shared_head_head,
                                      // each falling back to the main model's
};

// Scratch of one forward() beyond transformer::Activations, which already has
// the MQA shapes: q [n, n_head, latent], k [n, latent], v [n, kv_lora],
// att [n, n_head, kv_lora].
struct Scratch {
  std::vector<float> q_a;       // [n, q_lora]
  std::vector<float> q;         // [n, n_head, k_head]: q_nope | q_pe
  std::vector<float> kv_a;      // [n, kv_lora + rope]
  std::vector<float> head_in;   // [n, max(nope, kv_lora)]  one head's rows, gathered
  std::vector<float> head_out;  // [n, max(kv_lora, v_head)]
  std::vector<float> heads;     // [n, n_head * v_head]  value per head, input of wo
  // Decompressed (unabsorbed) attention.
  std::vector<float> w_uk;      // [kv_lora, nope]  one head's W_UK^T as floats
  std::vector<float> k_full;    // [n, n_head, k_head]
  std::vector<float> v_full;    // [n, n_head, v_head]
  std::vector<float> scores;    // [threads, n]
  // Mixture of experts.
  std::vector<float> logits;    // [n, n_expert]
  std::vector<int> chosen;      // [n, n_used]
  std::vector<float> weights;   // [n, n_used]
  std::vector<float> route;     // [2 * n_expert + n_group] routing scratch
  std::vector<int> order;       // [max(n_expert, n_group)] routing scratch
  std::vector<int> expert_begin;  // [n_expert + 1]  expert e's slots: expert_begin[e] .. expert_begin[e+1]
  std::vector<int> slot_token;    // [n * n_used]  slots sorted by expert: the token
  std::vector<float> slot_weight; // [n * n_used]  and its router weight
  std::vector<float> rows_in;   // [n, n_embd]
  std::vector<float> gate, up, hidden;  // [n, max(n_ff_exp, n_shared * n_ff_exp)]
  std::vector<float> rows_out;  // [n, n_embd]
  std::vector<float> moe;       // [n, n_embd]
};

// ---- Hyperparameters -------------------------------------------------------

Status read_dim(const gguf::File& f, const std::string& key, int& out, std::optional<int64_t> fallback, int64_t min) {
  Expected<int64_t> v = fallback ? f.get_int_or(key, *fallback) : f.get_int(key);
  if (!v) return v.error();
  if (*v < min || *v > (int64_t{1} << 30))
    return make_error(f.path(), ": metadata key '", key, "' = ", std::to_string(*v), " is out of range");
  out = static_cast<int>(*v);
  return Status::ok();
}

// DeepSeek's attention scale: 1/sqrt(qk head size), times mscale^2 when RoPE
// is YaRN-scaled (llama.cpp deepseek2 graph; the GGUF stores
// yarn_log_multiplier already multiplied by 0.1, which llama.cpp undoes).
Status read_kq_scale(const gguf::File& f, const ModelConfig& c, MlaConfig& m) {
  Expected<double> log_mul = f.get_float_or(c.arch + ".rope.scaling.yarn_log_multiplier", 0.0);
  if (!log_mul) return log_mul.error();
  const float yarn_log_mul = static_cast<float>(*log_mul) / 0.1f;
  const float ln_scale = std::log(1.f / c.rope.freq_scale);
  // The rope factor had (1 + 0.1 ln s) divided out for ggml; put it back to
  // get the model's own attention factor.
  const float attn_factor = c.rope.yarn_attn_factor * (1.f + 0.1f * ln_scale);
  const float mscale = attn_factor * (1.f + 0.1f * yarn_log_mul * ln_scale);
  m.kq_scale = mscale * mscale / std::sqrt(static_cast<float>(m.k_head()));
  return Status::ok();
}

Status read_mla_config(const gguf::File& f, ModelConfig& c, MlaConfig& m) {
  const std::string a = c.arch + ".attention.";
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "q_lora_rank", m.q_lora_rank, 0, 0));
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "kv_lora_rank", m.kv_lora_rank, std::nullopt, 1));
  m.rope = c.rope.n_dims;
  int k_mla = 0;
  // Current conversions (MQA form) carry the per-head sizes in *_mla keys and
  // the latent sizes in key_length/value_length; legacy ones only the former.
  m.legacy_kv_b = !f.has(a + "key_length_mla");
  if (!m.legacy_kv_b) {
    ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "key_length_mla", k_mla, std::nullopt, 1));
    ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "value_length_mla", m.v_head, std::nullopt, 1));
    if (c.n_head_kv != 1 || c.head_dim != m.kv_lora_rank + m.rope || c.head_dim_v != m.kv_lora_rank)
      return make_error(f.path(), ": MLA file must have ", a, "head_count_kv 1, key_length kv_lora_rank + rope (",
                        std::to_string(m.kv_lora_rank + m.rope), ") and value_length kv_lora_rank (",
                        std::to_string(m.kv_lora_rank), "); found ", std::to_string(c.n_head_kv), ", ",
                        std::to_string(c.head_dim), ", ", std::to_string(c.head_dim_v));
  } else {
    k_mla = c.head_dim;
    m.v_head = c.head_dim_v;
  }
  if (k_mla <= m.rope)
    return make_error(f.path(), ": per-head key size ", std::to_string(k_mla), " must exceed rope.dimension_count ",
                      std::to_string(m.rope));
  m.nope = k_mla - m.rope;
  ENGRAM_RETURN_IF_ERROR(read_kq_scale(f, c, m));
  // From here on the config describes what the memory holds: one shared KV
  // head of [c, k_pe] keys and c values.
  c.n_head_kv = 1;
  c.head_dim = m.latent();
  c.head_dim_v = m.kv_lora_rank;
  return Status::ok();
}

Status read_moe_config(const gguf::File& f, const ModelConfig& c, MoeConfig& m) {
  const std::string a = c.arch + ".";
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "leading_dense_block_count", m.n_dense_lead, 0, 0));
  m.n_dense_lead = std::min(m.n_dense_lead, c.n_layer);
  if (m.n_dense_lead == c.n_layer) return Status::ok();  // no MoE layer at all
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_count", m.n_expert, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_used_count", m.n_used, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_shared_count", m.n_shared, 0, 0));
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_feed_forward_length", m.n_ff_exp, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_group_count", m.n_group, 0, 0));
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_group_used_count", m.n_group_used, 0, 0));
  if (m.n_used > m.n_expert)
    return make_error(f.path(), ": ", a, "expert_used_count ", std::to_string(m.n_used), " exceeds expert_count ",
                      std::to_string(m.n_expert));
  if (m.n_group > 1 && (m.n_expert % m.n_group != 0 || m.n_group_used < 1 || m.n_group_used > m.n_group ||
                        m.n_used > m.n_group_used * (m.n_expert / m.n_group)))
    return make_error(f.path(), ": ", a, "expert_group_count ", std::to_string(m.n_group),
                      " / expert_group_used_count ", std::to_string(m.n_group_used), " do not fit expert_count ",
                      std::to_string(m.n_expert), " and expert_used_count ", std::to_string(m.n_used));
  int gating = 0;  // 0: absent, which llama.cpp reads as softmax
  ENGRAM_RETURN_IF_ERROR(read_dim(f, a + "expert_gating_func", gating, 0, 0));
  if (gating == 0 || gating == 1) m.gating = Gating::SOFTMAX;
  else if (gating == 2) m.gating = Gating::SIGMOID;
  else
    return make_error(f.path(), ": unsupported ", a, "expert_gating_func ", std::to_string(gating),
                      " (supported: 1 softmax, 2 sigmoid)");
  Expected<bool> norm = f.get_bool_or(a + "expert_weights_norm", false);
  if (!norm) return norm.error();
  m.norm_weights = *norm;
  Expected<double> scale = f.get_float_or(a + "expert_weights_scale", 0.0);
  if (!scale) return scale.error();
  m.weights_scale = static_cast<float>(*scale);
  return Status::ok();
}

// ---- Routing ----------------------------------------------------------------

// Picks one token's experts from its router logits [n_expert] as llama.cpp's
// build_moe_ffn does: gate probabilities, selection scores (probabilities plus
// the optional bias), group limit, top n_used, then the weights from the
// unbiased probabilities. chosen/weights: [n_used]. scratch, order: resized here.
void route_token(const MoeConfig& m, const float* logits, const float* bias, int* chosen, float* weights,
                 std::vector<float>& scratch, std::vector<int>& order) {
  const int E = m.n_expert;
  scratch.resize(static_cast<size_t>(2 * E + std::max(m.n_group, 0)));
  order.resize(static_cast<size_t>(std::max(E, m.n_group)));
  float* probs = scratch.data();      // [E]
  float* select = probs + E;          // [E]
  float* group_score = select + E;    // [n_group]
  std::memcpy(probs, logits, static_cast<size_t>(E) * sizeof(float));
  if (m.gating == Gating::SOFTMAX) kernels::softmax(probs, static_cast<size_t>(E));
  else
    for (int e = 0; e < E; ++e) probs[e] = 1.f / (1.f + std::exp(-probs[e]));
  for (int e = 0; e < E; ++e) select[e] = probs[e] + (bias ? bias[e] : 0.f);

  // The k highest scores' indices into order[0..k); equal scores keep the lower index.
  auto top = [&order](const float* score, int n, int k) {
    std::iota(order.begin(), order.begin() + n, 0);
    std::partial_sort(order.begin(), order.begin() + k, order.begin() + n,
                      [&](int x, int y) { return score[x] > score[y] || (score[x] == score[y] && x < y); });
  };

  if (m.n_group > 1) {
    // A group scores the sum of its two best selection scores; experts outside
    // the n_group_used best groups cannot be chosen.
    const int per_group = E / m.n_group;
    const int k = std::min(2, per_group);
    for (int g = 0; g < m.n_group; ++g) {
      const float* group = select + g * per_group;
      top(group, per_group, k);
      group_score[g] = 0.f;
      for (int i = 0; i < k; ++i) group_score[g] += group[order[i]];
    }
    top(group_score, m.n_group, m.n_group_used);
    for (int g = 0; g < m.n_group; ++g) {
      if (std::find(order.begin(), order.begin() + m.n_group_used, g) != order.begin() + m.n_group_used) continue;
      for (int i = 0; i < per_group; ++i) select[g * per_group + i] = -std::numeric_limits<float>::infinity();
    }
  }
  top(select, E, m.n_used);
  std::copy(order.begin(), order.begin() + m.n_used, chosen);

  float sum = 0.f;
  for (int i = 0; i < m.n_used; ++i) sum += weights[i] = probs[chosen[i]];
  if (m.norm_weights) {
    const float denom = std::max(sum, 6.103515625e-5f);  // llama.cpp's clamp (smallest normal f16)
    for (int i = 0; i < m.n_used; ++i) weights[i] /= denom;
  }
  if (m.weights_scale != 0.f)
    for (int i = 0; i < m.n_used; ++i) weights[i] *= m.weights_scale;
}

// out = down(silu(gate(x)) * up(x)) for a SwiGLU of `width` hidden units.
void swiglu(const TensorView& gate, const TensorView& up, const TensorView& down, const float* x, float* out, int n,
            int width, Scratch& s, ThreadPool& pool) {
  kernels::matmul(gate, x, s.gate.data(), n, pool);  // [n, width]
  kernels::matmul(up, x, s.up.data(), n, pool);      // [n, width]
  kernels::silu_mul(s.gate.data(), s.up.data(), s.hidden.data(), static_cast<size_t>(n) * width);
  kernels::matmul(down, s.hidden.data(), out, n, pool);  // [n, n_embd]
}

// ---- The model --------------------------------------------------------------

class Deepseek2Model final : public TransformerModel {
 public:
  explicit Deepseek2Model(ModelParts p)
      : TransformerModel(std::move(p.file), std::move(p.tokenizer), std::move(p.config)) {}

  // The memory holds MLA latents whose rotated part is a slice, not whole
  // key heads: no remapping (keys keep their positions).
  KeyRotator key_rotator() const override { return {}; }

  // The stored key is the latent [c, k_pe] and the value is c, its first
  // kv_lora_rank entries: every memory keeps the latent once per token.
  MemoryLayout memory_layout(int64_t n_ctx, int n_seq = 1) const override {
    MemoryLayout m = TransformerModel::memory_layout(n_ctx, n_seq);
    m.values_in_keys = true;
    return m;
  }

  // Per-head keys [nope | rope] and values [v_head] of every head, as plain
  // multi-head attention of this width would store them.
  size_t full_kv_bytes_per_token() const override {
    return static_cast<size_t>(config_.n_layer) * config_.n_head * (mla_.k_head() + mla_.v_head) * sizeof(float);
  }

  Status load_weights() {
    ModelConfig& c = config_;
    ENGRAM_RETURN_IF_ERROR(read_mla_config(*file_, c, mla_));
    ENGRAM_RETURN_IF_ERROR(read_moe_config(*file_, c, moe_));
    // Next-n (MTP) blocks are the last nextn_predict_layers of block_count:
    // from here on n_layer counts the main layers only, which is what the
    // forward runs and the memory holds.
    ENGRAM_RETURN_IF_ERROR(read_dim(*file_, c.arch + ".nextn_predict_layers", n_nextn_, 0, 0));
    if (n_nextn_ >= c.n_layer)
      return make_error(file_->path(), ": ", c.arch, ".nextn_predict_layers ", std::to_string(n_nextn_),
                        " leaves no main layer of block_count ", std::to_string(c.n_layer));
    c.n_layer -= n_nextn_;
    c.rope.neox = false;  // deepseek2 rotates adjacent pairs (LLAMA_ROPE_TYPE_NORM)
    WeightLoader w(*file_);
    head_ = load_head(w, c, owned_);
    // A file may declare next-n layers but carry only the main ones (as
    // llama.cpp allows): then there is simply no MTP.
    if (n_nextn_ > 0 && w.has(blk(c.n_layer, "nextn.eh_proj.weight")))
      for (int j = 0; j < n_nextn_; ++j) load_mtp_layer(w, c.n_layer + j, mtp_.emplace_back());
    for (int l = 0; l < c.n_layer; ++l) {
      load_layer(w, l, layers_.emplace_back());
    }
    rope_ = Rope(c.rope);
    return w.status();
  }

  uint64_t active_parameter_count() const override {
    // Every routed-expert tensor counts with n_used of its n_expert slices.
    uint64_t n = 0;
    for (const gguf::TensorInfo& t : file_->tensors()) {
      const uint64_t count = static_cast<uint64_t>(t.n_elements());
      const bool routed = t.name.ends_with("_exps.weight") && moe_.n_expert > 0;
      n += routed ? count / static_cast<uint64_t>(moe_.n_expert) * static_cast<uint64_t>(moe_.n_used) : count;
    }
    return n;
  }

  void set_prefill(MlaPrefill mode) { prefill_ = mode; }

  int mtp_layers() const override { return static_cast<int>(mtp_.size()); }
  void keep_hidden(bool on) override {
    keep_hidden_ = on;
    if (!on) hidden_.clear();
  }
  std::span<const float> last_hidden() const override { return hidden_; }

  Status mtp_forward(std::span<const float> hidden, std::span<const TokenId> next, int64_t pos0, Memory& memory,
                     float* logits, float* hidden_out, ThreadPool& pool) override {
    const ModelConfig& c = config_;
    const int n = static_cast<int>(next.size());
    const size_t D = static_cast<size_t>(c.n_embd);
    if (mtp_.empty()) return make_error(file_->path(), ": no next-n (MTP) layers");
    if (n == 0 || hidden.size() != static_cast<size_t>(n) * D || pos0 < 0)
      return make_error("mtp_forward: ", std::to_string(n), " tokens need ", std::to_string(n), " x ",
                        std::to_string(D), " hidden values, got ", std::to_string(hidden.size()));
    ModelConfig one_layer = c;  // the memory holds the next-n block's layer only
    one_layer.n_layer = mtp_layers();
    ENGRAM_RETURN_IF_ERROR(check_forward_args(one_layer, next, memory, 0));
    const MtpLayer& M = mtp_.front();
    Activations& a = act_;
    a.resize(c, n);
    resize_scratch(n, pool.size());
    // x = eh_proj([enorm(embed(next)) | hnorm(hidden)])   [n, n_embd]
    mtp_in_.resize(static_cast<size_t>(n) * 2 * D);
    embed(M.head, next, a.x.data(), c.n_embd);
    for (int t = 0; t < n; ++t) {
      float* row = mtp_in_.data() + static_cast<size_t>(t) * 2 * D;
      kernels::rms_norm(a.x.data() + t * D, M.enorm, row, D, c.norm_eps);
      kernels::rms_norm(hidden.data() + t * D, M.hnorm, row + D, D, c.norm_eps);
    }
    float* x = a.x.data();
    kernels::matmul(M.eh_proj, mtp_in_.data(), x, n, pool);
    const BatchSegment seg{0, pos0, n};
    ENGRAM_RETURN_IF_ERROR(run_layer(M.block, 0, std::span<const BatchSegment>(&seg, 1), x, n, /*decompressed=*/false,
                                     memory, pool));
    ENGRAM_RETURN_IF_ERROR(memory.last_error());
    // The block's own head: norm for every row (chaining reads it), logits for the last.
    rms_norm_rows(x, M.head.output_norm, hidden_out, n, c.n_embd, c.norm_eps, pool);
    kernels::matmul(M.head.output, hidden_out + static_cast<size_t>(n - 1) * D, logits, 1, pool);  // [n_vocab]
    return Status::ok();
  }

 protected:
  // One pass over every row of every segment: forward() and forward_batch().
  Status run(std::span<const TokenId> tokens, std::span<const BatchSegment> segments, Memory& memory, float* logits,
             bool all_logits, ThreadPool& pool) override {
    const ModelConfig& c = config_;
    // Decompressed attention sees only this batch's rows, so it is exact only
    // for a segment that starts its sequence, and only alone in its batch.
    auto starts = [&](const BatchSegment& s) { return s.pos0 == 0 && memory.n_positions(s.seq) == 0; };
    const bool any_starts = std::any_of(segments.begin(), segments.end(), starts);
    if (prefill_ == MlaPrefill::DECOMPRESSED && any_starts && segments.size() > 1)
      return run_one_by_one(tokens, segments, memory, logits, pool);
    const bool decompressed = prefill_ == MlaPrefill::DECOMPRESSED && any_starts;
    const int n = static_cast<int>(tokens.size());
    Activations& a = act_;
    a.resize(c, n);
    resize_scratch(n, pool.size());
    float* x = a.x.data();  // [n, n_embd]
    embed(head_, tokens, x, c.n_embd);
    for (int l = 0; l < c.n_layer; ++l)
      ENGRAM_RETURN_IF_ERROR(run_layer(layers_[static_cast<size_t>(l)], l, segments, x, n, decompressed, memory, pool));
    if (keep_hidden_) {  // what the next-n (MTP) block reads: every row after the output norm
      hidden_.resize(static_cast<size_t>(n) * c.n_embd);
      rms_norm_rows(x, head_.output_norm, hidden_.data(), n, c.n_embd, c.norm_eps, pool);
    }
    output_logits(head_, c, x, segments, all_logits, logits, a, pool);  // [n or segments, n_vocab]
    return Status::ok();
  }

 private:
  // Each segment as its own batch (the last row's logits of each).
  Status run_one_by_one(std::span<const TokenId> tokens, std::span<const BatchSegment> segments, Memory& memory,
                        float* logits, ThreadPool& pool) {
    size_t first = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      const size_t n = static_cast<size_t>(segments[i].n);
      float* out = logits ? logits + i * static_cast<size_t>(config_.n_vocab) : nullptr;
      ENGRAM_RETURN_IF_ERROR(run(tokens.subspan(first, n), segments.subspan(i, 1), memory, out, false, pool));
      first += n;
    }
    return Status::ok();
  }

  // Block l of the file as a next-n layer: its attention and FFN tensors
  // (MoE when l >= leading_dense_block_count, as in llama.cpp) plus the
  // nextn.* ones; the optional embedding, head norm and head fall back to
  // the main model's.
  void load_mtp_layer(WeightLoader& w, int l, MtpLayer& M) {
    const ModelConfig& c = config_;
    load_layer(w, l, M.block);
    M.eh_proj = w.require(blk(l, "nextn.eh_proj.weight"), {2 * int64_t{c.n_embd}, c.n_embd});
    M.enorm = w.require_vector(blk(l, "nextn.enorm.weight"), c.n_embd, owned_);
    M.hnorm = w.require_vector(blk(l, "nextn.hnorm.weight"), c.n_embd, owned_);
    M.head = head_;
    const TensorView embed = w.optional(blk(l, "nextn.embed_tokens.weight"), {c.n_embd, c.n_vocab});
    if (embed.data) M.head.token_embd = embed;
    const float* norm = w.optional_vector(blk(l, "nextn.shared_head_norm.weight"), c.n_embd, owned_);
    if (norm) M.head.output_norm = norm;
    const TensorView out = w.optional(blk(l, "nextn.shared_head_head.weight"), {c.n_embd, c.n_vocab});
    if (out.data) M.head.output = out;
  }

  void load_layer(WeightLoader& w, int l, Layer& L) {
    load_attention_weights(w, l, L.attn);
    L.ffn_norm = w.require_vector(blk(l, "ffn_norm.weight"), config_.n_embd, owned_);
    L.moe = l >= moe_.n_dense_lead;
    if (!L.moe) L.dense = load_swiglu(w, l, config_);
    else load_expert_weights(w, l, L.experts);
  }

  // One layer over x [n, n_embd] in place, its latents in `memory_layer` of
  // `memory`: a layer of run(), or the next-n block (layer 0 of its own
  // memory, always absorbed attention).
  Status run_layer(const Layer& L, int memory_layer, std::span<const BatchSegment> segments, float* x, int n,
                   bool decompressed, Memory& memory, ThreadPool& pool) {
    const ModelConfig& c = config_;
    Activations& a = act_;
    const size_t k_row = static_cast<size_t>(mla_.latent()), v_row = static_cast<size_t>(mla_.kv_lora_rank);
    // Attention.
    rms_norm_rows(x, L.attn.attn_norm, a.xb.data(), n, c.n_embd, c.norm_eps, pool);  // xb: [n, n_embd]
    project_mla(L.attn, n, segments, a, pool);  // s.q: [n, n_head, k_head]  a.k: [n, latent]  a.v: [n, kv_lora]
    ENGRAM_RETURN_IF_ERROR(append_segments(memory, memory_layer, segments, a.k.data(), k_row, a.v.data(), v_row));
    if (decompressed) attend_decompressed(L.attn, n, a, pool);                         // s.heads: [n, n_head * v_head]
    else attend_absorbed(L.attn, memory_layer, segments, n, memory, a, pool);          // s.heads: [n, n_head * v_head]
    kernels::matmul(L.attn.wo, s_.heads.data(), a.proj.data(), n, pool);  // [n, n_embd]
    add_in_place(x, a.proj.data(), static_cast<size_t>(n) * c.n_embd);
    // Feed-forward.
    rms_norm_rows(x, L.ffn_norm, a.xb.data(), n, c.n_embd, c.norm_eps, pool);
    if (!L.moe) swiglu_ffn(L.dense, a.xb.data(), a.proj.data(), n, c, a, pool);  // proj: [n, n_embd]
    else moe_ffn(L.experts, a.xb.data(), a.proj.data(), n, pool);             // proj: [n, n_embd]
    add_in_place(x, a.proj.data(), static_cast<size_t>(n) * c.n_embd);
    return Status::ok();
  }

  void load_attention_weights(WeightLoader& w, int l, MlaWeights& A) {
    const ModelConfig& c = config_;
    const MlaConfig& m = mla_;
    const int64_t H = c.n_head, q_out = H * m.k_head();
    A.attn_norm = w.require_vector(blk(l, "attn_norm.weight"), c.n_embd, owned_);
    if (m.q_lora_rank > 0) {
      A.wq_a = w.require(blk(l, "attn_q_a.weight"), {c.n_embd, m.q_lora_rank});
      A.q_a_norm = w.require_vector(blk(l, "attn_q_a_norm.weight"), m.q_lora_rank, owned_);
      A.wq_b = w.require(blk(l, "attn_q_b.weight"), {m.q_lora_rank, q_out});
    } else {
      A.wq = w.require(blk(l, "attn_q.weight"), {c.n_embd, q_out});
    }
    A.wkv_a = w.require(blk(l, "attn_kv_a_mqa.weight"), {c.n_embd, m.latent()});
    A.kv_a_norm = w.require_vector(blk(l, "attn_kv_a_norm.weight"), m.kv_lora_rank, owned_);
    if (!m.legacy_kv_b) {
      A.wk_b = w.require(blk(l, "attn_k_b.weight"), {m.nope, m.kv_lora_rank, H});
      A.wv_b = w.require(blk(l, "attn_v_b.weight"), {m.kv_lora_rank, m.v_head, H});
    } else {
      split_kv_b(w.require(blk(l, "attn_kv_b.weight"), {m.kv_lora_rank, H * (m.nope + m.v_head)}), A);
    }
    A.wo = w.require(blk(l, "attn_output.weight"), {H * m.v_head, c.n_embd});
  }

  // Legacy files fuse W_UK and W_UV: attn_kv_b ne {kv_lora, n_head * (nope +
  // v_head)}, head h's rows being its nope key rows then its v_head value
  // rows. Splits it into the attn_k_b / attn_v_b layout (as F32 copies).
  void split_kv_b(const TensorView& kv_b, MlaWeights& A) {
    if (!kv_b.data) return;
    const int H = config_.n_head, R = mla_.kv_lora_rank, nope = mla_.nope, dv = mla_.v_head;
    std::vector<float>& k_b = owned_.emplace_back(static_cast<size_t>(H) * R * nope);  // [H, R, nope]
    std::vector<float>& v_b = owned_.emplace_back(static_cast<size_t>(H) * dv * R);    // [H, dv, R]
    std::vector<float> row(static_cast<size_t>(R));
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < nope + dv; ++i) {
        dequantize_row(kv_b.type, kv_b.row(int64_t{h} * (nope + dv) + i), row.data(), R);
        for (int j = 0; j < R; ++j) {
          if (i < nope) k_b[(static_cast<size_t>(h) * R + j) * nope + i] = row[j];  // transposed
          else v_b[(static_cast<size_t>(h) * dv + (i - nope)) * R + j] = row[j];
        }
      }
    }
    auto view = [](const std::vector<float>& data, int64_t ne0, int64_t ne1, int64_t ne2, std::string name) {
      TensorView t;
      t.type = GgmlType::F32;
      t.ne = {ne0, ne1, ne2, 1};
      t.n_dims = 3;
      t.data = data.data();
      t.name = std::move(name);
      return t;
    };
    A.wk_b = view(k_b, nope, R, H, kv_b.name + " (W_UK)");
    A.wv_b = view(v_b, R, dv, H, kv_b.name + " (W_UV)");
  }

  void load_expert_weights(WeightLoader& w, int l, MoeWeights& X) {
    const ModelConfig& c = config_;
    const MoeConfig& m = moe_;
    X.router = w.require(blk(l, "ffn_gate_inp.weight"), {c.n_embd, m.n_expert});
    X.probs_bias = w.optional_vector(blk(l, "exp_probs_b.bias"), m.n_expert, owned_);
    if (w.has(blk(l, "ffn_gate_up_exps.weight")) && !w.has(blk(l, "ffn_gate_exps.weight"))) {
      X.gate_up_exps = w.require(blk(l, "ffn_gate_up_exps.weight"), {c.n_embd, 2 * int64_t{m.n_ff_exp}, m.n_expert});
    } else {
      X.gate_exps = w.require(blk(l, "ffn_gate_exps.weight"), {c.n_embd, m.n_ff_exp, m.n_expert});
      X.up_exps = w.require(blk(l, "ffn_up_exps.weight"), {c.n_embd, m.n_ff_exp, m.n_expert});
    }
    X.down_exps = w.require(blk(l, "ffn_down_exps.weight"), {m.n_ff_exp, c.n_embd, m.n_expert});
    if (m.n_shared > 0) {
      const int64_t width = int64_t{m.n_shared} * m.n_ff_exp;
      X.shared.gate = w.require(blk(l, "ffn_gate_shexp.weight"), {c.n_embd, width});
      X.shared.up = w.require(blk(l, "ffn_up_shexp.weight"), {c.n_embd, width});
      X.shared.down = w.require(blk(l, "ffn_down_shexp.weight"), {width, c.n_embd});
    }
  }

  void resize_scratch(int n, int threads) {
    const ModelConfig& c = config_;
    const MlaConfig& m = mla_;
    const size_t rows = static_cast<size_t>(n), H = static_cast<size_t>(c.n_head);
    Scratch& s = s_;
    s.q_a.resize(rows * m.q_lora_rank);
    s.q.resize(rows * H * m.k_head());
    s.kv_a.resize(rows * m.latent());
    s.head_in.resize(rows * std::max(m.nope, m.kv_lora_rank));
    s.head_out.resize(rows * std::max(m.kv_lora_rank, m.v_head));
    s.heads.resize(rows * H * m.v_head);
    const size_t width = static_cast<size_t>(std::max(moe_.n_ff_exp, moe_.n_shared * moe_.n_ff_exp));
    s.logits.resize(rows * moe_.n_expert);
    s.chosen.resize(rows * moe_.n_used);
    s.weights.resize(rows * moe_.n_used);
    s.expert_begin.resize(static_cast<size_t>(moe_.n_expert) + 1);
    s.slot_token.resize(rows * moe_.n_used);
    s.slot_weight.resize(rows * moe_.n_used);
    s.rows_in.resize(rows * c.n_embd);
    s.rows_out.resize(rows * c.n_embd);
    s.moe.resize(rows * c.n_embd);
    s.gate.resize(rows * width);
    s.up.resize(rows * width);
    s.hidden.resize(rows * width);
    if (prefill_ == MlaPrefill::DECOMPRESSED) {
      s.w_uk.resize(static_cast<size_t>(m.kv_lora_rank) * m.nope);
      s.k_full.resize(rows * H * m.k_head());
      s.v_full.resize(rows * H * m.v_head);
      s.scores.resize(static_cast<size_t>(std::max(threads, 1)) * rows);
    }
  }

  // Queries s.q [n, n_head, nope | rope], and what the memory stores: keys
  // a.k [n, c | k_pe] and values a.v [n, c]. RoPE touches q_pe and k_pe only.
  void project_mla(const MlaWeights& A, int n, std::span<const BatchSegment> segments, Activations& a,
                   ThreadPool& pool) {
    const ModelConfig& c = config_;
    const MlaConfig& m = mla_;
    Scratch& s = s_;
    if (m.q_lora_rank > 0) {
      kernels::matmul(A.wq_a, a.xb.data(), s.q_a.data(), n, pool);  // [n, q_lora]
      rms_norm_rows_in_place(s.q_a.data(), A.q_a_norm, n, m.q_lora_rank, c.norm_eps);
      kernels::matmul(A.wq_b, s.q_a.data(), s.q.data(), n, pool);   // [n, n_head * k_head]
    } else {
      kernels::matmul(A.wq, a.xb.data(), s.q.data(), n, pool);      // [n, n_head * k_head]
    }
    kernels::matmul(A.wkv_a, a.xb.data(), s.kv_a.data(), n, pool);  // [n, kv_lora + rope]
    rope_segments(rope_, s.q.data() + m.nope, segments, c.n_head, m.k_head(), a.rope);     // q_pe of every head
    rope_segments(rope_, s.kv_a.data() + m.kv_lora_rank, segments, 1, m.latent(), a.rope);  // the shared k_pe
    const size_t R = static_cast<size_t>(m.kv_lora_rank), L = static_cast<size_t>(m.latent());
    for (int t = 0; t < n; ++t) {
      const float* in = s.kv_a.data() + t * L;
      float* k = a.k.data() + t * L;
      kernels::rms_norm(in, A.kv_a_norm, k, R, c.norm_eps);                       // c
      std::memcpy(k + R, in + R, static_cast<size_t>(m.rope) * sizeof(float));    // k_pe
      std::memcpy(a.v.data() + t * R, k, R * sizeof(float));                       // value = c
    }
  }

  // Head h's `width` values of every row: [n, n_head, stride] -> [n, width].
  static void gather_head(const float* src, int n, size_t stride, size_t offset, size_t width, float* dst) {
    for (int t = 0; t < n; ++t) std::memcpy(dst + t * width, src + t * stride + offset, width * sizeof(float));
  }
  static void scatter_head(const float* src, int n, size_t stride, size_t offset, size_t width, float* dst) {
    for (int t = 0; t < n; ++t) std::memcpy(dst + t * stride + offset, src + t * width, width * sizeof(float));
  }

  // MQA over the stored latents: a.q [n, n_head, W_UK_h^T q_nope | q_pe]
  // against the single KV head (each segment in its own sequence), a.att
  // [n, n_head, kv_lora] out, then W_UV_h per head into s.heads [n, n_head, v_head].
  void attend_absorbed(const MlaWeights& A, int layer, std::span<const BatchSegment> segments, int n, Memory& memory,
                       Activations& a, ThreadPool& pool) {
    const ModelConfig& c = config_;
    const MlaConfig& m = mla_;
    Scratch& s = s_;
    const size_t R = static_cast<size_t>(m.kv_lora_rank), L = static_cast<size_t>(m.latent());
    const size_t nope = static_cast<size_t>(m.nope), rope = static_cast<size_t>(m.rope);
    const size_t q_stride = static_cast<size_t>(c.n_head) * m.k_head();
    for (int h = 0; h < c.n_head; ++h) {
      const size_t q_off = static_cast<size_t>(h) * m.k_head();
      gather_head(s.q.data(), n, q_stride, q_off, nope, s.head_in.data());                 // [n, nope]
      kernels::matmul(slice_matrix(A.wk_b, h), s.head_in.data(), s.head_out.data(), n, pool);  // [n, kv_lora]
      scatter_head(s.head_out.data(), n, c.n_head * L, h * L, R, a.q.data());
      for (int t = 0; t < n; ++t)
        std::memcpy(a.q.data() + (t * c.n_head + h) * L + R, s.q.data() + t * q_stride + q_off + nope,
                    rope * sizeof(float));
    }
    const size_t q_row = static_cast<size_t>(c.n_head) * L, att_row = static_cast<size_t>(c.n_head) * R;
    size_t first = 0;
    for (const BatchSegment& seg : segments) {
      memory.attend(layer, seg.seq, seg.pos0, seg.n, c.n_head, a.q.data() + first * q_row, a.att.data() + first * att_row,
                    m.kq_scale, pool);  // [seg.n, n_head, kv_lora]
      first += static_cast<size_t>(seg.n);
    }
    expand_values(A, a.att.data(), n, pool);
  }

  // s.heads[t, h] = W_UV_h latent_out[t, h]   latent_out: [n, n_head, kv_lora]
  void expand_values(const MlaWeights& A, const float* latent_out, int n, ThreadPool& pool) {
    const int H = config_.n_head;
    const size_t R = static_cast<size_t>(mla_.kv_lora_rank), dv = static_cast<size_t>(mla_.v_head);
    for (int h = 0; h < H; ++h) {
      gather_head(latent_out, n, H * R, h * R, R, s_.head_in.data());                        // [n, kv_lora]
      kernels::matmul(slice_matrix(A.wv_b, h), s_.head_in.data(), s_.head_out.data(), n, pool);  // [n, v_head]
      scatter_head(s_.head_out.data(), n, H * dv, h * dv, dv, s_.heads.data());
    }
  }

  // DeepSeek's reference form: per head, keys [W_UK_h c, k_pe] and values
  // W_UV_h c decompressed from this batch's latents, causal softmax attention
  // of s.q over them into s.heads [n, n_head, v_head].
  void attend_decompressed(const MlaWeights& A, int n, Activations& a, ThreadPool& pool) {
    const ModelConfig& c = config_;
    const MlaConfig& m = mla_;
    Scratch& s = s_;
    const int H = c.n_head, R = m.kv_lora_rank, nope = m.nope, dk = m.k_head(), dv = m.v_head;
    const size_t L = static_cast<size_t>(m.latent());
    for (int h = 0; h < H; ++h) {
      // k_nope = W_UK_h c: wk_b's rows (one per latent dim) weighted by c.
      const TensorView wk = slice_matrix(A.wk_b, h);  // ne {nope, kv_lora}
      for (int j = 0; j < R; ++j) dequantize_row(wk.type, wk.row(j), s.w_uk.data() + static_cast<size_t>(j) * nope, nope);
      for (int t = 0; t < n; ++t) {
        float* k = s.k_full.data() + (static_cast<size_t>(t) * H + h) * dk;
        const float* latent = a.k.data() + t * L;
        std::fill(k, k + nope, 0.f);
        for (int j = 0; j < R; ++j) kernels::axpy(latent[j], s.w_uk.data() + static_cast<size_t>(j) * nope, k, nope);
        std::memcpy(k + nope, latent + R, static_cast<size_t>(m.rope) * sizeof(float));
      }
      // v = W_UV_h c for every row (a.v is [n, kv_lora]).
      kernels::matmul(slice_matrix(A.wv_b, h), a.v.data(), s.head_out.data(), n, pool);  // [n, v_head]
      scatter_head(s.head_out.data(), n, static_cast<size_t>(H) * dv, static_cast<size_t>(h) * dv, dv, s.v_full.data());
    }
    const float scale = m.kq_scale;
    pool.parallel_for(static_cast<size_t>(n) * H, [&](size_t begin, size_t end, int thread) {
      float* scores = s.scores.data() + static_cast<size_t>(thread) * n;
      for (size_t i = begin; i < end; ++i) {
        const int t = static_cast<int>(i / H), h = static_cast<int>(i % H);
        const float* q = s.q.data() + (static_cast<size_t>(t) * H + h) * dk;
        for (int j = 0; j <= t; ++j)
          scores[j] = kernels::dot(q, s.k_full.data() + (static_cast<size_t>(j) * H + h) * dk, dk) * scale;
        kernels::softmax(scores, static_cast<size_t>(t) + 1);
        float* out = s.heads.data() + (static_cast<size_t>(t) * H + h) * dv;
        std::fill(out, out + dv, 0.f);
        for (int j = 0; j <= t; ++j)
          kernels::axpy(scores[j], s.v_full.data() + (static_cast<size_t>(j) * H + h) * dv, out, dv);
      }
    });
  }

  // out = sum over the token's chosen experts of weight * SwiGLU_e(x), plus
  // the shared experts. Each expert runs once over the tokens routed to it
  // and reads only its own slice of the expert tensors.
  void moe_ffn(const MoeWeights& X, const float* x, float* out, int n, ThreadPool& pool) {
    const ModelConfig& c = config_;
    const MoeConfig& m = moe_;
    Scratch& s = s_;
    const size_t D = static_cast<size_t>(c.n_embd);
    kernels::matmul(X.router, x, s.logits.data(), n, pool);  // [n, n_expert]
    const size_t slots = static_cast<size_t>(n) * m.n_used;
    for (int t = 0; t < n; ++t)
      route_token(m, s.logits.data() + static_cast<size_t>(t) * m.n_expert, X.probs_bias,
                  s.chosen.data() + static_cast<size_t>(t) * m.n_used, s.weights.data() + static_cast<size_t>(t) * m.n_used,
                  s.route, s.order);
    // Bucket the (token, weight) slots by expert (counting sort, tokens in order).
    std::fill(s.expert_begin.begin(), s.expert_begin.end(), 0);
    for (size_t i = 0; i < slots; ++i) ++s.expert_begin[static_cast<size_t>(s.chosen[i]) + 1];
    std::partial_sum(s.expert_begin.begin(), s.expert_begin.end(), s.expert_begin.begin());
    {
      std::vector<int>& next = s.order;  // free again after routing
      next.assign(s.expert_begin.begin(), s.expert_begin.end() - 1);
      for (size_t i = 0; i < slots; ++i) {
        const int slot = next[static_cast<size_t>(s.chosen[i])]++;
        s.slot_token[static_cast<size_t>(slot)] = static_cast<int>(i / static_cast<size_t>(m.n_used));
        s.slot_weight[static_cast<size_t>(slot)] = s.weights[i];
      }
    }

    std::fill(s.moe.begin(), s.moe.begin() + static_cast<ptrdiff_t>(n * D), 0.f);
    for (int e = 0; e < m.n_expert; ++e) {
      const int first = s.expert_begin[static_cast<size_t>(e)];
      const int rows = s.expert_begin[static_cast<size_t>(e) + 1] - first;
      if (rows == 0) continue;  // no token picked it: its weights stay unread in the mmap
      const int* token = s.slot_token.data() + first;
      const float* weight = s.slot_weight.data() + first;
      for (int r = 0; r < rows; ++r) std::memcpy(s.rows_in.data() + r * D, x + token[r] * D, D * sizeof(float));
      TensorView gate, up;  // ne {n_embd, n_ff_exp}: expert e's slices only
      if (X.gate_up_exps.data) {
        const TensorView both = slice_matrix(X.gate_up_exps, e);
        gate = row_range(both, 0, m.n_ff_exp);
        up = row_range(both, m.n_ff_exp, m.n_ff_exp);
      } else {
        gate = slice_matrix(X.gate_exps, e);
        up = slice_matrix(X.up_exps, e);
      }
      swiglu(gate, up, slice_matrix(X.down_exps, e), s.rows_in.data(), s.rows_out.data(), rows, m.n_ff_exp, s,
             pool);  // [rows, n_embd]
      for (int r = 0; r < rows; ++r) kernels::axpy(weight[r], s.rows_out.data() + r * D, s.moe.data() + token[r] * D, D);
    }
    if (m.n_shared > 0) {
      swiglu(X.shared.gate, X.shared.up, X.shared.down, x, out, n, m.n_shared * m.n_ff_exp, s, pool);  // [n, n_embd]
      add_in_place(out, s.moe.data(), n * D);
    } else {
      std::memcpy(out, s.moe.data(), n * D * sizeof(float));
    }
  }

  MlaConfig mla_;
  MoeConfig moe_;
  std::vector<Layer> layers_;
  Scratch s_;
  MlaPrefill prefill_ = MlaPrefill::ABSORBED;
  // Next-n (MTP) blocks after the main layers, and the hidden states they read.
  int n_nextn_ = 0;                  // nextn_predict_layers (loaded or not)
  std::vector<MtpLayer> mtp_;
  bool keep_hidden_ = false;
  std::vector<float> hidden_;        // [n, n_embd] rows of the last forward, when keep_hidden_
  std::vector<float> mtp_in_;        // [n, 2 * n_embd] eh_proj input
};

}  // namespace

Expected<std::unique_ptr<Model>> load_deepseek2(ModelParts parts) {
  auto model = std::make_unique<Deepseek2Model>(std::move(parts));
  ENGRAM_RETURN_IF_ERROR(model->load_weights());
  return std::unique_ptr<Model>(std::move(model));
}

Status set_mla_prefill(Model& model, MlaPrefill mode) {
  auto* ds = dynamic_cast<Deepseek2Model*>(&model);
  if (!ds) return make_error("MLA prefill mode needs a deepseek2 model, not '", model.config().arch, "'");
  ds->set_prefill(mode);
  return Status::ok();
}

}  // namespace engram
