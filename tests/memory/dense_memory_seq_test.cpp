// Dense memory save_seq / load_seq (the server's prefix cache on disk): one
// sequence's first n positions written to a file and read back into another
// sequence of another memory (other n_seq) attend exactly like the original;
// bad files and misuse are errors that name the file; other memories refuse.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "memory/memory.h"
#include "naive_attention.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

MemoryLayout layout(int n_seq, int64_t n_ctx = 32) {
  MemoryLayout l;
  l.n_layer = 2;
  l.n_kv_head = 2;
  l.k_dim = 8;
  l.v_dim = 4;
  l.n_ctx = n_ctx;
  l.n_seq = n_seq;
  return l;
}
constexpr int kHeads = 4;

struct Kv {
  std::vector<float> k, v;  // per layer, [n, n_kv_head, dim]
};

// Random K/V for n positions of each layer, appended to `seq` of every memory given.
std::vector<Kv> fill(const std::vector<Memory*>& memories, const std::vector<int>& seqs, int n, std::mt19937& rng) {
  const MemoryLayout& l = memories[0]->layout();
  std::vector<Kv> kv(static_cast<size_t>(l.n_layer));
  for (int layer = 0; layer < l.n_layer; ++layer) {
    Kv& x = kv[static_cast<size_t>(layer)];
    x.k = test::random_floats(static_cast<size_t>(n) * l.n_kv_head * l.k_dim, rng);
    x.v = test::random_floats(static_cast<size_t>(n) * l.n_kv_head * l.v_dim, rng);
    for (size_t i = 0; i < memories.size(); ++i)
      EXPECT_TRUE(memories[i]->append(layer, seqs[i], 0, n, x.k.data(), x.v.data()).is_ok());
  }
  return kv;
}

std::vector<float> attend(Memory& m, int layer, int seq, int64_t pos0, int n, const std::vector<float>& q,
                          ThreadPool& pool) {
  std::vector<float> out(static_cast<size_t>(n) * kHeads * m.layout().v_dim);
  m.attend(layer, seq, pos0, n, kHeads, q.data(), out.data(), 0.35f, pool);
  return out;
}

TEST(DenseMemorySeq, RoundTripIntoAnotherSequenceAttendsTheSame) {
  const fs::path dir = test::temp_dir("dense_seq");
  std::mt19937 rng(7);
  ThreadPool pool(2);
  // The source holds 12 positions in seq 1 (seq 0 holds something else) with a hole at 3.
  auto src = make_dense_memory(layout(2));
  auto want = make_dense_memory(layout(1));  // the first 9 positions alone, the same hole
  fill({src.get()}, {0}, 5, rng);
  const std::vector<Kv> kv = fill({src.get()}, {1}, 12, rng);
  for (int layer = 0; layer < 2; ++layer)
    ASSERT_TRUE(want->append(layer, 0, 0, 9, kv[static_cast<size_t>(layer)].k.data(),
                             kv[static_cast<size_t>(layer)].v.data()).is_ok());
  src->remove(1, 3, 4);
  want->remove(0, 3, 4);

  const std::string path = (dir / "seq.kv").string();
  ASSERT_TRUE(src->save_seq(1, path, 9).is_ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  auto dst = make_dense_memory(layout(3));
  fill({dst.get()}, {2}, 20, rng);  // replaced by the load
  Status s = dst->load_seq(2, path);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(dst->n_positions(2), 9);
  EXPECT_EQ(dst->n_positions(0), 0);

  // Queries at positions 9..11 after appending the same new K/V to both.
  std::mt19937 rng2(11);
  for (int layer = 0; layer < 2; ++layer) {
    auto k = test::random_floats(3 * 2 * 8, rng2), v = test::random_floats(3 * 2 * 4, rng2);
    ASSERT_TRUE(dst->append(layer, 2, 9, 3, k.data(), v.data()).is_ok());
    ASSERT_TRUE(want->append(layer, 0, 9, 3, k.data(), v.data()).is_ok());
    const std::vector<float> q = test::random_floats(3 * kHeads * 8, rng2);
    const std::vector<float> a = attend(*dst, layer, 2, 9, 3, q, pool), b = attend(*want, layer, 0, 9, 3, q, pool);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "layer " << layer << " value " << i;
  }
  // Saving everything (n < 0) gives the whole sequence.
  ASSERT_TRUE(src->save_seq(1, path).is_ok());
  ASSERT_TRUE(dst->load_seq(0, path).is_ok());
  EXPECT_EQ(dst->n_positions(0), 12);
}

TEST(DenseMemorySeq, ErrorsNameTheFileAndTheProblem) {
  const fs::path dir = test::temp_dir("dense_seq_errors");
  std::mt19937 rng(3);
  auto mem = make_dense_memory(layout(2));
  fill({mem.get()}, {0}, 6, rng);
  const std::string path = (dir / "a.kv").string();

  Status s = mem->save_seq(0, path, 7);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("holds 6"), std::string::npos) << s.message();
  s = mem->save_seq(2, path);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("sequence 2"), std::string::npos) << s.message();
  ASSERT_TRUE(mem->save_seq(0, path).is_ok());

  // Another layout.
  MemoryLayout other = layout(2);
  other.k_dim = 16;
  s = make_dense_memory(other)->load_seq(0, path);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("k_dim"), std::string::npos) << s.message();
  // A context too small for the file.
  s = make_dense_memory(layout(2, 4))->load_seq(0, path);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("capacity of 4"), std::string::npos) << s.message();
  // Truncated, garbage, missing: the memory is left as it was.
  const std::string bytes = test::read_text_file(path);
  const std::string cut = (dir / "cut.kv").string();
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  auto target = make_dense_memory(layout(2));
  fill({target.get()}, {1}, 3, rng);
  s = target->load_seq(1, cut);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("cut.kv"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
  EXPECT_EQ(target->n_positions(1), 3);
  const std::string junk = (dir / "junk.kv").string();
  std::ofstream(junk, std::ios::binary) << "not a kv file at all";
  s = target->load_seq(1, junk);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("bad magic"), std::string::npos) << s.message();
  s = target->load_seq(1, (dir / "missing.kv").string());
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("missing.kv"), std::string::npos) << s.message();
  EXPECT_EQ(target->n_positions(1), 3);
  // The full memory file is not a sequence file.
  const std::string whole = (dir / "whole.kv").string();
  ASSERT_TRUE(mem->save(whole).is_ok());
  EXPECT_FALSE(target->load_seq(0, whole).is_ok());
}

TEST(DenseMemorySeq, OtherMemoriesRefuse) {
  EngramMemoryOptions o;
  o.sinks = 2;
  o.window = 4;
  o.block_size = 4;
  auto window = make_window_memory(layout(1), o);
  Status s = window->save_seq(0, "x.kv");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("not supported"), std::string::npos) << s.message();
  EXPECT_FALSE(window->load_seq(0, "x.kv").is_ok());
  EXPECT_FALSE(fs::exists("x.kv"));
}

}  // namespace
}  // namespace engram
