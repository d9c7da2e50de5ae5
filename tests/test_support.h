// Shared helpers for tests: where the reference data lives, and reading it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace engram::test {

// ../shared/ref seen from the repository root, or "" when absent.
std::filesystem::path ref_dir();

// Skips the current test with a printed reason when the reference data is absent.
#define ENGRAM_REQUIRE_REF()                                                              \
  do {                                                                                    \
    if (::engram::test::ref_dir().empty())                                                \
      GTEST_SKIP() << "reference data ../shared/ref not found beside the repository";     \
  } while (0)

std::vector<float> read_f32_file(const std::filesystem::path& path);
std::string read_text_file(const std::filesystem::path& path);
// A fresh empty directory under the system temp dir, for files a test writes.
std::filesystem::path temp_dir(const std::string& tag);

// Largest |a[i] - b[i]|; a size mismatch fails the test.
inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0.f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace engram::test
