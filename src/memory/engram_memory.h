// Engram memory: sinks + a local window attended exactly, everything older
// kept as compressed blocks ("engrams") of which each query chunk attends
// only the top-k, chosen by cheap scores against per-block summaries.
//
// Per (layer, sequence) the positions are split into three parts:
//
//   [0, sinks)              sinks, float32, always attended
//   [sinks, tail_start)     blocks of block_size positions; per KV head a
//                           compressed unit in the BlockStore and a summary
//                           (min, max and mean key) in RAM
//   [tail_start, n_stored)  the tail, float32, always attended: at least the
//                           last `window` positions before the current chunk,
//                           plus the chunk itself (causal within it)
//
// Retrieval (per layer, per KV head): a block's score for a query q is the
// Quest upper bound  sum_d max(q_d * kmin_d, q_d * kmax_d)  >= q . k for
// every key k in the block. An upper bound is the right score for recall:
// a block holding one key that matches q strongly (a needle) scores at least
// that key's dot product, however ordinary its other 127 keys are, whereas
// a mean key (InfLLM-style representative) dilutes it 128-fold. The mean key
// is kept as well (EngramMemory::Scoring::MEAN) for comparison.
// A single query (decode, the exact prompt tail) scores each block by its
// largest q.k (options.summary_rows == 1, the default: the blocks' keys
// kept in RAM in int8 by a KeyIndex, like DeepSeek V3.2's lightning indexer
// keys), or by the best min/max bound of its sub-blocks of summary_rows keys
// (less RAM, less precise). One bound per 64-key block found the needle at
// 32K in 1 of 6 trials; the exact index in 18 of 18 (8K and 32K).
// With remapping, summaries are made of keys moved to position 0 and
// queries are moved to position 0 before scoring: the score is a match of
// content, the same at any distance. Scored at their real positions, a
// query 30K tokens after a needle meets RoPE angles a model trained at 2K
// never saw, and its selection is close to random (measured: the needle
// block was picked by the retrieval layer's heads far less often).
// The GQA query heads of a KV head share its selection: the score is the max
// over them. A prefill chunk shares one selection too: scored with the
// chunk's mean query per head (one pass over the summaries per chunk, the
// cost that makes 1M-token prefill feasible), or with every query when
// options.score_every_query is set.
//
// Attention then runs one online softmax (running max and sum) over sinks,
// the selected blocks and the tail, so the result is exactly softmax
// attention restricted to those positions.
//
// Positions: keys are stored after RoPE, so without remapping retrieved
// blocks and sinks keep their original positions; a query at 1M sees keys
// rotated by up to 1M - far outside what a model trained at 2K has seen.
// With options.rotate_keys set (the model's Model::key_rotator()), each
// attend lays the attended keys out contiguously in a virtual order
//
//   [sinks][selected blocks, original order][tail]
//
// ending at the queries' own positions: the tail keeps its real positions
// (it is contiguous up to the chunk), the selected blocks are moved to end
// where the tail begins, and the sinks to end where the first block begins.
// A single query leaves options.single_query_gap positions free between the
// blocks and the tail (as far back as a full chunk's last query sees them).
// A key moved from position p to p' is rotated by p' - p into per-call
// scratch (RoPE angles are linear in the position). The largest relative
// distance is then sinks + top_k * block_size + tail (at most window +
// block_size - 1 + the chunk), whatever the context length. When every
// block is selected nothing moves and the result equals dense attention.
// Window mode moves the sinks to end where the chunk's first query's window
// begins (its later queries see them up to the chunk length further away).
// Causality still uses original positions (sinks and blocks precede every
// query of the chunk). Retrieval scores the summaries of the original keys;
// remapped keys differ from them by a rotation, so the Quest bound is a
// heuristic there, not a bound.
//
// Latent values (MemoryLayout::values_in_keys, MLA): sinks, tail and block
// units hold the key rows only, and every segment reads its values from the
// first v_dim entries of the stored rows (stride k_dim), so compression of a
// unit covers keys and values at once. Remapping rotates a copy of the keys;
// the values are read from the rows as stored, never from the moved copy.
//
// The window mode (make_window_memory) is the same structure with no
// blocks: positions leaving the window are dropped, and each query attends
// the sinks plus its own last `window` positions (StreamingLLM).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "memory/block_store.h"
#include "memory/memory.h"

namespace engram {

// Quest bound of one query against one block's per-dimension key bounds.
float block_score_bound(const float* q, const float* kmin, const float* kmax, int k_dim);

// Indices of the top_k highest scores (all of them if fewer), best first;
// ties broken towards the lower index.
std::vector<int> top_k_indices(const std::vector<float>& scores, int top_k);

class EngramMemory final : public Memory {
 public:
  enum class Mode { ENGRAM, WINDOW };
  enum class Scoring { BOUND, MEAN };

  EngramMemory(const MemoryLayout& layout, const EngramMemoryOptions& options, Mode mode);
  ~EngramMemory() override;

  Status append(int layer, int seq, int64_t pos0, int n, const float* k, const float* v) override;
  void attend(int layer, int seq, int64_t pos0, int n, int n_head, const float* q, float* out, float scale,
              ThreadPool& pool) override;
  void remove(int seq, int64_t p0, int64_t p1) override;
  Status copy(int src_seq, int dst_seq) override;
  int64_t n_positions(int seq) const override;
  Status save(const std::string& path) const override;
  Status load(const std::string& path) override;
  size_t bytes_used() const override;
  int exact_tail() const override { return mode_ == Mode::ENGRAM ? options_.exact_tail : 0; }
  void set_generating(bool generating) override { generating_ = generating; }
  Status last_error() const override { return last_error_; }

  // Inspection (tests, benchmarks).
  const EngramMemoryOptions& options() const { return options_; }
  void set_scoring(Scoring s) { scoring_ = s; }
  // Blocks (indices from 0 = oldest) the last attend of `layer` selected for
  // KV head kv_head, ascending.
  const std::vector<int>& last_selection(int layer, int kv_head) const;
  int64_t n_blocks(int layer, int seq) const;
  const BlockStore* store() const { return store_.get(); }
  // RAM held by everything but the block store's resident units.
  size_t bytes_outside_store() const;

 private:
  struct Cell;
  struct Scratch;
  struct HeadRows;

  Cell& cell(int layer, int seq);
  const Cell& cell(int layer, int seq) const;
  Status check_layer_seq(int layer, int seq) const;
  size_t k_row() const;
  size_t v_row() const;
  void truncate(Cell& c, int64_t p0);
  Status evict_old(Cell& c, int64_t keep_from);
  Status make_block(Cell& c, int64_t row0);
  Cell fresh_cell() const;
  void release_cell(Cell& c);
  void update_capacity();
  void select_blocks(Cell& c, int layer, int64_t pos0, int64_t n_q, int n_head, const float* q,
                     ThreadPool& pool);
  std::vector<int> select_by_candidates(const Cell& c, int g, const float* qset, size_t n_vec,
                                       std::vector<float>& scores, ThreadPool& pool) const;
  std::vector<int> select_exact_among(const Cell& c, int g, const std::vector<int>& candidates, const float* qset,
                                     size_t n_vec, ThreadPool& pool) const;
  void add_shared_blocks(int kv_head, std::vector<int>& selection) const;
  std::vector<int> select_from_kept(const Cell& c, int g, const float* qset, size_t n_vec, int64_t nb,
                                   ThreadPool& pool) const;
  float score_block(const Cell& c, int64_t b, int g, const float* qset, size_t n_vec, bool exact, int n_sub) const;
  int n_sub_blocks() const;       // sub-block bounds per block summary
  bool exact_index() const;       // summary_rows == 1: blocks' keys kept in the int8 KeyIndex
  size_t summary_floats() const;  // floats per block summary of one KV head
  void prepare_head(const Cell& c, int layer, int kvh, int64_t pos0, int n, HeadRows& rows) const;
  void attend_item(const Cell& c, int kvh, int64_t pos0, int i0, int i1, int n_head, const float* q, float* out,
                   float scale, const HeadRows& rows, Scratch& s) const;
  void fail(Status st);

  EngramMemoryOptions options_;
  Mode mode_;
  Scoring scoring_ = Scoring::BOUND;
  BlockCodec codec_;
  std::unique_ptr<BlockStore> store_;  // null in window mode
  std::vector<Cell> cells_;            // [n_layer * n_seq]
  // Per-call state of attend (one attend runs at a time).
  std::vector<std::vector<int>> selection_;              // [n_layer * n_kv_head] selected blocks, by id
  std::vector<std::vector<int>> ranked_;                 // [n_kv_head] each head's own top_k, best first
  std::vector<std::vector<const uint8_t*>> sel_units_;   // [n_kv_head] pinned units of the selection
  std::vector<HeadRows> head_rows_;                      // [n_kv_head] sinks and blocks, decoded and moved
  std::vector<Scratch> scratch_;                         // [pool threads]
  Status last_error_;
  bool generating_ = false;  // set_generating: single queries may reuse the last full scan
};

}  // namespace engram
