// Qwen2: the Llama block with biases on the Q, K and V projections (added
// before RoPE) and RoPE in NEOX order (pairs i, i + n_rot/2).
#include "model/architectures.h"
#include "model/transformer.h"

namespace engram {
namespace {
using namespace transformer;

struct Qwen2Layer {
  const float* attn_norm = nullptr;  // [n_embd]
  Attention attn;
  const float* bq = nullptr;         // [n_head * head_dim]
  const float* bk = nullptr;         // [n_head_kv * head_dim]
  const float* bv = nullptr;         // [n_head_kv * head_dim_v]
  const float* ffn_norm = nullptr;   // [n_embd]
  SwiGluFfn ffn;
};

class Qwen2Model final : public TransformerModel {
 public:
  explicit Qwen2Model(ModelParts p) : TransformerModel(std::move(p.file), std::move(p.tokenizer), std::move(p.config)) {}

  Status load_weights() {
    ModelConfig& c = config_;
    c.rope.neox = true;
    WeightLoader w(*file_);
    head_ = load_head(w, c, owned_);
    for (int l = 0; l < c.n_layer; ++l) {
      Qwen2Layer& L = layers_.emplace_back();
      L.attn_norm = w.require_vector(blk(l, "attn_norm.weight"), c.n_embd, owned_);
      L.attn = load_attention(w, l, c);
      L.bq = w.require_vector(blk(l, "attn_q.bias"), int64_t{c.n_head} * c.head_dim, owned_);
      L.bk = w.require_vector(blk(l, "attn_k.bias"), int64_t{c.n_head_kv} * c.head_dim, owned_);
      L.bv = w.require_vector(blk(l, "attn_v.bias"), int64_t{c.n_head_kv} * c.head_dim_v, owned_);
      L.ffn_norm = w.require_vector(blk(l, "ffn_norm.weight"), c.n_embd, owned_);
      L.ffn = load_swiglu(w, l, c);
    }
    rope_ = Rope(c.rope);
    return w.status();
  }

 protected:
  // One pass over every row of every segment: forward() and forward_batch().
  Status run(std::span<const TokenId> tokens, std::span<const BatchSegment> segments, Memory& memory, float* logits,
             bool all_logits, ThreadPool& pool) override {
    const ModelConfig& c = config_;
    const int n = static_cast<int>(tokens.size());
    Activations& a = act_;
    a.resize(c, n);
    float* x = a.x.data();  // [n, n_embd]
    embed(head_, tokens, x, c.n_embd);

    for (int l = 0; l < c.n_layer; ++l) {
      const Qwen2Layer& L = layers_[static_cast<size_t>(l)];
      // Attention.
      rms_norm_rows(x, L.attn_norm, a.xb.data(), n, c.n_embd, c.norm_eps, pool);  // xb: [n, n_embd]
      project_qkv(L.attn, a.xb.data(), n, a, pool);  // q: [n, n_head, head_dim]  k, v: [n, n_head_kv, head_dim(_v)]
      add_bias_rows(a.q.data(), L.bq, n, c.n_head * c.head_dim);
      add_bias_rows(a.k.data(), L.bk, n, c.n_head_kv * c.head_dim);
      add_bias_rows(a.v.data(), L.bv, n, c.n_head_kv * c.head_dim_v);
      rope_segments(rope_, a.q.data(), segments, c.n_head, c.head_dim, a.rope);  // each at its own positions
      rope_segments(rope_, a.k.data(), segments, c.n_head_kv, c.head_dim, a.rope);
      ENGRAM_RETURN_IF_ERROR(attend_and_project(L.attn, l, segments, c, memory, a, pool));  // proj: [n, n_embd]
      add_in_place(x, a.proj.data(), static_cast<size_t>(n) * c.n_embd);
      // Feed-forward.
      rms_norm_rows(x, L.ffn_norm, a.xb.data(), n, c.n_embd, c.norm_eps, pool);
      swiglu_ffn(L.ffn, a.xb.data(), a.proj.data(), n, c, a, pool);  // proj: [n, n_embd]
      add_in_place(x, a.proj.data(), static_cast<size_t>(n) * c.n_embd);
    }
    output_logits(head_, c, x, segments, all_logits, logits, a, pool);  // [n or segments, n_vocab]
    return Status::ok();
  }

 private:
  std::vector<Qwen2Layer> layers_;
};

}  // namespace

Expected<std::unique_ptr<Model>> load_qwen2(ModelParts parts) {
  auto model = std::make_unique<Qwen2Model>(std::move(parts));
  ENGRAM_RETURN_IF_ERROR(model->load_weights());
  return std::unique_ptr<Model>(std::move(model));
}

}  // namespace engram
