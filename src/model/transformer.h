// Building blocks shared by the decoder-only transformer architectures
// (llama.cpp, qwen2.cpp, qwen3.cpp): hyperparameters from GGUF keys, weight
// lookup with presence/shape/type checks, the activation arena, and the
// sub-blocks every one of them uses (RMSNorm, SwiGLU FFN, output head).
//
// Each architecture file keeps its own forward pass readable top to bottom;
// only the pieces that are identical across architectures live here. That
// one body serves forward() (one segment) and forward_batch() (several
// sequences at once): every row goes through the norms, matmuls and FFN
// together, and only RoPE and attention loop over the segments.
#pragma once

#include <deque>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/rope.h"
#include "tensor/tensor.h"

namespace engram::transformer {

// Reads the hyperparameters common to llama-family models from the
// "{arch}.*" keys (see model.h for the defaults). n_vocab is left 0: it is
// taken from token_embd's shape.
Expected<ModelConfig> read_config(const gguf::File& file);

// "blk.3.attn_q.weight"
std::string blk(int layer, const char* name);

// Looks up weights and checks them. The first problem is kept (with the file
// and tensor named) and reported by status(); later calls after an error
// return empty views, so a loader can request everything and check once.
class WeightLoader {
 public:
  explicit WeightLoader(const gguf::File& file) : file_(file) {}

  // A matrix or other tensor with exactly this shape (ggml order, innermost
  // first) and a type the kernels can compute with.
  TensorView require(const std::string& name, std::initializer_list<int64_t> shape);
  // Same, but absence is fine (returns a view with data == nullptr).
  TensorView optional(const std::string& name, std::initializer_list<int64_t> shape);

  // A 1-D vector (norm weight, bias) of n floats: points into the file when
  // stored as F32, else dequantized into storage owned by `owner`.
  const float* require_vector(const std::string& name, int64_t n, std::deque<std::vector<float>>& owner);
  const float* optional_vector(const std::string& name, int64_t n, std::deque<std::vector<float>>& owner);

  bool has(const std::string& name) const { return file_.find_tensor(name) != nullptr; }
  const gguf::TensorInfo* info(const std::string& name) const { return file_.find_tensor(name); }
  Status status() const { return status_; }

 private:
  TensorView lookup(const std::string& name, std::initializer_list<int64_t> shape, bool required);
  const float* lookup_vector(const std::string& name, int64_t n, std::deque<std::vector<float>>& owner, bool required);
  void fail(Error e) {
    if (status_.is_ok()) status_ = Status(std::move(e));
  }

  const gguf::File& file_;
  Status status_;
};

// Activations of one forward() call, owned by the model and resized to the
// batch; nothing is allocated again once a batch size has been seen.
struct Activations {
  std::vector<float> x;       // [n, n_embd]  residual stream
  std::vector<float> xb;      // [n, n_embd]  normalised input of a sub-block
  std::vector<float> q;       // [n, n_head * head_dim]
  std::vector<float> k;       // [n, n_head_kv * head_dim]
  std::vector<float> v;       // [n, n_head_kv * head_dim_v]
  std::vector<float> att;     // [n, n_head * head_dim_v]  attention output per head
  std::vector<float> proj;    // [n, n_embd]  sub-block output before the residual add
  std::vector<float> gate;    // [n, n_ff]
  std::vector<float> up;      // [n, n_ff]
  std::vector<float> hidden;  // [n, n_ff]  silu(gate) * up
  std::vector<float> rope;    // [n_rot]  cos/sin scratch

  void resize(const ModelConfig& c, int n);
};

// Weights of the token embedding and the output head.
struct Head {
  TensorView token_embd;   // ne {n_embd, n_vocab}
  const float* output_norm = nullptr;  // [n_embd]
  TensorView output;       // ne {n_embd, n_vocab}; token_embd when the file ties them
};

// Loads token_embd, output_norm and output (falling back to token_embd) and
// sets config.n_vocab from token_embd.
Head load_head(WeightLoader& w, ModelConfig& config, std::deque<std::vector<float>>& owner);

// Self-attention projections of one layer.
struct Attention {
  TensorView wq;  // ne {n_embd, n_head * head_dim}
  TensorView wk;  // ne {n_embd, n_head_kv * head_dim}
  TensorView wv;  // ne {n_embd, n_head_kv * head_dim_v}
  TensorView wo;  // ne {n_head * head_dim_v, n_embd}
};
Attention load_attention(WeightLoader& w, int layer, const ModelConfig& c);

// a.q, a.k, a.v = projections of x   x: [n, n_embd]
void project_qkv(const Attention& w, const float* x, int n, Activations& a, ThreadPool& pool);

// Rotates x [n, n_heads, head_dim] with RoPE, each segment's rows at their
// own positions (segment i's rows start at its pos0).
void rope_segments(const Rope& rope, float* x, std::span<const BatchSegment> segments, int n_heads, int head_dim,
                   std::vector<float>& cache);

// Stores each segment's rows of k [n, k_row] and v [n, v_row] in its own
// sequence of `memory` at its positions.
Status append_segments(Memory& memory, int layer, std::span<const BatchSegment> segments, const float* k,
                       size_t k_row, const float* v, size_t v_row);

// Per segment: stores its rows of a.k/a.v (already rotated) in its sequence
// of `memory` and attends with its rows of a.q (scale 1/sqrt(head_dim)) into
// a.att; then projects every row at once: a.proj = wo(a.att).
Status attend_and_project(const Attention& w, int layer, std::span<const BatchSegment> segments,
                          const ModelConfig& c, Memory& memory, Activations& a, ThreadPool& pool);

struct SwiGluFfn {
  TensorView gate;  // ne {n_embd, n_ff}
  TensorView up;    // ne {n_embd, n_ff}
  TensorView down;  // ne {n_ff, n_embd}
};
SwiGluFfn load_swiglu(WeightLoader& w, int layer, const ModelConfig& c);

// What every llama-family model holds besides its layers: the GGUF file,
// tokenizer and config (in Model), head weights, RoPE, activations.
class TransformerModel : public Model {
 protected:
  TransformerModel(std::shared_ptr<const gguf::File> file, std::unique_ptr<Tokenizer> tokenizer, ModelConfig config);

 public:
  // Both check their arguments and run the architecture's run(): forward()
  // as a batch of one segment.
  Status forward(std::span<const TokenId> tokens, int64_t pos0, int seq, Memory& memory, float* logits,
                 bool all_logits, ThreadPool& pool) final;
  Status forward_batch(std::span<const TokenId> tokens, std::span<const BatchSegment> segments, Memory& memory,
                       float* logits, ThreadPool& pool) final;

  // Rotates whole key heads (head_dim) with rope_ (llama, qwen2, qwen3).
  KeyRotator key_rotator() const override;

 protected:
  // The architecture's forward pass over checked segments (check_batch_args):
  // tokens [sum of n], segment after segment. logits (may be null): the
  // last row of each segment [segments, n_vocab], or with all_logits (only
  // ever given one segment) every row [n, n_vocab].
  virtual Status run(std::span<const TokenId> tokens, std::span<const BatchSegment> segments, Memory& memory,
                     float* logits, bool all_logits, ThreadPool& pool) = 0;

  Head head_;
  Rope rope_;
  Activations act_;
  std::deque<std::vector<float>> owned_;  // norm weights / biases not stored as F32, dequantized
};

// Checks that `memory` can hold this model's keys and values and that every
// token id is in the vocabulary.
Status check_forward_args(const ModelConfig& c, std::span<const TokenId> tokens, const Memory& memory, int seq);
// The same for a batch, and that the segments tile `tokens` in order, each
// with n > 0, pos0 >= 0 and its own sequence (no sequence twice). Errors
// name the segment at fault.
Status check_batch_args(const ModelConfig& c, std::span<const TokenId> tokens, std::span<const BatchSegment> segments,
                        const Memory& memory);

// Matrix i of a 3-D tensor (one expert of ne {n_in, n_out, n_expert}, one
// head of attn_k_b): ne {ne0, ne1}, pointing into t's data.
TensorView slice_matrix(const TensorView& t, int64_t i);
// Rows [row0, row0 + n_rows) of a matrix (the gate or up half of a fused
// gate_up tensor): ne {ne0, n_rows}.
TensorView row_range(const TensorView& m, int64_t row0, int64_t n_rows);

// x[t] = token_embd row tokens[t]   x: [n, n_embd]
void embed(const Head& head, std::span<const TokenId> tokens, float* x, int n_embd);

// out[t] = RMSNorm(x[t]) * w for n rows of `dim`; rows split across the pool.
void rms_norm_rows(const float* x, const float* w, float* out, int n, int dim, float eps, ThreadPool& pool);
// Same, in place (x == out is not promised by kernels::rms_norm): per-head
// Q/K norms. x: [n, dim].
void rms_norm_rows_in_place(float* x, const float* w, int n, int dim, float eps);
// x[t] += b for n rows of `dim`.
void add_bias_rows(float* x, const float* b, int n, int dim);
// x += y elementwise over `count` values.
void add_in_place(float* x, const float* y, size_t count);

// out = down(silu(gate(x)) * up(x))   x, out: [n, n_embd]; gate/up scratch [n, n_ff].
void swiglu_ffn(const SwiGluFfn& f, const float* x, float* out, int n, const ModelConfig& c, Activations& a,
                ThreadPool& pool);

// logits = output(RMSNorm(x) * output_norm) for every row (all_logits) or
// for the last row of each segment; nothing when logits is null.
// x: [n, n_embd]; logits: [n or segments, n_vocab]. Uses a.xb as scratch.
void output_logits(const Head& head, const ModelConfig& c, const float* x, std::span<const BatchSegment> segments,
                   bool all_logits, float* logits, Activations& a, ThreadPool& pool);

// Rows in all segments together.
int total_rows(std::span<const BatchSegment> segments);

}  // namespace engram::transformer
