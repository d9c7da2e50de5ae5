// Writer::add_tensor_streamed: tensors produced while the file is written.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "gguf/gguf.h"
#include "test_support.h"

namespace engram::gguf {
namespace {

namespace fs = std::filesystem;

std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

TEST(WriterStream, StreamedTensorsReadBackAndMatchSerialize) {
  Writer w;
  w.set_string("general.architecture", "llama");
  std::vector<float> plain = {1.f, 2.f, 3.f};
  ASSERT_TRUE(w.add_tensor_f32("plain", {3}, plain).is_ok());
  int calls = 0;
  ASSERT_TRUE(w.add_tensor_streamed("streamed", GgmlType::F32, {5, 2}, [&calls](std::span<uint8_t> out) {
                 ++calls;
                 EXPECT_EQ(out.size(), 5u * 2u * sizeof(float));
                 for (size_t i = 0; i < out.size() / sizeof(float); ++i) {
                   const float v = 10.f + static_cast<float>(i);
                   std::memcpy(out.data() + i * sizeof(float), &v, sizeof v);
                 }
                 return Status::ok();
               }).is_ok());
  const fs::path path = test::temp_dir("writer-stream") / "s.gguf";
  ASSERT_TRUE(w.write(path.string()).is_ok());
  EXPECT_EQ(calls, 1);

  auto f = File::open(path.string());
  ASSERT_TRUE(f.has_value()) << f.error().message;
  const TensorInfo* t = f->find_tensor("streamed");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne[0], 5);
  EXPECT_EQ(t->ne[1], 2);
  const auto* v = reinterpret_cast<const float*>(f->tensor_data(*t));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(v[i], 10.f + static_cast<float>(i));
  const TensorInfo* p = f->find_tensor("plain");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<const float*>(f->tensor_data(*p))[2], 3.f);

  const std::vector<uint8_t> bytes = w.serialize();
  EXPECT_EQ(std::string(bytes.begin(), bytes.end()), file_bytes(path));
}

TEST(WriterStream, FillErrorFailsTheWriteAndLeavesNoFile) {
  Writer w;
  ASSERT_TRUE(w.add_tensor_streamed("broken", GgmlType::F32, {4}, [](std::span<uint8_t>) -> Status {
                 return make_error("out of random numbers");
               }).is_ok());
  const fs::path path = test::temp_dir("writer-stream") / "bad.gguf";
  Status s = w.write(path.string());
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("broken"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("out of random numbers"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
}

TEST(WriterStream, StreamedTensorsAreCheckedLikeOthers) {
  Writer w;
  auto fill = [](std::span<uint8_t>) { return Status::ok(); };
  EXPECT_FALSE(w.add_tensor_streamed("", GgmlType::F32, {4}, fill).is_ok());
  EXPECT_FALSE(w.add_tensor_streamed("q", GgmlType::Q8_0, {20}, fill).is_ok());  // not a multiple of 32
  EXPECT_FALSE(w.add_tensor_streamed("nofill", GgmlType::F32, {4}, nullptr).is_ok());
  ASSERT_TRUE(w.add_tensor_streamed("a", GgmlType::F32, {4}, fill).is_ok());
  EXPECT_FALSE(w.add_tensor_streamed("a", GgmlType::F32, {4}, fill).is_ok());  // duplicate
}

}  // namespace
}  // namespace engram::gguf
