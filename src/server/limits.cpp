// Per-key admission over sliding one-minute windows. Each admitted request
// leaves an event (time, tokens) that counts against the requests and the
// tokens per minute until it is 60 s old; finish() swaps the estimate for
// the tokens actually used.
#include "server/limits.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace engram::server {
namespace {

using Clock = RateLimiter::Clock;
constexpr std::chrono::seconds kWindow{60};

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Whole seconds for Retry-After: rounded up, at least 1.
int retry_seconds(double seconds) { return std::max(1, static_cast<int>(std::ceil(seconds - 1e-9))); }

// OpenAI's style for x-ratelimit-reset-*: "20ms", "1s", "6m0s", "1h2m3s".
std::string format_duration(double seconds) {
  if (seconds <= 0) return "0s";
  if (seconds < 1) return std::to_string(static_cast<int64_t>(std::ceil(seconds * 1000))) + "ms";
  int64_t s = static_cast<int64_t>(std::ceil(seconds - 1e-9));
  const int64_t h = s / 3600, m = (s % 3600) / 60;
  s %= 60;
  std::string out;
  if (h > 0) out += std::to_string(h) + "h";
  if (h > 0 || m > 0) out += std::to_string(m) + "m";
  return out + std::to_string(s) + "s";
}

std::string money(double usd) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "$%.6f", usd);
  return buf;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> Admission::headers() const {
  std::vector<std::pair<std::string, std::string>> h;
  if (limit_requests > 0) {
    h.emplace_back("x-ratelimit-limit-requests", std::to_string(limit_requests));
    h.emplace_back("x-ratelimit-remaining-requests", std::to_string(remaining_requests));
    h.emplace_back("x-ratelimit-reset-requests", format_duration(reset_requests_seconds));
  }
  if (limit_tokens > 0) {
    h.emplace_back("x-ratelimit-limit-tokens", std::to_string(limit_tokens));
    h.emplace_back("x-ratelimit-remaining-tokens", std::to_string(remaining_tokens));
    h.emplace_back("x-ratelimit-reset-tokens", format_duration(reset_tokens_seconds));
  }
  if (!ok() && retry_after_seconds > 0) h.emplace_back("retry-after", std::to_string(retry_after_seconds));
  return h;
}

Admission RateLimiter::admit(const std::string& key, const KeyLimits& limits, std::optional<double> balance_usd,
                             int64_t tokens, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  Window& w = windows_[key];
  while (!w.events.empty() && w.events.front().time + kWindow <= now) w.events.pop_front();

  int64_t n_requests = 0, n_tokens = 0;
  for (const Event& e : w.events) {
    n_requests += e.request ? 1 : 0;
    n_tokens += e.tokens;
  }
  tokens = std::max<int64_t>(tokens, 0);
  const int64_t rpm = limits.requests_per_minute, tpm = limits.tokens_per_minute;

  Admission a;
  a.limit_requests = rpm;
  a.limit_tokens = tpm;

  if (balance_usd && *balance_usd <= 0) {
    a.refusal = Refusal::BALANCE;
    a.message = "The prepaid balance of this key is exhausted (" + money(*balance_usd) + "); top it up to continue.";
  } else if (limits.concurrent > 0 && w.running >= limits.concurrent) {
    a.refusal = Refusal::CONCURRENT;
    a.message = "Limit of " + std::to_string(limits.concurrent) +
                " concurrent requests reached for this key; retry when one finishes.";
    a.retry_after_seconds = 1;  // unknown: when a running request ends
  } else if (rpm > 0 && n_requests + 1 > rpm) {
    // The oldest requests must age out until one more fits.
    int64_t to_expire = n_requests + 1 - rpm;
    for (const Event& e : w.events) {
      if (e.request && --to_expire == 0) {
        a.retry_after_seconds = retry_seconds(seconds_between(now, e.time + kWindow));
        break;
      }
    }
    a.refusal = Refusal::REQUESTS_PER_MINUTE;
    a.message = "Rate limit reached: " + std::to_string(rpm) + " requests per minute (RPM) for this key. Retry after " +
                std::to_string(a.retry_after_seconds) + "s.";
  } else if (tpm > 0 && n_tokens + tokens > tpm) {
    a.refusal = Refusal::TOKENS_PER_MINUTE;
    if (tokens > tpm) {
      // Never fits: say so (the client should lower max_tokens or the prompt).
      a.retry_after_seconds = 60;
      a.message = "Request too large: it may use " + std::to_string(tokens) + " tokens but the limit is " +
                  std::to_string(tpm) + " tokens per minute (TPM) for this key; lower max_tokens or the prompt.";
    } else {
      int64_t freed = 0;
      for (const Event& e : w.events) {
        freed += e.tokens;
        if (n_tokens - freed + tokens <= tpm) {
          a.retry_after_seconds = retry_seconds(seconds_between(now, e.time + kWindow));
          break;
        }
      }
      a.message = "Rate limit reached: " + std::to_string(tpm) + " tokens per minute (TPM) for this key; " +
                  std::to_string(n_tokens) + " used in the last minute and this request may use " +
                  std::to_string(tokens) + ". Retry after " + std::to_string(a.retry_after_seconds) + "s.";
    }
  }

  if (a.ok()) {
    w.events.push_back(Event{now, tokens, true});
    w.running += 1;
    n_requests += 1;
    n_tokens += tokens;
  }
  a.remaining_requests = rpm > 0 ? std::max<int64_t>(0, rpm - n_requests) : 0;
  a.remaining_tokens = tpm > 0 ? std::max<int64_t>(0, tpm - n_tokens) : 0;
  // Reset: until the window is empty again (the newest event ages out).
  for (auto it = w.events.rbegin(); it != w.events.rend(); ++it) {
    if (it->request) {
      a.reset_requests_seconds = std::max(0.0, seconds_between(now, it->time + kWindow));
      break;
    }
  }
  if (!w.events.empty()) a.reset_tokens_seconds = std::max(0.0, seconds_between(now, w.events.back().time + kWindow));
  if (w.events.empty() && w.running == 0) windows_.erase(key);
  return a;
}

void RateLimiter::finish(const std::string& key, int64_t estimated_tokens, int64_t tokens, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = windows_.find(key);
  if (found == windows_.end()) return;
  Window& w = found->second;
  w.running = std::max<int64_t>(0, w.running - 1);
  while (!w.events.empty() && w.events.front().time + kWindow <= now) w.events.pop_front();
  tokens = std::max<int64_t>(tokens, 0);
  bool replaced = false;
  for (auto it = w.events.rbegin(); it != w.events.rend(); ++it) {
    if (it->request && it->tokens == estimated_tokens) {
      it->tokens = tokens;
      replaced = true;
      break;
    }
  }
  // The request outlived its event: count any tokens beyond the estimate now.
  if (!replaced && tokens > estimated_tokens) w.events.push_back(Event{now, tokens - estimated_tokens, false});
  if (w.events.empty() && w.running == 0) windows_.erase(found);
}

}  // namespace engram::server
