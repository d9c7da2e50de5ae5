// Per-key admission: requests per minute, tokens per minute and concurrent
// requests (sliding one-minute windows, in memory), and the prepaid balance.
// The HTTP layer turns a refusal into 429 (limits) or 402 (balance) with
// OpenAI's x-ratelimit-* headers and Retry-After.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "server/config.h"

namespace engram::server {

enum class Refusal { NONE, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, CONCURRENT, BALANCE };

struct Admission {
  Refusal refusal = Refusal::NONE;
  std::string message;  // names the limit and its value
  // For the x-ratelimit-* headers (requests and tokens), whether admitted or not.
  int64_t limit_requests = 0, remaining_requests = 0;
  int64_t limit_tokens = 0, remaining_tokens = 0;
  double reset_requests_seconds = 0, reset_tokens_seconds = 0;
  int retry_after_seconds = 0;  // when refused
  bool ok() const { return refusal == Refusal::NONE; }
  // ("x-ratelimit-limit-requests", "30"), ... for every header to send.
  std::vector<std::pair<std::string, std::string>> headers() const;
};

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // Admits one request of an estimated `tokens` (prompt + max output) for a
  // key with `limits` and balance (nullopt: unlimited). When admitted, the
  // request counts as running until finish() is called.
  Admission admit(const std::string& key, const KeyLimits& limits, std::optional<double> balance_usd,
                  int64_t tokens, Clock::time_point now = Clock::now());
  // The request ended; `tokens` replaces the estimate in the token window.
  void finish(const std::string& key, int64_t estimated_tokens, int64_t tokens, Clock::time_point now = Clock::now());

 private:
  struct Event {
    Clock::time_point time;
    int64_t tokens = 0;
    bool request = true;  // false: a correction of tokens only (a request that ran past the window)
  };
  struct Window {
    std::deque<Event> events;  // of the last minute, oldest first
    int64_t running = 0;
  };
  std::mutex mutex_;
  std::map<std::string, Window> windows_;
};

}  // namespace engram::server
