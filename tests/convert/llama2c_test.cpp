#include "convert/llama2c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "test_support.h"

namespace engram::convert {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& p, std::span<const uint8_t> bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

template <class T>
void append(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

// A small synthetic checkpoint: dim 8, hidden 12, 2 layers, 2 heads, 1 kv head,
// vocab 6 (negative when unshared), seq_len 4. Float k of the file holds k * 0.001.
std::vector<uint8_t> synthetic_checkpoint(bool shared) {
  Llama2cConfig c;
  c.dim = 8, c.hidden_dim = 12, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.vocab_size = 6, c.seq_len = 4;
  c.shared_classifier = shared;
  std::vector<uint8_t> out;
  for (int32_t v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, shared ? 6 : -6, c.seq_len}) append(out, v);
  const uint64_t n_floats = (c.expected_bytes() - 28) / 4;
  for (uint64_t k = 0; k < n_floats; ++k) append(out, static_cast<float>(k) * 0.001f);
  return out;
}

std::vector<uint8_t> synthetic_tokenizer(int n) {
  std::vector<uint8_t> out;
  append(out, int32_t{6});
  const char* texts[] = {"<unk>", "\n<s>\n", "\n</s>\n", "<0x0A>", " a b", "xy"};
  for (int i = 0; i < n; ++i) {
    append(out, -static_cast<float>(i));
    const std::string t = texts[i % 6];
    append(out, static_cast<int32_t>(t.size()));
    out.insert(out.end(), t.begin(), t.end());
  }
  return out;
}

TEST(Llama2cConfig, ParsesHeaderAndChecksSize) {
  auto bytes = synthetic_checkpoint(true);
  auto c = parse_llama2c_config(bytes, "x.bin");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->dim, 8);
  EXPECT_EQ(c->kv_dim(), 4);
  EXPECT_TRUE(c->shared_classifier);

  auto unshared = synthetic_checkpoint(false);
  auto u = parse_llama2c_config(unshared, "y.bin");
  ASSERT_TRUE(u) << u.error().message;
  EXPECT_FALSE(u->shared_classifier);
  EXPECT_EQ(u->vocab_size, 6);
  EXPECT_EQ(unshared.size(), bytes.size() + 6 * 8 * 4);
}

TEST(Llama2cConfig, TruncatedFileNamesFileAndSizes) {
  auto bytes = synthetic_checkpoint(true);
  const size_t full = bytes.size();
  bytes.resize(full - 10);
  auto c = parse_llama2c_config(bytes, "model.bin");
  ASSERT_FALSE(c);
  const std::string& m = c.error().message;
  EXPECT_NE(m.find("model.bin"), std::string::npos) << m;
  EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(full)), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(full - 10)), std::string::npos) << m;

  std::vector<uint8_t> tiny(10, 0);
  EXPECT_FALSE(parse_llama2c_config(tiny, "t.bin"));
}

TEST(Llama2cConfig, RejectsBadFields) {
  auto bytes = synthetic_checkpoint(true);
  auto set = [&](size_t field, int32_t v) {
    auto b = bytes;
    std::memcpy(b.data() + field * 4, &v, 4);
    return parse_llama2c_config(b, "m.bin");
  };
  auto zero_dim = set(0, 0);
  ASSERT_FALSE(zero_dim);
  EXPECT_NE(zero_dim.error().message.find("dim"), std::string::npos);
  EXPECT_FALSE(set(3, 3));        // 8 not divisible by 3 heads
  EXPECT_FALSE(set(4, 3));        // kv heads > heads
  EXPECT_FALSE(set(2, -1));       // negative layers
  EXPECT_FALSE(set(5, INT32_MIN));
  auto versioned = set(0, 0x616b3432);
  ASSERT_FALSE(versioned);
  EXPECT_NE(versioned.error().message.find("ak42"), std::string::npos);
}

TEST(Llama2cTokenizer, ConvertsTokensLikeLlamaCpp) {
  auto bytes = synthetic_tokenizer(6);
  auto v = parse_llama2c_tokenizer(bytes, 6, "tok.bin");
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_EQ(v->tokens[0], "<unk>");
  EXPECT_EQ(v->tokens[1], "<s>");
  EXPECT_EQ(v->tokens[2], "</s>");
  EXPECT_EQ(v->tokens[3], "<0x0A>");
  EXPECT_EQ(v->tokens[4], "\xE2\x96\x81" "a\xE2\x96\x81" "b");
  EXPECT_EQ(v->types[0], TokenType::UNKNOWN);
  EXPECT_EQ(v->types[1], TokenType::CONTROL);
  EXPECT_EQ(v->types[2], TokenType::CONTROL);
  EXPECT_EQ(v->types[3], TokenType::BYTE);
  EXPECT_EQ(v->types[4], TokenType::NORMAL);
  EXPECT_FLOAT_EQ(v->scores[5], -5.0f);
}

TEST(Llama2cTokenizer, RejectsTruncatedAndOversizedFiles) {
  auto bytes = synthetic_tokenizer(6);
  auto cut = bytes;
  cut.resize(cut.size() - 1);
  auto t = parse_llama2c_tokenizer(cut, 6, "tok.bin");
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("tok.bin"), std::string::npos);
  EXPECT_NE(t.error().message.find("token 5"), std::string::npos) << t.error().message;
  // More tokens than the model's vocabulary: the wrong tokenizer.
  EXPECT_FALSE(parse_llama2c_tokenizer(synthetic_tokenizer(7), 6, "tok.bin"));
}

TEST(Llama2cConvert, SyntheticUnsharedClassifierAndShapes) {
  auto dir = test::temp_dir("llama2c");
  write_bytes(dir / "m.bin", synthetic_checkpoint(false));
  write_bytes(dir / "tok.bin", synthetic_tokenizer(6));
  auto w = llama2c_to_gguf((dir / "m.bin").string(), (dir / "tok.bin").string());
  ASSERT_TRUE(w) << w.error().message;
  auto bytes = w->serialize();
  auto f = gguf::File::parse(bytes, "converted");
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(*f->get_string("general.architecture"), "llama");
  EXPECT_EQ(*f->get_int("llama.attention.head_count_kv"), 1);
  EXPECT_EQ(*f->get_int("llama.rope.dimension_count"), 4);
  ASSERT_EQ(f->tensors().size(), 3u + 2u * 9u);

  // Float k of the checkpoint holds k * 0.001: check where wq of layer 1 and wcls start.
  const int64_t d = 8, h = 12, L = 2, V = 6, kv = 4;
  auto first = [&](const char* name) {
    const gguf::TensorInfo* t = f->find_tensor(name);
    EXPECT_NE(t, nullptr) << name;
    float v = -1;
    if (t) std::memcpy(&v, f->tensor_data(*t), 4);
    return v;
  };
  const int64_t wq_l1 = V * d + L * d + d * d;
  EXPECT_FLOAT_EQ(first("blk.1.attn_q.weight"), static_cast<float>(wq_l1) * 0.001f);
  const int64_t wcls = V * d + L * d + L * (2 * d * d + 2 * kv * d) + L * d + L * 3 * h * d + d + 4 * 4;
  EXPECT_FLOAT_EQ(first("output.weight"), static_cast<float>(wcls) * 0.001f);
  const gguf::TensorInfo* down = f->find_tensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->ne[0], h);
  EXPECT_EQ(down->ne[1], d);
  fs::remove_all(dir);
}

TEST(Llama2cConvert, MissingFileIsAnError) {
  auto w = llama2c_to_gguf("/nonexistent/stories.bin", "/nonexistent/tok.bin");
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message.find("/nonexistent/stories.bin"), std::string::npos);
}

// The reference stories260K.gguf was made by llama.cpp's converter from the
// same stories260K.bin and tok512.bin: our conversion must hold the same
// hyperparameters, vocabulary and tensor bytes.
TEST(Llama2cConvert, Stories260KMatchesLlamaCppConversion) {
  ENGRAM_REQUIRE_REF();
  const fs::path models = test::ref_dir() / "models";
  auto w = llama2c_to_gguf((models / "stories260K.bin").string(), (models / "tok512.bin").string());
  ASSERT_TRUE(w) << w.error().message;
  auto bytes = w->serialize();
  auto ours = gguf::File::parse(bytes, "converted");
  ASSERT_TRUE(ours) << ours.error().message;
  auto ref = gguf::File::open((models / "stories260K.gguf").string());
  ASSERT_TRUE(ref) << ref.error().message;

  for (const char* key : {"llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                          "llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count",
                          "llama.rope.dimension_count", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id"}) {
    EXPECT_EQ(*ours->get_int(key), *ref->get_int(key)) << key;
  }
  EXPECT_FLOAT_EQ(static_cast<float>(*ours->get_float("llama.attention.layer_norm_rms_epsilon")),
                  static_cast<float>(*ref->get_float("llama.attention.layer_norm_rms_epsilon")));
  EXPECT_EQ(*ours->get_string_array("tokenizer.ggml.tokens"), *ref->get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(*ours->get_float_array("tokenizer.ggml.scores"), *ref->get_float_array("tokenizer.ggml.scores"));
  EXPECT_EQ(*ours->get_int_array("tokenizer.ggml.token_type"), *ref->get_int_array("tokenizer.ggml.token_type"));

  ASSERT_EQ(ours->tensors().size(), ref->tensors().size());
  for (const gguf::TensorInfo& rt : ref->tensors()) {
    const gguf::TensorInfo* ot = ours->find_tensor(rt.name);
    ASSERT_NE(ot, nullptr) << rt.name;
    EXPECT_EQ(ot->ne, rt.ne) << rt.name;
    EXPECT_EQ(ot->type, rt.type) << rt.name;
    ASSERT_EQ(ot->n_bytes, rt.n_bytes) << rt.name;
    EXPECT_EQ(std::memcmp(ours->tensor_data(*ot), ref->tensor_data(rt), rt.n_bytes), 0) << rt.name;
  }
}

}  // namespace
}  // namespace engram::convert
