// Dense KV memory: attention against a naive double-precision reference,
// batching, threads, capacity, remove/copy and save/load; every test runs for
// both storage types (fp16, the default, and f32). With fp16 the random keys
// and values are drawn as halves, so the reference sees exactly what is
// stored; HalfStorageRoundsWhatItStores covers the rounding itself.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "memory/memory.h"
#include "quant/quant.h"
#include "naive_attention.h"
#include "test_support.h"

namespace engram {
namespace {

using test::max_abs_diff;

// A toy layout with GQA (3 query heads per kv head) and k_dim != v_dim.
MemoryLayout test_layout(int n_seq = 2, int64_t n_ctx = 24) {
  MemoryLayout l;
  l.n_layer = 2;
  l.n_kv_head = 2;
  l.k_dim = 8;
  l.v_dim = 12;
  l.n_ctx = n_ctx;
  l.n_seq = n_seq;
  return l;
}
constexpr int kHeads = 6;

// What the memory should hold: all keys/values of one (layer, seq).
using Stored = test::KvLog;

// Naive causal GQA attention in double, for queries at pos0.. with keys
// [0, pos+1) except those `absent`.
std::vector<float> naive_attention(const MemoryLayout& l, const Stored& s, int64_t pos0, int n, const float* q,
                                   float scale, const std::vector<bool>& absent = {}) {
  auto visible = [&](int64_t, int64_t j, int) { return absent.empty() || !absent[static_cast<size_t>(j)]; };
  return test::naive_attention(l, kHeads, s, pos0, n, q, scale, visible);
}

std::vector<float> round_to_half(std::vector<float> v) {
  for (float& x : v) x = fp16_to_fp32(fp32_to_fp16(x));
  return v;
}

class DenseMemoryTest : public ::testing::TestWithParam<BlockCompression> {
 protected:
  bool half() const { return GetParam() == BlockCompression::F16; }
  size_t element_bytes() const { return half() ? 2 : 4; }
  std::unique_ptr<Memory> make(const MemoryLayout& l) const { return make_dense_memory(l, GetParam()); }
  // Random values the storage holds exactly.
  std::vector<float> random_vec(size_t n, std::mt19937& rng) const {
    std::vector<float> v = test::random_floats(n, rng);
    return half() ? round_to_half(std::move(v)) : v;
  }

  // Fills `mem` (layer 0 and 1, one seq) with n random positions, appended in
  // the given chunk sizes; returns what was stored per layer.
  std::vector<Stored> fill(Memory& mem, int seq, const std::vector<int>& chunks, std::mt19937& rng) const {
    const MemoryLayout& l = mem.layout();
    std::vector<Stored> stored(static_cast<size_t>(l.n_layer));
    int64_t pos = 0;
    for (int n : chunks) {
      for (int layer = 0; layer < l.n_layer; ++layer) {
        auto k = random_vec(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
        auto v = random_vec(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
        EXPECT_TRUE(mem.append(layer, seq, pos, n, k.data(), v.data()).is_ok());
        auto& s = stored[static_cast<size_t>(layer)];
        s.k.insert(s.k.end(), k.begin(), k.end());
        s.v.insert(s.v.end(), v.begin(), v.end());
      }
      pos += n;
    }
    return stored;
  }
};

INSTANTIATE_TEST_SUITE_P(Storage, DenseMemoryTest, ::testing::Values(BlockCompression::F16, BlockCompression::F32),
                         [](const auto& info) { return std::string(block_compression_name(info.param)); });

TEST_P(DenseMemoryTest, BatchedAttentionMatchesNaiveReference) {
  std::mt19937 rng(1);
  ThreadPool pool(2);
  auto mem = make(test_layout());
  const float scale = 1.f / std::sqrt(8.f);
  // Positions 0..4 stored first; then a batch of 6 new positions attends.
  auto stored = fill(*mem, 0, {5}, rng);
  for (int layer = 0; layer < 2; ++layer) {
    auto k = random_vec(6 * 2 * 8, rng), v = random_vec(6 * 2 * 12, rng);
    ASSERT_TRUE(mem->append(layer, 0, 5, 6, k.data(), v.data()).is_ok());
    stored[layer].k.insert(stored[layer].k.end(), k.begin(), k.end());
    stored[layer].v.insert(stored[layer].v.end(), v.begin(), v.end());
    auto q = random_vec(6 * kHeads * 8, rng);
    std::vector<float> out(6 * kHeads * 12);
    mem->attend(layer, 0, 5, 6, kHeads, q.data(), out.data(), scale, pool);
    auto expected = naive_attention(mem->layout(), stored[layer], 5, 6, q.data(), scale);
    EXPECT_LT(max_abs_diff(out, expected), 1e-5f) << "layer " << layer;
  }
  EXPECT_EQ(mem->n_positions(0), 11);
  EXPECT_EQ(mem->n_positions(1), 0);
}

TEST_P(DenseMemoryTest, BatchEqualsOneAtATimeAndThreadCountDoesNotMatter) {
  std::mt19937 rng(2);
  const MemoryLayout l = test_layout(1);
  const int n = 9;
  auto k = random_vec(n * 2 * 8, rng), v = random_vec(n * 2 * 12, rng), q = random_vec(n * kHeads * 8, rng);
  const float scale = 0.3f;

  ThreadPool pool1(1), pool3(3);
  auto batch = make(l);
  ASSERT_TRUE(batch->append(0, 0, 0, n, k.data(), v.data()).is_ok());
  std::vector<float> out_batch(n * kHeads * 12), out_batch3(n * kHeads * 12);
  batch->attend(0, 0, 0, n, kHeads, q.data(), out_batch.data(), scale, pool1);
  batch->attend(0, 0, 0, n, kHeads, q.data(), out_batch3.data(), scale, pool3);
  EXPECT_EQ(out_batch, out_batch3);  // bitwise: each (query, head) is done by one thread

  auto single = make(l);
  std::vector<float> out_single(n * kHeads * 12);
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(single->append(0, 0, i, 1, k.data() + i * 16, v.data() + i * 24).is_ok());
    single->attend(0, 0, i, 1, kHeads, q.data() + i * kHeads * 8, out_single.data() + i * kHeads * 12, scale, pool1);
  }
  EXPECT_LT(max_abs_diff(out_batch, out_single), 1e-6f);
}

// Attention runs in tiles of 16 queries and chunks of 128 keys with an online
// softmax: a batch that spans several of each, with a hole that covers a
// whole key chunk for some queries and part of one for others, still matches
// the naive reference, and computing it in pieces gives the same result.
TEST_P(DenseMemoryTest, LongBatchesAcrossTilesAndKeyChunksMatchReference) {
  std::mt19937 rng(9);
  ThreadPool pool(2);
  auto mem = make(test_layout(1, 700));
  auto stored = fill(*mem, 0, {300}, rng);
  mem->remove(0, 100, 260);  // a hole over key chunk [128, 256) and parts of its neighbours
  std::vector<bool> absent(700, false);
  for (int j = 100; j < 260; ++j) absent[static_cast<size_t>(j)] = true;
  const int n = 75;  // queries at 300 .. 374: tiles of 16 and a partial one
  const float scale = 0.4f;
  for (int layer = 0; layer < 2; ++layer) {
    auto k = random_vec(n * 2 * 8, rng), v = random_vec(n * 2 * 12, rng);
    ASSERT_TRUE(mem->append(layer, 0, 300, n, k.data(), v.data()).is_ok());
    stored[layer].k.insert(stored[layer].k.end(), k.begin(), k.end());
    stored[layer].v.insert(stored[layer].v.end(), v.begin(), v.end());
  }
  auto q = random_vec(n * kHeads * 8, rng);
  for (int layer = 0; layer < 2; ++layer) {
    std::vector<float> out(n * kHeads * 12);
    mem->attend(layer, 0, 300, n, kHeads, q.data(), out.data(), scale, pool);
    EXPECT_LT(max_abs_diff(out, naive_attention(mem->layout(), stored[layer], 300, n, q.data(), scale, absent)), 1e-5f)
        << "layer " << layer;
    // The same queries in pieces of 7 (other tile boundaries): the same result.
    std::vector<float> pieces(out.size());
    for (int i0 = 0; i0 < n; i0 += 7) {
      const int m = std::min(7, n - i0);
      mem->attend(layer, 0, 300 + i0, m, kHeads, q.data() + i0 * kHeads * 8, pieces.data() + i0 * kHeads * 12, scale,
                  pool);
    }
    EXPECT_LT(max_abs_diff(out, pieces), 1e-6f) << "layer " << layer;
  }
}

TEST_P(DenseMemoryTest, AppendingBeyondCapacityIsAnError) {
  std::mt19937 rng(3);
  auto mem = make(test_layout(1, 4096));
  std::vector<float> k(2 * 8, 0.5f), v(2 * 12, 0.25f);
  std::vector<float> kk(4096 * 16, 0.f), vv(4096 * 24, 0.f);
  ASSERT_TRUE(mem->append(0, 0, 0, 4096, kk.data(), vv.data()).is_ok());
  Status s = mem->append(0, 0, 4096, 1, k.data(), v.data());
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.message(), "context full: position 4096 exceeds the memory's 4096 positions");
  // A batch that straddles the end names the first position that does not fit.
  auto small = make(test_layout(1, 8));
  std::vector<float> k4(4 * 16), v4(4 * 24);
  ASSERT_TRUE(small->append(0, 0, 0, 4, k4.data(), v4.data()).is_ok());
  Status s2 = small->append(0, 0, 6, 4, k4.data(), v4.data());
  EXPECT_FALSE(s2.is_ok());
  Status s3 = small->append(0, 0, 4, 5, k4.data(), v4.data());
  ASSERT_FALSE(s3.is_ok());
  EXPECT_NE(s3.message().find("position 8 exceeds the memory's 8 positions"), std::string::npos) << s3.message();
  // Bad layer / sequence are errors too, not crashes.
  EXPECT_FALSE(small->append(2, 0, 4, 1, k4.data(), v4.data()).is_ok());
  EXPECT_FALSE(small->append(0, 1, 4, 1, k4.data(), v4.data()).is_ok());
}

TEST_P(DenseMemoryTest, RemoveTruncatesOrPunchesHoles) {
  std::mt19937 rng(4);
  ThreadPool pool(2);
  auto mem = make(test_layout(1));
  auto stored = fill(*mem, 0, {4, 4}, rng);
  ASSERT_EQ(mem->n_positions(0), 8);

  // A hole at [2, 5): attention skips those keys.
  mem->remove(0, 2, 5);
  EXPECT_EQ(mem->n_positions(0), 8);
  auto q = random_vec(kHeads * 8, rng);
  std::vector<float> out(kHeads * 12);
  mem->attend(1, 0, 7, 1, kHeads, q.data(), out.data(), 0.5f, pool);
  std::vector<bool> absent = {false, false, true, true, true, false, false, false};
  EXPECT_LT(max_abs_diff(out, naive_attention(mem->layout(), stored[1], 7, 1, q.data(), 0.5f, absent)), 1e-5f);

  // Truncation to 6 positions, then 2 new ones at 6, 7.
  mem->remove(0, 6, -1);
  EXPECT_EQ(mem->n_positions(0), 6);
  for (int layer = 0; layer < 2; ++layer) {
    auto k = random_vec(2 * 16, rng), v = random_vec(2 * 24, rng);
    ASSERT_TRUE(mem->append(layer, 0, 6, 2, k.data(), v.data()).is_ok());
    std::copy(k.begin(), k.end(), stored[layer].k.begin() + 6 * 16);
    std::copy(v.begin(), v.end(), stored[layer].v.begin() + 6 * 24);
  }
  mem->attend(0, 0, 7, 1, kHeads, q.data(), out.data(), 0.5f, pool);
  EXPECT_LT(max_abs_diff(out, naive_attention(mem->layout(), stored[0], 7, 1, q.data(), 0.5f, absent)), 1e-5f);

  mem->remove(0, 0, -1);
  EXPECT_EQ(mem->n_positions(0), 0);
  // Appending after a gap is refused.
  std::vector<float> k(16), v(24);
  EXPECT_FALSE(mem->append(0, 0, 3, 1, k.data(), v.data()).is_ok());
}

TEST_P(DenseMemoryTest, CopyMakesAnIndependentSequence) {
  std::mt19937 rng(5);
  ThreadPool pool(1);
  auto mem = make(test_layout(2));
  auto stored = fill(*mem, 0, {5}, rng);
  ASSERT_TRUE(mem->copy(0, 1).is_ok());
  EXPECT_EQ(mem->n_positions(1), 5);
  auto q = random_vec(kHeads * 8, rng);
  std::vector<float> out0(kHeads * 12), out1(kHeads * 12);
  mem->attend(0, 0, 4, 1, kHeads, q.data(), out0.data(), 0.4f, pool);
  mem->attend(0, 1, 4, 1, kHeads, q.data(), out1.data(), 0.4f, pool);
  EXPECT_EQ(out0, out1);
  // Changing the copy leaves the source alone.
  mem->remove(1, 2, -1);
  EXPECT_EQ(mem->n_positions(0), 5);
  EXPECT_EQ(mem->n_positions(1), 2);
  EXPECT_FALSE(mem->copy(0, 7).is_ok());
}

TEST_P(DenseMemoryTest, SaveLoadRoundTripAndValidation) {
  std::mt19937 rng(6);
  ThreadPool pool(2);
  const auto dir = test::temp_dir("memory");
  const std::string path = (dir / "kv.bin").string();

  auto mem = make(test_layout(2));
  fill(*mem, 0, {3, 4}, rng);
  fill(*mem, 1, {2}, rng);
  mem->remove(0, 1, 2);
  ASSERT_TRUE(mem->save(path).is_ok());

  auto loaded = make(test_layout(2));
  Status st = loaded->load(path);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(loaded->n_positions(0), 7);
  EXPECT_EQ(loaded->n_positions(1), 2);
  auto q = random_vec(2 * kHeads * 8, rng);
  for (int seq = 0; seq < 2; ++seq) {
    const int64_t pos0 = mem->n_positions(seq) - 2;
    std::vector<float> a(2 * kHeads * 12), b(2 * kHeads * 12);
    mem->attend(1, seq, pos0, 2, kHeads, q.data(), a.data(), 0.3f, pool);
    loaded->attend(1, seq, pos0, 2, kHeads, q.data(), b.data(), 0.3f, pool);
    EXPECT_EQ(a, b) << "seq " << seq;
  }

  // A memory with another layout refuses the file and says why.
  MemoryLayout other = test_layout(2);
  other.k_dim = 16;
  auto wrong = make(other);
  Status bad = wrong->load(path);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find(path), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("k_dim"), std::string::npos) << bad.message();

  // Truncated file: error naming the file; the memory is left unchanged.
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 10);
  Status trunc = loaded->load(path);
  ASSERT_FALSE(trunc.is_ok());
  EXPECT_NE(trunc.message().find(path), std::string::npos) << trunc.message();
  EXPECT_EQ(loaded->n_positions(0), 7);

  // Not a KV file at all.
  { std::ofstream(path, std::ios::binary | std::ios::trunc) << "hello world, not a kv file"; }
  Status magic = loaded->load(path);
  ASSERT_FALSE(magic.is_ok());
  EXPECT_NE(magic.message().find("magic"), std::string::npos) << magic.message();
  EXPECT_FALSE(loaded->load((dir / "missing.bin").string()).is_ok());
  std::filesystem::remove_all(dir);
}

// Files hold float32 whatever the memory stores, so a file saved by one
// storage type loads into the other (values a half holds survive exactly).
TEST_P(DenseMemoryTest, FilesLoadIntoEitherStorage) {
  std::mt19937 rng(8);
  ThreadPool pool(1);
  const auto dir = test::temp_dir("memory_cross");
  const std::string path = (dir / "kv.bin").string();
  auto mem = make(test_layout(1));
  fill(*mem, 0, {6}, rng);
  ASSERT_TRUE(mem->save(path).is_ok());
  const BlockCompression other = half() ? BlockCompression::F32 : BlockCompression::F16;
  auto loaded = make_dense_memory(test_layout(1), other);
  Status st = loaded->load(path);
  ASSERT_TRUE(st.is_ok()) << st.message();
  auto q = random_vec(kHeads * 8, rng);
  std::vector<float> a(kHeads * 12), b(kHeads * 12);
  mem->attend(0, 0, 5, 1, kHeads, q.data(), a.data(), 0.3f, pool);
  loaded->attend(0, 0, 5, 1, kHeads, q.data(), b.data(), 0.3f, pool);
  if (half()) {
    EXPECT_EQ(a, b);  // halves widened to float and back: nothing lost
  } else {
    EXPECT_LT(max_abs_diff(a, b), 2e-3f);  // f32 values rounded to halves on load
  }
  std::filesystem::remove_all(dir);
}

TEST_P(DenseMemoryTest, BytesUsedGrowsWithPositions) {
  std::mt19937 rng(7);
  auto mem = make(test_layout(1, 64));
  const size_t empty = mem->bytes_used();
  fill(*mem, 0, {10}, rng);
  // 2 layers x 10 positions x 2 heads x (8 + 12) floats at least.
  EXPECT_GE(mem->bytes_used(), empty + 2 * 10 * 2 * 20 * element_bytes());
}

// fp16 storage rounds each appended value to the nearest half: attention
// equals the reference over the rounded keys and values, and differs from the
// unrounded one by about the half's precision.
TEST(DenseMemoryHalf, RoundsWhatItStoresAndHalvesTheBytes) {
  std::mt19937 rng(10);
  ThreadPool pool(2);
  const MemoryLayout l = test_layout(1, 64);
  auto half = make_dense_memory(l, BlockCompression::F16);
  auto full = make_dense_memory(l);  // the default storage: exact
  const int n = 40;
  auto k = test::random_floats(static_cast<size_t>(n) * 2 * 8, rng);
  auto v = test::random_floats(static_cast<size_t>(n) * 2 * 12, rng);
  auto q = test::random_floats(static_cast<size_t>(n) * kHeads * 8, rng);
  ASSERT_TRUE(half->append(0, 0, 0, n, k.data(), v.data()).is_ok());
  ASSERT_TRUE(full->append(0, 0, 0, n, k.data(), v.data()).is_ok());
  // Keys and values take half the bytes: 40 positions x 2 heads x (8 + 12) values.
  EXPECT_EQ(full->bytes_used() - half->bytes_used(), size_t{n} * 2 * (8 + 12) * 2);
  std::vector<float> out_half(static_cast<size_t>(n) * kHeads * 12), out_full(out_half.size());
  half->attend(0, 0, 0, n, kHeads, q.data(), out_half.data(), 0.35f, pool);
  full->attend(0, 0, 0, n, kHeads, q.data(), out_full.data(), 0.35f, pool);
  const Stored rounded{round_to_half(k), round_to_half(v)};
  EXPECT_LT(max_abs_diff(out_half, naive_attention(l, rounded, 0, n, q.data(), 0.35f)), 1e-5f);
  const float vs_full = max_abs_diff(out_half, out_full);
  EXPECT_GT(vs_full, 0.f);    // the rounding is real
  EXPECT_LT(vs_full, 5e-3f);  // and small
}

}  // namespace
}  // namespace engram
