// The server config: a complete file parses to the values it says; every
// mistake is refused with the file and the field path in the message.
#include "server/config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "test_support.h"

namespace engram::server {
namespace {

const char* kGood = R"({
  // comments are allowed
  "admin_key": "sk-admin-1",
  "ledger": "ledger.db",
  "files_dir": "files",
  "max_queue": 32,
  "default_limits": {"rpm": 60, "tpm": 100000, "concurrent": 4},
  "keys": [
    {"key": "sk-alice", "name": "alice", "balance_usd": 10.0,
     "limits": {"rpm": 30, "tpm": 50000, "concurrent": 2}},
    {"key": "sk-bob", "name": "bob"},
    {"key": "sk-carol", "limits": {"rpm": 0}, "balance_usd": null}
  ],
  "prices": [
    {"model": "*", "input_miss": 0.27, "input_hit": 0.07, "output": 1.10,
     "tiers": [{"min_input_tokens": 32768, "input_miss": 0.5, "input_hit": 0.1, "output": 2.0}],
     "windows": [{"name": "off-peak", "start": "16:30", "end": "00:30", "multiplier": 0.5}],
     "batch_multiplier": 0.5},
    {"model": "qwen", "input_miss": 0.4, "output": 1.2}
  ]
})";

TEST(Config, ParsesACompleteFile) {
  auto c = parse_server_config(kGood, "cfg.json");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->admin_key, "sk-admin-1");
  EXPECT_EQ(c->ledger_path, "ledger.db");
  EXPECT_EQ(c->files_dir, "files");
  EXPECT_EQ(c->max_queue, 32);
  EXPECT_EQ(c->default_limits.requests_per_minute, 60);
  ASSERT_EQ(c->keys.size(), 3u);

  EXPECT_EQ(c->keys[0].key, "sk-alice");
  EXPECT_EQ(c->keys[0].name, "alice");
  ASSERT_TRUE(c->keys[0].balance_usd.has_value());
  EXPECT_DOUBLE_EQ(*c->keys[0].balance_usd, 10.0);
  EXPECT_EQ(c->keys[0].limits.requests_per_minute, 30);
  EXPECT_EQ(c->keys[0].limits.tokens_per_minute, 50000);
  EXPECT_EQ(c->keys[0].limits.concurrent, 2);

  // No limits of its own: the defaults. No balance: unlimited.
  EXPECT_EQ(c->keys[1].limits.requests_per_minute, 60);
  EXPECT_EQ(c->keys[1].limits.tokens_per_minute, 100000);
  EXPECT_EQ(c->keys[1].limits.concurrent, 4);
  EXPECT_FALSE(c->keys[1].balance_usd.has_value());
  // An explicit 0 is unlimited; the fields left out still come from the defaults.
  EXPECT_EQ(c->keys[2].limits.requests_per_minute, 0);
  EXPECT_EQ(c->keys[2].limits.tokens_per_minute, 100000);
  EXPECT_FALSE(c->keys[2].balance_usd.has_value());

  ASSERT_EQ(c->prices.size(), 2u);
  const ModelPrice& any = c->prices[0];
  EXPECT_EQ(any.model, "*");
  EXPECT_DOUBLE_EQ(any.rates.input_miss, 0.27);
  EXPECT_DOUBLE_EQ(any.rates.input_hit, 0.07);
  EXPECT_DOUBLE_EQ(any.rates.output, 1.10);
  ASSERT_EQ(any.tiers.size(), 1u);
  EXPECT_EQ(any.tiers[0].min_input_tokens, 32768);
  EXPECT_DOUBLE_EQ(any.tiers[0].rates.output, 2.0);
  ASSERT_EQ(any.windows.size(), 1u);
  EXPECT_EQ(any.windows[0].name, "off-peak");
  EXPECT_EQ(any.windows[0].start_minute, 16 * 60 + 30);
  EXPECT_EQ(any.windows[0].end_minute, 30);
  EXPECT_DOUBLE_EQ(any.windows[0].multiplier, 0.5);
  EXPECT_DOUBLE_EQ(any.batch_multiplier, 0.5);
  // input_hit left out: no cache discount.
  EXPECT_DOUBLE_EQ(c->prices[1].rates.input_hit, 0.4);
}

TEST(Config, EmptyObjectGivesDefaults) {
  auto c = parse_server_config("{}", "cfg.json");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->admin_key, "");
  EXPECT_EQ(c->ledger_path, "engram-ledger.db");
  EXPECT_EQ(c->max_queue, 64);
  EXPECT_TRUE(c->keys.empty());
  EXPECT_TRUE(c->prices.empty());
  EXPECT_EQ(find_price(*c, "anything"), nullptr);
}

TEST(Config, FindPricePrefersAnExactMatch) {
  auto c = parse_server_config(kGood, "cfg.json");
  ASSERT_TRUE(c);
  ASSERT_NE(find_price(*c, "qwen"), nullptr);
  EXPECT_EQ(find_price(*c, "qwen")->model, "qwen");
  ASSERT_NE(find_price(*c, "other"), nullptr);
  EXPECT_EQ(find_price(*c, "other")->model, "*");
}

struct BadCase {
  const char* json;
  const char* message;  // expected in the error
};

TEST(Config, RefusesBadFilesNamingTheField) {
  const BadCase cases[] = {
      {R"({"keys": [{"key": "a"}, {"key": "b", "limits": {"rpm": -1}}]})",
       "cfg.json: keys[1].limits.rpm: expected a non-negative integer"},
      {R"({"keys": [{"key": "a", "limits": {"rpm": 1.5}}]})", "cfg.json: keys[0].limits.rpm: expected a non-negative integer"},
      {R"({"keys": [{"key": "a", "limits": {"tpm": "30"}}]})", "cfg.json: keys[0].limits.tpm: expected a non-negative integer"},
      {R"({"keys": [{"key": "a", "limits": {"rpn": 3}}]})", "cfg.json: keys[0].limits.rpn: unknown field"},
      {R"({"admin": "x"})", "cfg.json: admin: unknown field"},
      {R"({"prices": [{"model": "*", "input_mis": 1, "input_miss": 1, "output": 1}]})",
       "cfg.json: prices[0].input_mis: unknown field"},
      {R"({"prices": [{"model": "*", "input_miss": 1}]})", "cfg.json: prices[0].output: missing"},
      {R"({"prices": [{"input_miss": 1, "output": 1}]})", "cfg.json: prices[0].model: missing"},
      {R"({"prices": [{"model": "*", "input_miss": -0.1, "output": 1}]})",
       "cfg.json: prices[0].input_miss: expected a non-negative number"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": "1.1"}]})",
       "cfg.json: prices[0].output: expected a non-negative number"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1,
           "windows": [{"start": "25:00", "end": "01:00", "multiplier": 0.5}]}]})",
       "cfg.json: prices[0].windows[0].start: '25:00'"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1,
           "windows": [{"start": "01:00", "end": "01:00", "multiplier": 0.5}]}]})",
       "cfg.json: prices[0].windows[0].end: equals start"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1,
           "windows": [{"start": "01:00", "end": "02:00"}]}]})",
       "cfg.json: prices[0].windows[0].multiplier: missing"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1,
           "windows": [{"start": "22:00", "end": "02:00", "multiplier": 0.5},
                       {"start": "01:00", "end": "03:00", "multiplier": 0.7}]}]})",
       "cfg.json: prices[0].windows[1]: overlaps prices[0].windows[0]"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1,
           "tiers": [{"min_input_tokens": 0, "input_miss": 1, "output": 1}]}]})",
       "cfg.json: prices[0].tiers[0].min_input_tokens: expected a positive integer"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1,
           "tiers": [{"min_input_tokens": 10, "input_miss": 1, "output": 1},
                     {"min_input_tokens": 10, "input_miss": 2, "output": 2}]}]})",
       "cfg.json: prices[0].tiers[1].min_input_tokens: same threshold as prices[0].tiers[0]"},
      {R"({"prices": [{"model": "m", "input_miss": 1, "output": 1}, {"model": "m", "input_miss": 2, "output": 2}]})",
       "cfg.json: prices[1].model: 'm' is priced twice"},
      {R"({"prices": [{"model": "*", "input_miss": 1, "output": 1, "batch_multiplier": -1}]})",
       "cfg.json: prices[0].batch_multiplier: expected a non-negative number"},
      {R"({"keys": [{"key": "a"}, {"key": "a"}]})", "cfg.json: keys[1].key: duplicate of keys[0]"},
      {R"({"keys": [{"name": "a"}]})", "cfg.json: keys[0].key: missing"},
      {R"({"keys": [{"key": ""}]})", "cfg.json: keys[0].key: must not be empty"},
      {R"({"keys": [{"key": "sk a"}]})", "cfg.json: keys[0].key: must not contain spaces"},
      {R"({"keys": [{"key": "a", "balance_usd": -5}]})", "cfg.json: keys[0].balance_usd: expected a non-negative number"},
      {R"({"keys": [{"key": "a", "limits": []}]})", "cfg.json: keys[0].limits: expected an object"},
      {R"({"keys": {"key": "a"}})", "cfg.json: keys: expected an array"},
      {R"({"keys": ["sk-a"]})", "cfg.json: keys[0]: expected an object"},
      {R"({"admin_key": "a", "keys": [{"key": "a"}]})", "cfg.json: keys[0].key: same as admin_key"},
      {R"({"max_queue": 0})", "cfg.json: max_queue: expected a positive integer"},
      {R"({"ledger": 3})", "cfg.json: ledger: expected a string"},
      {R"({"default_limits": {"concurrent": -2}})", "cfg.json: default_limits.concurrent: expected a non-negative integer"},
      {R"([1, 2])", "cfg.json: expected a JSON object at the top level"},
      {R"({"keys": [)", "cfg.json: invalid JSON"},
      {"", "cfg.json: invalid JSON"},
  };
  for (const BadCase& c : cases) {
    auto r = parse_server_config(c.json, "cfg.json");
    ASSERT_FALSE(r) << "accepted: " << c.json;
    EXPECT_NE(r.error().message.find(c.message), std::string::npos)
        << "for " << c.json << "\n got: " << r.error().message << "\n want: " << c.message;
  }
}

TEST(Config, UnknownFieldListsTheKnownOnes) {
  auto r = parse_server_config(R"({"prices": [{"model": "*", "input_miss": 1, "output": 1, "ouptut": 2}]})", "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("p.json: prices[0].ouptut: unknown field"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("output"), std::string::npos);
}

TEST(Config, LoadsFromAFileAndNamesIt) {
  const auto dir = test::temp_dir("config");
  const std::string path = (dir / "server.json").string();
  {
    std::ofstream out(path);
    out << kGood;
  }
  auto c = load_server_config(path);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->keys.size(), 3u);

  {
    std::ofstream out(path);
    out << R"({"keys": [{"key": "a", "limits": {"rpm": true}}]})";
  }
  auto bad = load_server_config(path);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message.rfind(path + ": keys[0].limits.rpm:", 0), 0u) << bad.error().message;

  auto missing = load_server_config((dir / "nope.json").string());
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("nope.json: cannot open"), std::string::npos) << missing.error().message;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace engram::server
