// Engram memory's key index: every block's keys, int8, kept in RAM so that a
// single query (a decode step, the exact prompt tail) can score a block by
// its largest exact q.k instead of a bound. Like DeepSeek V3.2's lightning
// indexer it is a cheaper copy of the keys used only to choose what to
// attend; attention itself reads the blocks from the BlockStore.
//
// One entry per (block, KV head): the block's block_size keys of k_dim values
//   scales  f32  [block_size]          per key: max |k| / 127
//   values  i8   [k_dim][block_size]   column-major (kernels::max_dot_i8_cols)
// 1 + 4 / k_dim bytes per key value, against 2 for fp16: at 1M tokens
// engram's model (4 layers x 4 heads x 32) needs 576 MB instead of 1 GiB.
// Rounding moves a score by at most sum_d |q_d| * scale / 2, about 1% of a
// strong match: enough to rank blocks.
//
// Entries live in fixed-size chunks, so growing to a million tokens never
// copies the index or reserves twice its size (a std::vector would).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace engram {

class KeyIndex {
 public:
  KeyIndex(int block_size, int k_dim);
  KeyIndex() : KeyIndex(1, 0) {}  // empty; assigned a real shape before use
  // Copies hold their own entries (Engram memory copies a sequence's cells).
  KeyIndex(const KeyIndex& other);
  KeyIndex& operator=(const KeyIndex& other);
  KeyIndex(KeyIndex&&) noexcept = default;
  KeyIndex& operator=(KeyIndex&&) noexcept = default;

  // Appends one entry: keys [block_size, k_dim], row-major floats.
  void append(const float* keys);
  // Keeps the first n entries.
  void truncate(size_t n);
  size_t size() const { return n_entries_; }

  // max over the entry's keys of q . k (q: k_dim floats).
  float max_dot(size_t entry, const float* q) const;

  // Raw bytes of one entry (entry_bytes()), for saving and loading.
  size_t entry_bytes() const { return entry_bytes_; }
  const uint8_t* entry_data(size_t entry) const;
  void append_raw(const uint8_t* bytes);

  // RAM held, including the unused end of the last chunk.
  size_t bytes() const;

  // Row-wise symmetric int8 rounding used by append, for tests: the value a
  // key element x of a row whose largest magnitude is row_max is scored as.
  static float rounded(float x, float row_max);

 private:
  uint8_t* slot(size_t entry);

  int block_size_, k_dim_;
  size_t entry_bytes_;
  size_t n_entries_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> chunks_;  // kEntriesPerChunk entries each
};

}  // namespace engram
