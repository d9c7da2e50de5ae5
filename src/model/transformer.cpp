#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "quant/quant.h"

namespace engram::transformer {
namespace {

std::string shape_string(const int64_t* ne, int n_dims) {
  std::string s = "[";
  for (int i = 0; i < n_dims; ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Reads an integer hyperparameter into an int, with a range check.
Status read_int(const gguf::File& f, const std::string& key, int& out, std::optional<int64_t> fallback, int64_t min) {
  Expected<int64_t> v = fallback ? f.get_int_or(key, *fallback) : f.get_int(key);
  if (!v) return v.error();
  if (*v < min || *v > (int64_t{1} << 30))
    return make_error(f.path(), ": metadata key '", key, "' = ", std::to_string(*v), " is out of range");
  out = static_cast<int>(*v);
  return Status::ok();
}

Status read_float(const gguf::File& f, const std::string& key, float& out, double fallback) {
  Expected<double> v = f.get_float_or(key, fallback);
  if (!v) return v.error();
  out = static_cast<float>(*v);
  return Status::ok();
}

// Scaling type, factor and YaRN parameters, as llama.cpp's context setup
// turns them into ggml_rope_ext arguments.
Status read_rope_scaling(const gguf::File& f, const std::string& a, ModelConfig& c) {
  RopeConfig& r = c.rope;
  std::string type = "none";
  if (f.has(a + ".rope.scaling.type")) {
    Expected<std::string> t = f.get_string(a + ".rope.scaling.type");
    if (!t) return t.error();
    type = *t;
  }
  float factor = 0.f;
  ENGRAM_RETURN_IF_ERROR(read_float(f, a + ".rope.scaling.factor", factor, 0.0));
  if (factor == 0.f) ENGRAM_RETURN_IF_ERROR(read_float(f, a + ".rope.scale_linear", factor, 0.0));
  if (!f.has(a + ".rope.scaling.type") && factor != 0.f && factor != 1.f) type = "linear";

  if (type == "none") {
    r.scaling = RopeScaling::NONE;
  } else if (type == "linear") {
    r.scaling = RopeScaling::LINEAR;
  } else if (type == "yarn") {
    r.scaling = RopeScaling::YARN;
  } else {
    return make_error(f.path(), ": unsupported RoPE scaling type '", type, "' (key ", a,
                      ".rope.scaling.type; supported: none, linear, yarn)");
  }
  r.freq_scale = (r.scaling == RopeScaling::NONE || factor == 0.f) ? 1.f : 1.f / factor;

  int64_t n_ctx_orig = 0;
  {
    Expected<int64_t> v = f.get_int_or(a + ".rope.scaling.original_context_length", c.n_ctx_train);
    if (!v) return v.error();
    n_ctx_orig = *v;
  }
  r.n_ctx_orig = n_ctx_orig;

  float attn_factor = 1.f, log_mul = 0.f;
  ENGRAM_RETURN_IF_ERROR(read_float(f, a + ".rope.scaling.attn_factor", attn_factor, 1.0));
  ENGRAM_RETURN_IF_ERROR(read_float(f, a + ".rope.scaling.yarn_log_multiplier", log_mul, 0.0));
  r.yarn_ext_factor = r.scaling == RopeScaling::YARN ? 1.f : 0.f;
  r.yarn_attn_factor = 1.f;
  if (r.yarn_ext_factor != 0.f) {
    // Magnitude correction: ggml multiplies cos/sin by (1 + 0.1 ln(factor))
    // itself, so the factor passed in divides that out again and keeps only
    // the model's own mscale (llama.cpp llama_context constructor).
    auto mscale = [](float scale, float m) { return scale <= 1.f ? 1.f : 0.1f * m * std::log(scale) + 1.f; };
    const float scale = 1.f / r.freq_scale;
    if (log_mul != 0.f) {
      const float m = c.arch == "deepseek2" && log_mul != 1.f ? log_mul : 1.f;
      r.yarn_attn_factor = mscale(scale, m) / mscale(scale, log_mul);
    } else {
      r.yarn_attn_factor = mscale(scale, 1.f);
    }
    r.yarn_attn_factor *= 1.f / (1.f + 0.1f * std::log(scale));
  }
  r.yarn_attn_factor *= attn_factor;
  return Status::ok();
}

}  // namespace

Expected<ModelConfig> read_config(const gguf::File& f) {
  ModelConfig c;
  {
    Expected<std::string> arch = f.get_string("general.architecture");
    if (!arch) return arch.error();
    c.arch = *arch;
  }
  if (f.has("general.name")) {
    Expected<std::string> name = f.get_string("general.name");
    if (name) c.name = *name;
  }
  const std::string& a = c.arch;
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".embedding_length", c.n_embd, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".block_count", c.n_layer, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".feed_forward_length", c.n_ff, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".attention.head_count", c.n_head, std::nullopt, 1));
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".attention.head_count_kv", c.n_head_kv, c.n_head, 1));
  if (c.n_embd % c.n_head != 0 && !(f.has(a + ".attention.key_length") && f.has(a + ".attention.value_length")))
    return make_error(f.path(), ": embedding_length ", std::to_string(c.n_embd), " is not a multiple of head_count ",
                      std::to_string(c.n_head), " and no attention.key_length/value_length is given");
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".attention.key_length", c.head_dim, c.n_embd / c.n_head, 1));
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".attention.value_length", c.head_dim_v, c.n_embd / c.n_head, 1));
  if (c.n_head % c.n_head_kv != 0)
    return make_error(f.path(), ": attention.head_count ", std::to_string(c.n_head),
                      " is not a multiple of attention.head_count_kv ", std::to_string(c.n_head_kv));
  ENGRAM_RETURN_IF_ERROR(read_float(f, a + ".attention.layer_norm_rms_epsilon", c.norm_eps, 1e-5));
  {
    Expected<int64_t> n_ctx = f.get_int(a + ".context_length");
    if (!n_ctx) return n_ctx.error();
    if (*n_ctx < 1) return make_error(f.path(), ": ", a, ".context_length must be positive");
    c.n_ctx_train = *n_ctx;
  }

  RopeConfig& r = c.rope;
  ENGRAM_RETURN_IF_ERROR(read_int(f, a + ".rope.dimension_count", r.n_dims, c.head_dim, 0));
  if (r.n_dims > c.head_dim || r.n_dims % 2 != 0)
    return make_error(f.path(), ": ", a, ".rope.dimension_count ", std::to_string(r.n_dims),
                      " must be even and at most the head size ", std::to_string(c.head_dim));
  ENGRAM_RETURN_IF_ERROR(read_float(f, a + ".rope.freq_base", r.freq_base, 10000.0));
  ENGRAM_RETURN_IF_ERROR(read_rope_scaling(f, a, c));
  return c;
}

std::string blk(int layer, const char* name) { return "blk." + std::to_string(layer) + "." + name; }

TensorView WeightLoader::require(const std::string& name, std::initializer_list<int64_t> shape) {
  return lookup(name, shape, true);
}
TensorView WeightLoader::optional(const std::string& name, std::initializer_list<int64_t> shape) {
  return lookup(name, shape, false);
}
const float* WeightLoader::require_vector(const std::string& name, int64_t n, std::deque<std::vector<float>>& owner) {
  return lookup_vector(name, n, owner, true);
}
const float* WeightLoader::optional_vector(const std::string& name, int64_t n, std::deque<std::vector<float>>& owner) {
  return lookup_vector(name, n, owner, false);
}

TensorView WeightLoader::lookup(const std::string& name, std::initializer_list<int64_t> shape, bool required) {
  if (!status_.is_ok()) return {};
  const gguf::TensorInfo* t = file_.find_tensor(name);
  if (!t) {
    if (required) fail(make_error(file_.path(), ": missing tensor '", name, "'"));
    return {};
  }
  // Shapes compare with trailing 1s ignored ([256] == [256, 1]).
  std::array<int64_t, 4> want{1, 1, 1, 1};
  int i = 0;
  for (int64_t d : shape) want[static_cast<size_t>(i++)] = d;
  if (t->ne != want) {
    fail(make_error(file_.path(), ": tensor '", name, "' has shape ", shape_string(t->ne.data(), std::max(t->n_dims, 1)),
                    ", expected ", shape_string(want.data(), static_cast<int>(shape.size()))));
    return {};
  }
  if (!can_dequantize(t->type)) {
    fail(make_error(file_.path(), ": tensor '", name, "' has type ", std::string(type_traits(t->type).name),
                    ", which engram cannot compute with"));
    return {};
  }
  return file_.view(*t);
}

const float* WeightLoader::lookup_vector(const std::string& name, int64_t n, std::deque<std::vector<float>>& owner,
                                         bool required) {
  TensorView v = lookup(name, {n}, required);
  if (!v.data) return nullptr;
  if (v.type == GgmlType::F32) return static_cast<const float*>(v.data);
  std::vector<float>& out = owner.emplace_back(static_cast<size_t>(n));
  dequantize_row(v.type, v.data, out.data(), n);
  return out.data();
}

void Activations::resize(const ModelConfig& c, int n) {
  const size_t rows = static_cast<size_t>(n);
  x.resize(rows * c.n_embd);
  xb.resize(rows * c.n_embd);
  q.resize(rows * c.n_head * c.head_dim);
  k.resize(rows * c.n_head_kv * c.head_dim);
  v.resize(rows * c.n_head_kv * c.head_dim_v);
  att.resize(rows * c.n_head * c.head_dim_v);
  proj.resize(rows * c.n_embd);
  gate.resize(rows * c.n_ff);
  up.resize(rows * c.n_ff);
  hidden.resize(rows * c.n_ff);
}

Head load_head(WeightLoader& w, ModelConfig& c, std::deque<std::vector<float>>& owner) {
  Head h;
  // The vocabulary size is whatever token_embd holds.
  if (const gguf::TensorInfo* t = w.info("token_embd.weight")) c.n_vocab = static_cast<int>(t->ne[1]);
  h.token_embd = w.require("token_embd.weight", {c.n_embd, c.n_vocab});
  h.output_norm = w.require_vector("output_norm.weight", c.n_embd, owner);
  h.output = w.has("output.weight") ? w.require("output.weight", {c.n_embd, c.n_vocab}) : h.token_embd;
  return h;
}

Attention load_attention(WeightLoader& w, int l, const ModelConfig& c) {
  Attention a;
  a.wq = w.require(blk(l, "attn_q.weight"), {c.n_embd, int64_t{c.n_head} * c.head_dim});
  a.wk = w.require(blk(l, "attn_k.weight"), {c.n_embd, int64_t{c.n_head_kv} * c.head_dim});
  a.wv = w.require(blk(l, "attn_v.weight"), {c.n_embd, int64_t{c.n_head_kv} * c.head_dim_v});
  a.wo = w.require(blk(l, "attn_output.weight"), {int64_t{c.n_head} * c.head_dim_v, c.n_embd});
  return a;
}

void project_qkv(const Attention& w, const float* x, int n, Activations& a, ThreadPool& pool) {
  kernels::matmul(w.wq, x, a.q.data(), n, pool);  // [n, n_head * head_dim]
  kernels::matmul(w.wk, x, a.k.data(), n, pool);  // [n, n_head_kv * head_dim]
  kernels::matmul(w.wv, x, a.v.data(), n, pool);  // [n, n_head_kv * head_dim_v]
}

void rope_segments(const Rope& rope, float* x, std::span<const BatchSegment> segments, int n_heads, int head_dim,
                   std::vector<float>& cache) {
  const size_t row = static_cast<size_t>(n_heads) * head_dim;
  size_t first = 0;
  for (const BatchSegment& s : segments) {
    rope.apply(x + first * row, s.n, n_heads, head_dim, s.pos0, cache);
    first += static_cast<size_t>(s.n);
  }
}

Status append_segments(Memory& memory, int layer, std::span<const BatchSegment> segments, const float* k,
                       size_t k_row, const float* v, size_t v_row) {
  size_t first = 0;  // the segment's first row
  for (const BatchSegment& s : segments) {
    ENGRAM_RETURN_IF_ERROR(memory.append(layer, s.seq, s.pos0, s.n, k + first * k_row, v + first * v_row));
    first += static_cast<size_t>(s.n);
  }
  return Status::ok();
}

Status attend_and_project(const Attention& w, int layer, std::span<const BatchSegment> segments,
                          const ModelConfig& c, Memory& memory, Activations& a, ThreadPool& pool) {
  const size_t q_row = static_cast<size_t>(c.n_head) * c.head_dim;
  const size_t k_row = static_cast<size_t>(c.n_head_kv) * c.head_dim;
  const size_t v_row = static_cast<size_t>(c.n_head_kv) * c.head_dim_v;
  const size_t att_row = static_cast<size_t>(c.n_head) * c.head_dim_v;
  const float scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  ENGRAM_RETURN_IF_ERROR(append_segments(memory, layer, segments, a.k.data(), k_row, a.v.data(), v_row));
  size_t first = 0;  // the segment's first row
  for (const BatchSegment& s : segments) {
    memory.attend(layer, s.seq, s.pos0, s.n, c.n_head, a.q.data() + first * q_row, a.att.data() + first * att_row,
                  scale, pool);  // [s.n, n_head * head_dim_v]
    first += static_cast<size_t>(s.n);
  }
  kernels::matmul(w.wo, a.att.data(), a.proj.data(), static_cast<int>(first), pool);  // [n, n_embd]
  return Status::ok();
}

TransformerModel::TransformerModel(std::shared_ptr<const gguf::File> file, std::unique_ptr<Tokenizer> tokenizer,
                                   ModelConfig config) {
  file_ = std::move(file);
  tokenizer_ = std::move(tokenizer);
  config_ = std::move(config);
}

Status TransformerModel::forward(std::span<const TokenId> tokens, int64_t pos0, int seq, Memory& memory,
                                 float* logits, bool all_logits, ThreadPool& pool) {
  if (tokens.empty()) return check_forward_args(config_, tokens, memory, seq);
  const BatchSegment one{seq, pos0, static_cast<int>(tokens.size())};
  ENGRAM_RETURN_IF_ERROR(check_batch_args(config_, tokens, {&one, 1}, memory));
  return run(tokens, {&one, 1}, memory, logits, all_logits, pool);
}

Status TransformerModel::forward_batch(std::span<const TokenId> tokens, std::span<const BatchSegment> segments,
                                       Memory& memory, float* logits, ThreadPool& pool) {
  ENGRAM_RETURN_IF_ERROR(check_batch_args(config_, tokens, segments, memory));
  if (segments.empty()) return Status::ok();
  return run(tokens, segments, memory, logits, /*all_logits=*/false, pool);
}

KeyRotator TransformerModel::key_rotator() const {
  const Rope* rope = &rope_;
  const int head_dim = config_.head_dim;
  return [rope, head_dim](float* keys, int n_rows, int64_t delta) {
    std::vector<float> cache;  // per call: the memory calls this from several threads
    rope->rotate_by(keys, n_rows, head_dim, delta, cache);
  };
}

SwiGluFfn load_swiglu(WeightLoader& w, int l, const ModelConfig& c) {
  SwiGluFfn f;
  f.gate = w.require(blk(l, "ffn_gate.weight"), {c.n_embd, c.n_ff});
  f.up = w.require(blk(l, "ffn_up.weight"), {c.n_embd, c.n_ff});
  f.down = w.require(blk(l, "ffn_down.weight"), {c.n_ff, c.n_embd});
  return f;
}

Status check_forward_args(const ModelConfig& c, std::span<const TokenId> tokens, const Memory& memory, int seq) {
  const MemoryLayout& m = memory.layout();
  if (m.n_layer != c.n_layer || m.n_kv_head != c.n_head_kv || m.k_dim != c.head_dim || m.v_dim != c.head_dim_v)
    return make_error("memory layout (", std::to_string(m.n_layer), " layers, ", std::to_string(m.n_kv_head),
                      " kv heads, k ", std::to_string(m.k_dim), ", v ", std::to_string(m.v_dim),
                      ") does not match the model (", std::to_string(c.n_layer), ", ", std::to_string(c.n_head_kv),
                      ", ", std::to_string(c.head_dim), ", ", std::to_string(c.head_dim_v), ")");
  if (seq < 0 || seq >= m.n_seq)
    return make_error("sequence ", std::to_string(seq), " outside the memory's 0..", std::to_string(m.n_seq - 1));
  for (TokenId t : tokens)
    if (t < 0 || t >= c.n_vocab)
      return make_error("token id ", std::to_string(t), " is outside the vocabulary (", std::to_string(c.n_vocab),
                        " tokens)");
  return Status::ok();
}

Status check_batch_args(const ModelConfig& c, std::span<const TokenId> tokens, std::span<const BatchSegment> segments,
                        const Memory& memory) {
  ENGRAM_RETURN_IF_ERROR(check_forward_args(c, tokens, memory, /*seq=*/0));  // layout and token ids
  const int n_seq = memory.layout().n_seq;
  std::vector<int> owner(static_cast<size_t>(std::max(n_seq, 0)), -1);  // seq -> segment using it
  size_t covered = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const BatchSegment& s = segments[i];
    const std::string which = "forward_batch: segment " + std::to_string(i);
    if (s.n <= 0) return make_error(which, " has ", std::to_string(s.n), " tokens (needs at least 1)");
    if (s.pos0 < 0) return make_error(which, " starts at negative position ", std::to_string(s.pos0));
    if (s.seq < 0 || s.seq >= n_seq)
      return make_error(which, ": sequence ", std::to_string(s.seq), " outside the memory's 0..",
                        std::to_string(n_seq - 1));
    int& first_user = owner[static_cast<size_t>(s.seq)];
    if (first_user >= 0)
      return make_error(which, ": sequence ", std::to_string(s.seq), " is already segment ",
                        std::to_string(first_user), "'s (one segment per sequence)");
    first_user = static_cast<int>(i);
    if (covered + static_cast<size_t>(s.n) > tokens.size())
      return make_error(which, " (", std::to_string(s.n), " tokens from token ", std::to_string(covered),
                        ") runs past the ", std::to_string(tokens.size()), " tokens given");
    covered += static_cast<size_t>(s.n);
  }
  if (covered != tokens.size())
    return make_error("forward_batch: segments cover ", std::to_string(covered), " of the ",
                      std::to_string(tokens.size()), " tokens given");
  return Status::ok();
}

int total_rows(std::span<const BatchSegment> segments) {
  int n = 0;
  for (const BatchSegment& s : segments) n += s.n;
  return n;
}

TensorView slice_matrix(const TensorView& t, int64_t i) {
  TensorView m = t;
  m.ne = {t.ne[0], t.ne[1], 1, 1};
  m.n_dims = 2;
  m.data = t.row(i * t.ne[1]);
  return m;
}

TensorView row_range(const TensorView& m, int64_t row0, int64_t n_rows) {
  TensorView r = m;
  r.ne = {m.ne[0], n_rows, 1, 1};
  r.n_dims = 2;
  r.data = m.row(row0);
  return r;
}

void embed(const Head& head, std::span<const TokenId> tokens, float* x, int n_embd) {
  for (size_t t = 0; t < tokens.size(); ++t) kernels::get_row(head.token_embd, tokens[t], x + t * n_embd);
}

void rms_norm_rows(const float* x, const float* w, float* out, int n, int dim, float eps, ThreadPool& pool) {
  auto rows = [&](size_t begin, size_t end, int) {
    for (size_t t = begin; t < end; ++t) kernels::rms_norm(x + t * dim, w, out + t * dim, static_cast<size_t>(dim), eps);
  };
  // Splitting only pays off for batches; single rows stay on this thread.
  if (n >= 8) pool.parallel_for(static_cast<size_t>(n), rows);
  else rows(0, static_cast<size_t>(n), 0);
}

void rms_norm_rows_in_place(float* x, const float* w, int n, int dim, float eps) {
  for (int t = 0; t < n; ++t) {
    float* row = x + static_cast<size_t>(t) * dim;
    double sum = 0;  // accumulated in double, as ggml does
    for (int i = 0; i < dim; ++i) sum += static_cast<double>(row[i]) * row[i];
    const float scale = 1.f / std::sqrt(static_cast<float>(sum / dim) + eps);
    for (int i = 0; i < dim; ++i) row[i] = row[i] * scale * w[i];
  }
}

void add_bias_rows(float* x, const float* b, int n, int dim) {
  for (int t = 0; t < n; ++t) kernels::axpy(1.f, b, x + static_cast<size_t>(t) * dim, static_cast<size_t>(dim));
}

// axpy is the in-place add (y += 1 * x is exact).
void add_in_place(float* x, const float* y, size_t count) { kernels::axpy(1.f, y, x, count); }

void swiglu_ffn(const SwiGluFfn& f, const float* x, float* out, int n, const ModelConfig& c, Activations& a,
                ThreadPool& pool) {
  kernels::matmul(f.gate, x, a.gate.data(), n, pool);  // [n, n_ff]
  kernels::matmul(f.up, x, a.up.data(), n, pool);      // [n, n_ff]
  kernels::silu_mul(a.gate.data(), a.up.data(), a.hidden.data(), static_cast<size_t>(n) * c.n_ff);
  kernels::matmul(f.down, a.hidden.data(), out, n, pool);  // [n, n_embd]
}

void output_logits(const Head& head, const ModelConfig& c, const float* x, std::span<const BatchSegment> segments,
                   bool all_logits, float* logits, Activations& a, ThreadPool& pool) {
  if (!logits) return;  // a caller that only fills the memory (prompt prefix) wants none
  const size_t D = static_cast<size_t>(c.n_embd);
  if (all_logits) {
    const int n = total_rows(segments);
    rms_norm_rows(x, head.output_norm, a.xb.data(), n, c.n_embd, c.norm_eps, pool);
    kernels::matmul(head.output, a.xb.data(), logits, n, pool);  // [n, n_vocab]
    return;
  }
  // Only each segment's last row goes through the norm and the head.
  size_t end = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    end += static_cast<size_t>(segments[i].n);
    kernels::rms_norm(x + (end - 1) * D, head.output_norm, a.xb.data() + i * D, D, c.norm_eps);
  }
  kernels::matmul(head.output, a.xb.data(), logits, static_cast<int>(segments.size()), pool);  // [segments, n_vocab]
}

}  // namespace engram::transformer
