// Shared helpers for tests: where the reference data lives, and reading it.
#pragma once

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

}  // namespace engram::test
