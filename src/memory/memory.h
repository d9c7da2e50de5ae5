// The attention memory interface. The model never touches stored keys and
// values directly: it appends the new positions' K/V and asks for attention
// output. The dense KV cache is one implementation; the window baseline and
// Engram memory (blocks + summaries + retrieval) are others.
//
// Keys are stored after RoPE. All buffers are float32, row-major.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "util/status.h"
#include "util/thread_pool.h"

namespace engram {

struct MemoryLayout {
  int n_layer = 0;
  int n_kv_head = 0;   // key/value heads (GQA groups)
  int k_dim = 0;       // per-head key size
  int v_dim = 0;       // per-head value size
  int64_t n_ctx = 0;   // positions per sequence the memory must hold
  int n_seq = 1;       // independent sequences
  // MLA (deepseek2): a position's value is the first v_dim entries of its
  // key row (v_dim <= k_dim), so memories store the keys only and append()
  // ignores v (it may be null): the latent [c, k_pe] is stored once, not
  // with c again as the value.
  bool values_in_keys = false;
};

class Memory {
 public:
  virtual ~Memory() = default;

  const MemoryLayout& layout() const { return layout_; }

  // Stores K/V for positions pos0 .. pos0+n-1 of sequence `seq` in `layer`.
  // k: [n, n_kv_head, k_dim]   v: [n, n_kv_head, v_dim]
  // Error when the positions exceed the capacity (names the limit).
  virtual Status append(int layer, int seq, int64_t pos0, int n, const float* k, const float* v) = 0;

  // Causal attention of n queries at positions pos0 .. pos0+n-1 against
  // everything stored for `seq` in `layer` up to each query's own position.
  // q: [n, n_head, k_dim]  out: [n, n_head, v_dim]; query head h reads kv
  // head h / (n_head / n_kv_head). Scores are scaled by `scale`.
  virtual void attend(int layer, int seq, int64_t pos0, int n, int n_head, const float* q, float* out,
                      float scale, ThreadPool& pool) = 0;

  // Forgets positions [p0, p1) of a sequence (p1 < 0: to the end).
  virtual void remove(int seq, int64_t p0, int64_t p1) = 0;
  // Makes dst_seq a copy of src_seq (prefix sharing).
  virtual Status copy(int src_seq, int dst_seq) = 0;
  // Number of positions stored for a sequence.
  virtual int64_t n_positions(int seq) const = 0;

  virtual Status save(const std::string& path) const = 0;
  virtual Status load(const std::string& path) = 0;

  // One sequence alone (the server's prefix cache on disk): save_seq writes
  // positions [0, n) of `seq` (n < 0: all it holds) to `path`; load_seq
  // replaces whatever `seq` held by such a file's positions. A file fits any
  // memory of the same kind and layout (n_layer, n_kv_head, k_dim, v_dim, values_in_keys),
  // whatever its n_seq. The default: not supported (an error naming why).
  virtual Status save_seq(int seq, const std::string& path, int64_t n = -1) const {
    return make_error(path, ": saving one sequence (", std::to_string(seq), ", ", std::to_string(n),
                      " positions) is not supported by this memory (only by the dense memory)");
  }
  virtual Status load_seq(int seq, const std::string& path) {
    return make_error(path, ": loading one sequence (", std::to_string(seq),
                      ") is not supported by this memory (only by the dense memory)");
  }
  // Bytes of RAM held for keys, values and bookkeeping.
  virtual size_t bytes_used() const = 0;

  // How many positions at the end of a prompt should be run one at a time
  // (Session::decode). A memory that retrieves once per query chunk (engram)
  // picks blocks for the chunk's mean query; the last prompt tokens - the
  // question after a long document - need retrieval by their own queries.
  virtual int exact_tail() const { return 0; }

  // Whether the coming attends are generation steps (one sampled token
  // each, Session::decode of a single token) rather than a prompt. A memory
  // may reuse work between generation steps (engram: rescan_interval);
  // prompt tokens always retrieve afresh.
  virtual void set_generating(bool generating) { (void)generating; }

  // The first error a memory met where the interface has no way to return
  // one (attend: a block could not be read back from its spill file). The
  // memory stays usable; the failed attention wrote zeros, and append
  // returns this error too, so a forward pass fails at its next layer.
  virtual Status last_error() const { return Status::ok(); }

 protected:
  explicit Memory(MemoryLayout layout) : layout_(layout) {}
  MemoryLayout layout_;
};

// How Engram memory stores the blocks it retrieves from, and the dense
// memory its keys and values (F32 or F16).
enum class BlockCompression { F32, F16, INT8 };

// The baseline: every key and value kept, as float32 (F32: exact, what the
// golden tests compare with llama.cpp's f32 KV logits) or IEEE half (F16:
// half the bytes, llama.cpp's default KV type, and what make_memory("dense")
// builds unless asked otherwise). make_memory rejects INT8 for dense; here
// anything but F32 means F16.
std::unique_ptr<Memory> make_dense_memory(const MemoryLayout& layout,
                                          BlockCompression storage = BlockCompression::F32);
// "f32" | "fp16" (also "f16") | "int8"; error names the value.
Expected<BlockCompression> parse_block_compression(const std::string& name);
const char* block_compression_name(BlockCompression c);

// Moves n_rows keys of one KV head, rotated by RoPE at their positions, to
// positions + delta: keys [n_rows, k_dim], in place. RoPE angles are linear
// in the position, so this is a rotation by delta (Model::key_rotator()).
// Called from several threads at once.
using KeyRotator = std::function<void(float* keys, int n_rows, int64_t delta)>;

// Options of the window and Engram memories (window uses sinks and window).
struct EngramMemoryOptions {
  int sinks = 64;              // first positions, always attended exactly
  int window = 4096;           // most recent positions, always attended exactly
  int block_size = 128;        // positions per retrievable block (engram)
  int top_k = 32;              // blocks attended per layer, KV head and query chunk
  // More blocks per KV head for a single query (the prompt's exact tail,
  // generation): the best blocks of the layer's other KV heads
  // (EngramMemory::add_shared_blocks). Measured on engram's model: a fact's
  // block ranked first by one head but outscored by chance matches in
  // another head's ranking is recalled once every head attends it.
  int shared_blocks = 8;
  BlockCompression compression = BlockCompression::F16;
  // RAM cap (bytes) for the whole memory; blocks beyond it live in a spill
  // file and come back through an LRU cache. 0: no cap, nothing spills.
  size_t memory_budget_bytes = 0;
  std::string spill_path;      // spill file; "": a fresh file in the temp dir
  // Block scoring for a prefill chunk: false scores with the chunk's mean
  // query (cheap, InfLLM-style), true with every query (max over them).
  bool score_every_query = false;
  // How a single query scores blocks (decode, the exact prompt tail). 1: by
  // the max q.k over the block's keys, kept in RAM in int8 (1 + 4 / k_dim
  // bytes per key value, key_index.h). > 1: by the best min/max
  // bound over sub-blocks of that many keys (2 * k_dim floats per sub-block;
  // >= block_size: one bound per block, the least RAM and the least recall).
  int summary_rows = 1;
  // With the key index (summary_rows == 1): 0 scores every block exactly;
  // N > 0 first ranks blocks by their min/max bound and scores only the N
  // best exactly (decode cost independent of the context beyond one pass
  // over the bounds, at the risk of missing a block whose bound ranks low).
  int index_candidates = 0;
  // Generation steps (Memory::set_generating) share the key index's work:
  // a single prompt query (the exact tail) and every rescan_interval-th
  // generation step score every block exactly and keep the rescan_keep best
  // per KV head; the generation steps between score exactly only those and
  // the blocks formed since. The tokens of one answer attend much the same
  // blocks as the question's last token, and the kept set is far larger
  // than top_k. Decode cost per token becomes (full scan) / rescan_interval
  // + rescan_keep blocks. 0 or 1: every query scans every block. Defaults 64
  // and 128 (measured: same recall at 32K, 64K and 1M; generation at 1M
  // 2.2 ms per token against 59.6 with a full scan every step).
  // (Measured: reusing a scan across the prompt's own tokens loses the
  // needle; the question's later tokens retrieve what its first do not.)
  int rescan_interval = 64;
  int rescan_keep = 128;
  // Prompt tokens at the end of each Session::decode call that run one at a
  // time, each retrieving its own blocks (Memory::exact_tail).
  int exact_tail = 32;
  // Position remapping (engram_memory.h): when set, sinks and retrieved
  // blocks are rotated at attend time to sit just before the tail, so no
  // attended key is further from a query than sinks + top_k * block_size +
  // window (+ the chunk). Empty: keys keep their original positions.
  // Whatever it captures (the model) must outlive the memory.
  KeyRotator rotate_keys;
  // With remapping, at a single query (decode, the exact prompt tail) the
  // sinks and selected blocks end this many positions before the tail
  // instead of right at it: fit_memory_options gives the prompt chunk's
  // room (chunk - 1), so a question's tokens see them at the distances the
  // last query of a full prompt chunk sees. Measured on engram's model
  // (docs/benchmarks.md, session 13): it recalls a needle in the document's
  // last verse that 0 missed, loses another at the start, and over every
  // trial measured both ways the two are level (145 vs 147 of 152).
  int single_query_gap = 0;
};

// Which EngramMemoryOptions fields the user chose (the rest may be fitted).
struct ExplicitMemoryOptions {
  bool sinks = false, window = false, block_size = false, top_k = false, shared_blocks = false, single_query_gap = false;
};

// The longest distance (in positions, remapped) between a query and a key it
// attends: sinks + top_k + shared_blocks blocks + the tail (window + a block being filled +
// the query chunk of n_batch positions, or a single query behind the
// single_query_gap).
int64_t attended_span(const EngramMemoryOptions& options, int n_batch);

// Options whose attended_span fits a model's training context n_ctx_train,
// so that a model trained at short context stays in distribution at any
// context length (with remapping). Fields marked explicit are kept as given;
// the others shrink from their defaults in proportion. n_ctx_train <= 0 or
// large enough for the defaults: `options` unchanged.
EngramMemoryOptions fit_memory_options(EngramMemoryOptions options, const ExplicitMemoryOptions& explicit_fields,
                                       int64_t n_ctx_train, int n_batch);

// The prompt chunk to use with fitted options: n_batch, but at most a
// quarter of the training context (a chunk's queries see the whole chunk).
int fit_prompt_batch(int n_batch, int64_t n_ctx_train);

// StreamingLLM: the first `sinks` and the last `window` positions (per query).
std::unique_ptr<Memory> make_window_memory(const MemoryLayout& layout, const EngramMemoryOptions& options);
// Sinks + window exactly, older positions as compressed blocks retrieved top-k.
std::unique_ptr<Memory> make_engram_memory(const MemoryLayout& layout, const EngramMemoryOptions& options);

// kind: "dense" | "window" | "engram"; error names an unknown kind.
Expected<std::unique_ptr<Memory>> make_memory(const std::string& kind, const MemoryLayout& layout,
                                              const EngramMemoryOptions& options);

}  // namespace engram
