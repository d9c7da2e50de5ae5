// engram usage: tokens and cost from the server's ledger, grouped by key,
// model or UTC day. Reads the SQLite file while a server may be writing it
// (WAL mode lets readers and the writer proceed together).
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "server/ledger.h"

namespace engram::tools {
namespace {

struct UsageOptions {
  std::string db;
  std::string by = "none";
  std::string key;
  std::string from, to;
  bool json = false;
};

// Keys are secrets: show enough to tell them apart.
std::string shown_key(const std::string& key) {
  if (key.empty()) return "(no key)";
  return key.size() <= 12 ? key : key.substr(0, 7) + "..." + key.substr(key.size() - 4);
}

nlohmann::json row_json(const server::UsageRow& r) {
  return {{"requests", r.requests},
          {"prompt_tokens", r.prompt_tokens},
          {"cached_tokens", r.cached_tokens},
          {"completion_tokens", r.completion_tokens},
          {"reasoning_tokens", r.reasoning_tokens},
          {"cost_usd", r.cost_usd}};
}

void print_row(const std::string& label, const server::UsageRow& r) {
  std::printf("%-24s %10lld %12lld %12lld %12lld %12lld %14.6f\n", label.c_str(), static_cast<long long>(r.requests),
              static_cast<long long>(r.prompt_tokens), static_cast<long long>(r.cached_tokens),
              static_cast<long long>(r.completion_tokens), static_cast<long long>(r.reasoning_tokens), r.cost_usd);
}

int run(const UsageOptions& o) {
  // Opening creates a missing database: check first, so a typo in the path is an error.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(o.db, ec)) return fail(o.db + ": no such ledger file");
  auto group = server::parse_usage_group(o.by);
  if (!group) return fail("--by: " + group.error().message);
  int64_t from = 0, to = 0;
  if (!o.from.empty()) {
    auto t = server::parse_usage_time(o.from, /*end_of_day=*/false);
    if (!t) return fail("--from: " + t.error().message);
    from = *t;
  }
  if (!o.to.empty()) {
    auto t = server::parse_usage_time(o.to, /*end_of_day=*/true);  // --to 2026-11-28 includes that day
    if (!t) return fail("--to: " + t.error().message);
    to = *t;
  }
  auto ledger = server::Ledger::open(o.db);
  if (!ledger) return fail(ledger.error().message);
  auto rows = (*ledger)->usage(o.key, from, to, *group);
  if (!rows) return fail(rows.error().message);

  server::UsageRow total;
  for (const server::UsageRow& r : *rows) {
    total.requests += r.requests;
    total.prompt_tokens += r.prompt_tokens;
    total.cached_tokens += r.cached_tokens;
    total.completion_tokens += r.completion_tokens;
    total.reasoning_tokens += r.reasoning_tokens;
    total.cost_usd += r.cost_usd;
  }

  if (o.json) {
    nlohmann::json data = nlohmann::json::array();
    if (*group != server::UsageGroup::NONE) {
      for (const server::UsageRow& r : *rows) {
        nlohmann::json j = row_json(r);
        j[o.by] = r.group;
        data.push_back(std::move(j));
      }
    }
    nlohmann::json out = {{"data", data}, {"total", row_json(total)}};
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }

  const char* label = *group == server::UsageGroup::KEY     ? "key"
                      : *group == server::UsageGroup::MODEL ? "model"
                      : *group == server::UsageGroup::DAY   ? "day (UTC)"
                                                            : "";
  std::printf("%-24s %10s %12s %12s %12s %12s %14s\n", label, "requests", "prompt", "cached", "completion",
              "reasoning", "cost $");
  std::map<std::string, std::string> names;  // key -> name, to label key rows
  for (const server::KeyRecord& k : (*ledger)->list_keys()) names[k.key] = k.name;
  if (*group != server::UsageGroup::NONE) {
    for (const server::UsageRow& r : *rows) {
      std::string row_label = r.group;
      if (*group == server::UsageGroup::KEY) {
        row_label = shown_key(r.group);
        if (auto it = names.find(r.group); it != names.end() && !it->second.empty()) {
          row_label = it->second + " " + row_label;
        }
      }
      print_row(row_label, r);
    }
  }
  print_row("total", total);
  return 0;
}

}  // namespace

Command add_usage_command(CLI::App& parent) {
  auto o = std::make_shared<UsageOptions>();
  CLI::App* app = parent.add_subcommand("usage", "Tokens and cost from a server ledger (SQLite)");
  app->add_option("--db", o->db, "Ledger file written by `engram serve`")->required();
  app->add_option("--by", o->by, "Group by key, model or day (UTC); default: only the total")
      ->check(CLI::IsMember({"key", "model", "day", "none"}));
  app->add_option("--key", o->key, "Only this API key");
  app->add_option("--from", o->from, "From this UTC date or time (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, unix seconds)");
  app->add_option("--to", o->to, "Up to this UTC date (inclusive) or time (exclusive)");
  app->add_flag("--json", o->json, "Print JSON instead of a table");
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
