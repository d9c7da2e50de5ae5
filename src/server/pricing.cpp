// The cost of a request: the tier picked by the prompt length, the three
// per-1M-token rates, then the time-of-day window and batch multipliers.
#include "server/pricing.h"

#include <cstdio>

namespace engram::server {
namespace {

constexpr int kMinutesPerDay = 24 * 60;

// Minutes after 00:00 UTC of a point in time (floor, so times before 1970 work too).
int utc_minute_of_day(std::chrono::system_clock::time_point when) {
  const int64_t seconds = std::chrono::duration_cast<std::chrono::seconds>(when.time_since_epoch()).count();
  int64_t minutes = seconds >= 0 ? seconds / 60 : -((-seconds + 59) / 60);
  int64_t m = minutes % kMinutesPerDay;
  if (m < 0) m += kMinutesPerDay;
  return static_cast<int>(m);
}

bool window_contains(const PriceWindow& w, int minute) {
  if (w.start_minute < w.end_minute) return minute >= w.start_minute && minute < w.end_minute;
  if (w.end_minute < w.start_minute) return minute >= w.start_minute || minute < w.end_minute;  // wraps
  return false;  // empty window (the config refuses start == end)
}

// The rates for a prompt of `prompt_tokens`: the tier with the highest
// threshold that the prompt reaches (tiers need not be sorted), else the base.
const Rates& rates_for(const ModelPrice& price, int64_t prompt_tokens) {
  const PriceTier* best = nullptr;
  for (const PriceTier& t : price.tiers) {
    if (prompt_tokens >= t.min_input_tokens && (!best || t.min_input_tokens > best->min_input_tokens)) best = &t;
  }
  return best ? best->rates : price.rates;
}

}  // namespace

const PriceWindow* window_at(const ModelPrice& price, std::chrono::system_clock::time_point when) {
  const int minute = utc_minute_of_day(when);
  for (const PriceWindow& w : price.windows) {
    if (window_contains(w, minute)) return &w;
  }
  return nullptr;
}

Cost price_request(const ModelPrice& price, const Usage& usage, std::chrono::system_clock::time_point when,
                   bool batch) {
  // Clamp what a buggy caller might pass: cached within [0, prompt].
  const int64_t prompt = usage.prompt_tokens > 0 ? usage.prompt_tokens : 0;
  int64_t cached = usage.cached_tokens > 0 ? usage.cached_tokens : 0;
  if (cached > prompt) cached = prompt;
  const int64_t completion = usage.completion_tokens > 0 ? usage.completion_tokens : 0;

  const Rates& r = rates_for(price, prompt);
  Cost c;
  c.input_miss_usd = r.input_miss * static_cast<double>(prompt - cached) / 1e6;
  c.input_hit_usd = r.input_hit * static_cast<double>(cached) / 1e6;
  c.output_usd = r.output * static_cast<double>(completion) / 1e6;
  if (const PriceWindow* w = window_at(price, when)) {
    c.multiplier = w->multiplier;
    c.window = w->name;
  }
  if (batch) c.multiplier *= price.batch_multiplier;
  c.usd = (c.input_miss_usd + c.input_hit_usd + c.output_usd) * c.multiplier;
  return c;
}

Expected<int> parse_utc_time(const std::string& text) {
  // Exactly "HH:MM"; "24:00" is allowed as the end of a window that runs to midnight.
  auto digit = [&](size_t i) { return i < text.size() && text[i] >= '0' && text[i] <= '9'; };
  if (text.size() != 5 || !digit(0) || !digit(1) || text[2] != ':' || !digit(3) || !digit(4)) {
    return make_error("'", text, "' is not a time of day HH:MM (UTC)");
  }
  const int hours = (text[0] - '0') * 10 + (text[1] - '0');
  const int minutes = (text[3] - '0') * 10 + (text[4] - '0');
  if (minutes > 59 || hours > 24 || (hours == 24 && minutes != 0)) {
    return make_error("'", text, "' is not a time of day between 00:00 and 24:00");
  }
  return hours * 60 + minutes;
}

}  // namespace engram::server
