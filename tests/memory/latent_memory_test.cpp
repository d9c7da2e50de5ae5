// MemoryLayout::values_in_keys (MLA latents): a position's value is the first
// v_dim entries of its key row, and the memories store the keys only.
//
// Every memory kind is checked against a "twin": the same memory kind and
// options with values_in_keys off, given those key prefixes as explicit
// values. The twins' own correctness is what the other memory tests check
// against the naive reference; here the dense memory and the engram memory
// with every block attended are also checked against the naive reference
// directly. Twins must agree through blocks, compression, spilling, position
// remapping (a rotator that rotates the whole key row, value part included),
// truncation and save/load, while the latent memory holds fewer bytes.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "memory/engram_memory.h"
#include "memory/memory.h"
#include "naive_attention.h"
#include "test_support.h"

namespace engram {
namespace {

using test::max_abs_diff;

using test::KvLog;
using test::random_floats;

constexpr int kHeads = 6;  // 3 query heads per KV head
constexpr float kScale = 0.3f;

// Keys [c (8) | rope part (4)] per KV head; the value is c.
MemoryLayout latent_layout(bool values_in_keys, int64_t n_ctx = 1200, int n_seq = 2) {
  MemoryLayout l;
  l.n_layer = 2;
  l.n_kv_head = 2;
  l.k_dim = 12;
  l.v_dim = 8;
  l.n_ctx = n_ctx;
  l.n_seq = n_seq;
  l.values_in_keys = values_in_keys;
  return l;
}

EngramMemoryOptions latent_options(BlockCompression c, int top_k) {
  EngramMemoryOptions o;
  o.sinks = 4;
  o.window = 40;
  o.block_size = 16;
  o.top_k = top_k;
  o.compression = c;
  o.exact_tail = 0;
  return o;
}

// Rotates every pair (i, i + k_dim/2) of a key row by delta: it touches the
// value part too, so a memory that read values from moved keys would differ.
KeyRotator whole_row_rotator(int k_dim) {
  return [k_dim](float* keys, int n_rows, int64_t delta) {
    const int half = k_dim / 2;
    for (int r = 0; r < n_rows; ++r) {
      float* x = keys + static_cast<size_t>(r) * k_dim;
      for (int i = 0; i < half; ++i) {
        const double theta = static_cast<double>(delta) * std::pow(100.0, -2.0 * i / k_dim);
        const double a = x[i], b = x[i + half];
        x[i] = static_cast<float>(a * std::cos(theta) - b * std::sin(theta));
        x[i + half] = static_cast<float>(a * std::sin(theta) + b * std::cos(theta));
      }
    }
  };
}

// The values a latent memory must use: the first v_dim entries of each key row.
std::vector<float> values_of(const MemoryLayout& l, const std::vector<float>& k) {
  const size_t rows = k.size() / static_cast<size_t>(l.k_dim);
  std::vector<float> v(rows * l.v_dim);
  for (size_t r = 0; r < rows; ++r)
    std::copy_n(k.data() + r * l.k_dim, l.v_dim, v.data() + r * l.v_dim);
  return v;
}

std::vector<float> attend(Memory& m, int layer, int seq, int64_t pos0, int n, const std::vector<float>& q,
                          ThreadPool& pool) {
  std::vector<float> out(static_cast<size_t>(n) * kHeads * m.layout().v_dim, -1.f);
  m.attend(layer, seq, pos0, n, kHeads, q.data(), out.data(), kScale, pool);
  return out;
}

// A latent memory and its twin fed the same keys; logs[seq][layer] keeps
// everything appended (for the naive reference).
struct Twins {
  std::unique_ptr<Memory> latent, twin;
  MemoryLayout l;
  std::vector<std::vector<KvLog>> logs;
  std::mt19937 rng{5};

  Twins(std::unique_ptr<Memory> a, std::unique_ptr<Memory> b)
      : latent(std::move(a)), twin(std::move(b)), l(latent->layout()),
        logs(static_cast<size_t>(l.n_seq), std::vector<KvLog>(static_cast<size_t>(l.n_layer))) {}

  // Appends n random positions at pos0 of `seq` (the latent memory gets no
  // values at all: v null) and returns the worst twin difference per layer
  // of attention by n random queries; `naive` also checks the latent memory
  // against the naive reference over every stored position.
  float step(int seq, int64_t pos0, int n, ThreadPool& pool, bool naive = false) {
    float worst = 0.f;
    for (int layer = 0; layer < l.n_layer; ++layer) {
      const auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
      const auto v = values_of(l, k);
      Status a = latent->append(layer, seq, pos0, n, k.data(), nullptr);
      EXPECT_TRUE(a.is_ok()) << a.message();
      EXPECT_TRUE(twin->append(layer, seq, pos0, n, k.data(), v.data()).is_ok());
      KvLog& log = logs[static_cast<size_t>(seq)][static_cast<size_t>(layer)];
      log.k.resize(static_cast<size_t>(pos0) * l.n_kv_head * l.k_dim);
      log.v.resize(static_cast<size_t>(pos0) * l.n_kv_head * l.v_dim);
      log.k.insert(log.k.end(), k.begin(), k.end());
      log.v.insert(log.v.end(), v.begin(), v.end());

      const auto q = random_floats(static_cast<size_t>(n) * kHeads * l.k_dim, rng);
      const auto got = attend(*latent, layer, seq, pos0, n, q, pool);
      worst = std::max(worst, max_abs_diff(got, attend(*twin, layer, seq, pos0, n, q, pool)));
      if (naive) {
        const auto want = test::naive_attention(l, kHeads, log, pos0, n, q.data(), kScale,
                                                [](int64_t, int64_t, int) { return true; });
        EXPECT_LT(max_abs_diff(got, want), 1e-4f) << "naive reference, pos " << pos0 << " layer " << layer;
      }
    }
    return worst;
  }
};

struct Kind {
  std::string name;
  std::function<std::unique_ptr<Memory>(const MemoryLayout&)> make;
  bool all_attended = false;  // every stored position is attended (naive reference applies)
  bool blocks = false;        // engram: positions leave the tail for blocks
  int value_bytes = 4;        // bytes the twin spends per value element in blocks (f32 4, fp16 2, int8 1)
  bool spills = false;        // a RAM budget: resident bytes are capped in both twins
};

std::vector<Kind> kinds(const std::string& spill_dir) {
  auto engram = [](BlockCompression c, int top_k, bool remap, size_t budget, std::string spill) {
    return [=](const MemoryLayout& l) {
      EngramMemoryOptions o = latent_options(c, top_k);
      if (remap) o.rotate_keys = whole_row_rotator(l.k_dim);
      o.memory_budget_bytes = budget;
      o.spill_path = l.values_in_keys ? spill + "/latent.spill" : spill + "/twin.spill";
      return make_engram_memory(l, o);
    };
  };
  auto window = [](bool remap) {
    return [=](const MemoryLayout& l) {
      EngramMemoryOptions o = latent_options(BlockCompression::F32, 0);
      if (remap) o.rotate_keys = whole_row_rotator(l.k_dim);
      return make_window_memory(l, o);
    };
  };
  const std::string d = spill_dir;
  return {
      {"dense", [](const MemoryLayout& l) { return make_dense_memory(l); }, true, false},
      {"window", window(false), false, false},
      {"window remapped", window(true), false, false},
      {"engram f32 all blocks", engram(BlockCompression::F32, 1000, false, 0, d), true, true},
      {"engram f32 top-4", engram(BlockCompression::F32, 4, false, 0, d), false, true},
      {"engram fp16 top-4", engram(BlockCompression::F16, 4, false, 0, d), false, true, 2},
      {"engram fp16 top-4 remapped", engram(BlockCompression::F16, 4, true, 0, d), false, true, 2},
      {"engram fp16 top-4 spilled", engram(BlockCompression::F16, 4, false, 24 * 1024, d), false, true, 2, true},
      {"engram f32 top-4 remapped spilled", engram(BlockCompression::F32, 4, true, 24 * 1024, d), false, true, 4,
       true},
  };
}

const std::vector<int> kSchedule = {37, 64, 100, 3, 128, 90, 1, 1, 1, 1};

TEST(LatentMemory, EveryKindEqualsItsTwinWithExplicitValues) {
  const auto dir = test::temp_dir("latent");
  for (const Kind& kind : kinds(dir.string())) {
    SCOPED_TRACE(kind.name);
    Twins t(kind.make(latent_layout(true)), kind.make(latent_layout(false)));
    ThreadPool pool(2);
    float worst = 0.f;
    for (int seq = 0; seq < 2; ++seq) {
      int64_t pos = 0;
      for (int n : kSchedule) {
        worst = std::max(worst, t.step(seq, pos, n, pool, kind.all_attended));
        pos += n;
      }
    }
    EXPECT_LT(worst, 1e-6f);
    ASSERT_TRUE(t.latent->last_error().is_ok()) << t.latent->last_error().message();
    // The latent memory holds no values: v_dim elements fewer per stored
    // position, KV head and layer (2 sequences of 426 positions; the window
    // memory keeps only its sinks and window of them).
    const int64_t held = kind.name.rfind("window", 0) == 0 ? 2 * (4 + 40) : 2 * 426;
    const size_t saved = static_cast<size_t>(held) * 2 * 2 * 8 * static_cast<size_t>(kind.value_bytes);
    if (!kind.spills)
      EXPECT_GE(t.twin->bytes_used(), t.latent->bytes_used() + saved)
          << t.twin->bytes_used() << " vs " << t.latent->bytes_used();
    if (kind.blocks) {
      auto* a = dynamic_cast<EngramMemory*>(t.latent.get());
      auto* b = dynamic_cast<EngramMemory*>(t.twin.get());
      ASSERT_TRUE(a && b);
      EXPECT_GT(a->n_blocks(0, 0), 20);
      // A unit holds B key rows only: 16 rows x 8 values fewer than the twin's.
      EXPECT_GE(b->store()->unit_bytes(), a->store()->unit_bytes() + 16 * 8 * static_cast<size_t>(kind.value_bytes));
      if (kind.spills) EXPECT_GT(a->store()->n_spill_reads(), 0u) << "the budget should push blocks to the spill file";
    }

    // Truncate sequence 0 into the middle of a block, refill, and compare
    // again (blocks come back to the tail decoded from the key rows).
    t.latent->remove(0, 250, -1);
    t.twin->remove(0, 250, -1);
    worst = 0.f;
    int64_t pos = 250;
    for (int n : {30, 1, 1}) {
      worst = std::max(worst, t.step(0, pos, n, pool, kind.all_attended && !kind.blocks));
      pos += n;
    }
    EXPECT_LT(worst, 1e-6f) << "after truncation";
  }
  std::filesystem::remove_all(dir);
}

// int8 rows are scaled per row, so a key row and its value prefix quantise
// differently in a twin: compare with the dense latent memory instead.
TEST(LatentMemory, Int8BlocksStayCloseToDense) {
  const MemoryLayout l = latent_layout(true);
  EngramMemoryOptions o = latent_options(BlockCompression::INT8, 1000);
  o.memory_budget_bytes = 16 * 1024;  // and through the spill file
  EngramMemory m(l, o, EngramMemory::Mode::ENGRAM);
  auto dense = make_dense_memory(l);
  std::mt19937 rng(9);
  ThreadPool pool(1);
  float worst = 0.f;
  int64_t pos = 0;
  for (int n : kSchedule) {
    for (int layer = 0; layer < l.n_layer; ++layer) {
      const auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
      ASSERT_TRUE(m.append(layer, 0, pos, n, k.data(), nullptr).is_ok());
      ASSERT_TRUE(dense->append(layer, 0, pos, n, k.data(), nullptr).is_ok());
      const auto q = random_floats(static_cast<size_t>(n) * kHeads * l.k_dim, rng);
      const auto got = attend(m, layer, 0, pos, n, q, pool);
      worst = std::max(worst, max_abs_diff(got, attend(*dense, layer, 0, pos, n, q, pool)));
    }
    pos += n;
  }
  EXPECT_GT(m.n_blocks(0, 0), 20);
  EXPECT_LT(worst, 5e-2f);
  EXPECT_GT(worst, 0.f) << "int8 should change something";
  EXPECT_GT(m.store()->n_spill_reads(), 0u);
  EXPECT_TRUE(m.last_error().is_ok()) << m.last_error().message();
  // A unit holds the key rows only: B x (scale + k_dim int8).
  EXPECT_EQ(m.store()->unit_bytes(), static_cast<size_t>(16 * (4 + 12)));
}

TEST(LatentMemory, ValuesLongerThanKeysAreRefused) {
  MemoryLayout l = latent_layout(true);
  l.v_dim = l.k_dim + 1;
  const auto k = std::vector<float>(static_cast<size_t>(l.n_kv_head) * l.k_dim, 1.f);
  for (const char* kind : {"dense", "window", "engram"}) {
    auto m = make_memory(kind, l, latent_options(BlockCompression::F32, 4));
    ASSERT_TRUE(m);
    Status st = (*m)->append(0, 0, 0, 1, k.data(), nullptr);
    ASSERT_FALSE(st.is_ok()) << kind;
    EXPECT_NE(st.message().find("values_in_keys"), std::string::npos) << st.message();
    EXPECT_EQ((*m)->n_positions(0), 0) << kind;
  }
}

TEST(LatentMemory, DenseFilesRoundTripAndRefuseTheOtherLayout) {
  const auto dir = test::temp_dir("latent-files");
  const std::string whole = (dir / "kv.bin").string(), one = (dir / "seq.bin").string();
  Twins t(make_dense_memory(latent_layout(true)), make_dense_memory(latent_layout(false)));
  ThreadPool pool(2);
  t.step(0, 0, 30, pool);
  t.step(1, 0, 20, pool);
  ASSERT_TRUE(t.latent->save(whole).is_ok());
  ASSERT_TRUE(t.latent->save_seq(0, one).is_ok());

  // Whole memory, and sequence 0 loaded into sequence 1 of a fresh memory.
  auto loaded = make_dense_memory(latent_layout(true));
  Status st = loaded->load(whole);
  ASSERT_TRUE(st.is_ok()) << st.message();
  auto seq_loaded = make_dense_memory(latent_layout(true));
  st = seq_loaded->load_seq(1, one);
  ASSERT_TRUE(st.is_ok()) << st.message();
  std::mt19937 rng(3);
  const auto q = random_floats(static_cast<size_t>(2) * kHeads * 12, rng);
  for (int layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(attend(*loaded, layer, 0, 28, 2, q, pool), attend(*t.latent, layer, 0, 28, 2, q, pool));
    EXPECT_EQ(attend(*loaded, layer, 1, 18, 2, q, pool), attend(*t.latent, layer, 1, 18, 2, q, pool));
    EXPECT_EQ(attend(*seq_loaded, layer, 1, 28, 2, q, pool), attend(*t.latent, layer, 0, 28, 2, q, pool));
  }

  // The files hold keys only: no value floats at all.
  EXPECT_LT(std::filesystem::file_size(one), size_t{2} * 30 * 2 * 12 * 4 + 100);

  // Either layout refuses the other's files and names the field.
  ASSERT_TRUE(t.twin->save((dir / "twin.bin").string()).is_ok());
  for (auto [memory, path] : {std::pair<Memory*, std::string>{t.twin.get(), whole},
                              std::pair<Memory*, std::string>{t.latent.get(), (dir / "twin.bin").string()},
                              std::pair<Memory*, std::string>{t.twin.get(), one}}) {
    const bool whole_file = path != one;
    Status bad = whole_file ? memory->load(path) : memory->load_seq(0, path);
    ASSERT_FALSE(bad.is_ok()) << path;
    EXPECT_NE(bad.message().find("values_in_keys"), std::string::npos) << bad.message();
    EXPECT_NE(bad.message().find(path), std::string::npos) << bad.message();
  }
  EXPECT_EQ(t.twin->n_positions(0), 30) << "a refused file leaves the memory as it was";
  std::filesystem::remove_all(dir);
}

TEST(LatentMemory, EngramFilesRoundTripAndRefuseTheOtherLayout) {
  const auto dir = test::temp_dir("latent-engram-files");
  const std::string path = (dir / "engram.bin").string();
  const EngramMemoryOptions o = latent_options(BlockCompression::F16, 4);
  Twins t(make_engram_memory(latent_layout(true), o), make_engram_memory(latent_layout(false), o));
  ThreadPool pool(2);
  int64_t pos = 0;
  for (int n : {150, 120, 1}) {
    t.step(0, pos, n, pool);
    pos += n;
  }
  ASSERT_TRUE(t.latent->save(path).is_ok());
  auto loaded = make_engram_memory(latent_layout(true), o);
  Status st = loaded->load(path);
  ASSERT_TRUE(st.is_ok()) << st.message();
  std::mt19937 rng(4);
  const auto q = random_floats(static_cast<size_t>(kHeads) * 12, rng);
  for (int layer = 0; layer < 2; ++layer)
    EXPECT_EQ(attend(*loaded, layer, 0, pos - 1, 1, q, pool), attend(*t.latent, layer, 0, pos - 1, 1, q, pool));

  Status bad = t.twin->load(path);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("values_in_keys"), std::string::npos) << bad.message();
  EXPECT_EQ(t.twin->n_positions(0), pos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace engram
