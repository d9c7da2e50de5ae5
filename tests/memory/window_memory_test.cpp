// Window memory (StreamingLLM): equals naive attention restricted to the
// sinks and each query's last `window` positions; RAM stays bounded.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "memory/memory.h"
#include "naive_attention.h"
#include "test_support.h"

namespace engram {
namespace {

using test::KvLog;
using test::random_floats;

constexpr int kHeads = 4;  // 2 query heads per KV head

MemoryLayout window_layout(int64_t n_ctx) {
  MemoryLayout l;
  l.n_layer = 2;
  l.n_kv_head = 2;
  l.k_dim = 8;
  l.v_dim = 6;
  l.n_ctx = n_ctx;
  l.n_seq = 2;
  return l;
}

EngramMemoryOptions window_options() {
  EngramMemoryOptions o;
  o.sinks = 3;
  o.window = 50;
  o.block_size = 16;
  return o;
}

struct WindowRun {
  MemoryLayout l;
  std::unique_ptr<Memory> m;
  std::vector<KvLog> logs;
  std::mt19937 rng{11};
  ThreadPool pool{2};

  WindowRun(const MemoryLayout& layout, const EngramMemoryOptions& o)
      : l(layout), m(make_window_memory(layout, o)), logs(static_cast<size_t>(layout.n_layer)) {}

  // Appends n random positions at pos0 to every layer and returns, per
  // layer, the largest difference between the memory and the reference.
  float step(int seq, int64_t pos0, int n, const EngramMemoryOptions& o, bool check = true) {
    float worst = 0.f;
    for (int layer = 0; layer < l.n_layer; ++layer) {
      auto k = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
      auto v = random_floats(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
      auto q = random_floats(static_cast<size_t>(n) * kHeads * l.k_dim, rng);
      EXPECT_TRUE(m->append(layer, seq, pos0, n, k.data(), v.data()).is_ok());
      KvLog& log = logs[static_cast<size_t>(layer)];
      log.k.resize(static_cast<size_t>(pos0) * l.n_kv_head * l.k_dim);
      log.v.resize(static_cast<size_t>(pos0) * l.n_kv_head * l.v_dim);
      log.k.insert(log.k.end(), k.begin(), k.end());
      log.v.insert(log.v.end(), v.begin(), v.end());
      std::vector<float> out(static_cast<size_t>(n) * kHeads * l.v_dim);
      m->attend(layer, seq, pos0, n, kHeads, q.data(), out.data(), 0.3f, pool);
      if (!check) continue;
      auto visible = [&](int64_t p, int64_t key, int) { return key < o.sinks || key > p - o.window; };
      auto want = test::naive_attention(l, kHeads, log, pos0, n, q.data(), 0.3f, visible);
      for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(out[i] - want[i]));
    }
    return worst;
  }
};

TEST(WindowMemory, EqualsDenseRestrictedToSinksAndWindow) {
  const EngramMemoryOptions o = window_options();
  WindowRun r(window_layout(1000), o);
  int64_t pos = 0;
  for (int n : {2, 30, 77, 128, 5, 64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}) {
    ASSERT_LT(r.step(0, pos, n, o), 1e-4f) << "chunk at " << pos << " of " << n;
    pos += n;
  }
  EXPECT_EQ(r.m->n_positions(0), pos);
  EXPECT_EQ(r.m->n_positions(1), 0);
}

TEST(WindowMemory, RamIsBoundedWhateverTheLength) {
  const EngramMemoryOptions o = window_options();
  WindowRun r(window_layout(100000), o);
  int64_t pos = 0;
  size_t after_warmup = 0;
  for (int step = 0; step < 400; ++step) {
    const int n = step < 20 ? 100 : 1;
    r.step(0, pos, n, o, /*check=*/step >= 390);  // the reference is quadratic: check the end
    pos += n;
    if (step == 25) after_warmup = r.m->bytes_used();
  }
  // 2,380 positions, yet RAM is what ~120 positions need (sinks + window +
  // a block of slack + one 100-position chunk of capacity).
  EXPECT_LE(r.m->bytes_used(), after_warmup);
  const size_t per_pos = 2u * 2 * (8 + 6) * sizeof(float);  // layers * kv heads * (k + v)
  EXPECT_LT(r.m->bytes_used(), 300 * per_pos + 4096);
}

TEST(WindowMemory, TruncateSaveLoadAndCopy) {
  const EngramMemoryOptions o = window_options();
  WindowRun r(window_layout(2000), o);
  ASSERT_LT(r.step(0, 0, 300, o), 1e-4f);
  r.m->remove(0, 280, -1);  // truncation within the window: still exact
  EXPECT_EQ(r.m->n_positions(0), 280);
  ASSERT_LT(r.step(0, 280, 10, o), 1e-4f);

  const auto dir = test::temp_dir("engram_window");
  const std::string path = (dir / "w.bin").string();
  ASSERT_TRUE(r.m->save(path).is_ok());
  auto saved = std::move(r.m);
  r.m = make_window_memory(r.l, o);
  Status st = r.m->load(path);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(r.m->n_positions(0), 290);
  ASSERT_LT(r.step(0, 290, 7, o), 1e-4f);

  ASSERT_TRUE(r.m->copy(0, 1).is_ok());
  EXPECT_EQ(r.m->n_positions(1), 297);
  ASSERT_LT(r.step(1, 297, 4, o), 1e-4f);

  // An engram file is not a window file.
  auto engram = make_engram_memory(r.l, o);
  st = engram->load(path);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find(path), std::string::npos);
}

}  // namespace
}  // namespace engram
