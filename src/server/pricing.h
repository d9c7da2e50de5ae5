// Prices and the cost of one request. Prices are US dollars per 1M tokens,
// per model, with three rates (input on a cache miss, input on a cache hit,
// output), optional tiers by input length (as Qwen prices long prompts),
// time-of-day windows in UTC with their own multiplier (DeepSeek's off-peak
// discount) and a multiplier for batch jobs (0.5, as OpenAI's batch API).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "util/status.h"

namespace engram::server {

struct Rates {
  double input_miss = 0;  // $ per 1M prompt tokens not in the cache
  double input_hit = 0;   // $ per 1M prompt tokens from the cache
  double output = 0;      // $ per 1M completion tokens
};

// Rates for prompts of at least min_input_tokens (the highest tier that
// applies wins; the base rates apply below the first tier).
struct PriceTier {
  int64_t min_input_tokens = 0;
  Rates rates;
};

// [start, end) in minutes after 00:00 UTC; end < start wraps past midnight.
struct PriceWindow {
  std::string name;        // "off-peak"
  int start_minute = 0;
  int end_minute = 0;
  double multiplier = 1;   // applied to the whole request
};

struct ModelPrice {
  std::string model;       // model id as in /v1/models, or "*" for any
  Rates rates;
  std::vector<PriceTier> tiers;
  std::vector<PriceWindow> windows;
  double batch_multiplier = 0.5;
};

struct Usage {
  int64_t prompt_tokens = 0;      // all prompt tokens (cached included)
  int64_t cached_tokens = 0;      // prompt tokens from the cache
  int64_t completion_tokens = 0;  // reasoning tokens included
  int64_t reasoning_tokens = 0;
};

struct Cost {
  double usd = 0;
  double input_miss_usd = 0, input_hit_usd = 0, output_usd = 0;  // before the multipliers
  double multiplier = 1;          // window * batch
  std::string window;             // name of the time window that applied, "" for none
};

// The cost of a request that started at `when`.
Cost price_request(const ModelPrice& price, const Usage& usage, std::chrono::system_clock::time_point when,
                   bool batch);

// The window in force at `when` (nullptr: none).
const PriceWindow* window_at(const ModelPrice& price, std::chrono::system_clock::time_point when);

// "HH:MM" -> minutes after midnight; error names the text.
Expected<int> parse_utc_time(const std::string& text);

}  // namespace engram::server
