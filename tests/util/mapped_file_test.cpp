#include "util/mapped_file.h"

#include <sys/mman.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "test_support.h"

namespace engram {
namespace {

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(i * 131 + (i >> 9));
  return bytes;
}

std::string write_file(const std::string& tag, const std::vector<uint8_t>& bytes) {
  const std::string path = (test::temp_dir(tag) / "data.bin").string();
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                              static_cast<std::streamsize>(bytes.size()));
  return path;
}

// Both ways of loading see exactly the file's bytes, across several huge pages.
TEST(MappedFile, CopyAndMapHoldTheSameBytes) {
  const std::vector<uint8_t> bytes = pattern((size_t{5} << 20) + 12345);
  const std::string path = write_file("mapped_file_same", bytes);
  for (LoadMode mode : {LoadMode::kMap, LoadMode::kCopy}) {
    Expected<MappedFile> f = MappedFile::open(path, mode);
    ASSERT_TRUE(f.has_value()) << f.error().message;
    EXPECT_EQ(f->mode(), mode);
    ASSERT_EQ(f->size(), bytes.size());
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), f->data())) << load_mode_name(mode);
  }
}

TEST(MappedFile, CopyStartsOnAHugePageBoundaryAndSurvivesMoves) {
  const std::vector<uint8_t> bytes = pattern(100000);
  Expected<MappedFile> f = MappedFile::open(write_file("mapped_file_move", bytes), LoadMode::kCopy);
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f->data()) % (uintptr_t{2} << 20), 0u);
  MappedFile moved = std::move(f).value();
  MappedFile assigned;
  assigned = std::move(moved);
  ASSERT_EQ(assigned.size(), bytes.size());
  EXPECT_EQ(assigned.mode(), LoadMode::kCopy);
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), assigned.data()));
}

TEST(MappedFile, EmptyFileAndErrorsNameThePath) {
  Expected<MappedFile> empty = MappedFile::open(write_file("mapped_file_empty", {}), LoadMode::kCopy);
  ASSERT_TRUE(empty.has_value()) << empty.error().message;
  EXPECT_EQ(empty->size(), 0u);
  for (LoadMode mode : {LoadMode::kMap, LoadMode::kCopy, LoadMode::kAuto}) {
    Expected<MappedFile> missing = MappedFile::open("/nonexistent/weights.gguf", mode);
    ASSERT_FALSE(missing.has_value());
    EXPECT_NE(missing.error().message.find("/nonexistent/weights.gguf: cannot open"), std::string::npos);
  }
  Expected<MappedFile> dir = MappedFile::open(test::temp_dir("mapped_file_dir").string(), LoadMode::kCopy);
  ASSERT_FALSE(dir.has_value());
  EXPECT_NE(dir.error().message.find("not a regular file"), std::string::npos);
}

TEST(MappedFile, AutoCopiesOnlyLargeFilesThatFitWithHugePages) {
  constexpr uint64_t MiB = uint64_t{1} << 20, GiB = uint64_t{1} << 30;
  EXPECT_EQ(resolve_auto_load(1 * GiB, 20 * GiB, true), LoadMode::kCopy);
  EXPECT_EQ(resolve_auto_load(256 * MiB, 20 * GiB, true), LoadMode::kCopy);
  EXPECT_EQ(resolve_auto_load(255 * MiB, 20 * GiB, true), LoadMode::kMap);  // small: keep the shared page cache
  EXPECT_EQ(resolve_auto_load(1 * GiB, 20 * GiB, false), LoadMode::kMap);   // no huge pages: nothing to gain
  EXPECT_EQ(resolve_auto_load(10 * GiB, 20 * GiB, true), LoadMode::kCopy);
  EXPECT_EQ(resolve_auto_load(11 * GiB, 20 * GiB, true), LoadMode::kMap);   // over half of what is available
  EXPECT_EQ(resolve_auto_load(1 * GiB, 0, true), LoadMode::kMap);           // unknown memory: do not risk it
  // Small files under auto stay mapped (the shipped model, the test models).
  Expected<MappedFile> small = MappedFile::open(write_file("mapped_file_auto", pattern(4096)), LoadMode::kAuto);
  ASSERT_TRUE(small.has_value()) << small.error().message;
  EXPECT_EQ(small->mode(), LoadMode::kMap);
}

TEST(MappedFile, ParseLoadModeNamesTheBadValue) {
  EXPECT_EQ(*parse_load_mode("copy"), LoadMode::kCopy);
  EXPECT_EQ(*parse_load_mode("mmap"), LoadMode::kMap);
  EXPECT_EQ(*parse_load_mode("auto"), LoadMode::kAuto);
  Expected<LoadMode> bad = parse_load_mode("hugetlb");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("'hugetlb'"), std::string::npos);
  for (LoadMode m : {LoadMode::kAuto, LoadMode::kMap, LoadMode::kCopy}) EXPECT_EQ(*parse_load_mode(load_mode_name(m)), m);
}

TEST(HugePageBuffer, IsZeroedWritableAndReleased) {
  Expected<HugePageBuffer> b = HugePageBuffer::allocate(size_t{3} << 20);
  ASSERT_TRUE(b.has_value()) << b.error().message;
  ASSERT_NE(b->data(), nullptr);
  EXPECT_EQ(b->data()[0], 0);
  EXPECT_EQ(b->data()[b->size() - 1], 0);
  b->data()[12345] = 7;
  EXPECT_EQ(b->data()[12345], 7);
  HugePageBuffer none = std::move(b).value();
  none = HugePageBuffer();
  EXPECT_EQ(none.data(), nullptr);
  EXPECT_EQ(none.size(), 0u);
}

}  // namespace
}  // namespace engram
