#include "runtime/progress.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace engram {
namespace {

TEST(ByteSize, BinaryAndDecimalUnits) {
  EXPECT_EQ(*parse_byte_size("2GiB"), 2ULL << 30);
  EXPECT_EQ(*parse_byte_size("512MiB"), 512ULL << 20);
  EXPECT_EQ(*parse_byte_size("64KiB"), 64ULL << 10);
  EXPECT_EQ(*parse_byte_size("1TiB"), 1ULL << 40);
  EXPECT_EQ(*parse_byte_size("2G"), 2ULL << 30);       // bare prefix: binary
  EXPECT_EQ(*parse_byte_size("2gib"), 2ULL << 30);     // case-insensitive
  EXPECT_EQ(*parse_byte_size("1.5GiB"), 3ULL << 29);
  EXPECT_EQ(*parse_byte_size("2GB"), 2000000000ULL);   // SI
  EXPECT_EQ(*parse_byte_size("4096"), 4096ULL);
  EXPECT_EQ(*parse_byte_size("4096B"), 4096ULL);
  EXPECT_EQ(*parse_byte_size(" 8 MiB "), 8ULL << 20);
  EXPECT_EQ(*parse_byte_size("0"), 0ULL);
}

TEST(ByteSize, BadInputIsAnErrorNamingTheText) {
  for (const char* bad : {"", "GiB", "-1GiB", "2XB", "2 GiBs", "1.2.3M", "abc", "2Gi B x", "1e30TiB"}) {
    auto r = parse_byte_size(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find(std::string("'") + bad + "'"), std::string::npos) << r.error().message;
  }
}

TEST(Format, BytesAndDurations) {
  EXPECT_EQ(format_bytes(900), "900 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(3ULL << 30), "3.00 GiB");
  EXPECT_EQ(format_bytes(100ULL << 20), "100.0 MiB");
  EXPECT_EQ(format_duration(12.4), "12s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
}

TEST(Progress, PeakRssIsPositive) { EXPECT_GT(peak_rss_bytes(), 1ULL << 20); }

TEST(Progress, LineShowsCountsRateEtaAndMemory) {
  ProgressBar bar("prefill", 1000, /*enabled=*/false);
  const std::string s = bar.line(250, 2 << 20, 2.0);
  EXPECT_NE(s.find("prefill 250/1000 tokens (25.0%)"), std::string::npos) << s;
  EXPECT_NE(s.find("125.0 tok/s"), std::string::npos) << s;
  EXPECT_NE(s.find("ETA 6s"), std::string::npos) << s;  // 750 tokens at 125 tok/s
  EXPECT_NE(s.find("memory 2.00 MiB"), std::string::npos) << s;
  EXPECT_NE(s.find("peak RSS"), std::string::npos) << s;
}

std::string file_text(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

TEST(Progress, EnabledBarDrawsOneLineEndedOnce) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar bar("x", 10, true, f);
    bar.update(5, 0);
    bar.update(10, 0);  // the final state is always drawn
    bar.finish();
    bar.finish();
  }
  const std::string s = file_text(f);
  std::fclose(f);
  EXPECT_EQ(s.front(), '\r');
  EXPECT_NE(s.find("x 10/10 tokens"), std::string::npos) << s;
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 1) << s;
  EXPECT_EQ(s.back(), '\n');
}

TEST(Progress, DisabledBarPrintsNothing) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar bar("x", 10, false, f);
    bar.update(10, 0);
  }
  EXPECT_EQ(file_text(f), "");
  std::fclose(f);
}

}  // namespace
}  // namespace engram
