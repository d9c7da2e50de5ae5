// The attention memory interface. The model never touches stored keys and
// values directly: it appends the new positions' K/V and asks for attention
// output. The dense KV cache is one implementation; the window baseline and
// Engram memory (blocks + summaries + retrieval) are others.
//
// Keys are stored after RoPE. All buffers are float32, row-major.
#pragma once

#include <cstdint>
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
  // Bytes of RAM held for keys, values and bookkeeping.
  virtual size_t bytes_used() const = 0;

 protected:
  explicit Memory(MemoryLayout layout) : layout_(layout) {}
  MemoryLayout layout_;
};

// The exact baseline: every key and value kept in float32.
std::unique_ptr<Memory> make_dense_memory(const MemoryLayout& layout);

}  // namespace engram
