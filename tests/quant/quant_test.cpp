// Block layouts, hand-built blocks with known values, and quantize ->
// dequantize error bounds for every type.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "quant/blocks.h"
#include "gguf/gguf.h"
#include "quant/quant.h"
#include "test_support.h"

namespace engram {
namespace {

constexpr GgmlType kQuantTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                                    GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

TEST(Blocks, SizesMatchTypeTable) {
  EXPECT_EQ(type_traits(GgmlType::Q4_0).block_bytes, sizeof(BlockQ4_0));
  EXPECT_EQ(type_traits(GgmlType::Q4_1).block_bytes, sizeof(BlockQ4_1));
  EXPECT_EQ(type_traits(GgmlType::Q5_0).block_bytes, sizeof(BlockQ5_0));
  EXPECT_EQ(type_traits(GgmlType::Q5_1).block_bytes, sizeof(BlockQ5_1));
  EXPECT_EQ(type_traits(GgmlType::Q8_0).block_bytes, sizeof(BlockQ8_0));
  EXPECT_EQ(type_traits(GgmlType::Q4_K).block_bytes, sizeof(BlockQ4_K));
  EXPECT_EQ(type_traits(GgmlType::Q5_K).block_bytes, sizeof(BlockQ5_K));
  EXPECT_EQ(type_traits(GgmlType::Q6_K).block_bytes, sizeof(BlockQ6_K));
  EXPECT_EQ(type_traits(GgmlType::Q8_K).block_bytes, sizeof(BlockQ8_K));
}

TEST(Blocks, SupportedTypes) {
  for (GgmlType t : kQuantTypes) {
    EXPECT_TRUE(can_quantize(t)) << type_traits(t).name;
    EXPECT_TRUE(can_dequantize(t)) << type_traits(t).name;
  }
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    EXPECT_TRUE(can_quantize(t));
    EXPECT_TRUE(can_dequantize(t));
  }
  EXPECT_FALSE(can_dequantize(GgmlType::Q2_K));
  EXPECT_FALSE(can_quantize(GgmlType::Q8_K));
  EXPECT_FALSE(can_quantize(GgmlType::I32));
}

std::vector<float> dequantized(GgmlType type, const void* block, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(type, block, out.data(), n);
  return out;
}

// Halves used below, spelled out: 1.0 = 0x3C00, 0.5 = 0x3800, 2.0 = 0x4000,
// 0.25 = 0x3400, -1.0 = 0xBC00, 3.0 = 0x4200.

TEST(HandBuilt, Q4_0) {
  BlockQ4_0 b;
  b.d = 0x4000;  // 2.0
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto v = dequantized(GgmlType::Q4_0, &b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(v[j], 2.0f * (j - 8)) << j;
    EXPECT_EQ(v[j + 16], 2.0f * (15 - j - 8)) << j;
  }
}

TEST(HandBuilt, Q4_1) {
  BlockQ4_1 b;
  b.d = 0x3800;  // 0.5
  b.m = 0xBC00;  // -1.0
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto v = dequantized(GgmlType::Q4_1, &b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(v[j], 0.5f * j - 1.0f);
    EXPECT_EQ(v[j + 16], 0.5f * (15 - j) - 1.0f);
  }
}

// Quants 0..31 in element order: element j has quant (j * 7) % 32.
int q5_pattern(int j) { return (j * 7) % 32; }

template <class Block>
void fill_q5(Block* b) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int lo = q5_pattern(j), hi = q5_pattern(j + 16);
    b->qs[j] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
    qh |= static_cast<uint32_t>(lo >> 4) << j;
    qh |= static_cast<uint32_t>(hi >> 4) << (j + 16);
  }
  std::memcpy(b->qh, &qh, 4);
}

TEST(HandBuilt, Q5_0) {
  BlockQ5_0 b;
  b.d = 0x3400;  // 0.25
  fill_q5(&b);
  const auto v = dequantized(GgmlType::Q5_0, &b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(v[j], 0.25f * (q5_pattern(j) - 16)) << j;
}

TEST(HandBuilt, Q5_1) {
  BlockQ5_1 b;
  b.d = 0x4200;  // 3.0
  b.m = 0xBC00;  // -1.0
  fill_q5(&b);
  const auto v = dequantized(GgmlType::Q5_1, &b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(v[j], 3.0f * q5_pattern(j) - 1.0f) << j;
}

TEST(HandBuilt, Q8_0) {
  BlockQ8_0 b;
  b.d = 0x3400;  // 0.25
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(j * 8 - 128);
  const auto v = dequantized(GgmlType::Q8_0, &b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(v[j], 0.25f * (j * 8 - 128)) << j;
}

// Sub-block scales and mins (6 bits) with high bits set, to exercise the packing.
int k_scale(int j) { return 8 * j + 5; }  // 5 .. 61
int k_min(int j) { return 63 - 9 * j; }   // 63 .. 0

// Packs scales/mins as the layout documents: sub-blocks 0-3 in the low 6 bits
// of bytes j / j+4, sub-blocks 4-7 as nibbles of byte j+4 plus 2 high bits in
// bytes j-4 / j.
void pack_k_scales(uint8_t* s) {
  std::memset(s, 0, kKScaleSize);
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(k_scale(j) | ((k_scale(j + 4) >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(k_min(j) | ((k_min(j + 4) >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((k_scale(j + 4) & 15) | ((k_min(j + 4) & 15) << 4));
  }
}

// Quant of value i of a super-block: arbitrary but covering the whole range.
int k_quant(int i, int levels) { return (i * 5 + i / 7) % levels; }

TEST(HandBuilt, KScaleMinUnpacks) {
  uint8_t s[kKScaleSize];
  pack_k_scales(s);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    k_scale_min(j, s, &sc, &m);
    EXPECT_EQ(sc, k_scale(j)) << j;
    EXPECT_EQ(m, k_min(j)) << j;
  }
}

TEST(HandBuilt, Q4_K) {
  BlockQ4_K b;
  b.d = 0x3800;     // 0.5
  b.dmin = 0x3400;  // 0.25
  pack_k_scales(b.scales);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      b.qs[32 * c + l] = static_cast<uint8_t>(k_quant(64 * c + l, 16) | (k_quant(64 * c + 32 + l, 16) << 4));
  const auto v = dequantized(GgmlType::Q4_K, &b, 256);
  for (int i = 0; i < 256; ++i) {
    const int j = i / 32;
    EXPECT_EQ(v[i], 0.5f * k_scale(j) * k_quant(i, 16) - 0.25f * k_min(j)) << i;
  }
}

TEST(HandBuilt, Q5_K) {
  BlockQ5_K b;
  b.d = 0x3400;     // 0.25
  b.dmin = 0x3C00;  // 1.0
  pack_k_scales(b.scales);
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = k_quant(64 * c + l, 32), q2 = k_quant(64 * c + 32 + l, 32);
      b.qs[32 * c + l] = static_cast<uint8_t>((q1 & 15) | ((q2 & 15) << 4));
      b.qh[l] |= static_cast<uint8_t>(((q1 >> 4) << (2 * c)) | ((q2 >> 4) << (2 * c + 1)));
    }
  }
  const auto v = dequantized(GgmlType::Q5_K, &b, 256);
  for (int i = 0; i < 256; ++i) {
    const int j = i / 32;
    EXPECT_EQ(v[i], 0.25f * k_scale(j) * k_quant(i, 32) - 1.0f * k_min(j)) << i;
  }
}

TEST(HandBuilt, Q6_K) {
  BlockQ6_K b;
  b.d = 0x3400;  // 0.25
  for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<int8_t>(j * 17 - 128);
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const int base = 128 * h + l;
      const int q1 = k_quant(base, 64), q2 = k_quant(base + 32, 64), q3 = k_quant(base + 64, 64),
                q4 = k_quant(base + 96, 64);
      b.ql[64 * h + l] = static_cast<uint8_t>((q1 & 15) | ((q3 & 15) << 4));
      b.ql[64 * h + 32 + l] = static_cast<uint8_t>((q2 & 15) | ((q4 & 15) << 4));
      b.qh[32 * h + l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
  const auto v = dequantized(GgmlType::Q6_K, &b, 256);
  for (int i = 0; i < 256; ++i) {
    const int j = i / 16;
    EXPECT_EQ(v[i], 0.25f * (j * 17 - 128) * (k_quant(i, 64) - 32)) << i;
  }
}

TEST(HandBuilt, F16AndBf16Rows) {
  const uint16_t halves[4] = {0x3C00, 0xC000, 0x3800, 0x0001};
  const auto v = dequantized(GgmlType::F16, halves, 4);
  EXPECT_EQ(v, (std::vector<float>{1.0f, -2.0f, 0.5f, 0x1.0p-24f}));
  const uint16_t brains[3] = {0x3F80, 0xC000, 0x4049};
  const auto w = dequantized(GgmlType::BF16, brains, 3);
  EXPECT_EQ(w, (std::vector<float>{1.0f, -2.0f, 3.140625f}));
}

// ---- round trips on random data ----

std::vector<uint8_t> quantized(GgmlType type, const std::vector<float>& x) {
  std::vector<uint8_t> q(*row_bytes(type, static_cast<int64_t>(x.size())));
  quantize_row(type, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return q;
}

std::vector<float> round_trip(GgmlType type, const std::vector<float>& x) {
  const auto q = quantized(type, x);
  return dequantized(type, q.data(), static_cast<int64_t>(x.size()));
}

std::vector<float> gaussian(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

// Largest error per block of 32, relative to the block's step: bounds that
// follow from each format (step = range / levels; errors up to half a step,
// one step where ggml clamps the extreme level; plus fp16 rounding of scales).
TEST(RoundTrip, LegacyTypesStayWithinHalfAStep) {
  const auto x = gaussian(4096, 1);
  struct Case {
    GgmlType type;
    int levels;        // quant levels across the range
    bool symmetric;    // range is [-amax, amax] instead of [min, max]
    double max_steps;  // allowed max error in steps
  };
  for (const Case& c : {Case{GgmlType::Q4_0, 8, true, 1.01}, Case{GgmlType::Q5_0, 16, true, 1.01},
                        Case{GgmlType::Q8_0, 127, true, 0.51}, Case{GgmlType::Q4_1, 15, false, 0.51},
                        Case{GgmlType::Q5_1, 31, false, 0.51}}) {
    const auto y = round_trip(c.type, x);
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float lo = x[32 * b], hi = x[32 * b], amax = 0;
      for (int j = 0; j < 32; ++j) {
        lo = std::min(lo, x[32 * b + j]);
        hi = std::max(hi, x[32 * b + j]);
        amax = std::max(amax, std::fabs(x[32 * b + j]));
      }
      const double step = c.symmetric ? amax / c.levels : (hi - lo) / c.levels;
      for (int j = 0; j < 32; ++j) {
        const size_t i = 32 * b + j;
        // fp16 scale/min rounding moves values by up to ~2^-11 of their size.
        const double slack = 2e-3 * std::max<double>(amax, 1e-6);
        ASSERT_LE(std::fabs(y[i] - x[i]), c.max_steps * step + slack)
            << type_traits(c.type).name << " element " << i;
      }
    }
  }
}

double relative_rmse(const std::vector<float>& x, const std::vector<float>& y) {
  double err = 0, sig = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
    sig += double(x[i]) * x[i];
  }
  return std::sqrt(err / sig);
}

// RMS error relative to the signal for Gaussian data. The bounds sit ~1.5x
// above a uniform quantizer's step/sqrt(12) for each format's bits, so a wrong
// scale, a swapped nibble or a lost high bit fails them by a wide margin.
TEST(RoundTrip, RelativeRmsErrorPerType) {
  const auto x = gaussian(256 * 64, 2, 0.02f);
  struct Case {
    GgmlType type;
    double bound;
  };
  for (const Case& c : {Case{GgmlType::Q4_0, 0.13}, Case{GgmlType::Q4_1, 0.11}, Case{GgmlType::Q5_0, 0.065},
                        Case{GgmlType::Q5_1, 0.055}, Case{GgmlType::Q8_0, 0.009}, Case{GgmlType::Q4_K, 0.11},
                        Case{GgmlType::Q5_K, 0.055}, Case{GgmlType::Q6_K, 0.03}, Case{GgmlType::F16, 5e-4},
                        Case{GgmlType::BF16, 4e-3}}) {
    const double e = relative_rmse(x, round_trip(c.type, x));
    EXPECT_LT(e, c.bound) << type_traits(c.type).name;
    EXPECT_GT(e, 0.0) << type_traits(c.type).name;
  }
  EXPECT_EQ(round_trip(GgmlType::F32, x), x);
}

TEST(RoundTrip, ZerosStayZero) {
  const std::vector<float> zeros(512, 0.0f);
  for (GgmlType t : kQuantTypes) {
    const auto y = round_trip(t, zeros);
    for (float v : y) ASSERT_EQ(v, 0.0f) << type_traits(t).name;
  }
}

TEST(RoundTrip, ExactlyRepresentableValuesSurvive) {
  // Integers -8..7 times 1/8: the scales (max/-8, max/-16, and Q6_K's fitted one) are
  // powers of two, so every value is representable exactly.
  std::vector<float> x(256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 16) - 8) * 0.125f;
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q6_K}) {
    const auto y = round_trip(t, x);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], x[i], 1e-6) << type_traits(t).name << " " << i;
  }
}

TEST(RoundTrip, MixedScalesPerBlock) {
  // Blocks of very different magnitude: each block must keep its own scale.
  auto x = gaussian(2048, 3);
  for (size_t i = 0; i < x.size(); ++i) x[i] *= std::pow(10.0f, static_cast<float>(static_cast<int>(i / 256) % 5) - 2);
  for (GgmlType t : kQuantTypes) {
    const auto y = round_trip(t, x);
    for (size_t b = 0; b < x.size() / 256; ++b) {
      std::vector<float> xb(x.begin() + 256 * b, x.begin() + 256 * (b + 1));
      std::vector<float> yb(y.begin() + 256 * b, y.begin() + 256 * (b + 1));
      EXPECT_LT(relative_rmse(xb, yb), 0.15) << type_traits(t).name << " block " << b;
    }
  }
}

TEST(RoundTrip, QuantizingIsDeterministicAndRowLocal) {
  const auto x = gaussian(1024, 4);
  for (GgmlType t : kQuantTypes) {
    const auto whole = quantized(t, x);
    const std::vector<float> first(x.begin(), x.begin() + 512), second(x.begin() + 512, x.end());
    auto parts = quantized(t, first);
    const auto rest = quantized(t, second);
    parts.insert(parts.end(), rest.begin(), rest.end());
    EXPECT_EQ(whole, parts) << type_traits(t).name;
  }
}

TEST(QuantizeTarget, ParsesNames) {
  struct Case {
    const char* name;
    GgmlType type;
    uint32_t file_type;
  };
  for (const Case& c : {Case{"q8_0", GgmlType::Q8_0, 7}, Case{"Q4_0", GgmlType::Q4_0, 2}, Case{"q4_1", GgmlType::Q4_1, 3},
                        Case{"q5_0", GgmlType::Q5_0, 8}, Case{"q5_1", GgmlType::Q5_1, 9}, Case{"q4_k", GgmlType::Q4_K, 15},
                        Case{"Q4_K_M", GgmlType::Q4_K, 15}, Case{"q5_k_m", GgmlType::Q5_K, 17},
                        Case{"q6_k", GgmlType::Q6_K, 18}, Case{"f16", GgmlType::F16, 1}, Case{"bf16", GgmlType::BF16, 32}}) {
    const auto t = parse_quantize_target(c.name);
    ASSERT_TRUE(t.has_value()) << c.name;
    EXPECT_EQ(t->type, c.type) << c.name;
    EXPECT_EQ(t->file_type, c.file_type) << c.name;
  }
  const auto bad = parse_quantize_target("q3_k");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("q3_k"), std::string::npos);
}

TEST(QuantizeModel, MissingInputIsAnError) {
  const auto r = quantize_model("/nonexistent/model.gguf", "/tmp/unused.gguf", *parse_quantize_target("q8_0"), 1);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("/nonexistent/model.gguf"), std::string::npos);
}

}  // namespace
}  // namespace engram

namespace engram {
namespace {

// llama.cpp's Q4_K_M mix on a synthetic 12-layer model with tied embeddings
// (no output.weight): layers 0, 3, 6, 9, 10, 11 (use_more_bits with n = 12,
// counted in numeric layer order, blk.10 after blk.9) get Q6_K attn_v and
// ffn_down; token_embd takes the output's Q6_K; a weight whose rows (64) do
// not fit Q4_K falls back to Q5_0; norms and 1-D tensors stay F32.
TEST(QuantizeModel, Q4KMMixOnSyntheticModel) {
  const auto dir = test::temp_dir("quant-mix");
  const std::string in_path = (dir / "in.gguf").string(), out_path = (dir / "out.gguf").string();
  gguf::Writer w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 12);
  const auto weights = gaussian(256 * 2, 5);
  ASSERT_TRUE(w.add_tensor_f32("token_embd.weight", {256, 2}, weights).is_ok());
  ASSERT_TRUE(w.add_tensor_f32("output_norm.weight", {256}, std::vector<float>(256, 1.0f)).is_ok());
  for (int layer = 0; layer < 12; ++layer) {
    const std::string p = "blk." + std::to_string(layer) + ".";
    for (const char* name : {"attn_q.weight", "attn_v.weight", "ffn_down.weight"})
      ASSERT_TRUE(w.add_tensor_f32(p + name, {256, 2}, weights).is_ok());
    ASSERT_TRUE(w.add_tensor_f32(p + "attn_norm.weight", {256, 2}, weights).is_ok());
    ASSERT_TRUE(w.add_tensor_f32(p + "ffn_up.weight", {64, 8}, weights).is_ok());
  }
  ASSERT_TRUE(w.write(in_path).is_ok());

  const auto summary = quantize_model(in_path, out_path, GgmlType::Q4_K, 3);
  ASSERT_TRUE(summary.has_value()) << summary.error().message;
  auto out = gguf::File::open(out_path);
  ASSERT_TRUE(out.has_value()) << out.error().message;
  EXPECT_EQ(*out->get_int("general.file_type"), 15);

  auto type_of = [&](const std::string& name) {
    const gguf::TensorInfo* t = out->find_tensor(name);
    return t ? t->type : GgmlType::I8;  // I8: marks a missing tensor
  };
  EXPECT_EQ(type_of("token_embd.weight"), GgmlType::Q6_K);
  EXPECT_EQ(type_of("output_norm.weight"), GgmlType::F32);
  for (int layer = 0; layer < 12; ++layer) {
    const std::string p = "blk." + std::to_string(layer) + ".";
    const bool more = layer == 0 || layer == 3 || layer == 6 || layer == 9 || layer == 10 || layer == 11;
    const GgmlType want = more ? GgmlType::Q6_K : GgmlType::Q4_K;
    EXPECT_EQ(type_of(p + "attn_v.weight"), want) << layer;
    EXPECT_EQ(type_of(p + "ffn_down.weight"), want) << layer;
    EXPECT_EQ(type_of(p + "attn_q.weight"), GgmlType::Q4_K) << layer;
    EXPECT_EQ(type_of(p + "attn_norm.weight"), GgmlType::F32) << layer;
    EXPECT_EQ(type_of(p + "ffn_up.weight"), GgmlType::Q5_0) << layer;
  }
  // Tensors come out in llama.cpp's order: non-layer tensors, then by layer number.
  EXPECT_EQ(out->tensors().front().name, "output_norm.weight");
  EXPECT_EQ(out->tensors().back().name, "blk.11.ffn_up.weight");

  // The data decodes back to the input.
  const gguf::TensorInfo* q = out->find_tensor("blk.5.attn_q.weight");
  ASSERT_NE(q, nullptr);
  std::vector<float> row(256);
  dequantize_row(q->type, out->tensor_data(*q), row.data(), 256);
  for (int i = 0; i < 256; ++i) EXPECT_NEAR(row[i], weights[i], 0.25) << i;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace engram
