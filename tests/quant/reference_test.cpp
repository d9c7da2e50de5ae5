// Bit-exactness against llama.cpp: the reference files in ../shared/ref/models
// were made by llama-quantize (no imatrix) from tiny-llama-f32.gguf. Quantizing
// the F32 tensors must reproduce their bytes, and quantize_model must produce
// the same tensors (names, order, types, shapes, bytes) as the whole files.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gguf/gguf.h"
#include "quant/quant.h"
#include "test_support.h"

namespace engram {
namespace {

std::string model_path(const std::string& name) { return (test::ref_dir() / "models" / name).string(); }

gguf::File open_or_fail(const std::string& path) {
  auto f = gguf::File::open(path);
  if (!f) ADD_FAILURE() << f.error().message;
  return std::move(f).value();
}

struct Variant {
  const char* file;    // reference file made by llama-quantize
  const char* target;  // engram's name of the same quantization
};

constexpr Variant kVariants[] = {
    {"tiny-llama-q8_0.gguf", "q8_0"}, {"tiny-llama-q4_0.gguf", "q4_0"}, {"tiny-llama-q4_k_m.gguf", "q4_k_m"},
    {"tiny-llama-q6_k.gguf", "q6_k"}, {"tiny-llama-f16.gguf", "f16"},   {"tiny-llama-bf16.gguf", "bf16"},
};

// Each non-F32 tensor of each reference file, re-quantized from the F32 model
// with quantize_row, must match byte for byte.
TEST(Reference, QuantizeRowMatchesLlamaQuantizeTensorByTensor) {
  ENGRAM_REQUIRE_REF();
  const gguf::File f32 = open_or_fail(model_path("tiny-llama-f32.gguf"));
  for (const Variant& v : kVariants) {
    const gguf::File ref = open_or_fail(model_path(v.file));
    int checked = 0;
    for (const gguf::TensorInfo& t : ref.tensors()) {
      if (t.type == GgmlType::F32) continue;
      const gguf::TensorInfo* src = f32.find_tensor(t.name);
      ASSERT_NE(src, nullptr) << t.name;
      ASSERT_EQ(src->type, GgmlType::F32);
      ASSERT_EQ(src->n_elements(), t.n_elements()) << t.name;
      std::vector<uint8_t> out(t.n_bytes);
      const int64_t n_cols = t.ne[0], n_rows = t.n_elements() / n_cols;
      const size_t out_row = *row_bytes(t.type, n_cols);
      ASSERT_EQ(out_row * static_cast<size_t>(n_rows), t.n_bytes) << t.name;
      const auto* x = reinterpret_cast<const float*>(f32.tensor_data(*src));
      for (int64_t r = 0; r < n_rows; ++r) quantize_row(t.type, x + r * n_cols, out.data() + r * out_row, n_cols);
      const uint8_t* want = ref.tensor_data(t);
      size_t first_diff = t.n_bytes;
      for (size_t i = 0; i < t.n_bytes && first_diff == t.n_bytes; ++i)
        if (out[i] != want[i]) first_diff = i;
      EXPECT_EQ(first_diff, t.n_bytes) << v.file << ": tensor " << t.name << " (" << type_traits(t.type).name
                                       << ") differs first at byte " << first_diff << " (row "
                                       << first_diff / out_row << ")";
      ++checked;
    }
    EXPECT_GT(checked, 0) << v.file;
    std::printf("[ reference ] %-24s %d quantized tensors checked\n", v.file, checked);
  }
}

// Dequantizing the reference files gives values close to the F32 originals
// (checks the dequantizers against data we did not produce).
TEST(Reference, DequantizedReferenceTensorsApproximateF32) {
  ENGRAM_REQUIRE_REF();
  const gguf::File f32 = open_or_fail(model_path("tiny-llama-f32.gguf"));
  for (const Variant& v : kVariants) {
    const gguf::File ref = open_or_fail(model_path(v.file));
    for (const gguf::TensorInfo& t : ref.tensors()) {
      if (t.type == GgmlType::F32) continue;
      const gguf::TensorInfo* src = f32.find_tensor(t.name);
      ASSERT_NE(src, nullptr);
      const int64_t n_cols = t.ne[0], n_rows = t.n_elements() / n_cols;
      const auto* x = reinterpret_cast<const float*>(f32.tensor_data(*src));
      std::vector<float> row(static_cast<size_t>(n_cols));
      double err = 0, sig = 0;
      for (int64_t r = 0; r < n_rows; ++r) {
        dequantize_row(t.type, ref.tensor_data(t) + r * *row_bytes(t.type, n_cols), row.data(), n_cols);
        for (int64_t i = 0; i < n_cols; ++i) {
          const double d = row[i] - x[r * n_cols + i];
          err += d * d;
          sig += double(x[r * n_cols + i]) * x[r * n_cols + i];
        }
      }
      const double bound = t.type == GgmlType::Q4_0 || t.type == GgmlType::Q4_K ? 0.12
                           : t.type == GgmlType::Q6_K                           ? 0.03
                           : t.type == GgmlType::Q8_0                           ? 0.01
                                                                                : 0.005;
      EXPECT_LT(std::sqrt(err / sig), bound) << v.file << ": " << t.name;
    }
  }
}

// The whole pipeline: same tensor list, order, types, shapes and bytes as
// llama-quantize's file; general.file_type as llama.cpp writes it.
TEST(Reference, QuantizeModelMatchesLlamaQuantize) {
  ENGRAM_REQUIRE_REF();
  const auto dir = test::temp_dir("quant");
  for (const Variant& v : kVariants) {
    const auto target = parse_quantize_target(v.target);
    ASSERT_TRUE(target.has_value());
    const std::string out_path = (dir / (std::string(v.target) + ".gguf")).string();
    const auto summary = quantize_model(model_path("tiny-llama-f32.gguf"), out_path, *target, 2);
    ASSERT_TRUE(summary.has_value()) << summary.error().message;
    std::printf("[ reference ] %s\n", summary->c_str());

    const gguf::File ours = open_or_fail(out_path);
    const gguf::File ref = open_or_fail(model_path(v.file));
    ASSERT_EQ(ours.tensors().size(), ref.tensors().size()) << v.file;
    int matched = 0;
    for (size_t i = 0; i < ref.tensors().size(); ++i) {
      const gguf::TensorInfo& a = ours.tensors()[i];
      const gguf::TensorInfo& b = ref.tensors()[i];
      EXPECT_EQ(a.name, b.name) << v.file << " tensor #" << i;
      EXPECT_EQ(a.type, b.type) << v.file << ": " << b.name << " is " << type_traits(a.type).name << ", llama.cpp "
                                << type_traits(b.type).name;
      EXPECT_EQ(a.ne, b.ne) << v.file << ": " << b.name;
      const bool same = a.n_bytes == b.n_bytes && std::memcmp(ours.tensor_data(a), ref.tensor_data(b), a.n_bytes) == 0;
      EXPECT_TRUE(same) << v.file << ": bytes of " << b.name << " differ";
      matched += same;
    }
    std::printf("[ reference ] %-24s %d/%zu tensors byte-identical\n", v.file, matched, ref.tensors().size());
    EXPECT_EQ(*ours.get_int("general.file_type"), *ref.get_int("general.file_type")) << v.file;
    EXPECT_EQ(*ours.get_int("general.quantization_version"), *ref.get_int("general.quantization_version"));
    // Metadata other than these two keys is copied unchanged.
    EXPECT_EQ(*ours.get_string("general.architecture"), *ref.get_string("general.architecture"));
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace engram
