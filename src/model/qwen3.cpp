// Qwen3: the Llama block with a per-head RMSNorm on queries and keys (after
// the projection, before RoPE), no biases, and RoPE in NEOX order.
#include "model/architectures.h"
#include "model/transformer.h"

namespace engram {
namespace {
using namespace transformer;

struct Qwen3Layer {
  const float* attn_norm = nullptr;  // [n_embd]
  Attention attn;
  const float* q_norm = nullptr;     // [head_dim], shared by all query heads
  const float* k_norm = nullptr;     // [head_dim], shared by all key heads
  const float* ffn_norm = nullptr;   // [n_embd]
  SwiGluFfn ffn;
};

class Qwen3Model final : public TransformerModel {
 public:
  explicit Qwen3Model(ModelParts p) : TransformerModel(std::move(p.file), std::move(p.tokenizer), std::move(p.config)) {}

  Status load_weights() {
    ModelConfig& c = config_;
    c.rope.neox = true;
    WeightLoader w(*file_);
    head_ = load_head(w, c, owned_);
    for (int l = 0; l < c.n_layer; ++l) {
      Qwen3Layer& L = layers_.emplace_back();
      L.attn_norm = w.require_vector(blk(l, "attn_norm.weight"), c.n_embd, owned_);
      L.attn = load_attention(w, l, c);
      L.q_norm = w.require_vector(blk(l, "attn_q_norm.weight"), c.head_dim, owned_);
      L.k_norm = w.require_vector(blk(l, "attn_k_norm.weight"), c.head_dim, owned_);
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
      const Qwen3Layer& L = layers_[static_cast<size_t>(l)];
      // Attention.
      rms_norm_rows(x, L.attn_norm, a.xb.data(), n, c.n_embd, c.norm_eps, pool);  // xb: [n, n_embd]
      project_qkv(L.attn, a.xb.data(), n, a, pool);  // q: [n, n_head, head_dim]  k, v: [n, n_head_kv, head_dim(_v)]
      rms_norm_rows_in_place(a.q.data(), L.q_norm, n * c.n_head, c.head_dim, c.norm_eps);  // per head
      rms_norm_rows_in_place(a.k.data(), L.k_norm, n * c.n_head_kv, c.head_dim, c.norm_eps);
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
  std::vector<Qwen3Layer> layers_;
};

}  // namespace

Expected<std::unique_ptr<Model>> load_qwen3(ModelParts parts) {
  auto model = std::make_unique<Qwen3Model>(std::move(parts));
  ENGRAM_RETURN_IF_ERROR(model->load_weights());
  return std::unique_ptr<Model>(std::move(model));
}

}  // namespace engram
