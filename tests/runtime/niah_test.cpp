#include "runtime/niah.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "test_support.h"

namespace engram {
namespace {

TEST(Niah, TemplatesFillEveryPlaceholder) {
  NiahTemplates t;
  EXPECT_EQ(fill_template(t.needle, "river", "482"), "The special magic number for river is 482.");
  EXPECT_EQ(fill_template(t.question, "river", ""),
            "What is the special magic number for river? The special magic number for river is");
  EXPECT_EQ(fill_template("{key}{key}-{value}{", "a", "1"), "aa-1{");
}

TEST(Niah, BibleListingKeepsVersesOnly) {
  const std::string listing =
      "\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n"
      "  2 And the earth was   without form.\nExodus 2\n  10 And the child grew,\n  x not a verse\n";
  const std::vector<std::string> v = parse_bible_listing(listing);
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0], "In the beginning God created the heaven and the earth.");
  EXPECT_EQ(v[1], "And the earth was without form.");
  EXPECT_EQ(v[2], "And the child grew,");
}

TEST(Niah, HaystackUnitsAreNonEmptyNormalizedLines) {
  const auto u = haystack_units("  a  b\t c \n\n   \nd\r\n");
  ASSERT_EQ(u.size(), 2u);
  EXPECT_EQ(u[0], "a b c");
  EXPECT_EQ(u[1], "d");
}

TEST(Niah, ParsesLengthsAndDepths) {
  auto l = parse_token_counts("4K,32K, 1M,1500");
  ASSERT_TRUE(l) << l.error().message;
  EXPECT_EQ(*l, (std::vector<int64_t>{4096, 32768, 1048576, 1500}));
  EXPECT_FALSE(parse_token_counts("4K,,8K"));
  EXPECT_FALSE(parse_token_counts("0"));
  EXPECT_FALSE(parse_token_counts("4G"));
  auto bad = parse_token_counts("4K,x");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("'x'"), std::string::npos);
  auto d = parse_depths("0,25,100");
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, (std::vector<double>{0.0, 0.25, 1.0}));
  EXPECT_FALSE(parse_depths("101"));
  EXPECT_FALSE(parse_depths("-5"));
  EXPECT_EQ(format_token_count(4096), "4K");
  EXPECT_EQ(format_token_count(1 << 20), "1M");
  EXPECT_EQ(format_token_count(1500), "1500");
  EXPECT_EQ(*parse_niah_task("multikey"), NiahTask::MULTIKEY);
  EXPECT_FALSE(parse_niah_task("multi"));
}

TEST(Niah, ScoringIsExactMatchOfTheLeadingNumber) {
  EXPECT_TRUE(niah_correct(" 482.", "482"));
  EXPECT_TRUE(niah_correct("482", "482"));
  EXPECT_TRUE(niah_correct(" 482, 517, 103.", "482, 517, 103"));
  EXPECT_FALSE(niah_correct(" 4821", "482"));   // a longer number
  EXPECT_FALSE(niah_correct(" 417.", "482"));
  EXPECT_FALSE(niah_correct(" 482, 517.", "482, 517, 103"));
  EXPECT_FALSE(niah_correct("the 482", "482"));
  EXPECT_FALSE(niah_correct("", "482"));
  EXPECT_FALSE(niah_correct(" 482", ""));
}

TEST(Niah, TrialSeedsDifferPerCellAndTrial) {
  std::set<uint64_t> seeds;
  for (size_t l = 0; l < 4; ++l)
    for (size_t d = 0; d < 5; ++d)
      for (int t = 0; t < 10; ++t) seeds.insert(niah_trial_seed(7, l, d, t));
  EXPECT_EQ(seeds.size(), 200u);
  EXPECT_EQ(niah_trial_seed(7, 1, 2, 3), niah_trial_seed(7, 1, 2, 3));
  EXPECT_NE(niah_trial_seed(7, 1, 2, 3), niah_trial_seed(8, 1, 2, 3));
}

// More trials come from more seeds: runs with nearby base seeds must not
// repeat each other's trials (seeds 12 and 14 once gave the same four).
TEST(Niah, NearbyBaseSeedsShareNoTrials) {
  std::set<uint64_t> seeds;
  size_t n = 0;
  for (uint64_t base = 0; base < 32; ++base)
    for (size_t l = 0; l < 3; ++l)
      for (size_t d = 0; d < 5; ++d)
        for (int t = 0; t < 8; ++t, ++n) seeds.insert(niah_trial_seed(base, l, d, t));
  EXPECT_EQ(seeds.size(), n);
}

TEST(Niah, HeatmapColoursCellsRedToGreen) {
  uint8_t red[3], green[3], mid[3];
  accuracy_color(0.0, red);
  accuracy_color(1.0, green);
  accuracy_color(0.5, mid);
  EXPECT_GT(red[0], red[1]);
  EXPECT_GT(green[1], green[0]);
  EXPECT_GT(mid[0], 200);  // yellow
  EXPECT_GT(mid[1], 200);

  NiahPanel a{"dense", {{0.0, 1.0}, {1.0, 0.0}, {0.5, NAN}}};
  NiahPanel b{"engram", {{1.0, 1.0}, {1.0, 1.0}, {1.0, 1.0}}};
  const std::vector<double> depths = {0, 0.5, 1};
  const std::vector<int64_t> lengths = {4096, 32768};
  RgbImage one = render_niah_heatmap({a}, depths, lengths);
  RgbImage two = render_niah_heatmap({a, b}, depths, lengths);
  ASSERT_GT(one.width, 0);
  EXPECT_EQ(one.pixels.size(), static_cast<size_t>(one.width) * one.height * 3);
  EXPECT_GT(two.width, one.width);  // panels side by side
  EXPECT_EQ(two.height, one.height);
  // The image holds red and green cell colours.
  bool has_red = false, has_green = false;
  for (size_t i = 0; i + 2 < one.pixels.size(); i += 3) {
    has_red |= one.pixels[i] == red[0] && one.pixels[i + 1] == red[1] && one.pixels[i + 2] == red[2];
    has_green |= one.pixels[i] == green[0] && one.pixels[i + 1] == green[1] && one.pixels[i + 2] == green[2];
  }
  EXPECT_TRUE(has_red);
  EXPECT_TRUE(has_green);
}

class StoriesNiah : public ::testing::Test {
 protected:
  void SetUp() override {
    ENGRAM_REQUIRE_REF();
    auto m = Model::load((test::ref_dir() / "models" / "stories260K.gguf").string());
    ASSERT_TRUE(m) << m.error().message;
    model_ = std::move(*m);
    for (int i = 0; i < 40; ++i) {
      units_.push_back("Lily went to the park number " + std::to_string(i) + " and she saw a big dog.");
    }
  }

  NiahBuilder builder(NiahTask task) {
    NiahConfig c;
    c.task = task;
    auto b = NiahBuilder::create(model_->tokenizer(), units_, default_niah_keys(), c);
    EXPECT_TRUE(b) << b.error().message;
    return std::move(*b);
  }

  std::string text(const std::vector<TokenId>& ids, size_t from, size_t to) {
    std::string s;
    for (size_t i = from; i < to && i < ids.size(); ++i) s += model_->tokenizer().token_to_piece(ids[i]);
    return s;
  }

  std::unique_ptr<Model> model_;
  std::vector<std::string> units_;
  ThreadPool pool_{1};
};

TEST_F(StoriesNiah, SingleNeedleSitsAtTheAskedDepth) {
  NiahBuilder b = builder(NiahTask::SINGLE);
  const Tokenizer& tok = model_->tokenizer();
  for (double depth : {0.0, 0.5, 1.0}) {
    auto t = b.make_trial(300, depth, 42);
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_LE(t->prompt.size(), 300u);
    EXPECT_GT(t->prompt.size(), 250u);  // whole units up to the length
    EXPECT_EQ(t->prompt[0], tok.bos());
    ASSERT_EQ(t->values.size(), 1u);
    EXPECT_EQ(t->answer, std::to_string(t->values[0]));
    EXPECT_GE(t->values[0], 100);
    EXPECT_LE(t->values[0], 999);
    ASSERT_EQ(t->needle_positions.size(), 1u);
    EXPECT_EQ(t->target_position, t->needle_positions[0]);
    const std::string needle = " The special magic number for " + t->key + " is " + t->answer + ".";
    const std::string all = text(t->prompt, 0, t->prompt.size());
    EXPECT_EQ(text(t->prompt, static_cast<size_t>(t->target_position), t->prompt.size()).rfind(needle, 0), 0u);
    const std::string question =
        " What is the special magic number for " + t->key + "? The special magic number for " + t->key + " is";
    ASSERT_GE(all.size(), question.size());
    EXPECT_EQ(all.substr(all.size() - question.size()), question);
    if (depth == 0.0) EXPECT_EQ(t->target_position, 1);
    // Depth is relative to the haystack: the prompt less BOS, needle and question.
    const size_t q_len = encode_continuation(tok, question.substr(1)).size();
    const size_t n_len = encode_continuation(tok, needle.substr(1)).size();
    const double hay = static_cast<double>(t->prompt.size() - 1 - q_len - n_len);
    const double rel = static_cast<double>(t->target_position - 1) / hay;
    if (depth == 1.0) EXPECT_GT(rel, 0.75);  // the start of the last unit
    if (depth == 0.5) EXPECT_NEAR(rel, 0.5, 0.15);
  }
  // Same seed, same trial; another seed, another.
  EXPECT_EQ(b.make_trial(300, 0.5, 42)->prompt, b.make_trial(300, 0.5, 42)->prompt);
  EXPECT_NE(b.make_trial(300, 0.5, 42)->prompt, b.make_trial(300, 0.5, 43)->prompt);
  // Too short for the needle and question.
  EXPECT_FALSE(b.make_trial(10, 0.5, 1));
}

TEST_F(StoriesNiah, LongerThanTheHaystackWrapsAround) {
  NiahBuilder b = builder(NiahTask::SINGLE);
  auto t = b.make_trial(3 * b.haystack_tokens(), 0.5, 3);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_GT(static_cast<int64_t>(t->prompt.size()), 2 * b.haystack_tokens());
}

TEST_F(StoriesNiah, MultiKeyAndMultiValue) {
  NiahBuilder mk = builder(NiahTask::MULTIKEY);
  auto t = mk.make_trial(400, 0.25, 9);
  ASSERT_TRUE(t) << t.error().message;
  ASSERT_EQ(t->needle_positions.size(), 4u);
  EXPECT_TRUE(std::is_sorted(t->needle_positions.begin(), t->needle_positions.end()));
  EXPECT_EQ(t->values.size(), 1u);
  const std::string all = text(t->prompt, 0, t->prompt.size());
  std::set<std::string> keys;
  for (int64_t p : t->needle_positions) {
    const std::string s = text(t->prompt, static_cast<size_t>(p), static_cast<size_t>(p) + 60);
    const std::string head = " The special magic number for ";
    ASSERT_EQ(s.rfind(head, 0), 0u) << s;
    keys.insert(s.substr(head.size(), s.find(' ', head.size()) - head.size()));
  }
  EXPECT_EQ(keys.size(), 4u);  // distinct keys, one of them asked
  EXPECT_TRUE(keys.count(t->key));

  NiahBuilder mv = builder(NiahTask::MULTIVALUE);
  auto v = mv.make_trial(400, 0.75, 9);
  ASSERT_TRUE(v) << v.error().message;
  ASSERT_EQ(v->values.size(), 4u);
  const std::string vall = text(v->prompt, 0, v->prompt.size());
  size_t prev = 0;
  for (int value : v->values) {  // in text order
    const size_t at = vall.find("for " + v->key + " is " + std::to_string(value) + ".");
    ASSERT_NE(at, std::string::npos);
    EXPECT_GE(at, prev);
    prev = at;
  }
  EXPECT_NE(vall.find("What are all the special magic numbers for " + v->key + "?"), std::string::npos);
  EXPECT_EQ(v->answer.find(", "), std::to_string(v->values[0]).size());
}

TEST_F(StoriesNiah, TinyRunReportsAScoredTrial) {
  NiahBuilder b = builder(NiahTask::SINGLE);
  auto t = b.make_trial(200, 0.5, 5);
  ASSERT_TRUE(t);
  Session s(*model_, pool_, 260);
  int calls = 0;
  auto r = run_niah_trial(s, *t, 64, [&](int64_t, int64_t) { ++calls; });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->n_prompt, static_cast<int64_t>(t->prompt.size()));
  EXPECT_EQ(calls, static_cast<int>((t->prompt.size() + 63) / 64));
  EXPECT_GT(r->prefill_seconds, 0);
  EXPECT_GT(r->memory_bytes, 0u);
  EXPECT_LE(r->n_decoded, t->answer_tokens);
  EXPECT_EQ(r->correct, niah_correct(r->generated, t->answer));

  // The scoring compares what the model generated with the trial's answer:
  // asking for the model's own first word passes, anything else fails.
  const size_t b0 = r->generated.find_first_not_of(' ');
  ASSERT_NE(b0, std::string::npos) << "empty generation";
  const size_t e0 = r->generated.find_first_of(" .,", b0);
  NiahTrial own = *t;
  own.answer = r->generated.substr(b0, e0 == std::string::npos ? std::string::npos : e0 - b0);
  auto r2 = run_niah_trial(s, own, 64);  // the session is reset by the trial
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->generated, r->generated);  // greedy: same continuation
  EXPECT_TRUE(r2->correct) << own.answer << " vs " << r2->generated;
  own.answer = "zzz";
  auto r3 = run_niah_trial(s, own, 64);
  ASSERT_TRUE(r3);
  EXPECT_FALSE(r3->correct);

  Session tiny(*model_, pool_, 100);
  EXPECT_FALSE(run_niah_trial(tiny, *t, 64));  // does not fit
}

}  // namespace
}  // namespace engram
