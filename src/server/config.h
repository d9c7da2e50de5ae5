// The server's configuration file (JSON): API keys with their limits and
// prepaid balances, the admin key, the price table and the server limits.
//
// {
//   "admin_key": "sk-admin-...",
//   "ledger": "engram-ledger.db",          // SQLite file (usage, keys, batches)
//   "files_dir": "engram-files",           // uploaded and batch output files
//   "max_queue": 64,
//   "default_limits": {"rpm": 60, "tpm": 100000, "concurrent": 4},
//   "keys": [
//     {"key": "sk-alice", "name": "alice", "balance_usd": 10.0,
//      "limits": {"rpm": 30, "tpm": 50000, "concurrent": 2}}
//   ],
//   "prices": [
//     {"model": "*", "input_miss": 0.27, "input_hit": 0.07, "output": 1.10,
//      "tiers": [{"min_input_tokens": 32768, "input_miss": 0.5, "input_hit": 0.1, "output": 2.0}],
//      "windows": [{"name": "off-peak", "start": "16:30", "end": "00:30", "multiplier": 0.5}],
//      "batch_multiplier": 0.5}
//   ]
// }
// A limit of 0 or an absent one is unlimited; an absent balance_usd is
// unlimited (post-paid). Errors name the file and the field ("keys[1].limits.rpm").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "server/pricing.h"
#include "util/status.h"

namespace engram::server {

struct KeyLimits {
  int64_t requests_per_minute = 0;  // 0: unlimited
  int64_t tokens_per_minute = 0;    // prompt + completion tokens
  int64_t concurrent = 0;
};

struct KeyConfig {
  std::string key;                  // the bearer token
  std::string name;
  KeyLimits limits;
  std::optional<double> balance_usd;  // nullopt: unlimited
};

struct ServerConfig {
  std::string admin_key;            // "": admin endpoints off
  std::string ledger_path = "engram-ledger.db";
  std::string files_dir = "engram-files";
  int max_queue = 64;
  KeyLimits default_limits;         // for keys without their own, and keys created by the admin API
  std::vector<KeyConfig> keys;      // empty and no --api-key: no authentication
  std::vector<ModelPrice> prices;   // empty: everything is free (still metered)
};

Expected<ServerConfig> load_server_config(const std::string& path);
// Same, from JSON text; `source` names it in errors.
Expected<ServerConfig> parse_server_config(const std::string& json_text, const std::string& source);

// The price entry for a model id: an exact match, else "*", else nullptr.
const ModelPrice* find_price(const ServerConfig& config, const std::string& model);

}  // namespace engram::server
