// Engram memory (and, in window mode, the StreamingLLM baseline). The design
// is described in engram_memory.h.
#include "memory/engram_memory.h"

#include "memory/key_index.h"
#include "memory/online_softmax.h"
#include "quant/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>

#include "kernels/kernels.h"

namespace engram {

// ------------------------------------------------------------ small pieces

Expected<BlockCompression> parse_block_compression(const std::string& name) {
  if (name == "f32") return BlockCompression::F32;
  if (name == "fp16" || name == "f16") return BlockCompression::F16;
  if (name == "int8" || name == "q8") return BlockCompression::INT8;
  return make_error("unknown block compression '", name, "' (expected f32, fp16 or int8)");
}

const char* block_compression_name(BlockCompression c) {
  switch (c) {
    case BlockCompression::F32: return "f32";
    case BlockCompression::F16: return "fp16";
    case BlockCompression::INT8: return "int8";
  }
  return "?";
}

float block_score_bound(const float* q, const float* kmin, const float* kmax, int k_dim) {
  float s = 0.f;
  for (int d = 0; d < k_dim; ++d) s += std::max(q[d] * kmin[d], q[d] * kmax[d]);
  return s;
}

// One pass with a heap of the best top_k so far (its root the worst of
// them): at a million tokens a decode step ranks ~16K blocks per KV head,
// and almost every score fails the single comparison with the root.
std::vector<int> top_k_indices(const std::vector<float>& scores, int top_k) {
  const int n = static_cast<int>(scores.size());
  std::vector<int> idx;
  const auto better = [&](int a, int b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  if (top_k >= n) {
    idx.resize(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), better);
    return idx;
  }
  if (top_k <= 0) return idx;
  idx.resize(static_cast<size_t>(top_k));
  std::iota(idx.begin(), idx.end(), 0);
  std::make_heap(idx.begin(), idx.end(), better);
  for (int i = top_k; i < n; ++i) {
    if (!better(i, idx.front())) continue;
    std::pop_heap(idx.begin(), idx.end(), better);
    idx.back() = i;
    std::push_heap(idx.begin(), idx.end(), better);
  }
  std::sort(idx.begin(), idx.end(), better);
  return idx;
}

// ------------------------------------------------------------ state

// With layout.values_in_keys the *_v vectors stay empty and the units hold
// keys only: values are the first v_dim entries of the key rows.
struct EngramMemory::Cell {
  int64_t n_stored = 0;
  std::vector<float> sink_k, sink_v;  // [min(n_stored, sinks), n_kv_head, k_dim | v_dim]
  int64_t tail_start = 0;             // first tail position (>= sinks)
  std::vector<float> tail_k, tail_v;  // [n_stored - tail_start, n_kv_head, k_dim | v_dim]
  int64_t n_blocks = 0;               // blocks formed (window mode: dropped)
  std::vector<uint32_t> units;        // engram: [n_blocks, n_kv_head] block store ids
  // engram: [n_blocks, n_kv_head, summary_floats()]: min | max | mean key of
  // the block, then min | max of each sub-block of summary_rows keys (none
  // when summary_rows >= block_size). Keys moved to position 0 first when
  // remapping (make_block).
  std::vector<float> summary;
  // engram, summary_rows == 1: one entry per (block, KV head) [n_blocks,
  // n_kv_head], the block's keys in int8 (moved to position 0 when
  // remapping), for exact scoring of single queries. Always in RAM, like
  // the summaries.
  KeyIndex index;
  // options.rescan_interval: what the last full scan of the index kept, per
  // KV head [n_kv_head][<= rescan_keep] block ids, the blocks that existed
  // then, and the single queries served since (0: scan in full next).
  std::vector<std::vector<int>> kept;
  int64_t kept_blocks = 0;
  int scan_age = 0;

  int64_t n_sink() const { return std::min(n_stored, sinks); }
  int64_t sinks = 0;  // the options' sink count
};

// What one KV head attends besides its tail, prepared once per attend call
// (not once per query tile): the sink keys, moved when remapping, and the
// selected blocks decoded and moved. Rows point into the block units when
// they need neither decoding nor moving (f32, no remap).
struct EngramMemory::HeadRows {
  const float* sink_k = nullptr;    // [n_sink] rows of sink_k_stride floats
  size_t sink_k_stride = 0;
  std::vector<float> sink_rot;      // [sinks, k_dim] moved sink keys
  std::vector<const float*> block_k, block_v;  // [n_sel] -> [B, k_dim], [B, v_stride]
  size_t block_v_stride = 0;        // v_dim, or k_dim when values_in_keys (values = unmoved key rows)
  std::vector<int64_t> block_pos;   // [n_sel] original position of each block's first row
  std::vector<float> keys, vals;    // [n_sel, B, k_dim], [n_sel, B, v_stride] decoded/moved rows
  // The attended keys column-major, as add_rows reads them.
  std::vector<float> sink_t;        // [k_dim][n_sink]
  std::vector<float> block_t;       // [n_sel][k_dim][B]
  std::vector<float> tail_t;        // [k_dim][n_tail]
};

// Per-thread attention scratch.
struct EngramMemory::Scratch {
  std::vector<float> scores;        // [kRows]
  std::vector<float> max, sum;      // online softmax state per (query, head) of an item
  std::vector<float> acc;           // [.., v_dim] unnormalised outputs
};

namespace {

constexpr char kMagic[8] = {'E', 'N', 'G', 'R', 'A', 'M', 'E', 'M'};
// 2 added values_in_keys; 3 sub-block and position-normalised summaries
// (summary_rows, remapped); 4 the int8 key index: older files are refused
// (prefill again).
constexpr uint32_t kVersion = 4;
constexpr int kRows = 256;        // keys scored at a time per (query, head)
constexpr int kQueryTile = 8;     // queries per attention work item
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Online softmax update of one (query, head) with rows [lo, hi) of a
// segment whose keys are column-major (kT [k_dim][col_stride]): kRows keys
// at a time are scored, exponentiated and summed into acc by one kernel call
// each.
void add_rows(const float* q, const float* kT, size_t col_stride, const float* v, size_t v_stride, int64_t lo,
              int64_t hi, int k_dim, int v_dim, float scale, float* scores, float& run_max, float& run_sum,
              float* acc) {
  for (int64_t r0 = lo; r0 < hi; r0 += kRows) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(hi - r0, kRows));
    kernels::dot_cols(kT + r0, col_stride, n, static_cast<size_t>(k_dim), q, scale, scores);
    fold_chunk(scores, n, v + static_cast<size_t>(r0) * v_stride, v_stride, static_cast<size_t>(v_dim), run_max,
               run_sum, acc);
  }
}

// out [k_dim][n] = the n rows of k (k_stride apart) transposed.
void transpose_rows(const float* k, size_t k_stride, int64_t n, int k_dim, std::vector<float>& out) {
  out.resize(static_cast<size_t>(n) * k_dim);
  for (int64_t r = 0; r < n; ++r)
    for (int d = 0; d < k_dim; ++d) out[static_cast<size_t>(d) * n + r] = k[static_cast<size_t>(r) * k_stride + d];
}

class ByteReader {
 public:
  ByteReader(const std::vector<char>& bytes, const std::string& path) : bytes_(bytes), path_(path) {}
  template <class T>
  Status read(T& out, const char* what) { return read_bytes(&out, sizeof(T), what); }
  Status read_bytes(void* dst, size_t n, const char* what) {
    if (n > bytes_.size() - pos_)
      return make_error(path_, ": truncated engram memory file: ", what, " needs ", std::to_string(n),
                        " bytes at offset ", std::to_string(pos_), ", only ", std::to_string(bytes_.size() - pos_),
                        " left");
    if (n) std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return Status::ok();
  }
  template <class T>
  Status read_vec(std::vector<T>& v, size_t count, const char* what) {
    if (count > (bytes_.size() - pos_) / sizeof(T)) return read_bytes(nullptr, count * sizeof(T), what);
    v.resize(count);
    return read_bytes(v.data(), count * sizeof(T), what);
  }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  const std::vector<char>& bytes_;
  const std::string& path_;
  size_t pos_ = 0;
};

}  // namespace

// ------------------------------------------------------------ life cycle

EngramMemory::EngramMemory(const MemoryLayout& layout, const EngramMemoryOptions& options, Mode mode)
    : Memory(layout),
      options_(options),
      mode_(mode),
      codec_(options.compression, std::max(options.block_size, 1), std::max(layout.k_dim, 0),
             layout.values_in_keys ? 0 : std::max(layout.v_dim, 0)),  // values_in_keys: units hold keys only
      cells_(static_cast<size_t>(std::max(layout.n_layer, 0)) * static_cast<size_t>(std::max(layout.n_seq, 0))),
      selection_(static_cast<size_t>(std::max(layout.n_layer, 0)) * static_cast<size_t>(std::max(layout.n_kv_head, 0))) {
  options_.sinks = std::max(options_.sinks, 0);
  options_.window = std::max(options_.window, 0);
  options_.block_size = std::max(options_.block_size, 1);
  options_.top_k = std::max(options_.top_k, 0);
  options_.shared_blocks = std::max(options_.shared_blocks, 0);
  options_.single_query_gap = std::max(options_.single_query_gap, 0);  // a negative one would overlap the tail
  options_.summary_rows = std::clamp(options_.summary_rows, 1, options_.block_size);
  for (Cell& c : cells_) c = fresh_cell();
  if (mode_ == Mode::ENGRAM) {
    store_ = std::make_unique<BlockStore>(codec_.unit_bytes(), options_.spill_path);
    update_capacity();
  }
}

EngramMemory::~EngramMemory() = default;

EngramMemory::Cell& EngramMemory::cell(int layer, int seq) {
  return cells_[static_cast<size_t>(layer) * layout_.n_seq + seq];
}
const EngramMemory::Cell& EngramMemory::cell(int layer, int seq) const {
  return cells_[static_cast<size_t>(layer) * layout_.n_seq + seq];
}
size_t EngramMemory::k_row() const { return static_cast<size_t>(layout_.n_kv_head) * layout_.k_dim; }
// Value floats stored per position: none when the values live in the keys.
size_t EngramMemory::v_row() const {
  return layout_.values_in_keys ? 0 : static_cast<size_t>(layout_.n_kv_head) * layout_.v_dim;
}

Status EngramMemory::check_layer_seq(int layer, int seq) const {
  if (layer < 0 || layer >= layout_.n_layer)
    return make_error("engram memory: layer ", std::to_string(layer), " outside 0..", std::to_string(layout_.n_layer - 1));
  if (seq < 0 || seq >= layout_.n_seq)
    return make_error("engram memory: sequence ", std::to_string(seq), " outside 0..", std::to_string(layout_.n_seq - 1));
  return Status::ok();
}

void EngramMemory::fail(Status st) {
  if (!st.is_ok() && last_error_.is_ok()) last_error_ = std::move(st);
}

EngramMemory::Cell EngramMemory::fresh_cell() const {
  Cell c;
  c.tail_start = c.sinks = options_.sinks;
  c.index = KeyIndex(options_.block_size, layout_.k_dim);
  return c;
}

void EngramMemory::release_cell(Cell& c) {
  if (store_)
    for (uint32_t id : c.units) store_->release(id);
  c = fresh_cell();
}

size_t EngramMemory::bytes_outside_store() const {
  size_t bytes = sizeof(*this) + cells_.capacity() * sizeof(Cell);
  for (const Cell& c : cells_)
    bytes += (c.sink_k.capacity() + c.sink_v.capacity() + c.tail_k.capacity() + c.tail_v.capacity() +
              c.summary.capacity()) * sizeof(float) + c.units.capacity() * sizeof(uint32_t) +
             c.index.bytes();
  for (const auto& s : selection_) bytes += s.capacity() * sizeof(int) + sizeof(s);
  for (const auto& s : sel_units_) bytes += s.capacity() * sizeof(void*) + sizeof(s);
  for (const Scratch& s : scratch_)
    bytes += sizeof(Scratch) + (s.scores.capacity() + s.max.capacity() + s.sum.capacity() + s.acc.capacity()) * sizeof(float);
  for (const HeadRows& r : head_rows_)
    bytes += sizeof(HeadRows) + (r.sink_rot.capacity() + r.keys.capacity() + r.vals.capacity() + r.sink_t.capacity() +
                                 r.block_t.capacity() + r.tail_t.capacity()) * sizeof(float) +
             (r.block_k.capacity() + r.block_v.capacity()) * sizeof(float*) + r.block_pos.capacity() * sizeof(int64_t);
  if (store_) bytes += store_->bytes_used() - store_->resident_bytes();
  return bytes;
}

size_t EngramMemory::bytes_used() const {
  return bytes_outside_store() + (store_ ? store_->resident_bytes() : 0);
}

// The budget covers everything; the block cache gets what the exact parts
// and the summaries leave.
void EngramMemory::update_capacity() {
  if (!store_) return;
  if (options_.memory_budget_bytes == 0) {
    store_->set_capacity(SIZE_MAX);
    return;
  }
  const size_t other = bytes_outside_store();
  store_->set_capacity(options_.memory_budget_bytes > other ? options_.memory_budget_bytes - other : 0);
}

// ------------------------------------------------------------ append

Status EngramMemory::append(int layer, int seq, int64_t pos0, int n, const float* k, const float* v) {
  ENGRAM_RETURN_IF_ERROR(last_error_);
  ENGRAM_RETURN_IF_ERROR(check_layer_seq(layer, seq));
  if (n <= 0) return Status::ok();
  if (pos0 < 0) return make_error("engram memory: negative position ", std::to_string(pos0));
  if (pos0 + n > layout_.n_ctx)
    return make_error("context full: position ", std::to_string(std::max(pos0, layout_.n_ctx)),
                      " exceeds the memory's ", std::to_string(layout_.n_ctx), " positions");
  if (layout_.values_in_keys && layout_.v_dim > layout_.k_dim)
    return make_error("engram memory: values_in_keys needs v_dim (", std::to_string(layout_.v_dim), ") <= k_dim (",
                      std::to_string(layout_.k_dim), ")");
  Cell& c = cell(layer, seq);
  if (pos0 > c.n_stored)
    return make_error("engram memory: append at position ", std::to_string(pos0), " of layer ",
                      std::to_string(layer), " sequence ", std::to_string(seq), " leaves a gap after position ",
                      std::to_string(c.n_stored));
  if (pos0 < c.n_stored) truncate(c, pos0);  // rewriting p makes everything after it stale

  // The earliest query of this chunk (at pos0) still needs pos0 - window + 1.
  ENGRAM_RETURN_IF_ERROR(evict_old(c, pos0 - options_.window + 1));

  const size_t kr = k_row(), vr = v_row();  // vr 0: v is ignored (may be null)
  for (int i = 0; i < n;) {
    const int64_t pos = pos0 + i;
    if (pos < options_.sinks) {
      const int m = static_cast<int>(std::min<int64_t>(n - i, options_.sinks - pos));
      c.sink_k.insert(c.sink_k.end(), k + i * kr, k + (i + m) * kr);
      if (vr > 0) c.sink_v.insert(c.sink_v.end(), v + i * vr, v + (i + m) * vr);
      i += m;
    } else {
      c.tail_k.insert(c.tail_k.end(), k + i * kr, k + static_cast<size_t>(n) * kr);
      if (vr > 0) c.tail_v.insert(c.tail_v.end(), v + i * vr, v + static_cast<size_t>(n) * vr);
      i = n;
    }
  }
  c.n_stored = pos0 + n;
  if (store_) {  // the summaries and tail grew: the block cache gets less
    update_capacity();
    ENGRAM_RETURN_IF_ERROR(store_->unpin_all());
  }
  return Status::ok();
}

// Moves whole blocks of tail positions older than keep_from out of the tail:
// compressed into the block store (engram) or dropped (window). Working in
// whole blocks makes the tail at most window + block_size - 1 (+ the chunk).
Status EngramMemory::evict_old(Cell& c, int64_t keep_from) {
  const int B = options_.block_size;
  int64_t n_move = 0;  // blocks leaving the tail; erased from it at once (one memmove)
  while (c.tail_start + (n_move + 1) * B <= std::min(keep_from, c.n_stored)) ++n_move;
  if (n_move == 0) return Status::ok();
  Status st = Status::ok();
  int64_t done = 0;
  for (; done < n_move && mode_ == Mode::ENGRAM; ++done) {
    st = make_block(c, done * B);
    if (!st.is_ok()) break;
  }
  if (mode_ == Mode::WINDOW) done = n_move;
  c.tail_k.erase(c.tail_k.begin(), c.tail_k.begin() + static_cast<ptrdiff_t>(done * B * k_row()));
  c.tail_v.erase(c.tail_v.begin(), c.tail_v.begin() + static_cast<ptrdiff_t>(done * B * v_row()));
  c.tail_start += done * B;
  c.n_blocks += done;
  return st;
}

namespace {

// Per-dimension min and max of n keys [n, k_dim]: out [2, k_dim].
void key_bounds(const float* keys, int n, int kd, float* out) {
  float* lo = out;
  float* hi = out + kd;
  for (int d = 0; d < kd; ++d) lo[d] = hi[d] = keys[d];
  for (int r = 1; r < n; ++r)
    for (int d = 0; d < kd; ++d) {
      const float x = keys[static_cast<size_t>(r) * kd + d];
      lo[d] = std::min(lo[d], x);
      hi[d] = std::max(hi[d], x);
    }
}

// A block's min | max | mean key: out [3, k_dim].
void summarise(const float* keys, int n, int kd, float* out) {
  key_bounds(keys, n, kd, out);
  float* mean = out + 2 * static_cast<size_t>(kd);
  std::fill(mean, mean + kd, 0.f);
  for (int r = 0; r < n; ++r) kernels::axpy(1.f / static_cast<float>(n), keys + static_cast<size_t>(r) * kd, mean, kd);
}

}  // namespace

int EngramMemory::n_sub_blocks() const {
  const int B = options_.block_size, rows = options_.summary_rows;
  return rows >= B || exact_index() ? 0 : (B + rows - 1) / rows;
}
bool EngramMemory::exact_index() const { return options_.summary_rows == 1; }
size_t EngramMemory::summary_floats() const {
  return static_cast<size_t>(3 + 2 * n_sub_blocks()) * static_cast<size_t>(layout_.k_dim);
}

// Compresses block_size tail rows from row0 on into one unit per KV head, with
// its summary computed from the decoded keys, so the bound holds for exactly
// the keys attention will see.
Status EngramMemory::make_block(Cell& c, int64_t row0) {
  const int H = layout_.n_kv_head, kd = layout_.k_dim, vd = layout_.v_dim, B = options_.block_size;
  std::vector<uint8_t> unit(codec_.unit_bytes());
  std::vector<float> k_buf(static_cast<size_t>(B) * kd), v_buf(static_cast<size_t>(B) * vd);
  std::vector<float> k_moved;  // [B, k_dim] keys moved to position 0 (remapping)
  update_capacity();
  for (int h = 0; h < H; ++h) {
    // values_in_keys: the codec stores keys only and never reads v.
    const float* v = layout_.values_in_keys
                         ? nullptr
                         : c.tail_v.data() + static_cast<size_t>(row0) * v_row() + static_cast<size_t>(h) * vd;
    codec_.encode(c.tail_k.data() + static_cast<size_t>(row0) * k_row() + static_cast<size_t>(h) * kd, k_row(), v,
                  v_row(), unit.data());
    Expected<uint32_t> id = store_->put(unit.data());
    if (!id) {  // undo this block's earlier heads: blocks are whole or absent
      for (int j = 0; j < h; ++j) store_->release(c.units[c.units.size() - 1 - j]);
      c.units.resize(c.units.size() - h);
      c.summary.resize(c.summary.size() - static_cast<size_t>(h) * summary_floats());
      c.index.truncate(c.index.size() - (exact_index() ? static_cast<size_t>(h) : 0));
      return id.error();
    }
    c.units.push_back(*id);

    const float *keys, *vals;
    codec_.rows(unit.data(), k_buf.data(), v_buf.data(), &keys, &vals);
    if (options_.rotate_keys) {
      // Summarise the keys as if every one sat at position 0: scoring then
      // moves each query to position 0 too (select_blocks), so a block's
      // score is a match of content, the same at any distance. Scored at
      // their real positions, a query at 1M meets keys rotated by distances
      // a model trained at 2K has never seen, and picks the wrong blocks.
      k_moved.assign(keys, keys + static_cast<size_t>(B) * kd);
      const int64_t first = c.tail_start + row0;
      for (int r = 0; r < B; ++r) options_.rotate_keys(k_moved.data() + static_cast<size_t>(r) * kd, 1, -(first + r));
      keys = k_moved.data();
    }
    const size_t at = c.summary.size();
    c.summary.resize(at + summary_floats());
    summarise(keys, B, kd, c.summary.data() + at);
    if (exact_index()) c.index.append(keys);
    for (int r0 = 0, u = 0; r0 < B && n_sub_blocks() > 0; r0 += options_.summary_rows, ++u)
      key_bounds(keys + static_cast<size_t>(r0) * kd, std::min(options_.summary_rows, B - r0), kd,
                 c.summary.data() + at + static_cast<size_t>(3 + 2 * u) * kd);
  }
  return Status::ok();
}

// ------------------------------------------------------------ remove / copy

void EngramMemory::truncate(Cell& c, int64_t p0) {
  if (p0 >= c.n_stored) return;
  const int H = layout_.n_kv_head, kd = layout_.k_dim, vd = layout_.v_dim, B = options_.block_size;
  const size_t kr = k_row(), vr = v_row();
  if (p0 >= c.tail_start) {
    c.tail_k.resize(static_cast<size_t>(p0 - c.tail_start) * kr);
    c.tail_v.resize(static_cast<size_t>(p0 - c.tail_start) * vr);
  } else if (p0 < options_.sinks) {
    const std::vector<float> sk(c.sink_k.begin(), c.sink_k.begin() + p0 * kr),
        sv(c.sink_v.begin(), c.sink_v.begin() + p0 * vr);
    release_cell(c);
    c.sink_k = sk;
    c.sink_v = sv;
  } else if (mode_ == Mode::WINDOW) {
    c.tail_k.clear();  // the positions before p0 were dropped already
    c.tail_v.clear();
    c.tail_start = p0;
  } else {
    // p0 falls in block b: its positions before p0 come back to the tail
    // (decoded; lossy unless f32), later blocks are released.
    const int64_t b = (p0 - options_.sinks) / B;
    const int64_t keep = p0 - (options_.sinks + b * B);
    std::vector<float> tk(static_cast<size_t>(keep) * kr), tv(static_cast<size_t>(keep) * vr);
    std::vector<uint8_t> unit(codec_.unit_bytes());
    std::vector<float> k_buf(static_cast<size_t>(B) * kd), v_buf(static_cast<size_t>(B) * vd);
    for (int h = 0; h < H && keep > 0; ++h) {
      Status st = store_->read(c.units[static_cast<size_t>(b) * H + h], unit.data());
      if (!st.is_ok()) {
        fail(st);  // the positions are lost; the error says why
        break;
      }
      const float *keys, *vals;
      codec_.rows(unit.data(), k_buf.data(), v_buf.data(), &keys, &vals);
      for (int64_t r = 0; r < keep; ++r) {
        std::memcpy(tk.data() + r * kr + h * kd, keys + r * kd, kd * sizeof(float));
        if (vr > 0) std::memcpy(tv.data() + r * vr + h * vd, vals + r * vd, vd * sizeof(float));
      }
    }
    for (size_t u = static_cast<size_t>(b) * H; u < c.units.size(); ++u) store_->release(c.units[u]);
    c.units.resize(static_cast<size_t>(b) * H);
    c.summary.resize(static_cast<size_t>(b) * H * summary_floats());
    c.index.truncate(exact_index() ? static_cast<size_t>(b) * H : 0);
    c.n_blocks = b;
    c.tail_start = options_.sinks + b * B;
    c.tail_k = std::move(tk);
    c.tail_v = std::move(tv);
  }
  c.n_stored = p0;
  c.scan_age = 0;  // the kept blocks may be gone
}

void EngramMemory::remove(int seq, int64_t p0, int64_t p1) {
  if (seq < 0 || seq >= layout_.n_seq) return;
  p0 = std::max<int64_t>(p0, 0);
  const int64_t end = n_positions(seq);
  if (p1 >= 0 && p1 < end) {
    if (p0 >= p1) return;
    // Blocks are compressed and summarised as a whole; punching holes would
    // need per-position masks in every part. Refuse clearly instead.
    fail(make_error("engram memory: removing positions [", std::to_string(p0), ", ", std::to_string(p1),
                    ") from the middle of sequence ", std::to_string(seq),
                    " is not supported (only truncation: remove to the end)"));
    return;
  }
  for (int l = 0; l < layout_.n_layer; ++l) truncate(cell(l, seq), p0);
}

Status EngramMemory::copy(int src_seq, int dst_seq) {
  if (src_seq < 0 || src_seq >= layout_.n_seq || dst_seq < 0 || dst_seq >= layout_.n_seq)
    return make_error("engram memory: copy between sequences ", std::to_string(src_seq), " and ",
                      std::to_string(dst_seq), " outside 0..", std::to_string(layout_.n_seq - 1));
  if (src_seq == dst_seq) return Status::ok();
  for (int l = 0; l < layout_.n_layer; ++l) {
    release_cell(cell(l, dst_seq));
    Cell& dst = cell(l, dst_seq);
    dst = cell(l, src_seq);
    if (store_)
      for (uint32_t id : dst.units) store_->retain(id);  // units are immutable: share them
  }
  return Status::ok();
}

int64_t EngramMemory::n_positions(int seq) const {
  if (seq < 0 || seq >= layout_.n_seq) return 0;
  int64_t n = 0;
  for (int l = 0; l < layout_.n_layer; ++l) n = std::max(n, cell(l, seq).n_stored);
  return n;
}

int64_t EngramMemory::n_blocks(int layer, int seq) const {
  if (!check_layer_seq(layer, seq).is_ok()) return 0;
  return cell(layer, seq).n_blocks;
}

const std::vector<int>& EngramMemory::last_selection(int layer, int kv_head) const {
  static const std::vector<int> kNone;
  if (layer < 0 || layer >= layout_.n_layer || kv_head < 0 || kv_head >= layout_.n_kv_head) return kNone;
  return selection_[static_cast<size_t>(layer) * layout_.n_kv_head + kv_head];
}

// ------------------------------------------------------------ attend

// Scores every block of `c` for the queries of one attend call and keeps the
// top_k per KV head. One query (decode, the exact prompt tail) or
// score_every_query: each query scored alone, with the sub-block bounds
// where there are any (a needle's few keys are not drowned by the other
// keys of a 128-key block's bounds). A prefill chunk: its mean query per
// head, against whole-block bounds (one cheap pass per chunk).
// Block b's score for KV head g: the best over the n_vec query vectors of the
// exact max q.k (index), the sub-block bounds, or the block's bound (or mean
// key). block_keys: scratch [block_size, k_dim] for the exact index.
float EngramMemory::score_block(const Cell& c, int64_t b, int g, const float* qset, size_t n_vec, bool exact,
                                int n_sub) const {
  const int H = layout_.n_kv_head, kd = layout_.k_dim;
  const float* kmin = c.summary.data() + (static_cast<size_t>(b) * H + g) * summary_floats();
  const float* kmax = kmin + kd;
  const float* kmean = kmax + kd;
  float best = kNegInf;
  for (size_t j = 0; j < n_vec; ++j) {
    const float* qv = qset + j * kd;
    if (exact) {
      best = std::max(best, c.index.max_dot(static_cast<size_t>(b) * H + g, qv));
    } else if (n_sub > 0) {
      for (int u = 0; u < n_sub; ++u) {
        const float* sub = kmean + kd + static_cast<size_t>(2 * u) * kd;
        best = std::max(best, block_score_bound(qv, sub, sub + kd, kd));
      }
    } else {
      best = std::max(best, scoring_ == Scoring::BOUND ? block_score_bound(qv, kmin, kmax, kd)
                                                       : kernels::dot(qv, kmean, static_cast<size_t>(kd)));
    }
  }
  return best;
}

// Two stages: every block ranked by its min/max bound, then the
// index_candidates best scored exactly with the key index; the top_k of
// those are selected. scores: scratch [n_blocks].
std::vector<int> EngramMemory::select_by_candidates(const Cell& c, int g, const float* qset, size_t n_vec,
                                                    std::vector<float>& scores, ThreadPool& pool) const {
  const int64_t nb = static_cast<int64_t>(scores.size());
  pool.parallel_for(static_cast<size_t>(nb), [&](size_t b0, size_t b1, int) {
    for (size_t b = b0; b < b1; ++b)
      scores[b] = score_block(c, static_cast<int64_t>(b), g, qset, n_vec, /*exact=*/false, /*n_sub=*/0);
  }, 256);
  return select_exact_among(c, g, top_k_indices(scores, options_.index_candidates), qset, n_vec, pool);
}

// The top_k of `candidates` (block ids) by the exact key index, best first.
std::vector<int> EngramMemory::select_exact_among(const Cell& c, int g, const std::vector<int>& candidates,
                                                  const float* qset, size_t n_vec, ThreadPool& pool) const {
  std::vector<float> exact_scores(candidates.size());
  pool.parallel_for(candidates.size(), [&](size_t i0, size_t i1, int) {
    for (size_t i = i0; i < i1; ++i)
      exact_scores[i] = score_block(c, candidates[i], g, qset, n_vec, /*exact=*/true, 0);
  }, 16);
  std::vector<int> sel;
  for (int i : top_k_indices(exact_scores, options_.top_k)) sel.push_back(candidates[static_cast<size_t>(i)]);
  return sel;
}

void EngramMemory::select_blocks(Cell& c, int layer, int64_t pos0, int64_t n_q, int n_head, const float* q,
                                 ThreadPool& pool) {
  const int H = layout_.n_kv_head, kd = layout_.k_dim, group = n_head / H;
  const int64_t nb = static_cast<int64_t>(c.units.size()) / std::max(H, 1);
  const bool each_query = n_q == 1 || options_.score_every_query;
  const int n_sub = each_query && scoring_ == Scoring::BOUND ? n_sub_blocks() : 0;
  const bool exact = each_query && scoring_ == Scoring::BOUND && exact_index();
  // Queries moved to position 0, as the summaries' keys were (make_block).
  std::vector<float> q_moved;
  if (options_.rotate_keys && nb > options_.top_k) {
    q_moved.assign(q, q + static_cast<size_t>(n_q) * n_head * kd);
    for (int64_t i = 0; i < n_q; ++i)
      options_.rotate_keys(q_moved.data() + static_cast<size_t>(i) * n_head * kd, n_head, -(pos0 + i));
    q = q_moved.data();
  }
  // Full scans kept for the single queries that follow (rescan_interval).
  const bool chain = exact && n_q == 1 && options_.rescan_interval > 1 && nb > options_.top_k;
  const bool reuse = chain && generating_ && c.scan_age > 0 && c.scan_age < options_.rescan_interval &&
                     c.kept_blocks <= nb && c.kept.size() == static_cast<size_t>(H);
  const bool keep = chain && !reuse;
  if (!chain) c.scan_age = 0;  // a prompt chunk: the next single query scans in full
  if (keep) c.kept.assign(static_cast<size_t>(H), {});
  std::vector<float> qset, scores(static_cast<size_t>(nb));
  ranked_.resize(static_cast<size_t>(H));
  for (int g = 0; g < H; ++g) {
    std::vector<int>& sel = ranked_[static_cast<size_t>(g)];  // best first
    if (nb <= options_.top_k) {
      sel.resize(static_cast<size_t>(nb));
      std::iota(sel.begin(), sel.end(), 0);
      continue;
    }
    // The query vectors this KV head's selection serves.
    qset.clear();
    if (each_query) {
      for (int64_t i = 0; i < n_q; ++i)
        for (int h = g * group; h < (g + 1) * group; ++h) {
          const float* qh = q + (static_cast<size_t>(i) * n_head + h) * kd;
          qset.insert(qset.end(), qh, qh + kd);
        }
    } else {  // the chunk's mean query per head
      qset.assign(static_cast<size_t>(group) * kd, 0.f);
      for (int64_t i = 0; i < n_q; ++i)
        for (int h = 0; h < group; ++h)
          kernels::axpy(1.f / static_cast<float>(n_q), q + (static_cast<size_t>(i) * n_head + g * group + h) * kd,
                        qset.data() + static_cast<size_t>(h) * kd, static_cast<size_t>(kd));
    }
    const size_t n_vec = qset.size() / static_cast<size_t>(kd);
    if (reuse) {
      sel = select_from_kept(c, g, qset.data(), n_vec, nb, pool);
      continue;
    }
    const int n_cand = options_.index_candidates;
    if (exact && n_cand > 0 && nb > n_cand && !keep) {
      sel = select_by_candidates(c, g, qset.data(), n_vec, scores, pool);
      continue;
    }
    // Blocks are scored in parallel (the exact index reads every block's keys).
    pool.parallel_for(static_cast<size_t>(nb), [&](size_t b0, size_t b1, int) {
      for (size_t b = b0; b < b1; ++b) scores[b] = score_block(c, static_cast<int64_t>(b), g, qset.data(), n_vec, exact, n_sub);
    }, 64);
    sel = top_k_indices(scores, options_.top_k);
    if (keep) c.kept[static_cast<size_t>(g)] = top_k_indices(scores, options_.rescan_keep);
  }
  if (keep) {
    c.kept_blocks = nb;
    c.scan_age = 1;
  } else if (reuse) {
    ++c.scan_age;
  }
  const bool share = n_q == 1 && nb > options_.top_k;
  for (int g = 0; g < H; ++g) {
    std::vector<int>& sel = selection_[static_cast<size_t>(layer) * H + g];
    sel = ranked_[static_cast<size_t>(g)];
    if (share) add_shared_blocks(g, sel);
    std::sort(sel.begin(), sel.end());
  }
}

// Up to shared_blocks more blocks for KV head g: the best block of every
// other KV head of the layer (nearest heads first), then their second best,
// and so on. A block that another head ranks first is likely the one the
// query asks for; in g's own ranking it may have lost to blocks whose keys
// match g's query by chance, and those then take g's attention from it.
void EngramMemory::add_shared_blocks(int g, std::vector<int>& sel) const {
  const int H = static_cast<int>(ranked_.size());
  int added = 0;
  for (size_t rank = 0; added < options_.shared_blocks && rank < static_cast<size_t>(options_.top_k); ++rank)
    for (int d = 1; d < H && added < options_.shared_blocks; ++d) {
      const std::vector<int>& other = ranked_[static_cast<size_t>((g + d) % H)];
      if (rank >= other.size() || std::find(sel.begin(), sel.end(), other[rank]) != sel.end()) continue;
      sel.push_back(other[rank]);
      ++added;
    }
}

// A single query between full scans (options.rescan_interval): the blocks
// the last scan kept, and those formed since, scored exactly.
std::vector<int> EngramMemory::select_from_kept(const Cell& c, int g, const float* qset, size_t n_vec, int64_t nb,
                                                ThreadPool& pool) const {
  std::vector<int> cand = c.kept[static_cast<size_t>(g)];
  for (int64_t b = c.kept_blocks; b < nb; ++b) cand.push_back(static_cast<int>(b));
  return select_exact_among(c, g, cand, qset, n_vec, pool);
}

void EngramMemory::attend(int layer, int seq, int64_t pos0, int n, int n_head, const float* q, float* out, float scale,
                          ThreadPool& pool) {
  const int H = layout_.n_kv_head, vd = layout_.v_dim;
  if (n <= 0) return;
  const size_t out_floats = static_cast<size_t>(n) * std::max(n_head, 0) * vd;
  if (!check_layer_seq(layer, seq).is_ok() || H <= 0 || n_head <= 0 || n_head % H != 0) {
    std::memset(out, 0, out_floats * sizeof(float));  // misuse: defined output, no crash
    return;
  }
  Cell& c = cell(layer, seq);
  const int group = n_head / H;

  // 1. Retrieval, and the selected units made resident (the only I/O).
  sel_units_.resize(static_cast<size_t>(H));
  if (mode_ == Mode::ENGRAM) {
    select_blocks(c, layer, pos0, n, n_head, q, pool);
    update_capacity();
    for (int g = 0; g < H; ++g) {
      const std::vector<int>& sel = selection_[static_cast<size_t>(layer) * H + g];
      std::vector<const uint8_t*>& units = sel_units_[static_cast<size_t>(g)];
      units.clear();
      for (int b : sel) {
        Expected<const uint8_t*> p = store_->pin(c.units[static_cast<size_t>(b) * H + g]);
        if (!p) {
          fail(make_error(p.error().message, " (layer ", std::to_string(layer), ", sequence ", std::to_string(seq),
                          ", block ", std::to_string(b), ", KV head ", std::to_string(g), ")"));
          fail(store_->unpin_all());
          std::memset(out, 0, out_floats * sizeof(float));
          return;
        }
        units.push_back(*p);
      }
    }
  }

  // 2. Exact attention over sinks + selected blocks + tail, one work item
  //    per (KV head, tile of queries); results do not depend on threads.
  head_rows_.resize(static_cast<size_t>(H));
  pool.parallel_for(static_cast<size_t>(H), [&](size_t begin, size_t end, int) {
    for (size_t g = begin; g < end; ++g) prepare_head(c, layer, static_cast<int>(g), pos0, n, head_rows_[g]);
  });
  scratch_.resize(static_cast<size_t>(pool.size()));
  const int64_t tile_rows = std::min(n, kQueryTile) * static_cast<int64_t>(group);
  for (Scratch& s : scratch_) {
    s.scores.resize(kRows);
    s.max.resize(static_cast<size_t>(tile_rows));
    s.sum.resize(static_cast<size_t>(tile_rows));
    s.acc.resize(static_cast<size_t>(tile_rows) * vd);
  }
  const int n_tiles = (n + kQueryTile - 1) / kQueryTile;
  pool.parallel_for(static_cast<size_t>(H) * n_tiles, [&](size_t begin, size_t end, int thread) {
    for (size_t item = begin; item < end; ++item) {
      const int g = static_cast<int>(item / n_tiles);
      const int tile = static_cast<int>(item % n_tiles);
      attend_item(c, g, pos0, tile * kQueryTile, std::min(n, (tile + 1) * kQueryTile), n_head, q, out, scale,
                  head_rows_[static_cast<size_t>(g)], scratch_[static_cast<size_t>(thread)]);
    }
  });

  if (store_) {
    update_capacity();  // scratch may have grown since the pins
    fail(store_->unpin_all());
  }
}

void EngramMemory::prepare_head(const Cell& c, int layer, int g, int64_t pos0, int n, HeadRows& rows) const {
  const int kd = layout_.k_dim, vd = layout_.v_dim, B = options_.block_size;
  const size_t kr = k_row();
  // Remapping (engram_memory.h): how far the sinks and each selected block
  // move forward; 0 when there is no rotator or nothing to close up.
  const int64_t n_tail = static_cast<int64_t>(c.tail_k.size() / std::max<size_t>(kr, 1));
  const bool remap = static_cast<bool>(options_.rotate_keys);
  const std::vector<int>* sel = mode_ == Mode::ENGRAM ? &selection_[static_cast<size_t>(layer) * layout_.n_kv_head + g]
                                                       : nullptr;
  const int64_t n_sel = sel ? static_cast<int64_t>(sel->size()) : 0;
  // Virtual position right after the blocks: the tail's first attended row,
  // or single_query_gap before it for a single query (never so far back
  // that the blocks would overlap the sinks: with every block selected
  // nothing moves).
  const int64_t gap = n == 1 ? options_.single_query_gap : 0;
  const int64_t virtual_end =
      mode_ == Mode::ENGRAM ? std::max(c.tail_start - gap, static_cast<int64_t>(options_.sinks) + n_sel * B)
                            : std::max<int64_t>(c.tail_start, pos0 - options_.window + 1);
  int64_t sink_delta = 0;
  if (remap && c.n_sink() == options_.sinks && (n_tail > 0 || n_sel > 0))
    sink_delta = std::max<int64_t>(0, virtual_end - n_sel * B - options_.sinks);

  rows.sink_k = c.sink_k.data() + static_cast<size_t>(g) * kd;
  rows.sink_k_stride = kr;
  if (c.n_sink() > 0 && sink_delta != 0) {  // this head's sink keys, moved to [virtual_end - n_sel*B - sinks, ..)
    rows.sink_rot.resize(static_cast<size_t>(c.n_sink()) * kd);
    for (int64_t r = 0; r < c.n_sink(); ++r)
      std::memcpy(rows.sink_rot.data() + r * kd, rows.sink_k + r * kr, kd * sizeof(float));
    options_.rotate_keys(rows.sink_rot.data(), static_cast<int>(c.n_sink()), sink_delta);
    rows.sink_k = rows.sink_rot.data();
    rows.sink_k_stride = static_cast<size_t>(kd);
  }

  rows.block_k.assign(static_cast<size_t>(n_sel), nullptr);
  rows.block_v.assign(static_cast<size_t>(n_sel), nullptr);
  rows.block_pos.assign(static_cast<size_t>(n_sel), 0);
  const bool values_in_keys = layout_.values_in_keys;
  rows.block_v_stride = static_cast<size_t>(values_in_keys ? kd : vd);
  rows.keys.resize(static_cast<size_t>(n_sel) * B * kd);
  rows.vals.resize(static_cast<size_t>(n_sel) * B * rows.block_v_stride);
  const std::vector<const uint8_t*>& units = sel_units_[static_cast<size_t>(g)];
  for (int64_t j = 0; j < n_sel; ++j) {
    float* k_buf = rows.keys.data() + static_cast<size_t>(j) * B * kd;
    float* v_buf = rows.vals.data() + static_cast<size_t>(j) * B * rows.block_v_stride;
    const float *keys, *vals;
    // values_in_keys: the keys decode into the value buffer and are the
    // values, so moving the keys below (a rotated copy in k_buf) cannot
    // disturb them, whatever part of the key the rotator touches.
    codec_.rows(units[static_cast<size_t>(j)], values_in_keys ? v_buf : k_buf, v_buf, &keys, &vals);
    if (values_in_keys) vals = keys;
    const int64_t first_pos = options_.sinks + static_cast<int64_t>((*sel)[static_cast<size_t>(j)]) * B;
    // Selected blocks sit back to back, in their original order, ending at virtual_end.
    const int64_t delta = remap ? virtual_end - (n_sel - j) * B - first_pos : 0;
    if (delta != 0) {
      if (keys != k_buf) std::memcpy(k_buf, keys, static_cast<size_t>(B) * kd * sizeof(float));
      options_.rotate_keys(k_buf, B, delta);
      keys = k_buf;
    }
    rows.block_k[static_cast<size_t>(j)] = keys;
    rows.block_v[static_cast<size_t>(j)] = vals;
    rows.block_pos[static_cast<size_t>(j)] = first_pos;
  }

  // Column-major copies for add_rows: every query of the call reuses them.
  transpose_rows(rows.sink_k, rows.sink_k_stride, c.n_sink(), kd, rows.sink_t);
  rows.block_t.resize(static_cast<size_t>(n_sel) * B * kd);
  std::vector<float> one;
  for (int64_t j = 0; j < n_sel; ++j) {
    transpose_rows(rows.block_k[static_cast<size_t>(j)], static_cast<size_t>(kd), B, kd, one);
    std::copy(one.begin(), one.end(), rows.block_t.begin() + static_cast<ptrdiff_t>(j * B * kd));
  }
  transpose_rows(c.tail_k.data() + static_cast<size_t>(g) * kd, kr, n_tail, kd, rows.tail_t);
}

void EngramMemory::attend_item(const Cell& c, int g, int64_t pos0, int i0, int i1, int n_head, const float* q,
                               float* out, float scale, const HeadRows& rows, Scratch& s) const {
  const int kd = layout_.k_dim, vd = layout_.v_dim, B = options_.block_size;
  const int group = n_head / layout_.n_kv_head;
  const size_t kr = k_row(), vr = v_row();
  std::fill(s.max.begin(), s.max.end(), kNegInf);
  std::fill(s.sum.begin(), s.sum.end(), 0.f);
  std::fill(s.acc.begin(), s.acc.end(), 0.f);

  // Adds rows of a segment starting at position first_pos to every (query,
  // head) of the item, each seeing only rows at or before its own position
  // (and, when `windowed`, within its last `window` positions).
  auto segment = [&](const float* kT, const float* v, size_t v_stride, int64_t first_pos, int64_t n_rows,
                     bool windowed) {
    for (int i = i0; i < i1; ++i) {
      const int64_t p = pos0 + i;
      const int64_t hi = std::min(n_rows, p - first_pos + 1);
      const int64_t lo = windowed ? std::max<int64_t>(0, p - options_.window + 1 - first_pos) : 0;
      if (hi <= lo) continue;
      for (int j = 0; j < group; ++j) {
        const int h = g * group + j;
        const size_t state = static_cast<size_t>(i - i0) * group + j;
        add_rows(q + (static_cast<size_t>(i) * n_head + h) * kd, kT, static_cast<size_t>(n_rows), v, v_stride, lo, hi,
                 kd, vd, scale,
                 s.scores.data(), s.max[state], s.sum[state], s.acc.data() + state * vd);
      }
    }
  };

  const int64_t n_tail = static_cast<int64_t>(c.tail_k.size() / std::max<size_t>(kr, 1));
  // Sink and tail values: their own rows, or (values_in_keys) the stored,
  // never moved key rows of this head.
  const bool vik = layout_.values_in_keys;
  const size_t gk = static_cast<size_t>(g) * kd, gv = static_cast<size_t>(g) * vd, val_stride = vik ? kr : vr;
  if (c.n_sink() > 0)
    segment(rows.sink_t.data(), vik ? c.sink_k.data() + gk : c.sink_v.data() + gv, val_stride, 0, c.n_sink(), false);
  // Causality uses the original positions: every block precedes every query.
  for (size_t j = 0; j < rows.block_k.size(); ++j)
    segment(rows.block_t.data() + j * static_cast<size_t>(B) * kd, rows.block_v[j], rows.block_v_stride,
            rows.block_pos[j], B, false);
  if (n_tail > 0)
    segment(rows.tail_t.data(), vik ? c.tail_k.data() + gk : c.tail_v.data() + gv, val_stride, c.tail_start, n_tail,
            mode_ == Mode::WINDOW);

  for (int i = i0; i < i1; ++i)
    for (int j = 0; j < group; ++j) {
      const size_t state = static_cast<size_t>(i - i0) * group + j;
      float* oh = out + (static_cast<size_t>(i) * n_head + g * group + j) * vd;
      const float sum = s.sum[state];
      for (int d = 0; d < vd; ++d) oh[d] = sum > 0.f ? s.acc[state * vd + d] / sum : 0.f;
    }
}

// ------------------------------------------------------------ save / load

// Format (little-endian):
//   "ENGRAMEM" | u32 version | u32 mode | u32 n_layer, n_kv_head, k_dim, v_dim, n_seq
//   | u32 sinks, window, block_size, compression, values_in_keys, summary_rows,
//     remapped (summaries of keys moved to position 0)
//   per layer, per seq: i64 n_stored, tail_start, n_blocks
//     | sink k, v floats | engram: n_blocks*n_kv_head units (unit_bytes each), summary floats,
//       key index entries (KeyIndex, int8; summary_rows == 1)
//     | tail k, v floats
Status EngramMemory::save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return make_error(path, ": cannot open for writing");
  auto put = [&](const void* p, size_t n) { out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n)); };
  auto put_u32 = [&](uint32_t x) { put(&x, sizeof x); };
  auto put_i64 = [&](int64_t x) { put(&x, sizeof x); };
  put(kMagic, sizeof kMagic);
  put_u32(kVersion);
  put_u32(static_cast<uint32_t>(mode_));
  for (int x : {layout_.n_layer, layout_.n_kv_head, layout_.k_dim, layout_.v_dim, layout_.n_seq, options_.sinks,
                options_.window, options_.block_size, static_cast<int>(options_.compression),
                layout_.values_in_keys ? 1 : 0, options_.summary_rows,
                static_cast<int>(static_cast<bool>(options_.rotate_keys))})
    put_u32(static_cast<uint32_t>(x));
  std::vector<uint8_t> unit(codec_.unit_bytes());
  for (const Cell& c : cells_) {
    put_i64(c.n_stored);
    put_i64(c.tail_start);
    put_i64(c.n_blocks);
    put(c.sink_k.data(), c.sink_k.size() * sizeof(float));
    put(c.sink_v.data(), c.sink_v.size() * sizeof(float));
    if (mode_ == Mode::ENGRAM) {
      for (uint32_t id : c.units) {
        ENGRAM_RETURN_IF_ERROR(store_->read(id, unit.data()));
        put(unit.data(), unit.size());
      }
      put(c.summary.data(), c.summary.size() * sizeof(float));
      for (size_t e = 0; e < c.index.size(); ++e) put(c.index.entry_data(e), c.index.entry_bytes());
    }
    put(c.tail_k.data(), c.tail_k.size() * sizeof(float));
    put(c.tail_v.data(), c.tail_v.size() * sizeof(float));
  }
  out.flush();
  if (!out) return make_error(path, ": write failed");
  return Status::ok();
}

Status EngramMemory::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path, ": cannot open engram memory file");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ByteReader r(bytes, path);
  char magic[8];
  ENGRAM_RETURN_IF_ERROR(r.read_bytes(magic, sizeof magic, "magic"));
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0)
    return make_error(path, ": not an engram memory file (bad magic)");
  uint32_t version = 0, mode = 0;
  ENGRAM_RETURN_IF_ERROR(r.read(version, "version"));
  if (version != kVersion)
    return make_error(path, ": engram memory file version ", std::to_string(version), " is not supported (expected ",
                      std::to_string(kVersion), "; a file from an older engram must be made again)");
  ENGRAM_RETURN_IF_ERROR(r.read(mode, "mode"));
  if (mode != static_cast<uint32_t>(mode_))
    return make_error(path, ": the file holds a ", mode ? "window" : "engram", " memory, this is a ",
                      mode_ == Mode::WINDOW ? "window" : "engram", " memory");
  struct Field { const char* name; int expected; };
  const Field fields[] = {{"n_layer", layout_.n_layer},   {"n_kv_head", layout_.n_kv_head},
                          {"k_dim", layout_.k_dim},       {"v_dim", layout_.v_dim},
                          {"n_seq", layout_.n_seq},       {"sinks", options_.sinks},
                          {"window", options_.window},    {"block_size", options_.block_size},
                          {"compression", static_cast<int>(options_.compression)},
                          {"values_in_keys", layout_.values_in_keys ? 1 : 0},
                          {"summary_rows", options_.summary_rows},
                          {"remapped (position-normalised summaries)", static_cast<bool>(options_.rotate_keys)}};
  for (const Field& f : fields) {
    uint32_t got = 0;
    ENGRAM_RETURN_IF_ERROR(r.read(got, f.name));
    if (static_cast<int64_t>(got) != f.expected)
      return make_error(path, ": engram memory mismatch: ", f.name, " is ", std::to_string(got), " in the file but ",
                        std::to_string(f.expected), " in this memory");
  }

  // Parse into fresh cells; on any error release what was stored so far.
  std::vector<Cell> cells(cells_.size());
  for (Cell& c : cells) c = fresh_cell();
  auto parse = [&]() -> Status {
    const int H = layout_.n_kv_head, B = options_.block_size;
    std::vector<uint8_t> unit(codec_.unit_bytes());
    for (size_t ci = 0; ci < cells.size(); ++ci) {
      Cell& c = cells[ci];
      const std::string where = " of layer " + std::to_string(ci / layout_.n_seq) + " sequence " +
                                std::to_string(ci % layout_.n_seq);
      ENGRAM_RETURN_IF_ERROR(r.read(c.n_stored, "n_stored"));
      ENGRAM_RETURN_IF_ERROR(r.read(c.tail_start, "tail_start"));
      ENGRAM_RETURN_IF_ERROR(r.read(c.n_blocks, "n_blocks"));
      const bool ok = c.n_stored >= 0 && c.n_stored <= layout_.n_ctx && c.tail_start >= options_.sinks &&
                      c.n_blocks >= 0 && c.n_blocks <= layout_.n_ctx / B &&
                      (c.n_stored <= options_.sinks || c.tail_start <= c.n_stored) &&
                      (mode_ == Mode::WINDOW || c.tail_start == options_.sinks + c.n_blocks * B);
      if (!ok)
        return make_error(path, ": inconsistent positions", where, " (n_stored ", std::to_string(c.n_stored),
                          ", tail_start ", std::to_string(c.tail_start), ", n_blocks ", std::to_string(c.n_blocks),
                          ", capacity ", std::to_string(layout_.n_ctx), ")");
      const size_t n_sink = static_cast<size_t>(std::min<int64_t>(c.n_stored, options_.sinks));
      const size_t n_tail = static_cast<size_t>(std::max<int64_t>(0, c.n_stored - c.tail_start));
      ENGRAM_RETURN_IF_ERROR(r.read_vec(c.sink_k, n_sink * k_row(), "sink keys"));
      ENGRAM_RETURN_IF_ERROR(r.read_vec(c.sink_v, n_sink * v_row(), "sink values"));
      if (mode_ == Mode::ENGRAM) {
        for (int64_t u = 0; u < c.n_blocks * H; ++u) {
          ENGRAM_RETURN_IF_ERROR(r.read_bytes(unit.data(), unit.size(), "block unit"));
          update_capacity();
          Expected<uint32_t> id = store_->put(unit.data());
          if (!id) return id.error();
          c.units.push_back(*id);
        }
        ENGRAM_RETURN_IF_ERROR(
            r.read_vec(c.summary, static_cast<size_t>(c.n_blocks) * H * summary_floats(), "block summaries"));
        std::vector<uint8_t> entry(c.index.entry_bytes());
        for (int64_t e = 0; exact_index() && e < c.n_blocks * H; ++e) {
          ENGRAM_RETURN_IF_ERROR(r.read_bytes(entry.data(), entry.size(), "block index keys"));
          c.index.append_raw(entry.data());
        }
      }
      ENGRAM_RETURN_IF_ERROR(r.read_vec(c.tail_k, n_tail * k_row(), "tail keys"));
      ENGRAM_RETURN_IF_ERROR(r.read_vec(c.tail_v, n_tail * v_row(), "tail values"));
    }
    if (r.remaining() != 0)
      return make_error(path, ": engram memory file has ", std::to_string(r.remaining()),
                        " unexpected bytes after the data");
    return Status::ok();
  };
  Status st = parse();
  if (!st.is_ok()) {
    for (Cell& c : cells) release_cell(c);
    return st;
  }
  for (Cell& c : cells_) release_cell(c);
  cells_ = std::move(cells);
  last_error_ = Status::ok();
  update_capacity();
  if (store_) ENGRAM_RETURN_IF_ERROR(store_->unpin_all());
  return Status::ok();
}

// ------------------------------------------------------------ factories

std::unique_ptr<Memory> make_engram_memory(const MemoryLayout& layout, const EngramMemoryOptions& options) {
  return std::make_unique<EngramMemory>(layout, options, EngramMemory::Mode::ENGRAM);
}

Expected<std::unique_ptr<Memory>> make_memory(const std::string& kind, const MemoryLayout& layout,
                                              const EngramMemoryOptions& options) {
  if (kind == "dense") {
    if (options.compression == BlockCompression::INT8)
      return make_error("dense memory stores keys and values as fp16 or f32, not int8 (--kv-compression; "
                        "int8 is for engram memory's blocks)");
    return make_dense_memory(layout, options.compression);
  }
  if (kind == "window") return make_window_memory(layout, options);
  if (kind == "engram") return make_engram_memory(layout, options);
  return make_error("unknown memory kind '", kind, "' (expected dense, window or engram)");
}

}  // namespace engram
