// The SQLite ledger: WAL mode, schema version, keys and balances, one
// transaction per request, reports by key, model and UTC day, and clear
// errors for files that are not ledgers.
#include "server/ledger.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "test_support.h"

namespace engram::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono;

int64_t unix_at(year_month_day d, int hh = 0, int mm = 0, int ss = 0) {
  return duration_cast<seconds>(sys_days{d}.time_since_epoch()).count() + hh * 3600 + mm * 60 + ss;
}

std::string pragma(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
    out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  }
  sqlite3_finalize(st);
  return out;
}

UsageRecord usage_record(const std::string& key, const std::string& model, int64_t when, int64_t prompt,
                         int64_t cached, int64_t completion, double usd) {
  UsageRecord r;
  r.request_id = "chatcmpl-test";
  r.key = key;
  r.model = model;
  r.endpoint = "/v1/chat/completions";
  r.created_unix = when;
  r.usage = {prompt, cached, completion, 0};
  r.cost.usd = usd;
  r.finish = "stop";
  return r;
}

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("ledger");
    path_ = (dir_ / "ledger.db").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<Ledger> open() {
    auto l = Ledger::open(path_);
    EXPECT_TRUE(l) << l.error().message;
    return l ? std::move(*l) : nullptr;
  }
  fs::path dir_;
  std::string path_;
};

TEST_F(LedgerTest, OpensInWalModeWithAVersionedSchema) {
  auto l = open();
  ASSERT_TRUE(l);
  EXPECT_EQ(pragma(l->db(), "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(pragma(l->db(), "SELECT value FROM meta WHERE key = 'schema_version'"), "2");
  EXPECT_EQ(l->path(), path_);
}

// A batch line run again after a crash (billed, then killed before its
// answer was stored) must not be billed twice.
TEST_F(LedgerTest, ABatchLineIsBilledOnce) {
  auto l = open();
  ASSERT_TRUE(l);
  auto a = l->create_key("alice", {}, 1.0);
  ASSERT_TRUE(a);
  UsageRecord first = usage_record(a->key, "m", 1000, 100, 0, 10, 0.25);
  first.batch = true;
  first.batch_line = "batch_abc:3";
  auto billed = l->record(first);
  ASSERT_TRUE(billed) << billed.error().message;
  EXPECT_TRUE(*billed);
  UsageRecord rerun = first;
  rerun.request_id = "chatcmpl-other";
  rerun.usage.completion_tokens = 12;  // a sampled rerun may differ; the first bill stands
  auto again = l->record(rerun);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE(*again);
  EXPECT_NEAR(*l->find_key(a->key)->balance_usd, 0.75, 1e-12);
  auto rows = l->usage(a->key, 0, 0, UsageGroup::NONE);
  ASSERT_TRUE(rows);
  EXPECT_EQ((*rows)[0].requests, 1);
  EXPECT_EQ((*rows)[0].completion_tokens, 10);

  // Another line, and requests outside batches (no line id), bill as usual.
  UsageRecord other = first;
  other.batch_line = "batch_abc:4";
  EXPECT_TRUE(*l->record(other));
  EXPECT_TRUE(*l->record(usage_record(a->key, "m", 1000, 1, 0, 1, 0.1)));
  EXPECT_TRUE(*l->record(usage_record(a->key, "m", 1000, 1, 0, 1, 0.1)));
  EXPECT_NEAR(*l->find_key(a->key)->balance_usd, 0.3, 1e-12);
}

// A ledger written by schema version 1 (no batch_line column) is upgraded
// in place, its rows kept.
TEST_F(LedgerTest, MigratesAVersion1Ledger) {
  {
    auto l = open();
    ASSERT_TRUE(l);
    ASSERT_TRUE(l->record(usage_record("", "m", 1000, 7, 0, 3, 0.0)).has_value());
    char* err = nullptr;
    const int rc = sqlite3_exec(l->db(),
                                "DROP INDEX usage_by_batch_line; ALTER TABLE usage DROP COLUMN batch_line; "
                                "UPDATE meta SET value = '1' WHERE key = 'schema_version';",
                                nullptr, nullptr, &err);
    ASSERT_EQ(rc, SQLITE_OK) << (err ? err : "");
  }
  auto l = open();
  ASSERT_TRUE(l);
  EXPECT_EQ(pragma(l->db(), "SELECT value FROM meta WHERE key = 'schema_version'"), "2");
  UsageRecord line = usage_record("", "m", 1000, 1, 0, 1, 0.0);
  line.batch_line = "batch_x:0";
  EXPECT_TRUE(*l->record(line));
  EXPECT_FALSE(*l->record(line));
  EXPECT_EQ((*l->usage("", 0, 0, UsageGroup::NONE))[0].requests, 2);
  EXPECT_EQ((*l->usage("", 0, 0, UsageGroup::NONE))[0].prompt_tokens, 8);
}

TEST_F(LedgerTest, CreateFindRevokeKeys) {
  auto l = open();
  ASSERT_TRUE(l);
  auto a = l->create_key("alice", {30, 5000, 2}, 10.0);
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->key.size(), 3u + 32u);
  EXPECT_EQ(a->key.rfind("sk-", 0), 0u);
  EXPECT_EQ(a->key.find_first_not_of("0123456789abcdef", 3), std::string::npos) << a->key;
  auto b = l->create_key("bob", {}, std::nullopt);
  ASSERT_TRUE(b);
  EXPECT_NE(a->key, b->key);

  auto found = l->find_key(a->key);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->name, "alice");
  EXPECT_EQ(found->limits.requests_per_minute, 30);
  EXPECT_EQ(found->limits.tokens_per_minute, 5000);
  EXPECT_EQ(found->limits.concurrent, 2);
  ASSERT_TRUE(found->balance_usd.has_value());
  EXPECT_DOUBLE_EQ(*found->balance_usd, 10.0);
  EXPECT_FALSE(found->revoked);
  EXPECT_GT(found->created_unix, 0);
  EXPECT_FALSE(l->find_key(b->key)->balance_usd.has_value());
  EXPECT_FALSE(l->find_key("sk-unknown").has_value());
  EXPECT_EQ(l->list_keys().size(), 2u);

  ASSERT_TRUE(l->revoke_key(a->key).is_ok());
  EXPECT_TRUE(l->find_key(a->key)->revoked);
  Status missing = l->revoke_key("sk-nope");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.message().find(path_), std::string::npos) << missing.message();
}

TEST_F(LedgerTest, TopUp) {
  auto l = open();
  ASSERT_TRUE(l);
  auto a = l->create_key("alice", {}, 1.0);
  ASSERT_TRUE(a);
  auto balance = l->top_up(a->key, 2.5);
  ASSERT_TRUE(balance) << balance.error().message;
  EXPECT_DOUBLE_EQ(*balance, 3.5);
  EXPECT_DOUBLE_EQ(*l->find_key(a->key)->balance_usd, 3.5);

  auto unlimited = l->create_key("u", {}, std::nullopt);
  ASSERT_TRUE(unlimited);
  EXPECT_FALSE(l->top_up(unlimited->key, 1.0));
  EXPECT_FALSE(l->top_up("sk-none", 1.0));
}

TEST_F(LedgerTest, RecordWritesUsageAndDebitsTheBalance) {
  auto l = open();
  ASSERT_TRUE(l);
  auto a = l->create_key("alice", {}, 1.0);
  ASSERT_TRUE(a);
  const int64_t t = unix_at(year{2026} / 11 / 28, 12);
  ASSERT_TRUE(l->record(usage_record(a->key, "m", t, 100, 40, 10, 0.4)).has_value());
  ASSERT_TRUE(l->record(usage_record(a->key, "m", t, 200, 0, 20, 0.4)).has_value());
  EXPECT_NEAR(*l->find_key(a->key)->balance_usd, 0.2, 1e-12);
  // The last request may take the balance below zero.
  ASSERT_TRUE(l->record(usage_record(a->key, "m", t, 50, 0, 5, 0.3)).has_value());
  EXPECT_NEAR(*l->find_key(a->key)->balance_usd, -0.1, 1e-12);

  auto rows = l->usage(a->key, 0, 0, UsageGroup::NONE);
  ASSERT_TRUE(rows) << rows.error().message;
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].group, "");
  EXPECT_EQ((*rows)[0].requests, 3);
  EXPECT_EQ((*rows)[0].prompt_tokens, 350);
  EXPECT_EQ((*rows)[0].cached_tokens, 40);
  EXPECT_EQ((*rows)[0].completion_tokens, 35);
  EXPECT_NEAR((*rows)[0].cost_usd, 1.1, 1e-12);

  // Unlimited keys and requests without a key are recorded, nothing debited.
  auto u = l->create_key("u", {}, std::nullopt);
  ASSERT_TRUE(l->record(usage_record(u->key, "m", t, 1, 0, 1, 0.5)).has_value());
  ASSERT_TRUE(l->record(usage_record("", "m", t, 1, 0, 1, 0.5)).has_value());
  EXPECT_FALSE(l->find_key(u->key)->balance_usd.has_value());
  EXPECT_EQ((*l->usage("", 0, 0, UsageGroup::NONE))[0].requests, 5);
}

TEST_F(LedgerTest, ReportsByKeyModelAndUtcDayWithinARange) {
  auto l = open();
  ASSERT_TRUE(l);
  const auto d28 = year{2026} / 11 / 28, d29 = year{2026} / 11 / 29;
  ASSERT_TRUE(l->record(usage_record("k1", "a", unix_at(d28, 23, 59, 59), 10, 1, 1, 0.01)).has_value());
  ASSERT_TRUE(l->record(usage_record("k1", "b", unix_at(d29, 0, 0, 0), 20, 2, 2, 0.02)).has_value());
  ASSERT_TRUE(l->record(usage_record("k2", "a", unix_at(d29, 12), 30, 3, 3, 0.04)).has_value());

  auto by_key = l->usage("", 0, 0, UsageGroup::KEY);
  ASSERT_TRUE(by_key);
  ASSERT_EQ(by_key->size(), 2u);
  EXPECT_EQ((*by_key)[0].group, "k1");
  EXPECT_EQ((*by_key)[0].requests, 2);
  EXPECT_EQ((*by_key)[0].prompt_tokens, 30);
  EXPECT_NEAR((*by_key)[0].cost_usd, 0.03, 1e-12);
  EXPECT_EQ((*by_key)[1].group, "k2");
  EXPECT_EQ((*by_key)[1].cached_tokens, 3);

  auto by_model = l->usage("", 0, 0, UsageGroup::MODEL);
  ASSERT_TRUE(by_model);
  ASSERT_EQ(by_model->size(), 2u);
  EXPECT_EQ((*by_model)[0].group, "a");
  EXPECT_EQ((*by_model)[0].completion_tokens, 4);
  EXPECT_NEAR((*by_model)[0].cost_usd, 0.05, 1e-12);

  auto by_day = l->usage("", 0, 0, UsageGroup::DAY);
  ASSERT_TRUE(by_day);
  ASSERT_EQ(by_day->size(), 2u);
  EXPECT_EQ((*by_day)[0].group, "2026-11-28");
  EXPECT_EQ((*by_day)[0].requests, 1);
  EXPECT_EQ((*by_day)[1].group, "2026-11-29");
  EXPECT_EQ((*by_day)[1].requests, 2);

  // [from, to): the 29th only, then one key, then an empty range.
  auto day29 = l->usage("", unix_at(d29), unix_at(d29) + 86400, UsageGroup::NONE);
  ASSERT_TRUE(day29);
  EXPECT_EQ((*day29)[0].requests, 2);
  EXPECT_EQ((*day29)[0].prompt_tokens, 50);
  auto k1_29 = l->usage("k1", unix_at(d29), 0, UsageGroup::MODEL);
  ASSERT_TRUE(k1_29);
  ASSERT_EQ(k1_29->size(), 1u);
  EXPECT_EQ((*k1_29)[0].group, "b");
  auto none = l->usage("", unix_at(d28), unix_at(d28, 23, 59, 59), UsageGroup::KEY);
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
  auto none_total = l->usage("nobody", 0, 0, UsageGroup::NONE);
  ASSERT_TRUE(none_total);
  ASSERT_EQ(none_total->size(), 1u);
  EXPECT_EQ((*none_total)[0].requests, 0);
  EXPECT_EQ((*none_total)[0].cost_usd, 0);
}

TEST_F(LedgerTest, ConcurrentRecordsKeepExactTotals) {
  auto l = open();
  ASSERT_TRUE(l);
  auto a = l->create_key("alice", {}, 10.0);
  ASSERT_TRUE(a);
  constexpr int kThreads = 4, kEach = 40;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (!l->record(usage_record(a->key, "m" + std::to_string(t % 2), 1000 + i, 10 + t, t, 3, 0.001)).has_value()) {
          failures++;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto rows = l->usage(a->key, 0, 0, UsageGroup::NONE);
  ASSERT_TRUE(rows);
  EXPECT_EQ((*rows)[0].requests, kThreads * kEach);
  EXPECT_EQ((*rows)[0].prompt_tokens, kEach * (10 + 11 + 12 + 13));
  EXPECT_EQ((*rows)[0].cached_tokens, kEach * (0 + 1 + 2 + 3));
  EXPECT_EQ((*rows)[0].completion_tokens, kThreads * kEach * 3);
  EXPECT_NEAR(*l->find_key(a->key)->balance_usd, 10.0 - kThreads * kEach * 0.001, 1e-9);
}

TEST_F(LedgerTest, ReopenKeepsEverything) {
  std::string key;
  {
    auto l = open();
    ASSERT_TRUE(l);
    auto a = l->create_key("alice", {1, 2, 3}, 5.0);
    ASSERT_TRUE(a);
    key = a->key;
    ASSERT_TRUE(l->record(usage_record(key, "m", 100, 7, 0, 8, 1.25)).has_value());
  }
  auto l = open();
  ASSERT_TRUE(l);
  EXPECT_EQ(pragma(l->db(), "PRAGMA journal_mode"), "wal");
  ASSERT_TRUE(l->find_key(key).has_value());
  EXPECT_DOUBLE_EQ(*l->find_key(key)->balance_usd, 3.75);
  EXPECT_EQ(l->find_key(key)->limits.concurrent, 3);
  auto rows = l->usage("", 0, 0, UsageGroup::NONE);
  ASSERT_TRUE(rows);
  EXPECT_EQ((*rows)[0].requests, 1);
  EXPECT_EQ((*rows)[0].completion_tokens, 8);
}

TEST_F(LedgerTest, ConfigKeysKeepTheStoredBalanceAcrossRestarts) {
  auto l = open();
  ASSERT_TRUE(l);
  KeyConfig alice{"sk-alice", "alice", {30, 1000, 2}, 10.0};
  KeyConfig bob{"sk-bob", "bob", {}, std::nullopt};
  ASSERT_TRUE(l->sync_config_keys({alice, bob}, {}).is_ok());
  ASSERT_TRUE(l->record(usage_record("sk-alice", "m", 1, 1, 0, 1, 4.0)).has_value());

  // Restart with the same config, changed limits, and bob made prepaid.
  alice.limits.requests_per_minute = 99;
  alice.name = "Alice";
  bob.balance_usd = 2.0;
  ASSERT_TRUE(l->sync_config_keys({alice, bob}, {}).is_ok());
  auto a = l->find_key("sk-alice");
  ASSERT_TRUE(a);
  EXPECT_DOUBLE_EQ(*a->balance_usd, 6.0);  // not refilled to 10
  EXPECT_EQ(a->limits.requests_per_minute, 99);
  EXPECT_EQ(a->name, "Alice");
  ASSERT_TRUE(l->find_key("sk-bob")->balance_usd.has_value());
  EXPECT_DOUBLE_EQ(*l->find_key("sk-bob")->balance_usd, 2.0);
}

TEST_F(LedgerTest, NotADatabaseIsAClearError) {
  {
    std::ofstream out(path_, std::ios::binary);
    for (int i = 0; i < 200; ++i) out << "this is not an SQLite database, just text\n";
  }
  auto l = Ledger::open(path_);
  ASSERT_FALSE(l);
  EXPECT_NE(l.error().message.find(path_), std::string::npos) << l.error().message;
  EXPECT_NE(l.error().message.find("not a database"), std::string::npos) << l.error().message;
}

TEST_F(LedgerTest, ForeignDatabaseAndDirectoryAreRefused) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto l = Ledger::open(path_);
  ASSERT_FALSE(l);
  EXPECT_NE(l.error().message.find("not an engram ledger"), std::string::npos) << l.error().message;

  auto d = Ledger::open(dir_.string());
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find(dir_.string()), std::string::npos) << d.error().message;
}

TEST(LedgerParse, UsageTimesAndGroups) {
  const int64_t day = unix_at(year{2026} / 11 / 28);
  EXPECT_EQ(*parse_usage_time("2026-11-28", false), day);
  EXPECT_EQ(*parse_usage_time("2026-11-28", true), day + 86400);
  EXPECT_EQ(*parse_usage_time("2026-11-28T16:30:05Z", false), day + 16 * 3600 + 30 * 60 + 5);
  EXPECT_EQ(*parse_usage_time("2026-11-28T16:30", true), day + 16 * 3600 + 30 * 60);
  EXPECT_EQ(*parse_usage_time("2026-11-28 01:02:03", false), day + 3723);
  EXPECT_EQ(*parse_usage_time("1700000000", false), 1700000000);
  for (const char* bad : {"2026-02-30", "2026-13-01", "28/11/2026", "2026-11-28T25:00", "yesterday", "", "2026-11-28X"}) {
    auto r = parse_usage_time(bad, false);
    EXPECT_FALSE(r) << bad;
  }
  EXPECT_EQ(*parse_usage_group("key"), UsageGroup::KEY);
  EXPECT_EQ(*parse_usage_group("model"), UsageGroup::MODEL);
  EXPECT_EQ(*parse_usage_group("day"), UsageGroup::DAY);
  EXPECT_EQ(*parse_usage_group("none"), UsageGroup::NONE);
  EXPECT_FALSE(parse_usage_group("week"));
}

TEST(LedgerParse, RandomIds) {
  const std::string a = random_id("file-", 24), b = random_id("file-", 24);
  EXPECT_EQ(a.size(), 29u);
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace engram::server
