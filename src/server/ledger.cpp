// The SQLite ledger: keys and balances, one usage row per request, and the
// tables of the batch store. One connection, guarded by a mutex; WAL mode so
// `engram usage` can read while the server writes; synchronous=FULL so a
// committed request stays billed even across a power cut.
#include "server/ledger.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <random>

#include <sqlite3.h>

#include "server/ledger_sql.h"
#include "util/clock.h"

namespace engram::server {
namespace {

// Version 2 added usage.batch_line (a batch line is billed once).
constexpr int kSchemaVersion = 2;
constexpr int kBusyTimeoutMs = 10000;

// Version 1. Timestamps are seconds since the epoch (UTC). A NULL balance is
// unlimited. The batch tables are used by FileStore and BatchService.
constexpr const char* kSchema = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE api_keys(
  api_key TEXT PRIMARY KEY,
  name TEXT NOT NULL DEFAULT '',
  rpm INTEGER NOT NULL DEFAULT 0,
  tpm INTEGER NOT NULL DEFAULT 0,
  concurrent INTEGER NOT NULL DEFAULT 0,
  balance_usd REAL,
  revoked INTEGER NOT NULL DEFAULT 0,
  created_unix INTEGER NOT NULL);
CREATE TABLE usage(
  id INTEGER PRIMARY KEY,
  request_id TEXT NOT NULL,
  api_key TEXT NOT NULL,
  model TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  created_unix INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  cached_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  reasoning_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  input_miss_usd REAL NOT NULL,
  input_hit_usd REAL NOT NULL,
  output_usd REAL NOT NULL,
  multiplier REAL NOT NULL,
  price_window TEXT NOT NULL,
  batch INTEGER NOT NULL,
  finish TEXT NOT NULL,
  batch_line TEXT);
CREATE UNIQUE INDEX usage_by_batch_line ON usage(batch_line) WHERE batch_line IS NOT NULL;
CREATE INDEX usage_by_time ON usage(created_unix);
CREATE INDEX usage_by_key ON usage(api_key, created_unix);
CREATE TABLE files(
  id TEXT PRIMARY KEY,
  filename TEXT NOT NULL,
  purpose TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  owner_key TEXT NOT NULL);
CREATE TABLE batches(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  owner_key TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  object TEXT NOT NULL);
CREATE INDEX batches_by_status ON batches(status);
CREATE TABLE batch_lines(
  batch_id TEXT NOT NULL,
  line INTEGER NOT NULL,
  custom_id TEXT NOT NULL,
  body TEXT NOT NULL,
  result TEXT,
  status_code INTEGER,
  PRIMARY KEY(batch_id, line));
)sql";

// Keys in error messages are shortened so logs do not leak them.
std::string masked(const std::string& key) { return key.size() <= 8 ? key : key.substr(0, 8) + "..."; }

// BEGIN IMMEDIATE takes the write lock at once (no upgrade deadlocks with
// another process); any failure rolls back.
Status in_transaction(sqlite3* db, const std::string& file, const std::function<Status(sqlite3*)>& body) {
  ENGRAM_RETURN_IF_ERROR(sql::exec(db, file, "BEGIN IMMEDIATE", "begin a transaction"));
  Status st = body(db);
  if (st) st = sql::exec(db, file, "COMMIT", "commit");
  if (!st) (void)sql::exec(db, file, "ROLLBACK", "roll back");
  return st;
}

// journal_mode=WAL is the first statement that reads the file, so a file
// that is not a database fails here, with SQLite's reason.
Status set_wal_mode(sqlite3* db, const std::string& file) {
  sql::Statement st(db, file, "PRAGMA journal_mode=WAL");
  auto row = st.step("not a usable SQLite database");
  if (!row) return row.error();
  const std::string mode = *row ? st.text(0) : "";
  if (mode != "wal") return make_error(file, ": cannot switch the ledger to WAL mode (journal_mode is '", mode, "')");
  return Status::ok();
}

// Version 1 had no usage.batch_line: older rows keep NULL there.
Status migrate_from_version_1(sqlite3* db, const std::string& file) {
  ENGRAM_RETURN_IF_ERROR(sql::exec(db, file,
                                   "ALTER TABLE usage ADD COLUMN batch_line TEXT;"
                                   "CREATE UNIQUE INDEX usage_by_batch_line ON usage(batch_line) "
                                   "WHERE batch_line IS NOT NULL;",
                                   "migrate the ledger schema from version 1"));
  sql::Statement v(db, file, "UPDATE meta SET value = ? WHERE key = 'schema_version'");
  v.bind(1, std::to_string(kSchemaVersion));
  return v.run("write the schema version");
}

// Creates the schema in an empty database, or checks the version of an
// existing ledger. A database with other tables is not ours: refuse it.
Status ensure_schema(sqlite3* db, const std::string& file) {
  return in_transaction(db, file, [&](sqlite3*) -> Status {
    sql::Statement tables(db, file, "SELECT count(*), sum(name = 'meta') FROM sqlite_master WHERE type = 'table'");
    auto row = tables.step("read the schema");
    if (!row) return row.error();
    const int64_t n_tables = tables.int64(0), has_meta = tables.int64(1);
    if (n_tables == 0) {
      ENGRAM_RETURN_IF_ERROR(sql::exec(db, file, kSchema, "create the ledger schema"));
      sql::Statement v(db, file, "INSERT INTO meta(key, value) VALUES('schema_version', ?)");
      v.bind(1, std::to_string(kSchemaVersion));
      return v.run("write the schema version");
    }
    if (!has_meta) return make_error(file, ": an SQLite database but not an engram ledger (no meta table)");
    sql::Statement v(db, file, "SELECT value FROM meta WHERE key = 'schema_version'");
    auto found = v.step("read the schema version");
    if (!found) return found.error();
    if (!*found) return make_error(file, ": not an engram ledger (meta has no schema_version)");
    const std::string version = v.text(0);
    if (version == "1") return migrate_from_version_1(db, file);
    if (version != std::to_string(kSchemaVersion)) {
      return make_error(file, ": ledger schema version ", version, " is not the version this engram uses (",
                        std::to_string(kSchemaVersion), ")");
    }
    return Status::ok();
  });
}

KeyRecord key_from_row(const sql::Statement& st) {
  KeyRecord k;
  k.key = st.text(0);
  k.name = st.text(1);
  k.limits.requests_per_minute = st.int64(2);
  k.limits.tokens_per_minute = st.int64(3);
  k.limits.concurrent = st.int64(4);
  k.balance_usd = st.optional_real(5);
  k.revoked = st.int64(6) != 0;
  k.created_unix = st.int64(7);
  return k;
}

constexpr const char* kKeyColumns = "api_key, name, rpm, tpm, concurrent, balance_usd, revoked, created_unix";

bool all_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

struct Ledger::Impl {
  mutable std::mutex mutex;
};

Ledger::Ledger(sqlite3* db, std::string path) : db_(db), path_(std::move(path)), impl_(std::make_unique<Impl>()) {}

Ledger::~Ledger() { sqlite3_close_v2(db_); }

Expected<std::unique_ptr<Ledger>> Ledger::open(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return make_error(path, ": is a directory, not a ledger file");
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return make_error(path, ": cannot open the ledger: ", message);
  }
  std::unique_ptr<Ledger> ledger(new Ledger(db, path));
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  sqlite3_extended_result_codes(db, 1);
  ENGRAM_RETURN_IF_ERROR(set_wal_mode(db, path));
  ENGRAM_RETURN_IF_ERROR(sql::exec(db, path, "PRAGMA synchronous=FULL", "set synchronous=FULL"));
  ENGRAM_RETURN_IF_ERROR(ensure_schema(db, path));
  return ledger;
}

Status Ledger::transaction(const std::function<Status(sqlite3*)>& body) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return in_transaction(db_, path_, body);
}

Status Ledger::read(const std::function<Status(sqlite3*)>& body) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return body(db_);
}

Status Ledger::sync_config_keys(const std::vector<KeyConfig>& keys, const KeyLimits& /*default_limits*/) {
  // parse_server_config has already filled each key's missing limits from
  // default_limits, so the keys carry their resolved limits. The config
  // decides names, limits and whether a key is prepaid; the amount already
  // in the database wins, so a restart never refills a balance.
  const int64_t now = unix_now_seconds();
  return transaction([&](sqlite3* db) -> Status {
    for (const KeyConfig& k : keys) {
      sql::Statement st(db, path_,
                        "INSERT INTO api_keys(api_key, name, rpm, tpm, concurrent, balance_usd, revoked, created_unix) "
                        "VALUES(?, ?, ?, ?, ?, ?, 0, ?) "
                        "ON CONFLICT(api_key) DO UPDATE SET name = excluded.name, rpm = excluded.rpm, "
                        "tpm = excluded.tpm, concurrent = excluded.concurrent, balance_usd = CASE "
                        "WHEN excluded.balance_usd IS NULL THEN NULL "
                        "WHEN api_keys.balance_usd IS NULL THEN excluded.balance_usd "
                        "ELSE api_keys.balance_usd END");
      st.bind(1, k.key).bind(2, k.name).bind(3, k.limits.requests_per_minute).bind(4, k.limits.tokens_per_minute);
      st.bind(5, k.limits.concurrent).bind(6, k.balance_usd).bind(7, now);
      ENGRAM_RETURN_IF_ERROR(st.run("store a key from the config"));
    }
    return Status::ok();
  });
}

std::optional<KeyRecord> Ledger::find_key(const std::string& key) const {
  std::optional<KeyRecord> found;
  (void)read([&](sqlite3* db) -> Status {
    sql::Statement st(db, path_, (std::string("SELECT ") + kKeyColumns + " FROM api_keys WHERE api_key = ?").c_str());
    st.bind(1, key);
    auto row = st.step("find a key");
    if (!row) return row.error();
    if (*row) found = key_from_row(st);
    return Status::ok();
  });
  return found;
}

Expected<KeyRecord> Ledger::create_key(const std::string& name, const KeyLimits& limits,
                                       std::optional<double> balance_usd) {
  if (balance_usd && !std::isfinite(*balance_usd)) return make_error(path_, ": balance_usd must be a finite number");
  KeyRecord k;
  k.name = name;
  k.limits = limits;
  k.balance_usd = balance_usd;
  k.created_unix = unix_now_seconds();
  // 128 random bits: a collision means a broken random source; retry a few times anyway.
  for (int attempt = 0; attempt < 4; ++attempt) {
    k.key = random_id("sk-", 32);
    bool inserted = false;
    Status st = transaction([&](sqlite3* db) -> Status {
      sql::Statement ins(db, path_,
                         "INSERT OR IGNORE INTO api_keys(api_key, name, rpm, tpm, concurrent, balance_usd, revoked, "
                         "created_unix) VALUES(?, ?, ?, ?, ?, ?, 0, ?)");
      ins.bind(1, k.key).bind(2, k.name).bind(3, limits.requests_per_minute).bind(4, limits.tokens_per_minute);
      ins.bind(5, limits.concurrent).bind(6, balance_usd).bind(7, k.created_unix);
      ENGRAM_RETURN_IF_ERROR(ins.run("create a key"));
      inserted = sqlite3_changes(db) == 1;
      return Status::ok();
    });
    if (!st) return Error{st.message()};
    if (inserted) return k;
  }
  return make_error(path_, ": could not generate a unique key");
}

Status Ledger::revoke_key(const std::string& key) {
  return transaction([&](sqlite3* db) -> Status {
    sql::Statement st(db, path_, "UPDATE api_keys SET revoked = 1 WHERE api_key = ?");
    st.bind(1, key);
    ENGRAM_RETURN_IF_ERROR(st.run("revoke a key"));
    if (sqlite3_changes(db) == 0) return make_error(path_, ": no such key '", masked(key), "'");
    return Status::ok();
  });
}

Expected<double> Ledger::top_up(const std::string& key, double usd) {
  if (!std::isfinite(usd)) return make_error(path_, ": top-up amount must be a finite number");
  double balance = 0;
  Status status = transaction([&](sqlite3* db) -> Status {
    sql::Statement find(db, path_, "SELECT balance_usd FROM api_keys WHERE api_key = ?");
    find.bind(1, key);
    auto row = find.step("find a key");
    if (!row) return row.error();
    if (!*row) return make_error(path_, ": no such key '", masked(key), "'");
    if (find.is_null(0)) {
      return make_error(path_, ": key '", masked(key), "' has no prepaid balance (unlimited); nothing to top up");
    }
    balance = find.real(0) + usd;
    sql::Statement upd(db, path_, "UPDATE api_keys SET balance_usd = ? WHERE api_key = ?");
    upd.bind(1, balance).bind(2, key);
    return upd.run("top up a balance");
  });
  if (!status) return Error{status.message()};
  return balance;
}

std::vector<KeyRecord> Ledger::list_keys() const {
  std::vector<KeyRecord> keys;
  (void)read([&](sqlite3* db) -> Status {
    sql::Statement st(db, path_,
                      (std::string("SELECT ") + kKeyColumns + " FROM api_keys ORDER BY created_unix, api_key").c_str());
    for (;;) {
      auto row = st.step("list keys");
      if (!row) return row.error();
      if (!*row) break;
      keys.push_back(key_from_row(st));
    }
    return Status::ok();
  });
  return keys;
}

Expected<bool> Ledger::record(const UsageRecord& r) {
  bool inserted = false;
  Status st = transaction([&](sqlite3* db) -> Status {
    // OR IGNORE: only the unique batch_line can conflict.
    sql::Statement ins(db, path_,
                       "INSERT OR IGNORE INTO usage(request_id, api_key, model, endpoint, created_unix, prompt_tokens, "
                       "cached_tokens, completion_tokens, reasoning_tokens, cost_usd, input_miss_usd, input_hit_usd, "
                       "output_usd, multiplier, price_window, batch, finish, batch_line) "
                       "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    ins.bind(1, r.request_id).bind(2, r.key).bind(3, r.model).bind(4, r.endpoint).bind(5, r.created_unix);
    ins.bind(6, r.usage.prompt_tokens).bind(7, r.usage.cached_tokens).bind(8, r.usage.completion_tokens);
    ins.bind(9, r.usage.reasoning_tokens).bind(10, r.cost.usd).bind(11, r.cost.input_miss_usd);
    ins.bind(12, r.cost.input_hit_usd).bind(13, r.cost.output_usd).bind(14, r.cost.multiplier);
    ins.bind(15, r.cost.window).bind(16, r.batch).bind(17, r.finish);
    if (r.batch_line.empty())
      ins.bind_null(18);
    else
      ins.bind(18, r.batch_line);
    ENGRAM_RETURN_IF_ERROR(ins.run("record usage"));
    inserted = sqlite3_changes(db) == 1;
    if (!inserted || r.key.empty() || r.cost.usd == 0) return Status::ok();
    // The debit may take the balance below zero for the request that used
    // it up; admission refuses the next one.
    sql::Statement debit(db, path_,
                         "UPDATE api_keys SET balance_usd = balance_usd - ? "
                         "WHERE api_key = ? AND balance_usd IS NOT NULL");
    debit.bind(1, r.cost.usd).bind(2, r.key);
    return debit.run("debit a balance");
  });
  if (!st) return Error{st.message()};
  return inserted;
}

Expected<std::vector<UsageRow>> Ledger::usage(const std::string& key, int64_t from_unix, int64_t to_unix,
                                              UsageGroup group) const {
  const char* group_expr = "''";
  switch (group) {
    case UsageGroup::NONE: group_expr = "''"; break;
    case UsageGroup::KEY: group_expr = "api_key"; break;
    case UsageGroup::MODEL: group_expr = "model"; break;
    case UsageGroup::DAY: group_expr = "strftime('%Y-%m-%d', created_unix, 'unixepoch')"; break;
  }
  std::string text = std::string("SELECT ") + group_expr +
                     ", count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(cached_tokens), 0), "
                     "coalesce(sum(completion_tokens), 0), coalesce(sum(reasoning_tokens), 0), total(cost_usd) "
                     "FROM usage WHERE (?1 = '' OR api_key = ?1) AND (?2 = 0 OR created_unix >= ?2) "
                     "AND (?3 = 0 OR created_unix < ?3)";
  // Without grouping, one row even when nothing matched (all zeros).
  if (group != UsageGroup::NONE) text += " GROUP BY 1 ORDER BY 1";
  std::vector<UsageRow> rows;
  Status st = read([&](sqlite3* db) -> Status {
    sql::Statement q(db, path_, text.c_str());
    q.bind(1, key).bind(2, from_unix).bind(3, to_unix);
    for (;;) {
      auto row = q.step("read usage");
      if (!row) return row.error();
      if (!*row) break;
      UsageRow u;
      u.group = q.text(0);
      u.requests = q.int64(1);
      u.prompt_tokens = q.int64(2);
      u.cached_tokens = q.int64(3);
      u.completion_tokens = q.int64(4);
      u.reasoning_tokens = q.int64(5);
      u.cost_usd = q.real(6);
      rows.push_back(std::move(u));
    }
    return Status::ok();
  });
  if (!st) return Error{st.message()};
  return rows;
}

Expected<UsageGroup> parse_usage_group(const std::string& name) {
  if (name == "none" || name.empty()) return UsageGroup::NONE;
  if (name == "key") return UsageGroup::KEY;
  if (name == "model") return UsageGroup::MODEL;
  if (name == "day") return UsageGroup::DAY;
  return make_error("unknown grouping '", name, "' (expected key, model, day or none)");
}

Expected<int64_t> parse_usage_time(const std::string& text, bool end_of_day) {
  if (all_digits(text)) {
    if (text.size() > 12) return make_error("'", text, "' is not a time (too many digits for unix seconds)");
    return static_cast<int64_t>(std::stoll(text));
  }
  // YYYY-MM-DD[(T| )HH:MM[:SS][Z]]
  auto number = [&](size_t pos, size_t len, int& out) {
    if (pos + len > text.size()) return false;
    const std::string part = text.substr(pos, len);
    if (!all_digits(part)) return false;
    out = std::stoi(part);
    return true;
  };
  const Error bad = make_error("'", text, "' is not a date YYYY-MM-DD, a UTC time YYYY-MM-DDTHH:MM[:SS]Z or unix seconds");
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  if (!number(0, 4, y) || text.size() < 10 || text[4] != '-' || !number(5, 2, mo) || text[7] != '-' ||
      !number(8, 2, d)) {
    return bad;
  }
  using namespace std::chrono;
  const year_month_day date{year{y}, month{static_cast<unsigned>(mo)}, day{static_cast<unsigned>(d)}};
  if (!date.ok()) return make_error("'", text, "' is not a valid calendar date");
  const int64_t day_start = duration_cast<seconds>(sys_days(date).time_since_epoch()).count();
  if (text.size() == 10) return end_of_day ? day_start + 86400 : day_start;

  std::string rest = text.substr(10);
  if (rest.back() == 'Z') rest.pop_back();
  if (rest.size() != 6 && rest.size() != 9) return bad;
  if ((rest[0] != 'T' && rest[0] != ' ') || rest[3] != ':') return bad;
  const size_t base = 10;
  if (!number(base + 1, 2, h) || !number(base + 4, 2, mi)) return bad;
  if (rest.size() == 9 && (rest[6] != ':' || !number(base + 7, 2, s))) return bad;
  if (h > 23 || mi > 59 || s > 59) return make_error("'", text, "' has an hour, minute or second out of range");
  return day_start + h * 3600 + mi * 60 + s;
}

std::string random_id(const std::string& prefix, int hex_chars) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string id = prefix;
  id.reserve(prefix.size() + static_cast<size_t>(hex_chars));
  uint32_t bits = 0;
  for (int i = 0; i < hex_chars; ++i) {
    if (i % 8 == 0) bits = rd();
    id += kHex[bits & 15];
    bits >>= 4;
  }
  return id;
}

}  // namespace engram::server
