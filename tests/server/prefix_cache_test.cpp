// DiskPrefixCache: prompts saved at block multiples are found again by the
// longest saved prefix of a later prompt, only with the same tokens and
// model key; broken entries are skipped and deleted; the directory stays
// under its byte limit by dropping the least recently used entries.
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "memory/memory.h"
#include "server/prefix_cache.h"
#include "test_support.h"

namespace engram::server {
namespace {

namespace fs = std::filesystem;

MemoryLayout layout(int n_seq) {
  MemoryLayout l;
  l.n_layer = 2;
  l.n_kv_head = 1;
  l.k_dim = 4;
  l.v_dim = 4;
  l.n_ctx = 64;
  l.n_seq = n_seq;
  return l;
}

// A memory whose seq 0 holds `n` positions; position p's key and value are
// all p + 1000 * layer (so a loaded sequence shows what it holds).
std::unique_ptr<Memory> memory_with(int n) {
  auto m = make_dense_memory(layout(2));
  for (int layer = 0; layer < 2; ++layer) {
    std::vector<float> kv(static_cast<size_t>(n) * 4);
    for (int p = 0; p < n; ++p)
      for (int i = 0; i < 4; ++i) kv[static_cast<size_t>(p) * 4 + i] = static_cast<float>(p + 1000 * layer);
    EXPECT_TRUE(m->append(layer, 0, 0, n, kv.data(), kv.data()).is_ok());
  }
  return m;
}

std::vector<TokenId> tokens(int n, TokenId first) {
  std::vector<TokenId> t;
  for (int i = 0; i < n; ++i) t.push_back(first + i);
  return t;
}

TEST(PrefixCommon, CountsSharedLeadingTokens) {
  EXPECT_EQ(common_prefix(std::vector<TokenId>{1, 2, 3}, std::vector<TokenId>{1, 2, 4, 5}), 2u);
  EXPECT_EQ(common_prefix(std::vector<TokenId>{1, 2}, std::vector<TokenId>{1, 2, 4}), 2u);
  EXPECT_EQ(common_prefix(std::vector<TokenId>{}, std::vector<TokenId>{1}), 0u);
}

TEST(DiskPrefixCache, FindsTheLongestSavedPrefix) {
  const fs::path dir = test::temp_dir("prefix_cache") / "sub";  // created by open()
  auto cache = DiskPrefixCache::open(dir.string(), 1 << 20, 8, 42);
  ASSERT_TRUE(cache.has_value()) << cache.error().message;
  DiskPrefixCache& c = **cache;

  const std::vector<TokenId> a = tokens(21, 1);  // saved at 16
  auto src = memory_with(21);
  ASSERT_TRUE(c.save(a, *src, 0).is_ok());
  ASSERT_TRUE(c.save(tokens(5, 1), *src, 0).is_ok());  // shorter than a block: nothing saved
  int n_files = 0;
  for (const auto& e : fs::directory_iterator(dir)) n_files += e.path().extension() == ".kv";
  EXPECT_EQ(n_files, 1);
  EXPECT_GT(c.bytes(), 0);

  auto dst = make_dense_memory(layout(3));
  // A prompt sharing 18 tokens finds the 16 saved ones.
  std::vector<TokenId> b = tokens(18, 1);
  b.push_back(999);
  EXPECT_EQ(c.load_longest(b, 0, static_cast<int64_t>(b.size()) - 1, *dst, 2), 16);
  EXPECT_EQ(dst->n_positions(2), 16);
  // Limits: nothing longer than at_least, nothing above at_most.
  EXPECT_EQ(c.load_longest(b, 16, 18, *dst, 1), 0);
  EXPECT_EQ(dst->n_positions(1), 0);
  // Below 16, the link at 8 loads the 16-token entry and cuts it to 8.
  EXPECT_EQ(c.load_longest(b, 0, 15, *dst, 1), 8);
  EXPECT_EQ(dst->n_positions(1), 8);
  EXPECT_EQ(c.load_longest(b, 8, 15, *dst, 0), 0);
  // Other tokens, another model key: no hit.
  std::vector<TokenId> other = b;
  other[3] = 77;
  EXPECT_EQ(c.load_longest(other, 0, 18, *dst, 1), 0);
  auto other_model = DiskPrefixCache::open(dir.string(), 1 << 20, 8, 43);
  ASSERT_TRUE(other_model.has_value());
  EXPECT_EQ((*other_model)->load_longest(b, 0, 18, *dst, 1), 0);
}

TEST(DiskPrefixCache, ATamperedEntryIsNeverServed) {
  const fs::path dir = test::temp_dir("prefix_cache_bad");
  auto cache = DiskPrefixCache::open(dir.string(), 1 << 20, 4, 1);
  ASSERT_TRUE(cache.has_value());
  auto src = memory_with(8);
  const std::vector<TokenId> a = tokens(8, 1);
  ASSERT_TRUE((*cache)->save(a, *src, 0).is_ok());  // the entry at 8, a link at 4
  fs::path kv, tok;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".kv") kv = e.path();
    if (e.path().extension() == ".tok") tok = e.path();
  }
  ASSERT_FALSE(kv.empty());
  ASSERT_FALSE(tok.empty());
  auto dst = make_dense_memory(layout(1));
  // Tokens that differ (what a hash collision would look like): a miss, the entry stays.
  std::vector<TokenId> changed = a;
  changed[2] = 500;
  std::ofstream(tok, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(changed.data()), static_cast<std::streamsize>(changed.size() * 4));
  EXPECT_EQ((*cache)->load_longest(a, 0, 8, *dst, 0), 0);
  EXPECT_TRUE(fs::exists(kv));
  // A truncated K/V file: a miss, and the entry is deleted.
  std::ofstream(tok, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(a.data()), static_cast<std::streamsize>(a.size() * 4));
  fs::resize_file(kv, fs::file_size(kv) - 4);
  EXPECT_EQ((*cache)->load_longest(a, 0, 8, *dst, 0), 0);
  EXPECT_FALSE(fs::exists(kv));
  EXPECT_FALSE(fs::exists(tok));
  EXPECT_EQ(dst->n_positions(0), 0);
  int left = 0;  // the link to it went too
  for (const auto& e : fs::directory_iterator(dir)) left += e.path().extension() == ".link";
  EXPECT_EQ(left, 0);
}

TEST(DiskPrefixCache, EvictsLeastRecentlyUsedEntriesToStayUnderTheLimit) {
  const fs::path dir = test::temp_dir("prefix_cache_evict");
  // Measure one entry of 8 positions.
  int64_t entry = 0;
  {
    auto probe = DiskPrefixCache::open((dir / "probe").string(), 1 << 20, 8, 1);
    ASSERT_TRUE(probe.has_value());
    ASSERT_TRUE((*probe)->save(tokens(8, 1), *memory_with(8), 0).is_ok());
    entry = (*probe)->bytes();
  }
  ASSERT_GT(entry, 0);
  auto cache = DiskPrefixCache::open((dir / "c").string(), entry * 2 + entry / 2, 8, 1);  // room for two
  ASSERT_TRUE(cache.has_value());
  DiskPrefixCache& c = **cache;
  auto src = memory_with(8);
  auto dst = make_dense_memory(layout(1));
  const std::vector<TokenId> a = tokens(8, 1), b = tokens(8, 100), d = tokens(8, 200);
  ASSERT_TRUE(c.save(a, *src, 0).is_ok());
  ASSERT_TRUE(c.save(b, *src, 0).is_ok());
  // Using a makes b the least recently used one.
  ASSERT_EQ(c.load_longest(a, 0, 8, *dst, 0), 8);
  ASSERT_TRUE(c.save(d, *src, 0).is_ok());
  EXPECT_LE(c.bytes(), entry * 2 + entry / 2);
  EXPECT_EQ(c.load_longest(b, 0, 8, *dst, 0), 0);
  EXPECT_EQ(c.load_longest(a, 0, 8, *dst, 0), 8);
  EXPECT_EQ(c.load_longest(d, 0, 8, *dst, 0), 8);
}

TEST(DiskPrefixCache, BadArgumentsAreErrors) {
  EXPECT_FALSE(DiskPrefixCache::open(test::temp_dir("prefix_cache_arg").string(), 100, 0, 1).has_value());
  const fs::path file = test::temp_dir("prefix_cache_file") / "plain";
  std::ofstream(file) << "x";
  auto cache = DiskPrefixCache::open(file.string(), 100, 8, 1);
  ASSERT_FALSE(cache.has_value());
  EXPECT_NE(cache.error().message.find("plain"), std::string::npos) << cache.error().message;
}

}  // namespace
}  // namespace engram::server
