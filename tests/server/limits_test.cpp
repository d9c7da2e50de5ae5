// Per-key admission with an injected clock: sliding one-minute windows for
// requests and tokens, concurrency, the prepaid balance, Retry-After and
// OpenAI's x-ratelimit-* headers.
#include "server/limits.h"

#include <gtest/gtest.h>

#include <map>

namespace engram::server {
namespace {

using Clock = RateLimiter::Clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

const Clock::time_point t0 = Clock::time_point(seconds(1000000));

std::map<std::string, std::string> header_map(const Admission& a) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : a.headers()) m[k] = v;
  return m;
}

TEST(Limits, RequestsPerMinuteSlidingWindow) {
  RateLimiter rl;
  KeyLimits lim{3, 0, 0};
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 10, t0).ok());
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 10, t0 + seconds(10)).ok());
  Admission third = rl.admit("k", lim, std::nullopt, 10, t0 + seconds(20));
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third.remaining_requests, 0);

  Admission refused = rl.admit("k", lim, std::nullopt, 10, t0 + seconds(30));
  EXPECT_EQ(refused.refusal, Refusal::REQUESTS_PER_MINUTE);
  EXPECT_EQ(refused.retry_after_seconds, 30);  // the request at t0 ages out at t0+60
  EXPECT_NE(refused.message.find("3 requests per minute"), std::string::npos) << refused.message;

  // At t0+59.5 the first request is still in the window: retry after 1 s (rounded up).
  Admission almost = rl.admit("k", lim, std::nullopt, 10, t0 + milliseconds(59500));
  EXPECT_EQ(almost.refusal, Refusal::REQUESTS_PER_MINUTE);
  EXPECT_EQ(almost.retry_after_seconds, 1);

  // At t0+60 it has aged out.
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 10, t0 + seconds(60)).ok());
  // Another key is not affected.
  EXPECT_TRUE(rl.admit("other", lim, std::nullopt, 10, t0 + seconds(60)).ok());
}

TEST(Limits, TokensPerMinuteUsesTheActualTokensAfterFinish) {
  RateLimiter rl;
  KeyLimits lim{0, 1000, 0};
  Admission first = rl.admit("k", lim, std::nullopt, 600, t0);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first.remaining_tokens, 400);

  Admission refused = rl.admit("k", lim, std::nullopt, 500, t0 + seconds(5));
  EXPECT_EQ(refused.refusal, Refusal::TOKENS_PER_MINUTE);
  EXPECT_EQ(refused.retry_after_seconds, 55);
  EXPECT_EQ(refused.remaining_tokens, 400);

  // The first request used only 200 tokens: now 200 + 500 fit.
  rl.finish("k", 600, 200, t0 + seconds(6));
  Admission second = rl.admit("k", lim, std::nullopt, 500, t0 + seconds(7));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second.remaining_tokens, 300);

  // More than the whole limit can never fit.
  Admission huge = rl.admit("k", lim, std::nullopt, 1001, t0 + seconds(8));
  EXPECT_EQ(huge.refusal, Refusal::TOKENS_PER_MINUTE);
  EXPECT_NE(huge.message.find("too large"), std::string::npos) << huge.message;
  EXPECT_GE(huge.retry_after_seconds, 1);
}

TEST(Limits, TokenRetryAfterWaitsForEnoughToExpire) {
  RateLimiter rl;
  KeyLimits lim{0, 1000, 0};
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 300, t0).ok());
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 300, t0 + seconds(10)).ok());
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 300, t0 + seconds(20)).ok());
  // 900 used; 700 more needs the first two gone (900 - 600 + 700 = 1000): at t0+70.
  Admission a = rl.admit("k", lim, std::nullopt, 700, t0 + seconds(30));
  EXPECT_EQ(a.refusal, Refusal::TOKENS_PER_MINUTE);
  EXPECT_EQ(a.retry_after_seconds, 40);
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 700, t0 + seconds(70)).ok());
}

TEST(Limits, ConcurrentRequests) {
  RateLimiter rl;
  KeyLimits lim{0, 0, 2};
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 1, t0).ok());
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 1, t0).ok());
  Admission refused = rl.admit("k", lim, std::nullopt, 1, t0);
  EXPECT_EQ(refused.refusal, Refusal::CONCURRENT);
  EXPECT_GE(refused.retry_after_seconds, 1);
  rl.finish("k", 1, 1, t0 + seconds(1));
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 1, t0 + seconds(1)).ok());
}

TEST(Limits, Balance) {
  RateLimiter rl;
  KeyLimits none{};
  EXPECT_TRUE(rl.admit("k", none, std::nullopt, 1, t0).ok());
  EXPECT_TRUE(rl.admit("k", none, 0.01, 1, t0).ok());
  Admission zero = rl.admit("k", none, 0.0, 1, t0);
  EXPECT_EQ(zero.refusal, Refusal::BALANCE);
  EXPECT_EQ(rl.admit("k", none, -0.002, 1, t0).refusal, Refusal::BALANCE);
  EXPECT_EQ(header_map(zero).count("retry-after"), 0u);
}

TEST(Limits, RefusedRequestsDoNotCount) {
  RateLimiter rl;
  KeyLimits lim{1, 0, 0};
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 1, t0).ok());
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(rl.admit("k", lim, std::nullopt, 1, t0 + seconds(1)).ok());
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 1, t0 + seconds(60)).ok());
}

TEST(Limits, OpenAIHeaders) {
  RateLimiter rl;
  KeyLimits lim{3, 1000, 0};
  Admission a = rl.admit("k", lim, std::nullopt, 100, t0);
  auto h = header_map(a);
  EXPECT_EQ(h["x-ratelimit-limit-requests"], "3");
  EXPECT_EQ(h["x-ratelimit-remaining-requests"], "2");
  EXPECT_EQ(h["x-ratelimit-reset-requests"], "1m0s");
  EXPECT_EQ(h["x-ratelimit-limit-tokens"], "1000");
  EXPECT_EQ(h["x-ratelimit-remaining-tokens"], "900");
  EXPECT_EQ(h["x-ratelimit-reset-tokens"], "1m0s");
  EXPECT_EQ(h.count("retry-after"), 0u);

  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 100, t0 + seconds(30)).ok());
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 100, t0 + seconds(35)).ok());
  // At t0+59.5: the newest event (t0+35) ages out in 35.5 s; retry in 0.5 s -> 1.
  Admission refused = rl.admit("k", lim, std::nullopt, 100, t0 + milliseconds(59500));
  auto r = header_map(refused);
  EXPECT_EQ(r["x-ratelimit-remaining-requests"], "0");
  EXPECT_EQ(r["x-ratelimit-reset-requests"], "36s");
  EXPECT_EQ(r["retry-after"], "1");

  // Sub-second resets are in milliseconds.
  RateLimiter rl2;
  ASSERT_TRUE(rl2.admit("k", lim, std::nullopt, 1, t0).ok());
  Admission late = rl2.admit("k", KeyLimits{0, 1000, 0}, std::nullopt, 1, t0 + milliseconds(59500));
  // The newest event is this one: 60 s. The request limit is 0 here: no request headers.
  auto l = header_map(late);
  EXPECT_EQ(l.count("x-ratelimit-limit-requests"), 0u);
  EXPECT_EQ(l["x-ratelimit-reset-tokens"], "1m0s");
}

TEST(Limits, ResetInMilliseconds) {
  RateLimiter rl;
  KeyLimits lim{1, 0, 0};
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 1, t0).ok());
  Admission refused = rl.admit("k", lim, std::nullopt, 1, t0 + milliseconds(59500));
  EXPECT_EQ(header_map(refused)["x-ratelimit-reset-requests"], "500ms");
}

TEST(Limits, UnlimitedKeysSendNoHeaders) {
  RateLimiter rl;
  Admission a = rl.admit("k", KeyLimits{}, std::nullopt, 100000, t0);
  EXPECT_TRUE(a.ok());
  EXPECT_TRUE(a.headers().empty());
}

TEST(Limits, LongRequestCorrectionCountsTokensBeyondTheEstimate) {
  RateLimiter rl;
  KeyLimits lim{0, 1000, 0};
  ASSERT_TRUE(rl.admit("k", lim, std::nullopt, 100, t0).ok());
  // Finished after the window passed, having used 900 tokens (more than estimated).
  rl.finish("k", 100, 900, t0 + seconds(90));
  Admission a = rl.admit("k", lim, std::nullopt, 300, t0 + seconds(91));
  EXPECT_EQ(a.refusal, Refusal::TOKENS_PER_MINUTE);  // 800 + 300 > 1000
  EXPECT_TRUE(rl.admit("k", lim, std::nullopt, 300, t0 + seconds(150)).ok());
}

}  // namespace
}  // namespace engram::server
