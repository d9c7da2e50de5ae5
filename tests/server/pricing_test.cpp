// Prices: hand-computed costs for DeepSeek-style rates with an off-peak
// window that wraps past midnight, and Qwen-style tiers by prompt length.
#include "server/pricing.h"

#include <gtest/gtest.h>

#include <chrono>

namespace engram::server {
namespace {

using namespace std::chrono;

// 2026-11-28 at hh:mm:ss UTC.
system_clock::time_point at(int hh, int mm, int ss = 0) {
  return sys_days{year{2026} / November / 28} + hours{hh} + minutes{mm} + seconds{ss};
}

ModelPrice deepseek() {
  ModelPrice p;
  p.model = "deepseek-chat";
  p.rates = {0.27, 0.07, 1.10};
  p.windows.push_back({"off-peak", 16 * 60 + 30, 30, 0.5});  // 16:30 - 00:30 UTC
  p.batch_multiplier = 0.5;
  return p;
}

TEST(Pricing, DeepSeekRatesAtPeak) {
  // 400 missed, 600 cached, 500 output:
  // 0.27*400 + 0.07*600 + 1.10*500 = 108 + 42 + 550 = 700 -> $0.000700.
  Usage u{1000, 600, 500, 0};
  Cost c = price_request(deepseek(), u, at(10, 0), /*batch=*/false);
  EXPECT_NEAR(c.input_miss_usd, 108e-6, 1e-12);
  EXPECT_NEAR(c.input_hit_usd, 42e-6, 1e-12);
  EXPECT_NEAR(c.output_usd, 550e-6, 1e-12);
  EXPECT_DOUBLE_EQ(c.multiplier, 1.0);
  EXPECT_EQ(c.window, "");
  EXPECT_NEAR(c.usd, 700e-6, 1e-12);
}

TEST(Pricing, OffPeakWindowHalvesTheCost) {
  Usage u{1000, 600, 500, 0};
  Cost c = price_request(deepseek(), u, at(17, 0), false);
  EXPECT_DOUBLE_EQ(c.multiplier, 0.5);
  EXPECT_EQ(c.window, "off-peak");
  EXPECT_NEAR(c.usd, 350e-6, 1e-12);
  // The parts are before the multipliers.
  EXPECT_NEAR(c.output_usd, 550e-6, 1e-12);
}

TEST(Pricing, WindowWrapsPastMidnightWithExclusiveEnd) {
  const ModelPrice p = deepseek();
  EXPECT_EQ(window_at(p, at(16, 29, 59)), nullptr);
  ASSERT_NE(window_at(p, at(16, 30, 0)), nullptr);
  EXPECT_NE(window_at(p, at(23, 59, 59)), nullptr);
  EXPECT_NE(window_at(p, at(0, 0, 0)), nullptr);
  EXPECT_NE(window_at(p, at(0, 29, 59)), nullptr);
  EXPECT_EQ(window_at(p, at(0, 30, 0)), nullptr);
  EXPECT_EQ(window_at(p, at(12, 0)), nullptr);
  EXPECT_EQ(window_at(p, at(0, 15))->name, "off-peak");
}

TEST(Pricing, BatchMultiplierStacksWithTheWindow) {
  Usage u{1000, 600, 500, 0};
  EXPECT_NEAR(price_request(deepseek(), u, at(10, 0), true).usd, 350e-6, 1e-12);
  Cost c = price_request(deepseek(), u, at(17, 0), true);
  EXPECT_DOUBLE_EQ(c.multiplier, 0.25);
  EXPECT_NEAR(c.usd, 175e-6, 1e-12);
}

TEST(Pricing, QwenTiersByPromptLength) {
  ModelPrice p;
  p.model = "qwen-plus";
  p.rates = {0.4, 0.08, 1.2};
  // Deliberately unsorted: the highest threshold reached wins.
  p.tiers.push_back({131072, {1.2, 0.24, 3.6}});
  p.tiers.push_back({32768, {0.8, 0.16, 2.4}});

  // 32767 prompt tokens: base rates. 0.4*32767 + 1.2*1000 = 13106.8 + 1200 = 14306.8 -> $0.0143068
  EXPECT_NEAR(price_request(p, {32767, 0, 1000, 0}, at(10, 0), false).usd, 0.0143068, 1e-12);
  // 32768: the 32K tier. 0.8*32768 + 2.4*1000 = 26214.4 + 2400 = 28614.4 -> $0.0286144
  EXPECT_NEAR(price_request(p, {32768, 0, 1000, 0}, at(10, 0), false).usd, 0.0286144, 1e-12);
  // 40000 with 8000 cached: 0.8*32000 + 0.16*8000 + 2.4*1000 = 25600 + 1280 + 2400 = 29280 -> $0.02928
  EXPECT_NEAR(price_request(p, {40000, 8000, 1000, 0}, at(10, 0), false).usd, 0.02928, 1e-12);
  // 200000: the 128K tier. 1.2*200000 + 3.6*10 = 240000 + 36 -> $0.240036
  EXPECT_NEAR(price_request(p, {200000, 0, 10, 0}, at(10, 0), false).usd, 0.240036, 1e-12);
}

TEST(Pricing, CachedTokensAreClampedToThePrompt) {
  // A caller bug (cached > prompt) must not produce a negative miss cost.
  Cost c = price_request(deepseek(), {100, 250, 0, 0}, at(10, 0), false);
  EXPECT_NEAR(c.input_miss_usd, 0, 1e-15);
  EXPECT_NEAR(c.input_hit_usd, 0.07 * 100 / 1e6, 1e-15);
  EXPECT_GE(c.usd, 0);
}

TEST(Pricing, FreeWhenNoRates) {
  ModelPrice p;
  EXPECT_EQ(price_request(p, {1000, 0, 1000, 0}, at(10, 0), true).usd, 0);
}

TEST(Pricing, ParseUtcTime) {
  EXPECT_EQ(*parse_utc_time("00:00"), 0);
  EXPECT_EQ(*parse_utc_time("16:30"), 990);
  EXPECT_EQ(*parse_utc_time("23:59"), 1439);
  EXPECT_EQ(*parse_utc_time("24:00"), 1440);
  for (const char* bad : {"24:01", "7:30", "12:60", "ab:cd", "", "12:301", "12-30", "25:00"}) {
    auto r = parse_utc_time(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find(std::string("'") + bad + "'"), std::string::npos) << r.error().message;
  }
}

}  // namespace
}  // namespace engram::server
