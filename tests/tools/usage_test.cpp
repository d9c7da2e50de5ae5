// `engram usage`: a ledger written through the Ledger API, read back by the
// built binary (ENGRAM_BINARY) as a table and as JSON.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <chrono>
#include <map>
#include <sstream>

#include "server/ledger.h"
#include "run_engram.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono;

using CliRun = test::CliResult;

CliRun engram_usage(const fs::path&, const std::vector<std::string>& args) {
  std::vector<std::string> all = {"usage"};
  all.insert(all.end(), args.begin(), args.end());
  return test::run_engram(all);
}

// The table's rows: first column -> the six numbers after it.
std::map<std::string, std::vector<double>> table_rows(const std::string& text) {
  std::map<std::string, std::vector<double>> rows;
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::vector<std::string> words;
    std::string w;
    while (fields >> w) words.push_back(w);
    if (words.size() < 7) continue;
    std::vector<double> numbers;
    for (size_t i = words.size() - 6; i < words.size(); ++i) numbers.push_back(std::stod(words[i]));
    std::string label;
    for (size_t i = 0; i + 6 < words.size(); ++i) label += (label.empty() ? "" : " ") + words[i];
    rows[label] = numbers;
  }
  return rows;
}

int64_t unix_day(int day, int hh) {
  return duration_cast<seconds>(sys_days{year{2026} / November / day}.time_since_epoch()).count() + hh * 3600;
}

class UsageCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("usage-cli");
    db_ = (dir_ / "ledger.db").string();
    auto ledger = server::Ledger::open(db_);
    ASSERT_TRUE(ledger) << ledger.error().message;
    // model a: 3 requests on the 28th by k1; model b: 2 requests on the 29th by k2.
    for (int i = 0; i < 3; ++i) add(**ledger, "sk-key-one-0000000001", "model-a", unix_day(28, 10 + i), 100, 40, 10, 2, 0.25);
    for (int i = 0; i < 2; ++i) add(**ledger, "sk-key-two-0000000002", "model-b", unix_day(29, 5), 1000, 0, 50, 0, 1.5);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void add(server::Ledger& l, const std::string& key, const std::string& model, int64_t when, int64_t prompt,
                  int64_t cached, int64_t completion, int64_t reasoning, double usd) {
    server::UsageRecord r;
    r.request_id = "chatcmpl-x";
    r.key = key;
    r.model = model;
    r.endpoint = "/v1/chat/completions";
    r.created_unix = when;
    r.usage = {prompt, cached, completion, reasoning};
    r.cost.usd = usd;
    r.finish = "stop";
    ASSERT_TRUE(l.record(r).has_value());
  }

  fs::path dir_;
  std::string db_;
};

TEST_F(UsageCommand, TableByModelWithTotal) {
  CliRun r = engram_usage(dir_, {"--db", db_, "--by", "model"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = table_rows(r.out);
  ASSERT_EQ(rows.count("model-a"), 1u) << r.out;
  ASSERT_EQ(rows.count("model-b"), 1u) << r.out;
  ASSERT_EQ(rows.count("total"), 1u) << r.out;
  // requests, prompt, cached, completion, reasoning, cost
  EXPECT_EQ(rows["model-a"], (std::vector<double>{3, 300, 120, 30, 6, 0.75}));
  EXPECT_EQ(rows["model-b"], (std::vector<double>{2, 2000, 0, 100, 0, 3.0}));
  EXPECT_EQ(rows["total"], (std::vector<double>{5, 2300, 120, 130, 6, 3.75}));
}

TEST_F(UsageCommand, ByDayAndDateRange) {
  CliRun by_day = engram_usage(dir_, {"--db", db_, "--by", "day"});
  ASSERT_EQ(by_day.exit_code, 0) << by_day.err;
  auto rows = table_rows(by_day.out);
  EXPECT_EQ(rows["2026-11-28"][0], 3);
  EXPECT_EQ(rows["2026-11-29"][0], 2);

  // --to is inclusive of its day.
  CliRun only28 = engram_usage(dir_, {"--db", db_, "--from", "2026-11-28", "--to", "2026-11-28"});
  ASSERT_EQ(only28.exit_code, 0) << only28.err;
  EXPECT_EQ(table_rows(only28.out)["total"], (std::vector<double>{3, 300, 120, 30, 6, 0.75}));
  CliRun from29 = engram_usage(dir_, {"--db", db_, "--from", "2026-11-29"});
  EXPECT_EQ(table_rows(from29.out)["total"][0], 2);
}

TEST_F(UsageCommand, JsonForOneKey) {
  CliRun r = engram_usage(dir_, {"--db", db_, "--by", "key", "--key", "sk-key-two-0000000002", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["key"], "sk-key-two-0000000002");
  EXPECT_EQ(j["data"][0]["requests"], 2);
  EXPECT_EQ(j["data"][0]["prompt_tokens"], 2000);
  EXPECT_EQ(j["data"][0]["completion_tokens"], 100);
  EXPECT_DOUBLE_EQ(j["total"]["cost_usd"].get<double>(), 3.0);
}

TEST_F(UsageCommand, ErrorsNameTheProblem) {
  CliRun missing = engram_usage(dir_, {"--db", (dir_ / "nope.db").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope.db"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(dir_ / "nope.db"));  // not created by looking

  CliRun bad_date = engram_usage(dir_, {"--db", db_, "--from", "2026-02-30"});
  EXPECT_EQ(bad_date.exit_code, 1);
  EXPECT_NE(bad_date.err.find("--from"), std::string::npos) << bad_date.err;

  CliRun bad_group = engram_usage(dir_, {"--db", db_, "--by", "week"});
  EXPECT_NE(bad_group.exit_code, 0);
}

}  // namespace
}  // namespace engram
