// A loaded model: hyperparameters from GGUF keys, weights as views into the
// mapped file, and a forward pass. One file per architecture (llama.cpp,
// qwen2.cpp, qwen3.cpp, ...) implements `Model`; load() picks it from
// general.architecture.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "memory/memory.h"
#include "tokenizer/tokenizer.h"
#include "util/status.h"
#include "util/thread_pool.h"

namespace engram {

enum class RopeScaling { NONE, LINEAR, YARN };

struct RopeConfig {
  int n_dims = 0;            // rotated dimensions per head (rope.dimension_count)
  bool neox = false;         // NeoX pairs (i, i + n_dims/2) instead of adjacent (2i, 2i+1)
  float freq_base = 10000.f;
  float freq_scale = 1.f;    // 1 / scaling factor
  RopeScaling scaling = RopeScaling::NONE;
  int64_t n_ctx_orig = 0;    // rope.scaling.original_context_length (YaRN)
  float yarn_ext_factor = 0.f, yarn_attn_factor = 1.f, yarn_beta_fast = 32.f, yarn_beta_slow = 1.f;
};

struct ModelConfig {
  std::string arch;          // general.architecture
  std::string name;          // general.name
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;          // key/query head size
  int head_dim_v = 0;        // value head size
  int n_ff = 0;
  int64_t n_ctx_train = 0;
  float norm_eps = 1e-5f;
  RopeConfig rope;
};

// One sequence's consecutive tokens inside a batched forward call.
struct BatchSegment {
  int seq = 0;        // memory sequence the tokens belong to
  int64_t pos0 = 0;   // position of the segment's first token in that sequence
  int n = 0;          // number of tokens (they follow the previous segment's in the token array)
};

class Model {
 public:
  virtual ~Model() = default;

  // Loads the model in `path`: maps it, reads hyperparameters, checks every
  // tensor's presence, type and shape. Errors name the file and the key or
  // tensor at fault ("unsupported architecture 'mamba'"). `mode` says how the
  // weights are brought into memory (LoadMode: auto copies large models into
  // huge pages when RAM allows).
  static Expected<std::unique_ptr<Model>> load(const std::string& path, LoadMode mode = LoadMode::kAuto);

  const ModelConfig& config() const { return config_; }
  const gguf::File& file() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

  // What the attention memory must hold for n_ctx positions.
  virtual MemoryLayout memory_layout(int64_t n_ctx, int n_seq = 1) const;

  // Runs tokens at positions pos0 .. pos0+n-1 of sequence `seq`, appending
  // their K/V to `memory`. Writes logits [n, n_vocab] when all_logits, else
  // only the last token's [n_vocab]. Scratch buffers live in the model's
  // per-call arena sized by n; nothing is global.
  virtual Status forward(std::span<const TokenId> tokens, int64_t pos0, int seq, Memory& memory,
                         float* logits, bool all_logits, ThreadPool& pool) = 0;

  // Runs several sequences in one pass (continuous batching in the server):
  // tokens [sum of segment n] laid out segment after segment, each segment
  // with n >= 1 and a sequence no other segment of the call uses. Every
  // segment's K/V is appended to its own sequence of `memory`; the weights
  // are read once for all rows. logits: [segments.size(), n_vocab], the
  // last token's logits of each segment. The result equals forward() run
  // on each segment alone. The default runs the segments one by one;
  // architectures override it with one batched pass.
  virtual Status forward_batch(std::span<const TokenId> tokens, std::span<const BatchSegment> segments,
                               Memory& memory, float* logits, ThreadPool& pool);

  // Moves stored keys (rotated at their positions) to other positions, for
  // memories that remap positions (EngramMemoryOptions::rotate_keys). Keys
  // are rows of one KV head: [n_rows, memory_layout().k_dim]. Empty when the
  // architecture does not support it (keys then keep their positions). The
  // function refers to this model, which must outlive its users.
  virtual KeyRotator key_rotator() const { return {}; }

  // ---- Multi-token prediction (next-n layers, DeepSeek-V3 style) ----------
  // Extra blocks a file may carry after its main layers: from the main
  // model's final hidden state at position i and the token at i + 1, one
  // block predicts the token at i + 2 (a draft for speculative decoding).
  // The main forward never runs them. None by default.
  virtual int mtp_layers() const { return 0; }
  // When on, forward() keeps the final hidden state of every row of its
  // last call (after the output norm: what the next-n block reads),
  // returned by last_hidden() as [n, n_embd]; empty when off.
  virtual void keep_hidden(bool on) { (void)on; }
  virtual std::span<const float> last_hidden() const { return {}; }
  // What the next-n block's own attention memory must hold (one layer).
  MemoryLayout mtp_memory_layout(int64_t n_ctx) const {
    MemoryLayout m = memory_layout(n_ctx);
    m.n_layer = mtp_layers();
    return m;
  }
  // Runs the first next-n block on n rows at positions pos0 .. pos0+n-1:
  // hidden [n, n_embd] (last_hidden() rows, or this block's own output when
  // chaining drafts) and next [n] (the token after each row). Appends to
  // `memory` (mtp_memory_layout); writes logits [n_vocab] of the last row
  // and the block's output hidden states [n, n_embd] (for chaining).
  virtual Status mtp_forward(std::span<const float> hidden, std::span<const TokenId> next, int64_t pos0,
                             Memory& memory, float* logits, float* hidden_out, ThreadPool& pool) {
    (void)hidden, (void)next, (void)pos0, (void)memory, (void)logits, (void)hidden_out, (void)pool;
    return make_error("model '", config_.arch, "' has no next-n (MTP) layers");
  }

  // Bytes of weights and of memory per context position (for `engram info`).
  uint64_t weight_bytes() const;
  uint64_t parameter_count() const;
  // Parameters one token's forward pass reads: all of them, except in a
  // mixture of experts, where only the experts a token routes to count.
  virtual uint64_t active_parameter_count() const { return parameter_count(); }
  // Bytes the memory stores per position (float32, all layers): keys, and
  // values unless they live in the keys (memory_layout().values_in_keys).
  size_t kv_bytes_per_token() const;
  // What plain multi-head attention of the same width would store per
  // position: n_layer x n_head x (key + value head size), float32. MLA
  // (deepseek2) overrides it with its per-head key and value sizes.
  virtual size_t full_kv_bytes_per_token() const;

 protected:
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig config_;
};

}  // namespace engram
