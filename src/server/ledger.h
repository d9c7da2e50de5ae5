// The ledger: one SQLite database (WAL mode) that holds the API keys and
// their balances, one usage row per request, and the batch API's files and
// batches. Every request is recorded in one transaction that inserts its
// usage row and debits the key's balance together, so a crash never leaves
// one without the other. Safe to use from several threads (one connection
// guarded by a mutex; SQLite's busy timeout covers other processes such as
// `engram usage`).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/config.h"
#include "server/pricing.h"
#include "util/status.h"

struct sqlite3;

namespace engram::server {

struct KeyRecord {
  std::string key;
  std::string name;
  KeyLimits limits;
  std::optional<double> balance_usd;  // nullopt: unlimited
  bool revoked = false;
  int64_t created_unix = 0;
};

struct UsageRecord {
  std::string request_id;     // "chatcmpl-..." / "cmpl-..." / batch line id
  std::string key;            // "" when the server runs without keys
  std::string model;
  std::string endpoint;       // "/v1/chat/completions", ...
  int64_t created_unix = 0;   // request start, seconds since the epoch
  Usage usage;
  Cost cost;
  bool batch = false;
  // "batch_...:N" for a batch line, else "". A line is billed once: a second
  // record for the same line (run again after a crash) is ignored.
  std::string batch_line;
  std::string finish;         // "stop" | "length" | "cancelled" | "error"
};

struct UsageRow {             // one group of a usage report
  std::string group;          // the key, model or day ("2026-11-28"); "" for the total
  int64_t requests = 0;
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0, reasoning_tokens = 0;
  double cost_usd = 0;
};

enum class UsageGroup { NONE, KEY, MODEL, DAY };
Expected<UsageGroup> parse_usage_group(const std::string& name);  // "key" | "model" | "day" | "none"

// A time for a usage report, in seconds since the epoch (UTC): "2026-11-28"
// (the start of that day, or with end_of_day the start of the next, so a
// --to date includes its day), "2026-11-28T16:30:00Z" (also without
// seconds or the Z), or plain unix seconds. The error names the text.
Expected<int64_t> parse_usage_time(const std::string& text, bool end_of_day);

// prefix + `hex_chars` random hex digits (std::random_device): "sk-...",
// "file-...", "batch_...".
std::string random_id(const std::string& prefix, int hex_chars);

class Ledger {
 public:
  // Opens or creates the database (WAL mode, schema created if missing).
  // Errors name the file.
  static Expected<std::unique_ptr<Ledger>> open(const std::string& path);
  ~Ledger();

  // Keys from the config file are upserted at start (the balance in the
  // database wins once it exists, so restarts do not refill balances).
  Status sync_config_keys(const std::vector<KeyConfig>& keys, const KeyLimits& default_limits);
  std::optional<KeyRecord> find_key(const std::string& key) const;
  Expected<KeyRecord> create_key(const std::string& name, const KeyLimits& limits,
                                 std::optional<double> balance_usd);  // generates "sk-..."
  Status revoke_key(const std::string& key);
  Expected<double> top_up(const std::string& key, double usd);  // returns the new balance
  std::vector<KeyRecord> list_keys() const;

  // One transaction: the usage row, and the debit of the key's balance.
  // Returns false (and changes nothing) when record.batch_line was already
  // billed.
  Expected<bool> record(const UsageRecord& record);

  // Usage between [from_unix, to_unix) (0: open), for one key or all ("").
  Expected<std::vector<UsageRow>> usage(const std::string& key, int64_t from_unix, int64_t to_unix,
                                        UsageGroup group) const;

  sqlite3* db() const { return db_; }   // for the batch store, which shares the database
  const std::string& path() const { return path_; }  // names the database in errors

  // For the batch store: runs `body` holding the connection's mutex, inside
  // one transaction (BEGIN IMMEDIATE; COMMIT, or ROLLBACK when body fails)
  // or, for reads, without one. Do not call other Ledger methods from body.
  Status transaction(const std::function<Status(sqlite3*)>& body) const;
  Status read(const std::function<Status(sqlite3*)>& body) const;

 private:
  explicit Ledger(sqlite3* db, std::string path);
  sqlite3* db_;
  std::string path_;
  struct Impl;
  std::unique_ptr<Impl> impl_;          // mutex and prepared statements
};

}  // namespace engram::server
