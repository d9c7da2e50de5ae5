// Engram memory: block codec bounds, block store (RAM and spill file, bad
// files), retrieval against brute force, attention against dense and against
// a naive reference over the selected blocks, budget, save/load, truncation.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "memory/block_store.h"
#include "memory/engram_memory.h"
#include "memory/key_index.h"
#include "memory/memory.h"
#include "naive_attention.h"
#include "quant/quant.h"
#include "test_support.h"

namespace engram {
namespace {

using test::max_abs_diff;

using test::KvLog;
using test::random_floats;

constexpr int kHeads = 6;  // 3 query heads per KV head

MemoryLayout small_layout(int64_t n_ctx = 1200, int n_seq = 2) {
  MemoryLayout l;
  l.n_layer = 2;
  l.n_kv_head = 2;
  l.k_dim = 8;
  l.v_dim = 12;
  l.n_ctx = n_ctx;
  l.n_seq = n_seq;
  return l;
}

EngramMemoryOptions small_options(BlockCompression c = BlockCompression::F32, int top_k = 1000) {
  EngramMemoryOptions o;
  o.sinks = 4;
  o.window = 40;
  o.block_size = 16;
  o.top_k = top_k;
  o.shared_blocks = 0;  // per-head selections, as brute force ranks them (sharing: its own test)
  o.compression = c;
  return o;
}

// Appends the same random data to a memory and a log, layer by layer.
struct Feeder {
  MemoryLayout l;
  std::vector<KvLog> logs;  // [n_layer]
  std::mt19937 rng{7};

  explicit Feeder(const MemoryLayout& layout) : l(layout), logs(static_cast<size_t>(layout.n_layer)) {}

  // Returns the queries [n, kHeads, k_dim] for each layer.
  std::vector<std::vector<float>> step(std::vector<Memory*> mems, int seq, int64_t pos0, int n) {
    std::vector<std::vector<float>> qs;
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
      auto v = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
      for (Memory* m : mems) EXPECT_TRUE(m->append(layer, seq, pos0, n, k.data(), v.data()).is_ok());
      KvLog& log = logs[static_cast<size_t>(layer)];
      log.k.resize(static_cast<size_t>(pos0) * l.n_kv_head * l.k_dim);
      log.v.resize(static_cast<size_t>(pos0) * l.n_kv_head * l.v_dim);
      log.k.insert(log.k.end(), k.begin(), k.end());
      log.v.insert(log.v.end(), v.begin(), v.end());
      qs.push_back(random_floats(static_cast<size_t>(n) * kHeads * l.k_dim, rng));
    }
    return qs;
  }
};

std::vector<float> run_attend(Memory& m, int layer, int seq, int64_t pos0, int n, const std::vector<float>& q,
                              ThreadPool& pool) {
  std::vector<float> out(static_cast<size_t>(n) * kHeads * m.layout().v_dim, -1.f);
  m.attend(layer, seq, pos0, n, kHeads, q.data(), out.data(), 0.35f, pool);
  return out;
}

// ------------------------------------------------------------ codec

TEST(BlockCodec, F32IsExactAndLossyFormatsStayWithinTheirBounds) {
  std::mt19937 rng(1);
  const int B = 16, kd = 8, vd = 12;
  // Keys span magnitudes (the row of large values checks int8's per-row scale).
  auto k = random_floats(static_cast<size_t>(B) * kd, rng, 3.f);
  auto v = random_floats(static_cast<size_t>(B) * vd, rng, 0.5f);
  for (int i = 0; i < kd; ++i) k[static_cast<size_t>(5) * kd + i] *= 1000.f;
  for (BlockCompression c : {BlockCompression::F32, BlockCompression::F16, BlockCompression::INT8}) {
    BlockCodec codec(c, B, kd, vd);
    std::vector<uint8_t> unit(codec.unit_bytes());
    codec.encode(k.data(), kd, v.data(), vd, unit.data());
    std::vector<float> kb(k.size()), vb(v.size());
    const float *kd_out, *vd_out;
    codec.rows(unit.data(), kb.data(), vb.data(), &kd_out, &vd_out);
    auto check = [&](const std::vector<float>& x, const float* y, int dim, const char* what) {
      for (int r = 0; r < B; ++r) {
        float row_max = 0.f;
        for (int i = 0; i < dim; ++i) row_max = std::max(row_max, std::fabs(x[static_cast<size_t>(r) * dim + i]));
        for (int i = 0; i < dim; ++i) {
          const float xi = x[static_cast<size_t>(r) * dim + i], yi = y[static_cast<size_t>(r) * dim + i];
          // Independent bounds: half an fp16 ulp; half an int8 step of the row.
          float bound = 0.f;
          if (c == BlockCompression::F16) bound = std::ldexp(1.f, std::ilogb(xi) - 11) + 1e-7f;
          if (c == BlockCompression::INT8) bound = row_max / 254.f * 1.0001f;
          ASSERT_LE(std::fabs(xi - yi), bound) << block_compression_name(c) << " " << what << " row " << r;
        }
      }
    };
    check(k, kd_out, kd, "keys");
    check(v, vd_out, vd, "values");
  }
  EXPECT_EQ(BlockCodec(BlockCompression::F32, 128, 64, 64).unit_bytes(), 128u * 128 * 4);
  EXPECT_EQ(BlockCodec(BlockCompression::F16, 128, 64, 64).unit_bytes(), 128u * 128 * 2);
  EXPECT_EQ(BlockCodec(BlockCompression::INT8, 128, 64, 64).unit_bytes(), 128u * 128 + 2 * 128 * 4);
}

TEST(BlockCodec, FastHalfConversionIsExactForEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = fp16_to_fp32(static_cast<uint16_t>(h)), got = half_to_float_fast(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << "half 0x" << std::hex << h;
    }
  }
}

TEST(BlockCodec, ParsesNames) {
  EXPECT_EQ(*parse_block_compression("fp16"), BlockCompression::F16);
  EXPECT_EQ(*parse_block_compression("int8"), BlockCompression::INT8);
  EXPECT_EQ(*parse_block_compression("f32"), BlockCompression::F32);
  auto bad = parse_block_compression("q3");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("q3"), std::string::npos);
}

// ------------------------------------------------------------ block store

std::vector<uint8_t> pattern(size_t n, int seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 31 + seed * 17 + (i >> 7));
  return b;
}

TEST(BlockStore, RoundTripsInRamAndThroughTheSpillFile) {
  const size_t unit = 1000;
  const auto dir = test::temp_dir("engram_store");
  const std::string path = (dir / "spill.bin").string();
  BlockStore store(unit, path);
  store.set_capacity(3 * unit);  // holds 3 of 10 units
  std::vector<uint32_t> ids;
  for (int i = 0; i < 10; ++i) {
    auto data = pattern(unit, i);
    auto id = store.put(data.data());
    ASSERT_TRUE(id) << id.error().message;
    ids.push_back(*id);
    EXPECT_LE(store.resident_bytes(), 3 * unit);
  }
  EXPECT_EQ(store.n_units(), 10u);
  EXPECT_GT(std::filesystem::file_size(path), 0u);
  for (int round = 0; round < 2; ++round)
    for (int i = 9; i >= 0; --i) {
      auto p = store.pin(ids[static_cast<size_t>(i)]);
      ASSERT_TRUE(p) << p.error().message;
      auto want = pattern(unit, i);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), *p)) << "unit " << i;
      ASSERT_TRUE(store.unpin_all().is_ok());
      EXPECT_LE(store.resident_bytes(), 3 * unit);
    }
  EXPECT_GT(store.n_spill_reads(), 0u);
  // Pinned units stay valid even beyond the capacity.
  std::vector<const uint8_t*> pins;
  for (int i = 0; i < 10; ++i) pins.push_back(*store.pin(ids[static_cast<size_t>(i)]));
  for (int i = 0; i < 10; ++i) {
    auto want = pattern(unit, i);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), pins[static_cast<size_t>(i)]));
  }
  ASSERT_TRUE(store.unpin_all().is_ok());
  // Reference counting: a retained unit survives one release; freed ids are reused.
  store.retain(ids[0]);
  store.release(ids[0]);
  std::vector<uint8_t> got(unit);
  ASSERT_TRUE(store.read(ids[0], got.data()).is_ok());
  store.release(ids[0]);
  EXPECT_EQ(store.n_units(), 9u);
  EXPECT_FALSE(store.read(ids[0], got.data()).is_ok());
  auto again = store.put(pattern(unit, 42).data());
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, ids[0]);
  ASSERT_TRUE(store.read(*again, got.data()).is_ok());
  EXPECT_EQ(got, pattern(unit, 42));
}

TEST(BlockStore, UnlimitedCapacityNeverTouchesAFile) {
  BlockStore store(64, "");
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(store.put(pattern(64, i).data()));
  EXPECT_EQ(store.spill_path(), "");
  EXPECT_EQ(store.resident_bytes(), 20u * 64);
}

// Fills a store whose units all spill, returns the ids.
std::vector<uint32_t> fill_spilled(BlockStore& store, int n) {
  store.set_capacity(0);
  std::vector<uint32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(*store.put(pattern(store.unit_bytes(), i).data()));
  return ids;
}

TEST(BlockStore, CorruptedSpillFileIsAClearError) {
  const auto dir = test::temp_dir("engram_store_bad");
  const std::string path = (dir / "spill.bin").string();
  BlockStore store(256, path);
  auto ids = fill_spilled(store, 4);
  {  // flip a byte inside the third unit
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(2 * 256 + 10);
    f.put('\x5a');
  }
  int n_bad = 0;
  for (uint32_t id : ids) {
    auto p = store.pin(id);
    if (!p) {
      ++n_bad;
      EXPECT_NE(p.error().message.find(path), std::string::npos) << p.error().message;
      EXPECT_NE(p.error().message.find("corrupted"), std::string::npos) << p.error().message;
      EXPECT_NE(p.error().message.find("unit"), std::string::npos) << p.error().message;
    }
  }
  EXPECT_EQ(n_bad, 1);
  (void)store.unpin_all();
}

TEST(BlockStore, TruncatedOrMissingSpillFileIsAClearError) {
  const auto dir = test::temp_dir("engram_store_missing");
  const std::string path = (dir / "spill.bin").string();
  {
    BlockStore store(256, path);
    auto ids = fill_spilled(store, 4);
    std::filesystem::resize_file(path, 256 + 100);
    auto p = store.pin(ids[3]);
    ASSERT_FALSE(p);
    EXPECT_NE(p.error().message.find(path), std::string::npos);
    EXPECT_NE(p.error().message.find("truncated"), std::string::npos) << p.error().message;
  }
  {
    BlockStore store(256, path);
    auto ids = fill_spilled(store, 4);
    std::filesystem::remove(path);
    auto p = store.pin(ids[1]);
    ASSERT_FALSE(p);
    EXPECT_NE(p.error().message.find(path), std::string::npos);
    EXPECT_NE(p.error().message.find("missing"), std::string::npos) << p.error().message;
  }
}

// ------------------------------------------------------------ retrieval

// The top_k blocks by brute force: bounds over `rows` keys at a time from
// key(p, d) (the key at position p, one KV head), score = max over `queries`
// and sub-blocks; ascending block order.
std::vector<int> brute_force_top_k(const std::vector<std::vector<double>>& queries, int64_t nb,
                                   const EngramMemoryOptions& o, int rows, int k_dim,
                                   const std::function<double(int64_t, int)>& key) {
  std::vector<std::pair<double, int>> scored;
  for (int64_t b = 0; b < nb; ++b) {
    double best = -1e300;
    for (const auto& qq : queries)
      for (int r0 = 0; r0 < o.block_size; r0 += rows) {
        double s = 0;
        for (int d = 0; d < k_dim; ++d) {
          double lo = 1e300, hi = -1e300;
          for (int r = r0; r < std::min(o.block_size, r0 + rows); ++r) {
            const double x = key(o.sinks + b * o.block_size + r, d);
            lo = std::min(lo, x);
            hi = std::max(hi, x);
          }
          s += std::max(qq[d] * lo, qq[d] * hi);
        }
        best = std::max(best, s);
      }
    scored.push_back({-best, static_cast<int>(b)});
  }
  std::sort(scored.begin(), scored.end());
  std::vector<int> want;
  for (int t = 0; t < o.top_k; ++t) want.push_back(scored[static_cast<size_t>(t)].second);
  std::sort(want.begin(), want.end());
  return want;
}

// Query vectors of KV head g's group (3 query heads): each query of the
// call (decode, every_query) or the call's mean query per head (a chunk).
std::vector<std::vector<double>> group_queries(const std::vector<float>& q, int n, int g, int k_dim, bool each) {
  std::vector<std::vector<double>> qv;
  for (int h = g * 3; h < g * 3 + 3; ++h) {
    if (each) {
      for (int i = 0; i < n; ++i)
        qv.emplace_back(q.begin() + (static_cast<size_t>(i) * kHeads + h) * k_dim,
                        q.begin() + (static_cast<size_t>(i) * kHeads + h + 1) * k_dim);
    } else {
      std::vector<double> mean(static_cast<size_t>(k_dim), 0.0);
      for (int i = 0; i < n; ++i)
        for (int d = 0; d < k_dim; ++d) mean[d] += q[(static_cast<size_t>(i) * kHeads + h) * k_dim + d] / n;
      qv.push_back(mean);
    }
  }
  return qv;
}

TEST(EngramRetrieval, TopKMatchesBruteForceScoring) {
  const MemoryLayout l = small_layout(2000, 1);
  for (int summary_rows : {1, 4, 1000}) {  // exact keys, sub-blocks, whole blocks
    for (bool every_query : {false, true}) {
      EngramMemoryOptions o = small_options(BlockCompression::F32, /*top_k=*/5);
      o.score_every_query = every_query;
      o.summary_rows = summary_rows;
      EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
      Feeder f(l);
      ThreadPool pool(1);
      int64_t pos = 0;
      while (pos < 1000) {
        f.step({&m}, 0, pos, 100);
        pos += 100;
      }
      for (int n : {1, 12}) {  // a decode step, a prefill chunk
        auto qs = f.step({&m}, 0, pos, n);
        const bool each = n == 1 || every_query;
        // Single queries use the sub-block bounds; a chunk's mean query the block's.
        const int rows = each ? std::min(summary_rows, o.block_size) : o.block_size;
        for (int layer = 0; layer < l.n_layer; ++layer) {
          const auto& q = qs[static_cast<size_t>(layer)];
          run_attend(m, layer, 0, pos, n, q, pool);
          const int64_t nb = m.n_blocks(layer, 0);
          ASSERT_GT(nb, 20);
          const KvLog& log = f.logs[static_cast<size_t>(layer)];
          for (int g = 0; g < l.n_kv_head; ++g) {
            // rows 1 scores with the int8 key index: round the keys as it does.
            const auto key = [&](int64_t p, int d) {
              return log.k[(static_cast<size_t>(p) * l.n_kv_head + g) * l.k_dim + d];
            };
            const auto want = brute_force_top_k(group_queries(q, n, g, l.k_dim, each), nb, o, rows, l.k_dim,
                                                [&](int64_t p, int d) {
                                                  if (rows != 1) return key(p, d);
                                                  float row_max = 0.f;
                                                  for (int e = 0; e < l.k_dim; ++e) row_max = std::max(row_max, std::fabs(key(p, e)));
                                                  return KeyIndex::rounded(key(p, d), row_max);
                                                });
            EXPECT_EQ(m.last_selection(layer, g), want) << "layer " << layer << " kv head " << g << " n " << n
                                                        << " every_query " << every_query << " rows " << summary_rows;
          }
        }
        pos += n;
      }
    }
  }
}

// --index-candidates: a decode query ranks blocks by their bounds, then
// scores the N best with the key index. Enough candidates give the plain
// index selection; fewer give top_k blocks from among the N best bounds.
TEST(EngramRetrieval, IndexCandidatesScoreTheBestBoundsExactly) {
  const MemoryLayout l = small_layout(2000, 1);
  EngramMemoryOptions plain_o = small_options(BlockCompression::F32, /*top_k=*/5);
  plain_o.rescan_interval = 0;  // every single query ranks by bounds, not by a kept full scan
  EngramMemoryOptions all_o = plain_o, few_o = plain_o;
  all_o.index_candidates = 1000;
  few_o.index_candidates = 12;
  EngramMemory plain(l, plain_o, EngramMemory::Mode::ENGRAM), all(l, all_o, EngramMemory::Mode::ENGRAM),
      few(l, few_o, EngramMemory::Mode::ENGRAM);
  Feeder f(l);
  ThreadPool pool(2);
  int64_t pos = 0;
  for (; pos < 1000; pos += 100) f.step({&plain, &all, &few}, 0, pos, 100);
  auto qs = f.step({&plain, &all, &few}, 0, pos, 1);
  for (int layer = 0; layer < l.n_layer; ++layer) {
    const auto& q = qs[static_cast<size_t>(layer)];
    for (EngramMemory* m : {&plain, &all, &few}) run_attend(*m, layer, 0, pos, 1, q, pool);
    const KvLog& log = f.logs[static_cast<size_t>(layer)];
    for (int g = 0; g < l.n_kv_head; ++g) {
      EXPECT_EQ(all.last_selection(layer, g), plain.last_selection(layer, g));
      EngramMemoryOptions bound_o = few_o;
      bound_o.top_k = few_o.index_candidates;
      const auto candidates = brute_force_top_k(group_queries(q, 1, g, l.k_dim, true), few.n_blocks(layer, 0), bound_o,
                                                bound_o.block_size, l.k_dim, [&](int64_t p, int d) {
                                                  return log.k[(static_cast<size_t>(p) * l.n_kv_head + g) * l.k_dim + d];
                                                });
      const auto& sel = few.last_selection(layer, g);
      EXPECT_EQ(sel.size(), 5u);
      for (int b : sel) EXPECT_TRUE(std::count(candidates.begin(), candidates.end(), b)) << "block " << b;
    }
  }
}

// --rescan-every: generation steps between full scans score only the blocks
// the last full scan kept (and blocks formed since); prompt queries always
// scan in full.
TEST(EngramRetrieval, GenerationStepsReuseTheLastFullScan) {
  const MemoryLayout l = small_layout(4000, 1);
  EngramMemoryOptions plain_o = small_options(BlockCompression::F32, /*top_k=*/3);
  EngramMemoryOptions reuse_o = plain_o;
  reuse_o.rescan_interval = 4;
  reuse_o.rescan_keep = 6;
  EngramMemory plain(l, plain_o, EngramMemory::Mode::ENGRAM), reuse(l, reuse_o, EngramMemory::Mode::ENGRAM);
  std::mt19937 rng(12);
  const auto dir_a = random_floats(static_cast<size_t>(l.k_dim), rng);
  const auto dir_b = random_floats(static_cast<size_t>(l.k_dim), rng);
  const auto dir_c = random_floats(static_cast<size_t>(l.k_dim), rng);
  const auto query = [&](const std::vector<float>& dir) {
    std::vector<float> q(static_cast<size_t>(kHeads) * l.k_dim);
    for (size_t i = 0; i < q.size(); ++i) q[i] = dir[i % dir.size()];
    return q;
  };
  // Random keys with one key along `dir` at position `at` (if inside).
  const auto feed = [&](int64_t pos0, int n, int64_t at, const std::vector<float>& dir) {
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng, 0.3f);
      auto v = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
      if (at >= pos0 && at < pos0 + n)
        for (int h = 0; h < l.n_kv_head; ++h)
          for (int d = 0; d < l.k_dim; ++d)
            k[(static_cast<size_t>(at - pos0) * l.n_kv_head + h) * l.k_dim + d] = 3.f * dir[static_cast<size_t>(d)];
      for (EngramMemory* m : {&plain, &reuse}) ASSERT_TRUE(m->append(layer, 0, pos0, n, k.data(), v.data()).is_ok());
    }
  };
  const auto block_of = [&](int64_t p) { return static_cast<int>((p - plain_o.sinks) / plain_o.block_size); };
  const int64_t needle_b = 1234, needle_c = 2100;
  for (int64_t pos = 0; pos < 2000; pos += 100) feed(pos, 100, needle_b, dir_b);
  ThreadPool pool(2);
  // Attends one query at `pos` on every layer; returns whether every KV
  // head of `reuse` selected `block` (< 0: none planted), and checks that
  // its selection equals the plain memory's when `same` is set.
  const auto step = [&](int64_t pos, const std::vector<float>& dir, int block, bool same) {
    bool all_found = true;
    for (int layer = 0; layer < l.n_layer; ++layer) {
      const auto q = query(dir);
      run_attend(plain, layer, 0, pos, 1, q, pool);
      run_attend(reuse, layer, 0, pos, 1, q, pool);
      for (int g = 0; g < l.n_kv_head; ++g) {
        const auto& sel = reuse.last_selection(layer, g);
        const auto& exact = plain.last_selection(layer, g);
        if (block >= 0) EXPECT_TRUE(std::count(exact.begin(), exact.end(), block)) << "the exact scan finds " << block;
        if (same) EXPECT_EQ(sel, plain.last_selection(layer, g));
        all_found = all_found && std::count(sel.begin(), sel.end(), block) > 0;
      }
    }
    return all_found;
  };
  reuse.set_generating(false);  // the prompt's last token: a full scan, kept
  step(2000, dir_a, -1, true);
  reuse.set_generating(true);
  // Scan kept for query a; query b's needle was not among a's best 6 blocks:
  // generation steps 2..4 miss it, the 5th (a new full scan) finds it.
  EXPECT_FALSE(step(2000, dir_b, block_of(needle_b), false));
  EXPECT_FALSE(step(2000, dir_b, block_of(needle_b), false));
  EXPECT_FALSE(step(2000, dir_b, block_of(needle_b), false));
  EXPECT_TRUE(step(2000, dir_b, block_of(needle_b), true));
  // Now kept for b: blocks formed after that scan are scored too.
  feed(2000, 200, needle_c, dir_c);
  feed(2200, 10, -1, dir_c);  // an append moves what left the window into blocks
  EXPECT_TRUE(step(2210, dir_c, block_of(needle_c), false));
  // A prompt query scans in full whatever the age.
  reuse.set_generating(false);
  EXPECT_TRUE(step(2210, dir_b, block_of(needle_b), true));
}

// --shared-blocks: a single query's KV head also attends the best blocks of
// the layer's other KV heads; a prefill chunk keeps each head's own top_k.
TEST(EngramRetrieval, SingleQueriesShareEachHeadsBestBlock) {
  const MemoryLayout l = small_layout(2000, 1);  // 2 KV heads
  EngramMemoryOptions own_o = small_options(BlockCompression::F32, /*top_k=*/1);
  EngramMemoryOptions shared_o = own_o;
  shared_o.shared_blocks = 1;
  EngramMemory own(l, own_o, EngramMemory::Mode::ENGRAM), shared(l, shared_o, EngramMemory::Mode::ENGRAM);
  std::mt19937 rng(21);
  const auto dir = random_floats(static_cast<size_t>(l.k_dim), rng);
  // Head 0's keys match `dir` at position 300, head 1's at 700; the rest are
  // small random keys.
  const int64_t match_at[2] = {300, 700};
  const auto append = [&](int64_t pos0, int n) {
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng, 0.3f);
      auto v = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
      for (int h = 0; h < l.n_kv_head; ++h)
        for (int d = 0; d < l.k_dim && match_at[h] >= pos0 && match_at[h] < pos0 + n; ++d)
          k[(static_cast<size_t>(match_at[h] - pos0) * l.n_kv_head + h) * l.k_dim + d] = 3.f * dir[static_cast<size_t>(d)];
      for (EngramMemory* m : {&own, &shared}) ASSERT_TRUE(m->append(layer, 0, pos0, n, k.data(), v.data()).is_ok());
    }
  };
  append(0, 1000);
  const auto block_of = [&](int64_t p) { return static_cast<int>((p - own_o.sinks) / own_o.block_size); };
  const std::vector<int> both = {block_of(match_at[0]), block_of(match_at[1])};
  ThreadPool pool(2);
  int64_t pos = 1000;
  for (int n : {1, 4}) {  // a single query, a prefill chunk
    append(pos, n);
    std::vector<float> q(static_cast<size_t>(n) * kHeads * l.k_dim);
    for (size_t i = 0; i < q.size(); ++i) q[i] = dir[i % dir.size()];
    for (int layer = 0; layer < l.n_layer; ++layer) {
      run_attend(own, layer, 0, pos, n, q, pool);
      run_attend(shared, layer, 0, pos, n, q, pool);
      for (int g = 0; g < l.n_kv_head; ++g) {
        SCOPED_TRACE(testing::Message() << "n " << n << " layer " << layer << " kv head " << g);
        EXPECT_EQ(own.last_selection(layer, g), std::vector<int>{block_of(match_at[g])});
        EXPECT_EQ(shared.last_selection(layer, g), n == 1 ? both : own.last_selection(layer, g));
      }
    }
    pos += n;
  }
}

TEST(EngramRetrieval, BoundIsAnUpperBoundOfEveryKeyInTheBlock) {
  std::mt19937 rng(3);
  const int kd = 16, B = 32;
  auto keys = random_floats(static_cast<size_t>(B) * kd, rng);
  std::vector<float> lo(kd, 1e30f), hi(kd, -1e30f);
  for (int r = 0; r < B; ++r)
    for (int d = 0; d < kd; ++d) {
      lo[d] = std::min(lo[d], keys[static_cast<size_t>(r) * kd + d]);
      hi[d] = std::max(hi[d], keys[static_cast<size_t>(r) * kd + d]);
    }
  for (int t = 0; t < 50; ++t) {
    auto q = random_floats(kd, rng);
    const float bound = block_score_bound(q.data(), lo.data(), hi.data(), kd);
    for (int r = 0; r < B; ++r) {
      float dot = 0.f;
      for (int d = 0; d < kd; ++d) dot += q[d] * keys[static_cast<size_t>(r) * kd + d];
      EXPECT_LE(dot, bound + 1e-4f);
    }
  }
  EXPECT_EQ(top_k_indices({0.5f, 3.f, 1.f, 3.f, -2.f}, 2), (std::vector<int>{1, 3}));
  EXPECT_EQ(top_k_indices({0.5f, 3.f}, 5), (std::vector<int>{1, 0}));  // best first
}

// The heap selection against a full sort, with many ties (scores from a
// few values) so that the lower-index rule matters.
TEST(EngramRetrieval, TopKMatchesAFullSort) {
  std::mt19937 rng(9);
  for (int n : {0, 1, 7, 100, 5000}) {
    for (int k : {0, 1, 3, 64, 6000}) {
      std::vector<float> scores(static_cast<size_t>(n));
      for (auto& x : scores) x = static_cast<float>(rng() % 50);
      std::vector<int> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] > scores[b]; });
      order.resize(static_cast<size_t>(std::clamp(k, 0, n)));
      EXPECT_EQ(top_k_indices(scores, k), order) << "n " << n << " k " << k;
    }
  }
}

// ------------------------------------------------------------ attention

// Chunks of a prefill followed by decode steps.
const std::vector<int> kSchedule = {37, 64, 100, 3, 128, 90, 1, 1, 1, 1, 1, 1, 1, 1};

TEST(EngramAttention, EqualsDenseWhenTopKCoversEveryBlock) {
  const MemoryLayout l = small_layout();
  // (threads, budget): one thread all in RAM; three threads through the spill file.
  for (auto [threads, budget] : {std::pair<int, size_t>{1, 0}, std::pair<int, size_t>{3, 24 * 1024}}) {
    {
      EngramMemoryOptions o = small_options(BlockCompression::F32);
      o.memory_budget_bytes = budget;  // with a budget, most blocks come back from the spill file
      EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
      auto dense = make_dense_memory(l);
      Feeder f(l);
      ThreadPool pool(threads);
      int64_t pos = 0;
      for (int seq = 0; seq < 2; ++seq) {
        pos = 0;
        for (int n : kSchedule) {
          auto qs = f.step({&m, dense.get()}, seq, pos, n);
          for (int layer = 0; layer < l.n_layer; ++layer) {
            auto a = run_attend(m, layer, seq, pos, n, qs[static_cast<size_t>(layer)], pool);
            auto b = run_attend(*dense, layer, seq, pos, n, qs[static_cast<size_t>(layer)], pool);
            ASSERT_LT(max_abs_diff(a, b), 1e-4f) << "pos " << pos << " n " << n << " layer " << layer;
          }
          pos += n;
        }
      }
      EXPECT_TRUE(m.last_error().is_ok()) << m.last_error().message();
      EXPECT_GT(m.n_blocks(0, 0), 20);
      EXPECT_EQ(m.n_positions(0), pos);
      if (budget) EXPECT_GT(m.store()->n_spill_reads(), 0u);
    }
  }
}

TEST(EngramAttention, EqualsNaiveAttentionOverSinksSelectedBlocksAndTail) {
  const MemoryLayout l = small_layout(1200, 1);
  EngramMemoryOptions o = small_options(BlockCompression::F32, /*top_k=*/4);
  EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
  Feeder f(l);
  ThreadPool pool(2);
  int64_t pos = 0;
  for (int n : {200, 150, 100, 10, 1, 1}) {
    auto qs = f.step({&m}, 0, pos, n);
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto got = run_attend(m, layer, 0, pos, n, qs[static_cast<size_t>(layer)], pool);
      // The tail after this chunk's append starts at the first position no
      // block holds.
      const int64_t tail_start = o.sinks + m.n_blocks(layer, 0) * o.block_size;
      auto visible = [&](int64_t, int64_t key, int g) {
        if (key < o.sinks || key >= tail_start) return true;
        const auto& sel = m.last_selection(layer, g);
        return std::binary_search(sel.begin(), sel.end(), static_cast<int>((key - o.sinks) / o.block_size));
      };
      auto want = test::naive_attention(l, kHeads, f.logs[static_cast<size_t>(layer)], pos, n,
                                        qs[static_cast<size_t>(layer)].data(), 0.35f, visible);
      ASSERT_LT(max_abs_diff(got, want), 1e-4f) << "pos " << pos << " layer " << layer;
      if (pos > 300) EXPECT_EQ(m.last_selection(layer, 0).size(), 4u);
    }
    pos += n;
  }
}

TEST(EngramAttention, CompressedBlocksStayCloseToDense) {
  const MemoryLayout l = small_layout();
  for (BlockCompression c : {BlockCompression::F16, BlockCompression::INT8}) {
    EngramMemory m(l, small_options(c), EngramMemory::Mode::ENGRAM);
    auto dense = make_dense_memory(l);
    Feeder f(l);
    ThreadPool pool(1);
    int64_t pos = 0;
    float worst = 0.f;
    for (int n : kSchedule) {
      auto qs = f.step({&m, dense.get()}, 0, pos, n);
      auto a = run_attend(m, 0, 0, pos, n, qs[0], pool);
      auto b = run_attend(*dense, 0, 0, pos, n, qs[0], pool);
      worst = std::max(worst, max_abs_diff(a, b));
      pos += n;
    }
    EXPECT_LT(worst, c == BlockCompression::F16 ? 5e-3f : 5e-2f) << block_compression_name(c);
    EXPECT_GT(worst, 0.f) << "lossy compression should change something";
  }
}

// ------------------------------------------------------------ budget, files

TEST(EngramMemoryBudget, RamStaysWithinTheBudget) {
  const MemoryLayout l = small_layout(3000, 1);
  EngramMemoryOptions o = small_options(BlockCompression::F16, /*top_k=*/6);
  o.memory_budget_bytes = 160 * 1024;
  o.summary_rows = o.block_size;  // one summary per block: the RAM outside the store stays well under the budget
  EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
  Feeder f(l);
  ThreadPool pool(1);
  int64_t pos = 0;
  while (pos < 1650) {
    const int n = pos < 1600 ? 100 : 1;
    auto qs = f.step({&m}, 0, pos, n);
    for (int layer = 0; layer < l.n_layer; ++layer) run_attend(m, layer, 0, pos, n, qs[static_cast<size_t>(layer)], pool);
    pos += n;
    ASSERT_LT(m.bytes_outside_store(), o.memory_budget_bytes);  // the test's premise
    EXPECT_LE(m.bytes_used(), o.memory_budget_bytes) << "at position " << pos;
  }
  EXPECT_TRUE(m.last_error().is_ok()) << m.last_error().message();
  EXPECT_LT(m.store()->resident_bytes(), m.store()->n_units() * m.store()->unit_bytes() / 2);
  EXPECT_GT(m.store()->n_spill_reads(), 0u);
}

TEST(EngramMemoryBudget, CorruptedSpillFileFailsTheNextStepWithTheFileAndBlock) {
  const MemoryLayout l = small_layout(1200, 1);
  const auto dir = test::temp_dir("engram_mem_bad");
  EngramMemoryOptions o = small_options(BlockCompression::F32);
  o.memory_budget_bytes = 1;  // everything spills
  o.spill_path = (dir / "blocks.bin").string();
  EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
  Feeder f(l);
  ThreadPool pool(1);
  f.step({&m}, 0, 0, 500);
  f.step({&m}, 0, 500, 1);  // blocks form when the next chunk arrives
  ASSERT_GT(m.n_blocks(0, 0), 20);
  {
    std::vector<char> junk(std::filesystem::file_size(o.spill_path), '\x33');
    std::ofstream(o.spill_path, std::ios::binary | std::ios::in | std::ios::out).write(junk.data(), 64);
  }
  auto q = random_floats(static_cast<size_t>(kHeads) * l.k_dim, f.rng);
  std::vector<float> out(static_cast<size_t>(kHeads) * l.v_dim, 1.f);
  std::vector<float> kv(static_cast<size_t>(l.n_kv_head) * 12, 0.5f);
  ASSERT_TRUE(m.append(0, 0, 501, 1, kv.data(), kv.data()).is_ok());
  m.attend(0, 0, 501, 1, kHeads, q.data(), out.data(), 0.35f, pool);  // must not crash
  ASSERT_FALSE(m.last_error().is_ok());
  const std::string msg = m.last_error().message();
  EXPECT_NE(msg.find(o.spill_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("block"), std::string::npos) << msg;
  Status next = m.append(1, 0, 501, 1, kv.data(), kv.data());
  ASSERT_FALSE(next.is_ok());
  EXPECT_EQ(next.message(), msg);
}

TEST(EngramMemoryFile, SaveLoadRoundTripsAndRejectsBadFiles) {
  const MemoryLayout l = small_layout();
  const auto dir = test::temp_dir("engram_mem_save");
  for (BlockCompression c : {BlockCompression::F32, BlockCompression::INT8}) {
    EngramMemoryOptions o = small_options(c, 5);
    EngramMemory a(l, o, EngramMemory::Mode::ENGRAM);
    Feeder f(l);
    ThreadPool pool(1);
    int64_t pos = 0;
    for (int n : {300, 45, 200}) {
      f.step({&a}, 0, pos, n);
      pos += n;
    }
    f.step({&a}, 1, 0, 70);
    const std::string path = (dir / "mem.bin").string();
    ASSERT_TRUE(a.save(path).is_ok());
    EngramMemoryOptions o2 = o;
    o2.memory_budget_bytes = 20000;  // the loaded copy spills: same answers
    EngramMemory b(l, o2, EngramMemory::Mode::ENGRAM);
    Status st = b.load(path);
    ASSERT_TRUE(st.is_ok()) << st.message();
    EXPECT_EQ(b.n_positions(0), pos);
    EXPECT_EQ(b.n_positions(1), 70);
    auto qs = f.step({&a, &b}, 0, pos, 3);
    for (int layer = 0; layer < l.n_layer; ++layer)
      EXPECT_EQ(run_attend(a, layer, 0, pos, 3, qs[static_cast<size_t>(layer)], pool),
                run_attend(b, layer, 0, pos, 3, qs[static_cast<size_t>(layer)], pool));

    // A different block size, a truncated file, a dense file: errors naming the file.
    EngramMemoryOptions o3 = o;
    o3.block_size = 32;
    EngramMemory wrong(l, o3, EngramMemory::Mode::ENGRAM);
    st = wrong.load(path);
    ASSERT_FALSE(st.is_ok());
    EXPECT_NE(st.message().find("block_size"), std::string::npos) << st.message();
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 10);
    st = b.load(path);
    ASSERT_FALSE(st.is_ok());
    EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
    EXPECT_EQ(b.n_positions(0), pos + 3);  // a failed load leaves the memory as it was
  }
}

// ------------------------------------------------------------ remove, copy

TEST(EngramMemoryEdit, TruncateIntoABlockThenRefillEqualsDense) {
  const MemoryLayout l = small_layout();
  EngramMemory m(l, small_options(BlockCompression::F32), EngramMemory::Mode::ENGRAM);
  auto dense = make_dense_memory(l);
  Feeder f(l);
  ThreadPool pool(1);
  f.step({&m, dense.get()}, 0, 0, 300);
  for (int64_t cut : {int64_t{290}, int64_t{123}, int64_t{2}}) {
    m.remove(0, cut, -1);
    dense->remove(0, cut, -1);
    EXPECT_EQ(m.n_positions(0), cut);
    auto qs = f.step({&m, dense.get()}, 0, cut, 100);
    for (int layer = 0; layer < l.n_layer; ++layer)
      ASSERT_LT(max_abs_diff(run_attend(m, layer, 0, cut, 100, qs[static_cast<size_t>(layer)], pool),
                             run_attend(*dense, layer, 0, cut, 100, qs[static_cast<size_t>(layer)], pool)),
                1e-4f)
          << "after cutting at " << cut;
  }
  // Holes are refused with a clear error; the memory keeps working.
  m.remove(0, 10, 20);
  ASSERT_FALSE(m.last_error().is_ok());
  EXPECT_NE(m.last_error().message().find("not supported"), std::string::npos);
}

TEST(EngramMemoryEdit, CopySharesBlocksAndBothSequencesMatchDense) {
  const MemoryLayout l = small_layout();
  EngramMemory m(l, small_options(BlockCompression::F32), EngramMemory::Mode::ENGRAM);
  auto dense = make_dense_memory(l);
  Feeder f(l);
  ThreadPool pool(1);
  f.step({&m, dense.get()}, 0, 0, 300);
  const size_t units = m.store()->n_units();
  ASSERT_TRUE(m.copy(0, 1).is_ok());
  ASSERT_TRUE(dense->copy(0, 1).is_ok());
  EXPECT_EQ(m.store()->n_units(), units);  // shared, not duplicated
  for (int seq : {0, 1}) {
    auto qs = f.step({&m, dense.get()}, seq, 300, 2);
    for (int layer = 0; layer < l.n_layer; ++layer)
      ASSERT_LT(max_abs_diff(run_attend(m, layer, seq, 300, 2, qs[static_cast<size_t>(layer)], pool),
                             run_attend(*dense, layer, seq, 300, 2, qs[static_cast<size_t>(layer)], pool)),
                1e-4f);
  }
  m.remove(0, 0, -1);
  m.remove(1, 0, -1);
  EXPECT_EQ(m.store()->n_units(), 0u);
}

// ------------------------------------------------------------ remapping

// A stand-in for the model's RoPE (NEOX pairs over the whole key, base 100 so
// that small position changes show); the memory layer does not link the model.
void test_rope(float* x, int k_dim, int64_t pos) {
  const int half = k_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double theta = static_cast<double>(pos) * std::pow(100.0, -2.0 * i / k_dim);
    const double a = x[i], b = x[i + half];
    x[i] = static_cast<float>(a * std::cos(theta) - b * std::sin(theta));
    x[i + half] = static_cast<float>(a * std::sin(theta) + b * std::cos(theta));
  }
}

KeyRotator test_rotator(int k_dim, std::atomic<int>* calls) {
  return [k_dim, calls](float* keys, int n_rows, int64_t delta) {
    ++*calls;
    for (int r = 0; r < n_rows; ++r) test_rope(keys + static_cast<size_t>(r) * k_dim, k_dim, delta);
  };
}

// Appends random un-rotated keys, rotated at their positions, to a memory,
// and keeps the un-rotated ones: raw[layer] [n_pos, n_kv_head, k_dim].
struct RopeFeeder {
  MemoryLayout l;
  std::vector<KvLog> raw;
  std::mt19937 rng{11};

  explicit RopeFeeder(const MemoryLayout& layout) : l(layout), raw(static_cast<size_t>(layout.n_layer)) {}

  std::vector<std::vector<float>> step(Memory& m, int64_t pos0, int n) {
    std::vector<std::vector<float>> qs;
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
      auto v = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
      KvLog& log = raw[static_cast<size_t>(layer)];
      log.k.insert(log.k.end(), k.begin(), k.end());
      log.v.insert(log.v.end(), v.begin(), v.end());
      for (int t = 0; t < n; ++t)
        for (int g = 0; g < l.n_kv_head; ++g)
          test_rope(k.data() + (static_cast<size_t>(t) * l.n_kv_head + g) * l.k_dim, l.k_dim, pos0 + t);
      EXPECT_TRUE(m.append(layer, 0, pos0, n, k.data(), v.data()).is_ok());
      qs.push_back(random_floats(static_cast<size_t>(n) * kHeads * l.k_dim, rng));
    }
    return qs;
  }

  // The layer's keys rotated at virtual_pos(key position, KV head) instead.
  KvLog placed(int layer, const std::function<int64_t(int64_t, int)>& virtual_pos) const {
    KvLog out = raw[static_cast<size_t>(layer)];
    const int64_t n_pos = static_cast<int64_t>(out.k.size()) / (l.n_kv_head * l.k_dim);
    for (int64_t j = 0; j < n_pos; ++j)
      for (int g = 0; g < l.n_kv_head; ++g)
        test_rope(out.k.data() + (static_cast<size_t>(j) * l.n_kv_head + g) * l.k_dim, l.k_dim, virtual_pos(j, g));
    return out;
  }
};

// With remapping, blocks are scored as if every key and query sat at
// position 0 (a match of content at any distance): the selection equals
// brute force over the un-rotated keys and the queries rotated back from
// their positions.
TEST(EngramRemap, RetrievalScoresKeysAndQueriesMovedToPositionZero) {
  const MemoryLayout l = small_layout(2000, 1);
  std::atomic<int> calls{0};
  EngramMemoryOptions o = small_options(BlockCompression::F32, /*top_k=*/5);
  o.rotate_keys = test_rotator(l.k_dim, &calls);
  EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
  RopeFeeder f(l);
  ThreadPool pool(1);
  int64_t pos = 0;
  for (; pos < 1500; pos += 100) f.step(m, pos, 100);
  for (int n : {1, 12}) {
    auto qs = f.step(m, pos, n);
    const int rows = n == 1 ? o.summary_rows : o.block_size;  // the default exact index, or the chunk's block bounds
    for (int layer = 0; layer < l.n_layer; ++layer) {
      std::vector<float> q = qs[static_cast<size_t>(layer)];
      run_attend(m, layer, 0, pos, n, q, pool);
      for (int i = 0; i < n; ++i)  // the queries at position 0
        for (int h = 0; h < kHeads; ++h) test_rope(q.data() + (static_cast<size_t>(i) * kHeads + h) * l.k_dim, l.k_dim, -(pos + i));
      const KvLog& raw = f.raw[static_cast<size_t>(layer)];
      for (int g = 0; g < l.n_kv_head; ++g) {
        const auto want = brute_force_top_k(group_queries(q, n, g, l.k_dim, n == 1), m.n_blocks(layer, 0), o, rows,
                                            l.k_dim, [&](int64_t p, int d) {
                                              return raw.k[(static_cast<size_t>(p) * l.n_kv_head + g) * l.k_dim + d];
                                            });
        // Rounding of the rotations may swap blocks whose scores tie to ~1e-6.
        const auto& got = m.last_selection(layer, g);
        int common = 0;
        for (int b : got) common += std::count(want.begin(), want.end(), b) > 0;
        EXPECT_GE(common, o.top_k - 1) << "layer " << layer << " kv head " << g << " n " << n;
      }
    }
    pos += n;
  }
}

TEST(EngramRemap, EqualsDenseWhenEveryBlockAndPositionIsAttended) {
  const MemoryLayout l = small_layout(1200, 1);
  // Engram selecting every block, and a window memory whose window holds everything.
  for (EngramMemory::Mode mode : {EngramMemory::Mode::ENGRAM, EngramMemory::Mode::WINDOW}) {
    std::atomic<int> calls{0};
    EngramMemoryOptions o = small_options(BlockCompression::F32);
    if (mode == EngramMemory::Mode::WINDOW) o.window = 1200;
    o.single_query_gap = 50;  // no room for it: nothing may move
    o.rotate_keys = test_rotator(l.k_dim, &calls);
    EngramMemory m(l, o, mode);
    auto dense = make_dense_memory(l);
    RopeFeeder f(l);
    ThreadPool pool(2);
    int64_t pos = 0;
    int moves = 0;
    for (int n : kSchedule) {
      auto qs = f.step(m, pos, n);
      for (int layer = 0; layer < l.n_layer; ++layer) {
        const KvLog at_own = f.placed(layer, [](int64_t j, int) { return j; });
        auto want = test::naive_attention(l, kHeads, at_own, pos, n, qs[static_cast<size_t>(layer)].data(), 0.35f,
                                          [](int64_t, int64_t, int) { return true; });
        const int before = calls.load();  // append rotates keys for the summaries; attend should not move any
        auto got = run_attend(m, layer, 0, pos, n, qs[static_cast<size_t>(layer)], pool);
        moves += calls.load() - before;
        ASSERT_LT(max_abs_diff(got, want), 1e-4f) << "pos " << pos << " layer " << layer;
      }
      pos += n;
    }
    if (mode == EngramMemory::Mode::ENGRAM) EXPECT_GT(m.n_blocks(0, 0), 20);
    EXPECT_EQ(moves, 0) << "nothing needs to move when nothing is skipped";
  }
}

// With top-4 of many blocks: the result is exact attention over keys rotated
// at the virtual layout [sinks][selected blocks][tail] that ends at the tail,
// or for a single query [sinks][selected blocks][gap][tail].
class EngramRemapGap : public testing::TestWithParam<int> {};

TEST_P(EngramRemapGap, EqualsNaiveAttentionOverTheVirtualLayout) {
  const MemoryLayout l = small_layout(1200, 1);
  std::atomic<int> calls{0};
  EngramMemoryOptions o = small_options(BlockCompression::F32, /*top_k=*/4);
  o.single_query_gap = GetParam();
  o.rotate_keys = test_rotator(l.k_dim, &calls);
  EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
  RopeFeeder f(l);
  ThreadPool pool(3);
  const int B = o.block_size;
  int64_t pos = 0;
  bool remap_mattered = false;
  for (int n : {200, 150, 100, 10, 1, 1}) {
    auto qs = f.step(m, pos, n);
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto got = run_attend(m, layer, 0, pos, n, qs[static_cast<size_t>(layer)], pool);
      const int64_t tail_start = o.sinks + m.n_blocks(layer, 0) * B;
      auto block_of = [&](int64_t key) { return static_cast<int>((key - o.sinks) / B); };
      auto visible = [&](int64_t, int64_t key, int g) {
        if (key < o.sinks || key >= tail_start) return true;
        const auto& sel = m.last_selection(layer, g);
        return std::binary_search(sel.begin(), sel.end(), block_of(key));
      };
      // Built from the definition: selected blocks back to back before the
      // tail (a single query: before the gap), in their original order, the
      // sinks right before them.
      const int64_t blocks_end = tail_start - (n == 1 ? o.single_query_gap : 0);
      auto virtual_pos = [&](int64_t key, int g) -> int64_t {
        const auto& sel = m.last_selection(layer, g);
        const int64_t n_sel = static_cast<int64_t>(sel.size());
        if (key >= tail_start) return key;
        if (key < o.sinks) return blocks_end - n_sel * B - o.sinks + key;
        const auto it = std::lower_bound(sel.begin(), sel.end(), block_of(key));
        if (it == sel.end() || *it != block_of(key)) return key;  // not attended
        const int64_t rank = it - sel.begin();
        return blocks_end - (n_sel - rank) * B + (key - o.sinks) % B;
      };
      const float* q = qs[static_cast<size_t>(layer)].data();
      auto want = test::naive_attention(l, kHeads, f.placed(layer, virtual_pos), pos, n, q, 0.35f, visible);
      ASSERT_LT(max_abs_diff(got, want), 1e-4f) << "pos " << pos << " layer " << layer;
      // The largest distance a query sees is bounded by the layout, not the context.
      for (int g = 0; g < l.n_kv_head; ++g)
        EXPECT_GE(virtual_pos(0, g),
                  pos + n - 1 - (o.sinks + o.top_k * B + (pos + n - tail_start) + (tail_start - blocks_end)));
      auto unmapped = test::naive_attention(l, kHeads, f.placed(layer, [](int64_t j, int) { return j; }), pos, n, q,
                                            0.35f, visible);
      if (max_abs_diff(got, unmapped) > 1e-2f) remap_mattered = true;
    }
    pos += n;
  }
  EXPECT_TRUE(remap_mattered) << "the test never moved a key";
  EXPECT_GT(calls.load(), 0);
  EXPECT_TRUE(m.last_error().is_ok()) << m.last_error().message();
}

INSTANTIATE_TEST_SUITE_P(SingleQueryGap, EngramRemapGap, testing::Values(0, 37));

// Window mode: the sinks move to end where the chunk's first query's window begins.
TEST(EngramRemap, WindowMemoryMovesSinksNextToTheWindow) {
  const MemoryLayout l = small_layout(1200, 1);
  std::atomic<int> calls{0};
  EngramMemoryOptions o = small_options(BlockCompression::F32);
  o.rotate_keys = test_rotator(l.k_dim, &calls);
  EngramMemory m(l, o, EngramMemory::Mode::WINDOW);
  RopeFeeder f(l);
  ThreadPool pool(2);
  int64_t pos = 0;
  for (int n : kSchedule) {
    auto qs = f.step(m, pos, n);
    const int64_t window_start = std::max<int64_t>(o.sinks, pos - o.window + 1);
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto virtual_pos = [&](int64_t key, int) { return key < o.sinks ? window_start - o.sinks + key : key; };
      auto visible = [&](int64_t query, int64_t key, int) { return key < o.sinks || key > query - o.window; };
      auto want = test::naive_attention(l, kHeads, f.placed(layer, virtual_pos), pos, n,
                                        qs[static_cast<size_t>(layer)].data(), 0.35f, visible);
      auto got = run_attend(m, layer, 0, pos, n, qs[static_cast<size_t>(layer)], pool);
      ASSERT_LT(max_abs_diff(got, want), 1e-4f) << "pos " << pos << " layer " << layer;
    }
    pos += n;
  }
  EXPECT_GT(calls.load(), 0);
}

TEST(MakeMemory, BuildsEachKindAndRejectsUnknownOnes) {
  const MemoryLayout l = small_layout();
  for (const char* kind : {"dense", "window", "engram"}) {
    auto m = make_memory(kind, l, small_options());
    ASSERT_TRUE(m) << kind;
    EXPECT_EQ((*m)->layout().n_layer, l.n_layer);
  }
  auto bad = make_memory("sparse", l, small_options());
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("sparse"), std::string::npos);
}

}  // namespace
}  // namespace engram
