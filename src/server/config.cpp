// The server's JSON configuration. Every field is checked for its type and
// range, unknown fields are refused (a typo in a price must not silently
// make a model free), and every error names the file and the field path,
// e.g. "cfg.json: keys[1].limits.rpm: expected a non-negative integer".
#include "server/config.h"

#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace engram::server {
namespace {

using nlohmann::json;

// Reads fields out of the parsed JSON, with the file name for its errors.
class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  Error error(const std::string& path, const std::string& message) const {
    if (path.empty()) return make_error(source_, ": ", message);
    return make_error(source_, ": ", path, ": ", message);
  }

  static std::string field(const std::string& path, const std::string& name) {
    return path.empty() ? name : path + "." + name;
  }
  static std::string item(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

  // `j` must be an object whose fields are all in `allowed`.
  Status object(const json& j, const std::string& path, std::initializer_list<const char*> allowed) const {
    if (!j.is_object()) return error(path, "expected an object");
    for (auto it = j.begin(); it != j.end(); ++it) {
      bool known = false;
      for (const char* a : allowed) known = known || it.key() == a;
      if (!known) {
        std::string list;
        for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        return error(field(path, it.key()), "unknown field (known fields here: " + list + ")");
      }
    }
    return Status::ok();
  }

  Status string(const json& obj, const std::string& path, const char* name, std::string& out, bool required,
                bool non_empty = false) const {
    auto it = obj.find(name);
    if (it == obj.end()) return required ? error(field(path, name), "missing (required)") : Status::ok();
    if (!it->is_string()) return error(field(path, name), "expected a string");
    out = it->get<std::string>();
    if (non_empty && out.empty()) return error(field(path, name), "must not be empty");
    return Status::ok();
  }

  // A JSON integer >= minimum (1.5 or "3" are refused).
  Status integer(const json& obj, const std::string& path, const char* name, int64_t& out, int64_t minimum,
                 bool required = false) const {
    auto it = obj.find(name);
    if (it == obj.end()) return required ? error(field(path, name), "missing (required)") : Status::ok();
    const char* expected = minimum > 0 ? "expected a positive integer" : "expected a non-negative integer";
    if (it->is_number_unsigned()) {
      const uint64_t v = it->get<uint64_t>();
      if (v > static_cast<uint64_t>(INT64_MAX)) return error(field(path, name), "integer too large");
      out = static_cast<int64_t>(v);
    } else if (it->is_number_integer()) {
      out = it->get<int64_t>();
    } else {
      return error(field(path, name), expected);
    }
    if (out < minimum) return error(field(path, name), expected);
    return Status::ok();
  }

  // A finite JSON number >= 0.
  Status number(const json& obj, const std::string& path, const char* name, double& out, bool required) const {
    auto it = obj.find(name);
    if (it == obj.end()) return required ? error(field(path, name), "missing (required)") : Status::ok();
    if (!it->is_number()) return error(field(path, name), "expected a non-negative number");
    const double v = it->get<double>();
    if (!(v >= 0) || v > 1e300) return error(field(path, name), "expected a non-negative number");
    out = v;
    return Status::ok();
  }

  Status time_of_day(const json& obj, const std::string& path, const char* name, int& out) const {
    std::string text;
    ENGRAM_RETURN_IF_ERROR(string(obj, path, name, text, /*required=*/true));
    auto minute = parse_utc_time(text);
    if (!minute) return error(field(path, name), minute.error().message);
    out = *minute;
    return Status::ok();
  }

 private:
  std::string source_;
};

Status read_limits(const Reader& r, const json& j, const std::string& path, KeyLimits& limits) {
  ENGRAM_RETURN_IF_ERROR(r.object(j, path, {"rpm", "tpm", "concurrent"}));
  ENGRAM_RETURN_IF_ERROR(r.integer(j, path, "rpm", limits.requests_per_minute, 0));
  ENGRAM_RETURN_IF_ERROR(r.integer(j, path, "tpm", limits.tokens_per_minute, 0));
  ENGRAM_RETURN_IF_ERROR(r.integer(j, path, "concurrent", limits.concurrent, 0));
  return Status::ok();
}

// input_miss and output are required; input_hit defaults to input_miss (no cache discount).
Status read_rates(const Reader& r, const json& j, const std::string& path, Rates& rates) {
  ENGRAM_RETURN_IF_ERROR(r.number(j, path, "input_miss", rates.input_miss, /*required=*/true));
  rates.input_hit = rates.input_miss;
  ENGRAM_RETURN_IF_ERROR(r.number(j, path, "input_hit", rates.input_hit, /*required=*/false));
  ENGRAM_RETURN_IF_ERROR(r.number(j, path, "output", rates.output, /*required=*/true));
  return Status::ok();
}

Status read_key(const Reader& r, const json& j, const std::string& path, const KeyLimits& defaults, KeyConfig& key) {
  ENGRAM_RETURN_IF_ERROR(r.object(j, path, {"key", "name", "balance_usd", "limits"}));
  ENGRAM_RETURN_IF_ERROR(r.string(j, path, "key", key.key, /*required=*/true, /*non_empty=*/true));
  for (char c : key.key) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return r.error(Reader::field(path, "key"), "must not contain spaces or control characters");
    }
  }
  ENGRAM_RETURN_IF_ERROR(r.string(j, path, "name", key.name, /*required=*/false));
  if (auto it = j.find("balance_usd"); it != j.end() && !it->is_null()) {
    double balance = 0;
    ENGRAM_RETURN_IF_ERROR(r.number(j, path, "balance_usd", balance, true));
    key.balance_usd = balance;
  }
  // Limits the key leaves out come from default_limits (0 given explicitly means unlimited).
  key.limits = defaults;
  if (auto it = j.find("limits"); it != j.end()) {
    ENGRAM_RETURN_IF_ERROR(read_limits(r, *it, Reader::field(path, "limits"), key.limits));
  }
  return Status::ok();
}

Status read_tier(const Reader& r, const json& j, const std::string& path, PriceTier& tier) {
  ENGRAM_RETURN_IF_ERROR(r.object(j, path, {"min_input_tokens", "input_miss", "input_hit", "output"}));
  ENGRAM_RETURN_IF_ERROR(r.integer(j, path, "min_input_tokens", tier.min_input_tokens, 1, /*required=*/true));
  return read_rates(r, j, path, tier.rates);
}

Status read_window(const Reader& r, const json& j, const std::string& path, PriceWindow& w) {
  ENGRAM_RETURN_IF_ERROR(r.object(j, path, {"name", "start", "end", "multiplier"}));
  ENGRAM_RETURN_IF_ERROR(r.string(j, path, "name", w.name, /*required=*/false));
  ENGRAM_RETURN_IF_ERROR(r.time_of_day(j, path, "start", w.start_minute));
  ENGRAM_RETURN_IF_ERROR(r.time_of_day(j, path, "end", w.end_minute));
  if (w.start_minute % (24 * 60) == w.end_minute % (24 * 60)) {
    return r.error(Reader::field(path, "end"), "equals start (an empty or all-day window); use the base rates");
  }
  ENGRAM_RETURN_IF_ERROR(r.number(j, path, "multiplier", w.multiplier, /*required=*/true));
  if (w.name.empty()) w.name = "window";
  return Status::ok();
}

// The minutes of the day a window covers, to find overlapping windows.
std::vector<bool> window_minutes(const PriceWindow& w) {
  std::vector<bool> m(24 * 60, false);
  for (int i = 0; i < 24 * 60; ++i) {
    if (w.start_minute < w.end_minute) m[i] = i >= w.start_minute && i < w.end_minute;
    else m[i] = i >= w.start_minute || i < w.end_minute;
  }
  return m;
}

Status read_price(const Reader& r, const json& j, const std::string& path, ModelPrice& price) {
  ENGRAM_RETURN_IF_ERROR(
      r.object(j, path, {"model", "input_miss", "input_hit", "output", "tiers", "windows", "batch_multiplier"}));
  ENGRAM_RETURN_IF_ERROR(r.string(j, path, "model", price.model, /*required=*/true, /*non_empty=*/true));
  ENGRAM_RETURN_IF_ERROR(read_rates(r, j, path, price.rates));
  ENGRAM_RETURN_IF_ERROR(r.number(j, path, "batch_multiplier", price.batch_multiplier, /*required=*/false));

  if (auto it = j.find("tiers"); it != j.end()) {
    const std::string tiers_path = Reader::field(path, "tiers");
    if (!it->is_array()) return r.error(tiers_path, "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      PriceTier tier;
      ENGRAM_RETURN_IF_ERROR(read_tier(r, (*it)[i], Reader::item(tiers_path, i), tier));
      for (size_t k = 0; k < price.tiers.size(); ++k) {
        if (price.tiers[k].min_input_tokens == tier.min_input_tokens) {
          return r.error(Reader::item(tiers_path, i) + ".min_input_tokens",
                         "same threshold as " + Reader::item(tiers_path, k));
        }
      }
      price.tiers.push_back(tier);
    }
  }

  if (auto it = j.find("windows"); it != j.end()) {
    const std::string windows_path = Reader::field(path, "windows");
    if (!it->is_array()) return r.error(windows_path, "expected an array");
    std::vector<std::vector<bool>> covered;
    for (size_t i = 0; i < it->size(); ++i) {
      PriceWindow w;
      ENGRAM_RETURN_IF_ERROR(read_window(r, (*it)[i], Reader::item(windows_path, i), w));
      std::vector<bool> minutes = window_minutes(w);
      for (size_t k = 0; k < covered.size(); ++k) {
        for (int m = 0; m < 24 * 60; ++m) {
          if (minutes[m] && covered[k][m]) {
            return r.error(Reader::item(windows_path, i), "overlaps " + Reader::item(windows_path, k));
          }
        }
      }
      covered.push_back(std::move(minutes));
      price.windows.push_back(w);
    }
  }
  return Status::ok();
}

}  // namespace

Expected<ServerConfig> parse_server_config(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    // e.what() names the line and column.
    return make_error(source, ": invalid JSON: ", e.what());
  }
  const Reader r(source);
  if (!root.is_object()) return r.error("", "expected a JSON object at the top level");
  ENGRAM_RETURN_IF_ERROR(r.object(root, "", {"admin_key", "ledger", "files_dir", "max_queue", "default_limits",
                                             "keys", "prices"}));

  ServerConfig config;
  ENGRAM_RETURN_IF_ERROR(r.string(root, "", "admin_key", config.admin_key, false));
  ENGRAM_RETURN_IF_ERROR(r.string(root, "", "ledger", config.ledger_path, false, /*non_empty=*/true));
  ENGRAM_RETURN_IF_ERROR(r.string(root, "", "files_dir", config.files_dir, false, /*non_empty=*/true));
  int64_t max_queue = config.max_queue;
  ENGRAM_RETURN_IF_ERROR(r.integer(root, "", "max_queue", max_queue, 1));
  if (max_queue > 1000000) return r.error("max_queue", "at most 1000000");
  config.max_queue = static_cast<int>(max_queue);

  // default_limits first: keys take the fields they leave out from it.
  if (auto it = root.find("default_limits"); it != root.end()) {
    ENGRAM_RETURN_IF_ERROR(read_limits(r, *it, "default_limits", config.default_limits));
  }

  if (auto it = root.find("keys"); it != root.end()) {
    if (!it->is_array()) return r.error("keys", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      KeyConfig key;
      const std::string path = Reader::item("keys", i);
      ENGRAM_RETURN_IF_ERROR(read_key(r, (*it)[i], path, config.default_limits, key));
      for (size_t k = 0; k < config.keys.size(); ++k) {
        if (config.keys[k].key == key.key) return r.error(path + ".key", "duplicate of " + Reader::item("keys", k));
      }
      if (!config.admin_key.empty() && key.key == config.admin_key) {
        return r.error(path + ".key", "same as admin_key");
      }
      config.keys.push_back(std::move(key));
    }
  }

  if (auto it = root.find("prices"); it != root.end()) {
    if (!it->is_array()) return r.error("prices", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      ModelPrice price;
      const std::string path = Reader::item("prices", i);
      ENGRAM_RETURN_IF_ERROR(read_price(r, (*it)[i], path, price));
      for (size_t k = 0; k < config.prices.size(); ++k) {
        if (config.prices[k].model == price.model) {
          return r.error(path + ".model", "'" + price.model + "' is priced twice (also " + Reader::item("prices", k) + ")");
        }
      }
      config.prices.push_back(std::move(price));
    }
  }
  return config;
}

Expected<ServerConfig> load_server_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path, ": cannot open the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return make_error(path, ": cannot read the config file");
  return parse_server_config(ss.str(), path);
}

const ModelPrice* find_price(const ServerConfig& config, const std::string& model) {
  const ModelPrice* any = nullptr;
  for (const ModelPrice& p : config.prices) {
    if (p.model == model) return &p;
    if (p.model == "*") any = &p;
  }
  return any;
}

}  // namespace engram::server
