// The dense KV cache: every key and value of every position, one growable
// buffer per (layer, sequence). This is the baseline the other memories are
// measured against.
//
// Elements are IEEE half (DenseMemory<uint16_t>: what make_memory builds by
// default, as llama.cpp's default KV cache; half the bytes of float32 per
// context token) or float32 (DenseMemory<float>: exact, make_dense_memory's
// default and --kv-compression f32). With half storage, attention widens a
// chunk of keys and values to float32 scratch (in prefill, a layer's keys
// once for all tiles) and runs the same scores + online softmax on it.
//
// Storage per (layer, seq), T = uint16_t (half bits) or float, head-major so
// that a chunk of one KV head's keys is contiguous (one conversion call, and
// the GEMM packs from consecutive rows):
//   k: [n_kv_head, capacity, k_dim]   v: [n_kv_head, capacity, v_dim]
// With layout.values_in_keys (MLA latents) v stays empty: a position's value
// is the first v_dim entries of its key row.
// Buffers grow as positions are appended (up to n_ctx), so a short
// conversation does not pay for the full context.
//
// Removing a range from the middle of a sequence leaves a hole: the positions
// are marked absent and attention skips them (positions are never shifted,
// since stored keys carry their RoPE rotation).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "memory/memory.h"
#include "memory/online_softmax.h"

namespace engram {
namespace {

// On-disk format (little-endian):
//   "ENGRAMKV" | u32 version | u32 n_layer | u32 n_kv_head | u32 k_dim | u32 v_dim | u32 values_in_keys
//   | u32 n_seq
//   per seq:   i64 n_positions | n_positions x u8 present
//   per layer, per seq: i64 n_stored | k floats [n_stored][n_kv_head][k_dim] | v floats [n_stored][n_kv_head][v_dim]
//   (no v floats when values_in_keys). Version 1 files lack values_in_keys
//   (always 0) and still load. Files hold float32 whatever the memory stores
//   (half -> float -> half is exact), so either kind of memory loads them.
constexpr char kMagic[8] = {'E', 'N', 'G', 'R', 'A', 'M', 'K', 'V'};
constexpr uint32_t kVersion = 2;

// One sequence alone (save_seq / load_seq), little-endian:
//   "ENGRAMSQ" | u32 version | u32 n_layer | u32 n_kv_head | u32 k_dim | u32 v_dim | u32 values_in_keys
//   i64 n_positions | n_positions x u8 present
//   per layer: k floats [n_positions*n_kv_head*k_dim] | v floats [n_positions*n_kv_head*v_dim] (none when
//   values_in_keys). Version 1: no values_in_keys field (0).
constexpr char kSeqMagic[8] = {'E', 'N', 'G', 'R', 'A', 'M', 'S', 'Q'};
constexpr uint32_t kSeqVersion = 2;

template <class T>
struct LayerSeq {
  std::vector<T> k;  // [n_kv_head, capacity, k_dim]
  std::vector<T> v;  // [n_kv_head, capacity, v_dim]; empty when values_in_keys
  int64_t capacity = 0;  // positions each head has room for
  int64_t n_stored = 0;
};

// Element conversions between the stored type and float32.
void store_elements(const float* src, float* dst, size_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void store_elements(const float* src, uint16_t* dst, size_t n) { kernels::f32_to_f16(src, dst, n); }
void load_elements(const float* src, float* dst, size_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void load_elements(const uint16_t* src, float* dst, size_t n) { kernels::f16_to_f32(src, dst, n); }

// Bounds-checked reader over a file's bytes; every failure names the file.
class ByteReader {
 public:
  ByteReader(const std::vector<char>& bytes, const std::string& path) : bytes_(bytes), path_(path) {}

  template <class T>
  Status read(T& out, const char* what) {
    return read_bytes(&out, sizeof(T), what);
  }
  Status read_bytes(void* dst, size_t n, const char* what) {
    if (n > bytes_.size() - pos_)
      return make_error(path_, ": truncated KV file: ", what, " needs ", std::to_string(n), " bytes at offset ",
                        std::to_string(pos_), ", only ", std::to_string(bytes_.size() - pos_), " left");
    if (n) std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return Status::ok();
  }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  const std::vector<char>& bytes_;
  const std::string& path_;
  size_t pos_ = 0;
};

template <class T>
class DenseMemory final : public Memory {
 public:
  explicit DenseMemory(const MemoryLayout& layout)
      : Memory(layout),
        cells_(static_cast<size_t>(std::max(layout.n_layer, 0)) * static_cast<size_t>(std::max(layout.n_seq, 0))),
        present_(static_cast<size_t>(std::max(layout.n_seq, 0))) {}

  Status append(int layer, int seq, int64_t pos0, int n, const float* k, const float* v) override {
    ENGRAM_RETURN_IF_ERROR(check_layer_seq(layer, seq));
    if (n <= 0) return Status::ok();
    if (pos0 < 0) return make_error("KV memory: negative position ", std::to_string(pos0));
    if (pos0 + n > layout_.n_ctx) {
      int64_t first_bad = std::max(pos0, layout_.n_ctx);
      return make_error("context full: position ", std::to_string(first_bad), " exceeds the memory's ",
                        std::to_string(layout_.n_ctx), " positions");
    }
    if (layout_.values_in_keys && layout_.v_dim > layout_.k_dim)
      return make_error("KV memory: values_in_keys needs v_dim (", std::to_string(layout_.v_dim),
                        ") <= k_dim (", std::to_string(layout_.k_dim), ")");
    LayerSeq<T>& c = cell(layer, seq);
    if (pos0 > c.n_stored)
      return make_error("KV memory: append at position ", std::to_string(pos0), " of layer ", std::to_string(layer),
                        " sequence ", std::to_string(seq), " leaves a gap after position ",
                        std::to_string(c.n_stored));
    // Writing position p makes everything after it stale (it was computed
    // with the old p in context), so the sequence now ends at pos0 + n.
    const int64_t end = pos0 + n;
    grow(c, end);
    const size_t k_dim = static_cast<size_t>(layout_.k_dim), v_dim = static_cast<size_t>(layout_.v_dim);
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < layout_.n_kv_head; ++h) {
        const size_t row = static_cast<size_t>(i) * layout_.n_kv_head + h;
        store_elements(k + row * k_dim, key_row(c, h, pos0 + i), k_dim);
        if (has_values())  // v is ignored (may be null) when values live in the keys
          store_elements(v + row * v_dim, value_row(c, h, pos0 + i), v_dim);
      }
    }
    c.n_stored = end;

    std::vector<uint8_t>& present = present_[static_cast<size_t>(seq)];
    if (static_cast<int64_t>(present.size()) < end) present.resize(static_cast<size_t>(end), 0);
    std::fill(present.begin() + pos0, present.begin() + end, uint8_t{1});
    return Status::ok();
  }

  void attend(int layer, int seq, int64_t pos0, int n, int n_head, const float* q, float* out, float scale,
              ThreadPool& pool) override {
    const int n_kv_head = layout_.n_kv_head, v_dim = layout_.v_dim;
    if (n <= 0) return;
    if (!check_layer_seq(layer, seq).is_ok() || n_kv_head <= 0 || n_head <= 0 || n_head % n_kv_head != 0) {
      // Misuse (the model checks its layout first): defined output, no crash.
      std::memset(out, 0, static_cast<size_t>(n) * std::max(n_head, 0) * v_dim * sizeof(float));
      return;
    }
    const LayerSeq<T>& c = cell(layer, seq);
    const std::vector<uint8_t>& present = present_[static_cast<size_t>(seq)];
    const int64_t n_keys_max = std::min<int64_t>(pos0 + n, c.n_stored);
    const bool has_holes =
        std::find(present.begin(), present.begin() + std::max<int64_t>(n_keys_max, 0), uint8_t{0}) !=
        present.begin() + std::max<int64_t>(n_keys_max, 0);
    tiles_.resize(static_cast<size_t>(pool.size()));

    // One work item = one (query tile, kv head); each is computed whole by
    // one thread, so results do not depend on the thread count. Tiles are
    // taken in zig-zag order (first, last, second, ...) because parallel_for
    // hands each thread a contiguous range and causal tiles grow in cost.
    const int n_tiles = (n + kTileQueries - 1) / kTileQueries;
    const TileShape shape{pos0, n_head, n_head / n_kv_head, scale, has_holes};
    // Half storage and several tiles (prefill): every tile would widen the
    // same key chunks again, so widen them all once, in parallel.
    const Widened* wide = nullptr;
    if constexpr (!std::is_same_v<T, float>) {
      if (n_tiles > 2) wide = widen(c, n_keys_max, pool);
    }
    pool.parallel_for(static_cast<size_t>(n_tiles) * n_kv_head, [&](size_t begin, size_t end, int thread) {
      for (size_t item = begin; item < end; ++item) {
        const int slot = static_cast<int>(item / static_cast<size_t>(n_kv_head));
        const int kvh = static_cast<int>(item % static_cast<size_t>(n_kv_head));
        const int tile = slot % 2 == 0 ? slot / 2 : n_tiles - 1 - slot / 2;
        const int i0 = tile * kTileQueries;
        attend_tile(c, wide, present, shape, kvh, i0, std::min(n, i0 + kTileQueries), q, out,
                    tiles_[static_cast<size_t>(thread)]);
      }
    });
  }

  void remove(int seq, int64_t p0, int64_t p1) override {
    if (seq < 0 || seq >= layout_.n_seq) return;
    p0 = std::max<int64_t>(p0, 0);
    const int64_t end = n_positions(seq);
    if (p1 < 0 || p1 >= end) {
      // Truncation: drop the tail (its storage stays for the next appends).
      for (int l = 0; l < layout_.n_layer; ++l) {
        LayerSeq<T>& c = cell(l, seq);
        c.n_stored = std::min(c.n_stored, p0);
      }
      std::vector<uint8_t>& present = present_[static_cast<size_t>(seq)];
      present.resize(static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(present.size()), p0)));
      return;
    }
    if (p0 >= p1) return;
    std::vector<uint8_t>& present = present_[static_cast<size_t>(seq)];
    std::fill(present.begin() + p0, present.begin() + p1, uint8_t{0});  // a hole
  }

  Status copy(int src_seq, int dst_seq) override {
    if (src_seq < 0 || src_seq >= layout_.n_seq || dst_seq < 0 || dst_seq >= layout_.n_seq)
      return make_error("KV memory: copy between sequences ", std::to_string(src_seq), " and ",
                        std::to_string(dst_seq), " outside 0..", std::to_string(layout_.n_seq - 1));
    if (src_seq == dst_seq) return Status::ok();
    for (int l = 0; l < layout_.n_layer; ++l) cell(l, dst_seq) = cell(l, src_seq);
    present_[static_cast<size_t>(dst_seq)] = present_[static_cast<size_t>(src_seq)];
    return Status::ok();
  }

  int64_t n_positions(int seq) const override {
    if (seq < 0 || seq >= layout_.n_seq) return 0;
    int64_t n = 0;
    for (int l = 0; l < layout_.n_layer; ++l) n = std::max(n, cell(l, seq).n_stored);
    return n;
  }

  Status save(const std::string& path) const override {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return make_error(path, ": cannot open for writing");
    auto put = [&](const void* p, size_t n) { out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n)); };
    auto put_u32 = [&](uint32_t x) { put(&x, sizeof x); };
    auto put_i64 = [&](int64_t x) { put(&x, sizeof x); };
    put(kMagic, sizeof kMagic);
    put_u32(kVersion);
    put_u32(static_cast<uint32_t>(layout_.n_layer));
    put_u32(static_cast<uint32_t>(layout_.n_kv_head));
    put_u32(static_cast<uint32_t>(layout_.k_dim));
    put_u32(static_cast<uint32_t>(layout_.v_dim));
    put_u32(layout_.values_in_keys ? 1u : 0u);
    put_u32(static_cast<uint32_t>(layout_.n_seq));
    for (const auto& present : present_) {
      put_i64(static_cast<int64_t>(present.size()));
      put(present.data(), present.size());
    }
    for (int l = 0; l < layout_.n_layer; ++l) {
      for (int s = 0; s < layout_.n_seq; ++s) {
        const LayerSeq<T>& c = cell(l, s);
        put_i64(c.n_stored);
        put_positions(out, c, c.n_stored);
      }
    }
    out.flush();
    if (!out) return make_error(path, ": write failed");
    return Status::ok();
  }

  Status load(const std::string& path) override {
    std::vector<char> bytes;
    ENGRAM_RETURN_IF_ERROR(read_file_bytes(path, "KV file", bytes));
    ByteReader r(bytes, path);
    ENGRAM_RETURN_IF_ERROR(read_header(r, path, {kMagic, kVersion, "KV file", /*with_n_seq=*/true}));

    // Parse into fresh storage so a bad file leaves the memory untouched.
    std::vector<std::vector<uint8_t>> present(present_.size());
    for (int s = 0; s < layout_.n_seq; ++s) {
      int64_t n = 0;
      ENGRAM_RETURN_IF_ERROR(check_count(r, n, path, "sequence", s));
      present[static_cast<size_t>(s)].resize(static_cast<size_t>(n));
      ENGRAM_RETURN_IF_ERROR(r.read_bytes(present[static_cast<size_t>(s)].data(), static_cast<size_t>(n), "position flags"));
    }
    std::vector<LayerSeq<T>> cells(cells_.size());
    for (int l = 0; l < layout_.n_layer; ++l) {
      for (int s = 0; s < layout_.n_seq; ++s) {
        LayerSeq<T>& c = cells[static_cast<size_t>(l) * layout_.n_seq + s];
        ENGRAM_RETURN_IF_ERROR(check_count(r, c.n_stored, path, "layer", l));
        if (c.n_stored > static_cast<int64_t>(present[static_cast<size_t>(s)].size()))
          return make_error(path, ": layer ", std::to_string(l), " sequence ", std::to_string(s), " stores ",
                            std::to_string(c.n_stored), " positions but the sequence has ",
                            std::to_string(present[static_cast<size_t>(s)].size()));
        ENGRAM_RETURN_IF_ERROR(read_positions(r, c, c.n_stored));
      }
    }
    if (r.remaining() != 0)
      return make_error(path, ": KV file has ", std::to_string(r.remaining()), " unexpected bytes after the data");
    cells_ = std::move(cells);
    present_ = std::move(present);
    return Status::ok();
  }

  Status save_seq(int seq, const std::string& path, int64_t n) const override {
    if (seq < 0 || seq >= layout_.n_seq)
      return make_error(path, ": cannot save sequence ", std::to_string(seq), ": outside the memory's 0..",
                        std::to_string(layout_.n_seq - 1));
    int64_t held = n_positions(seq);
    for (int l = 0; l < layout_.n_layer; ++l) held = std::min(held, cell(l, seq).n_stored);
    if (n < 0) n = held;
    if (n > held)
      return make_error(path, ": cannot save ", std::to_string(n), " positions of sequence ", std::to_string(seq),
                        ": it holds ", std::to_string(held), " in every layer");
    // Written beside the target and renamed over it, so a reader never sees
    // half a file.
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) return make_error(tmp, ": cannot open for writing");
      auto put = [&](const void* p, size_t bytes) {
        out.write(static_cast<const char*>(p), static_cast<std::streamsize>(bytes));
      };
      put(kSeqMagic, sizeof kSeqMagic);
      for (uint32_t x : {kSeqVersion, static_cast<uint32_t>(layout_.n_layer), static_cast<uint32_t>(layout_.n_kv_head),
                         static_cast<uint32_t>(layout_.k_dim), static_cast<uint32_t>(layout_.v_dim),
                         layout_.values_in_keys ? 1u : 0u})
        put(&x, sizeof x);
      put(&n, sizeof n);
      put(present_[static_cast<size_t>(seq)].data(), static_cast<size_t>(n));
      for (int l = 0; l < layout_.n_layer; ++l) {
        const LayerSeq<T>& c = cell(l, seq);
        put_positions(out, c, n);
      }
      out.flush();
      if (!out) {
        out.close();
        std::remove(tmp.c_str());
        return make_error(tmp, ": write failed");
      }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      std::remove(tmp.c_str());
      return make_error(path, ": cannot rename ", tmp, " to it");
    }
    return Status::ok();
  }

  Status load_seq(int seq, const std::string& path) override {
    if (seq < 0 || seq >= layout_.n_seq)
      return make_error(path, ": cannot load into sequence ", std::to_string(seq), ": outside the memory's 0..",
                        std::to_string(layout_.n_seq - 1));
    std::vector<char> bytes;
    ENGRAM_RETURN_IF_ERROR(read_file_bytes(path, "sequence file", bytes));
    ByteReader r(bytes, path);
    ENGRAM_RETURN_IF_ERROR(read_header(r, path, {kSeqMagic, kSeqVersion, "sequence file", /*with_n_seq=*/false}));
    int64_t n = 0;
    ENGRAM_RETURN_IF_ERROR(check_count(r, n, path, "sequence", seq));
    std::vector<uint8_t> present(static_cast<size_t>(n));
    ENGRAM_RETURN_IF_ERROR(r.read_bytes(present.data(), present.size(), "position flags"));
    std::vector<LayerSeq<T>> cells(static_cast<size_t>(layout_.n_layer));
    for (LayerSeq<T>& c : cells) {
      c.n_stored = n;
      ENGRAM_RETURN_IF_ERROR(read_positions(r, c, n));
    }
    if (r.remaining() != 0)
      return make_error(path, ": sequence file has ", std::to_string(r.remaining()),
                        " unexpected bytes after the data");
    for (int l = 0; l < layout_.n_layer; ++l) cell(l, seq) = std::move(cells[static_cast<size_t>(l)]);
    present_[static_cast<size_t>(seq)] = std::move(present);
    return Status::ok();
  }

  size_t bytes_used() const override {
    size_t bytes = sizeof(*this);
    for (const TileScratch& t : tiles_) {
      bytes += sizeof(t) + (t.q.capacity() + t.scores.capacity() + t.max.capacity() + t.sum.capacity() +
                            t.pack.capacity() + t.keys.capacity() + t.values.capacity()) * sizeof(float);
    }
    bytes += (wide_.k.capacity() + wide_.v.capacity()) * sizeof(float);
    for (const LayerSeq<T>& c : cells_) bytes += (c.k.capacity() + c.v.capacity()) * sizeof(T) + sizeof(LayerSeq<T>);
    for (const auto& p : present_) bytes += p.capacity() + sizeof(p);
    return bytes;
  }

 private:
  LayerSeq<T>& cell(int layer, int seq) { return cells_[static_cast<size_t>(layer) * layout_.n_seq + seq]; }
  const LayerSeq<T>& cell(int layer, int seq) const {
    return cells_[static_cast<size_t>(layer) * layout_.n_seq + seq];
  }

  bool has_values() const { return !layout_.values_in_keys; }
  // Rows of position p of kv head h (p < capacity).
  static size_t row_index(const LayerSeq<T>& c, int h, int64_t p) {
    return static_cast<size_t>(h) * static_cast<size_t>(c.capacity) + static_cast<size_t>(p);
  }
  T* key_row(LayerSeq<T>& c, int h, int64_t p) const { return c.k.data() + row_index(c, h, p) * layout_.k_dim; }
  const T* key_row(const LayerSeq<T>& c, int h, int64_t p) const {
    return c.k.data() + row_index(c, h, p) * layout_.k_dim;
  }
  T* value_row(LayerSeq<T>& c, int h, int64_t p) const { return c.v.data() + row_index(c, h, p) * layout_.v_dim; }
  const T* value_row(const LayerSeq<T>& c, int h, int64_t p) const {
    return c.v.data() + row_index(c, h, p) * layout_.v_dim;
  }

  // Room for `end` positions per head: capacity doubles (up to n_ctx), and
  // each head's stored rows move to the start of its new range.
  void grow(LayerSeq<T>& c, int64_t end) const {
    if (end <= c.capacity) return;
    const int64_t capacity = std::min(std::max({end, 2 * c.capacity, int64_t{16}}), std::max(layout_.n_ctx, end));
    LayerSeq<T> bigger;
    bigger.capacity = capacity;
    bigger.n_stored = c.n_stored;
    const size_t heads = static_cast<size_t>(layout_.n_kv_head), k_dim = static_cast<size_t>(layout_.k_dim),
                 v_dim = static_cast<size_t>(layout_.v_dim), kept = static_cast<size_t>(c.n_stored);
    bigger.k.resize(heads * static_cast<size_t>(capacity) * k_dim);
    if (has_values()) bigger.v.resize(heads * static_cast<size_t>(capacity) * v_dim);
    for (int h = 0; h < layout_.n_kv_head; ++h) {
      if (kept == 0) break;
      std::memcpy(key_row(bigger, h, 0), key_row(c, h, 0), kept * k_dim * sizeof(T));
      if (has_values()) std::memcpy(value_row(bigger, h, 0), value_row(c, h, 0), kept * v_dim * sizeof(T));
    }
    c = std::move(bigger);
  }

  // The file's layout: positions [0, n) as float32, keys [n][n_kv_head][k_dim]
  // then values [n][n_kv_head][v_dim] (none when values live in the keys).
  void put_positions(std::ofstream& out, const LayerSeq<T>& c, int64_t n) const {
    std::vector<float> row(static_cast<size_t>(std::max(layout_.k_dim, layout_.v_dim)));
    auto put_rows = [&](auto row_of, size_t dim) {
      for (int64_t p = 0; p < n; ++p) {
        for (int h = 0; h < layout_.n_kv_head; ++h) {
          load_elements(row_of(h, p), row.data(), dim);
          out.write(reinterpret_cast<const char*>(row.data()), static_cast<std::streamsize>(dim * sizeof(float)));
        }
      }
    };
    put_rows([&](int h, int64_t p) { return key_row(c, h, p); }, static_cast<size_t>(layout_.k_dim));
    if (has_values()) put_rows([&](int h, int64_t p) { return value_row(c, h, p); }, static_cast<size_t>(layout_.v_dim));
  }
  // Reads what put_positions wrote into a cell with room for n positions.
  Status read_positions(ByteReader& r, LayerSeq<T>& c, int64_t n) const {
    const int64_t stored = c.n_stored;
    c.n_stored = 0;
    grow(c, n);
    c.n_stored = stored;
    std::vector<float> row(static_cast<size_t>(std::max(layout_.k_dim, layout_.v_dim)));
    auto read_rows = [&](auto row_of, size_t dim, const char* what) -> Status {
      for (int64_t p = 0; p < n; ++p) {
        for (int h = 0; h < layout_.n_kv_head; ++h) {
          ENGRAM_RETURN_IF_ERROR(r.read_bytes(row.data(), dim * sizeof(float), what));
          store_elements(row.data(), row_of(h, p), dim);
        }
      }
      return Status::ok();
    };
    ENGRAM_RETURN_IF_ERROR(read_rows([&](int h, int64_t p) { return key_row(c, h, p); },
                                     static_cast<size_t>(layout_.k_dim), "keys"));
    if (has_values())
      ENGRAM_RETURN_IF_ERROR(read_rows([&](int h, int64_t p) { return value_row(c, h, p); },
                                       static_cast<size_t>(layout_.v_dim), "values"));
    return Status::ok();
  }

  Status check_layer_seq(int layer, int seq) const {
    if (layer < 0 || layer >= layout_.n_layer)
      return make_error("KV memory: layer ", std::to_string(layer), " outside 0..", std::to_string(layout_.n_layer - 1));
    if (seq < 0 || seq >= layout_.n_seq)
      return make_error("KV memory: sequence ", std::to_string(seq), " outside 0..", std::to_string(layout_.n_seq - 1));
    return Status::ok();
  }

  // The two file formats share their header: magic, version and layout
  // (the whole-memory file adds n_seq). Version 1 predates values_in_keys.
  struct FileKind {
    const char* magic;  // 8 bytes
    uint32_t version;
    const char* name;   // "KV file" | "sequence file", for errors
    bool with_n_seq;
  };
  Status read_header(ByteReader& r, const std::string& path, const FileKind& kind) const {
    char magic[8];
    ENGRAM_RETURN_IF_ERROR(r.read_bytes(magic, sizeof magic, "magic"));
    if (std::memcmp(magic, kind.magic, sizeof magic) != 0)
      return make_error(path, ": not an engram ", kind.name, " (bad magic)");
    uint32_t version = 0;
    ENGRAM_RETURN_IF_ERROR(r.read(version, "version"));
    if (version != kind.version && version != 1)
      return make_error(path, ": ", kind.name, " version ", std::to_string(version), " is not supported (expected ",
                        std::to_string(kind.version), ")");
    struct Field { const char* name; int expected; };
    const Field fields[] = {{"n_layer", layout_.n_layer},
                            {"n_kv_head", layout_.n_kv_head},
                            {"k_dim", layout_.k_dim},
                            {"v_dim", layout_.v_dim},
                            {"values_in_keys", layout_.values_in_keys ? 1 : 0},
                            {"n_seq", layout_.n_seq}};
    for (const Field& f : fields) {
      if (!kind.with_n_seq && std::strcmp(f.name, "n_seq") == 0) continue;
      uint32_t got = 0;
      if (version == 1 && std::strcmp(f.name, "values_in_keys") == 0)
        got = 0;  // not in the file: values were always stored
      else
        ENGRAM_RETURN_IF_ERROR(r.read(got, f.name));
      if (static_cast<int64_t>(got) != f.expected)
        return make_error(path, ": KV layout mismatch: ", f.name, " is ", std::to_string(got), " in the file but ",
                          std::to_string(f.expected), " in this memory");
    }
    return Status::ok();
  }

  static Status read_file_bytes(const std::string& path, const char* name, std::vector<char>& bytes) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error(path, ": cannot open ", name);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return Status::ok();
  }

  // Reads a position count and checks it against the capacity.
  Status check_count(ByteReader& r, int64_t& n, const std::string& path, const char* what, int index) const {
    ENGRAM_RETURN_IF_ERROR(r.read(n, "position count"));
    if (n < 0 || n > layout_.n_ctx)
      return make_error(path, ": ", what, " ", std::to_string(index), " holds ", std::to_string(n),
                        " positions, outside this memory's capacity of ", std::to_string(layout_.n_ctx));
    return Status::ok();
  }

  // Queries per attention tile and keys per chunk: a tile's group * 16 query
  // rows times a chunk of 128 keys is one score GEMM (scores 32 KiB with 4
  // query heads per kv head).
  static constexpr int kTileQueries = 16;
  static constexpr int kKeyChunk = 128;
  // Up to this many query rows per tile, scores are row dots, not a GEMM.
  static constexpr int kDotRows = 4;

  struct TileShape {
    int64_t pos0;    // position of query 0
    int n_head;      // query heads
    int group;       // query heads per kv head
    float scale;     // score scale
    bool has_holes;  // some visible position is absent (removed)
  };

  // Per-thread scratch of attend_tile, kept between calls.
  struct TileScratch {
    std::vector<float> q;       // [group * n_queries, k_dim] the tile's query rows
    std::vector<float> scores;  // [group * n_queries, kKeyChunk]
    std::vector<float> max;     // per row: running max score
    std::vector<float> sum;     // per row: running sum of exp(score - max)
    std::vector<float> pack;    // gemm_f32's packed keys
    std::vector<float> keys;    // half storage: [kKeyChunk, k_dim] the chunk's keys of one kv head as float
    std::vector<float> values;  // half storage: [kKeyChunk, v_dim] its values
  };

  // Keys [0, n_keys) of every kv head of one cell widened to float32, in the
  // cell's head-major layout: [n_kv_head, n_keys, k_dim] and [.., v_dim].
  struct Widened {
    std::vector<float> k, v;
    int64_t n_keys = 0;
  };
  const Widened* widen(const LayerSeq<T>& c, int64_t n_keys, ThreadPool& pool) {
    const size_t k_dim = static_cast<size_t>(layout_.k_dim), v_dim = static_cast<size_t>(layout_.v_dim);
    const size_t rows = static_cast<size_t>(layout_.n_kv_head) * static_cast<size_t>(n_keys);
    wide_.n_keys = n_keys;
    if (wide_.k.size() < rows * k_dim) wide_.k.resize(rows * k_dim);
    if (has_values() && wide_.v.size() < rows * v_dim) wide_.v.resize(rows * v_dim);
    const size_t chunks = static_cast<size_t>((n_keys + kKeyChunk - 1) / kKeyChunk);
    pool.parallel_for(static_cast<size_t>(layout_.n_kv_head) * chunks, [&](size_t begin, size_t end, int) {
      for (size_t item = begin; item < end; ++item) {
        const int h = static_cast<int>(item / chunks);
        const int64_t j0 = static_cast<int64_t>(item % chunks) * kKeyChunk;
        const size_t count = static_cast<size_t>(std::min<int64_t>(kKeyChunk, n_keys - j0));
        const size_t row = static_cast<size_t>(h) * static_cast<size_t>(n_keys) + static_cast<size_t>(j0);
        load_elements(key_row(c, h, j0), wide_.k.data() + row * k_dim, count * k_dim);
        if (has_values()) load_elements(value_row(c, h, j0), wide_.v.data() + row * v_dim, count * v_dim);
      }
    });
    return &wide_;
  }

  // Float rows of one chunk of keys [j0, j0 + n) of kv head kvh and their
  // values: pointers into the storage (float), or into the scratch they are
  // converted to (half). Values are their own rows or the key rows' first
  // v_dim entries (values_in_keys).
  struct ChunkRows {
    const float* k;
    size_t k_stride;
    const float* v;
    size_t v_stride;
  };
  ChunkRows chunk_rows(const LayerSeq<T>& c, const Widened* wide, int kvh, int64_t j0, size_t n,
                       TileScratch& ts) const {
    const size_t k_dim = static_cast<size_t>(layout_.k_dim), v_dim = static_cast<size_t>(layout_.v_dim);
    if (wide) {
      const size_t row = static_cast<size_t>(kvh) * static_cast<size_t>(wide->n_keys) + static_cast<size_t>(j0);
      const float* k = wide->k.data() + row * k_dim;
      return has_values() ? ChunkRows{k, k_dim, wide->v.data() + row * v_dim, v_dim} : ChunkRows{k, k_dim, k, k_dim};
    }
    const T* k = key_row(c, kvh, j0);
    const T* v = has_values() ? value_row(c, kvh, j0) : nullptr;
    if constexpr (std::is_same_v<T, float>) {
      return has_values() ? ChunkRows{k, k_dim, v, v_dim} : ChunkRows{k, k_dim, k, k_dim};
    } else {
      ts.keys.resize(kKeyChunk * k_dim);
      load_elements(k, ts.keys.data(), n * k_dim);
      if (!has_values()) return {ts.keys.data(), k_dim, ts.keys.data(), k_dim};
      ts.values.resize(kKeyChunk * v_dim);
      load_elements(v, ts.values.data(), n * v_dim);
      return {ts.keys.data(), k_dim, ts.values.data(), v_dim};
    }
  }

  // ts.scores[row * kKeyChunk + r] = query row . key r of the chunk. A GEMM
  // packs the keys into a panel first, which pays off only with several query
  // rows; decode (one row per head, or a small GQA group) takes plain dots.
  static void chunk_scores(const ChunkRows& kv, size_t chunk, TileScratch& ts, int rows, int k_dim) {
    if (rows > kDotRows) {
      kernels::gemm_f32(kv.k, kv.k_stride, chunk, ts.q.data(), static_cast<size_t>(k_dim), static_cast<size_t>(rows),
                        static_cast<size_t>(k_dim), ts.scores.data(), kKeyChunk, ts.pack);
      return;
    }
    for (int row = 0; row < rows; ++row) {
      const float* q = ts.q.data() + static_cast<size_t>(row) * k_dim;
      float* s = ts.scores.data() + static_cast<size_t>(row) * kKeyChunk;
      for (size_t r = 0; r < chunk; ++r) s[r] = kernels::dot(q, kv.k + r * kv.k_stride, static_cast<size_t>(k_dim));
    }
  }

  // Attention of queries [i0, i1) of the query heads of kv head kvh, with an
  // online softmax over chunks of keys (flash-attention style): each chunk's
  // scores come from one GEMM of the tile's query rows against the chunk's
  // keys, then every row rescales its output, adds exp(score - max) and the
  // weighted values. Tile row g * nq + t is query i0 + t of head
  // kvh * group + g.
  void attend_tile(const LayerSeq<T>& c, const Widened* wide, const std::vector<uint8_t>& present, const TileShape& shape, int kvh, int i0,
                   int i1, const float* q, float* out, TileScratch& ts) const {
    const int k_dim = layout_.k_dim, v_dim = layout_.v_dim;
    const int nq = i1 - i0, rows = shape.group * nq;
    const auto query = [&](int row) { return static_cast<size_t>(i0 + row % nq) * shape.n_head + kvh * shape.group + row / nq; };
    ts.q.resize(static_cast<size_t>(rows) * k_dim);
    ts.scores.resize(static_cast<size_t>(rows) * kKeyChunk);
    ts.max.assign(static_cast<size_t>(rows), -std::numeric_limits<float>::infinity());
    ts.sum.assign(static_cast<size_t>(rows), 0.f);
    for (int row = 0; row < rows; ++row) {
      std::memcpy(ts.q.data() + static_cast<size_t>(row) * k_dim, q + query(row) * k_dim, k_dim * sizeof(float));
      std::memset(out + query(row) * v_dim, 0, static_cast<size_t>(v_dim) * sizeof(float));
    }
    // The tile's last query sees keys [0, n_keys).
    const int64_t n_keys = std::min<int64_t>(shape.pos0 + i1, c.n_stored);
    for (int64_t j0 = 0; j0 < n_keys; j0 += kKeyChunk) {
      const size_t chunk = static_cast<size_t>(std::min<int64_t>(kKeyChunk, n_keys - j0));
      const ChunkRows kv = chunk_rows(c, wide, kvh, j0, chunk, ts);
      chunk_scores(kv, chunk, ts, rows, k_dim);
      for (int row = 0; row < rows; ++row) {
        // Keys of this chunk the row's query sees (itself and earlier).
        const int64_t visible = std::min<int64_t>(shape.pos0 + i0 + row % nq + 1, c.n_stored) - j0;
        if (visible <= 0) continue;
        const size_t count = std::min(chunk, static_cast<size_t>(visible));
        float* s = ts.scores.data() + static_cast<size_t>(row) * kKeyChunk;
        kernels::scale(s, shape.scale, count);
        if (shape.has_holes) {
          for (size_t r = 0; r < count; ++r) {
            if (!present[static_cast<size_t>(j0) + r]) s[r] = -std::numeric_limits<float>::infinity();
          }
        }
        fold_chunk(s, count, kv.v, kv.v_stride, static_cast<size_t>(v_dim),
                   ts.max[static_cast<size_t>(row)], ts.sum[static_cast<size_t>(row)], out + query(row) * v_dim);
      }
    }
    for (int row = 0; row < rows; ++row) {
      const float sum = ts.sum[static_cast<size_t>(row)];
      if (sum > 0.f) kernels::scale(out + query(row) * v_dim, 1.f / sum, static_cast<size_t>(v_dim));
    }
  }

  std::vector<LayerSeq<T>> cells_;             // [n_layer * n_seq]
  std::vector<std::vector<uint8_t>> present_;  // per seq: 1 where a position is stored
  std::vector<TileScratch> tiles_;             // attention scratch, one per pool thread
  Widened wide_;                               // half storage: one layer's keys and values as float (prefill)
};

}  // namespace

std::unique_ptr<Memory> make_dense_memory(const MemoryLayout& layout, BlockCompression storage) {
  if (storage == BlockCompression::F32) return std::make_unique<DenseMemory<float>>(layout);
  return std::make_unique<DenseMemory<uint16_t>>(layout);
}

}  // namespace engram
