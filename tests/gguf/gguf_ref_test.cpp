// Every GGUF file of the reference set (written by llama.cpp's gguf-py and
// llama-quantize) opens, and what the reader sees agrees with the manifests
// that were produced from those files by the reference tools.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "test_support.h"

namespace engram::gguf {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> ref_ggufs(const std::string& subdir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(test::ref_dir() / subdir, ec))
    if (e.path().extension() == ".gguf") out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// Checks that hold for any valid file: tensors inside the file, aligned,
// sizes consistent with their types, and the data section where it belongs.
void check_structure(const File& f) {
  EXPECT_TRUE(f.version() == 2 || f.version() == 3) << f.path();
  EXPECT_EQ(f.data_offset() % f.alignment(), 0u) << f.path();
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.offset % f.alignment(), 0u) << t.name;
    EXPECT_LE(f.data_offset() + t.offset + t.n_bytes, f.file_size()) << t.name;
    std::optional<size_t> row = row_bytes(t.type, t.ne[0]);
    ASSERT_TRUE(row.has_value()) << t.name;
    EXPECT_EQ(t.n_bytes, *row * static_cast<uint64_t>(t.ne[1] * t.ne[2] * t.ne[3])) << t.name;
    EXPECT_EQ(f.find_tensor(t.name), &t);
    EXPECT_EQ(f.view(t).data, f.tensor_data(t));
  }
  for (const auto& [key, value] : f.metadata()) {
    EXPECT_EQ(f.find(key), &value);
    EXPECT_FALSE(value.to_string().empty()) << key;
  }
}

// Vocabulary files are opened (once, they are large) by VocabsMatchTheIndex.
TEST(GgufRef, EveryModelFileOpens) {
  ENGRAM_REQUIRE_REF();
  std::vector<fs::path> files = ref_ggufs("models");
  if (files.empty()) GTEST_SKIP() << "no .gguf files under " << test::ref_dir();
  for (const fs::path& p : files) {
    SCOPED_TRACE(p.string());
    Expected<File> f = File::open(p.string());
    ASSERT_TRUE(f.has_value()) << f.error().message;
    EXPECT_EQ(f->file_size(), fs::file_size(p));
    check_structure(*f);
    EXPECT_TRUE(f->get_string("general.architecture").has_value());
  }
}

TEST(GgufRef, TinyLlamaF32) {
  ENGRAM_REQUIRE_REF();
  const fs::path p = test::ref_dir() / "models" / "tiny-llama-f32.gguf";
  if (!fs::exists(p)) GTEST_SKIP() << p << " not present";
  Expected<File> f = File::open(p.string());
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->tensors().size(), 39u);
  EXPECT_EQ(*f->get_string("general.architecture"), "llama");
  EXPECT_EQ(*f->get_u32("llama.block_count"), 4u);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens")->size(), 512u);
  EXPECT_EQ(f->get_float_array("tokenizer.ggml.scores")->size(), 512u);
  EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type")->size(), 512u);
  const TensorInfo* emb = f->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->ne, (std::array<int64_t, 4>{256, 512, 1, 1}));
  EXPECT_EQ(emb->n_bytes, 256u * 512u * 4u);
  // The norm weights were drawn uniform in [0.5, 1.5): a misplaced data offset would show here.
  const TensorInfo* norm = f->find_tensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  const float* w = reinterpret_cast<const float*>(f->tensor_data(*norm));
  for (int i = 0; i < 256; ++i) {
    ASSERT_GE(w[i], 0.5f) << i;
    ASSERT_LT(w[i], 1.5f) << i;
  }
}

TEST(GgufRef, Stories260KKeepsTheNoneTokenIds) {
  ENGRAM_REQUIRE_REF();
  const fs::path p = test::ref_dir() / "models" / "stories260K.gguf";
  if (!fs::exists(p)) GTEST_SKIP() << p << " not present";
  Expected<File> f = File::open(p.string());
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(*f->get_string("general.architecture"), "llama");
  EXPECT_EQ(*f->get_u32("tokenizer.ggml.seperator_token_id"), 4294967295u);
  EXPECT_EQ(*f->get_u32("llama.context_length"), 512u);
  std::vector<std::string> tokens = *f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[3], "<0x00>");
}

// Each model manifest lists the tensor shapes and types and the scalar metadata.
TEST(GgufRef, ModelsMatchTheirManifests) {
  ENGRAM_REQUIRE_REF();
  int checked = 0;
  for (const fs::path& p : ref_ggufs("models")) {
    fs::path manifest_path = p;
    manifest_path.replace_extension(".json");
    if (!fs::exists(manifest_path)) continue;
    SCOPED_TRACE(p.string());
    nlohmann::json m = nlohmann::json::parse(test::read_text_file(manifest_path));
    Expected<File> f = File::open(p.string());
    ASSERT_TRUE(f.has_value()) << f.error().message;

    const auto& shapes = m.at("tensor_shapes_ggml_ne");
    const auto& types = m.at("tensor_types");
    EXPECT_EQ(f->tensors().size(), shapes.size());
    for (const auto& [name, ne] : shapes.items()) {
      const TensorInfo* t = f->find_tensor(name);
      ASSERT_NE(t, nullptr) << name;
      ASSERT_EQ(t->n_dims, static_cast<int>(ne.size())) << name;
      for (size_t d = 0; d < ne.size(); ++d) EXPECT_EQ(t->ne[d], ne[d].get<int64_t>()) << name;
      std::optional<GgmlType> want = type_from_name(types.at(name).get<std::string>());
      ASSERT_TRUE(want.has_value()) << types.at(name);
      EXPECT_EQ(t->type, *want) << name;
    }

    for (const auto& [key, want] : m.at("gguf_metadata").items()) {
      if (want.is_string()) {
        EXPECT_EQ(*f->get_string(key), want.get<std::string>()) << key;
      } else if (want.is_boolean()) {
        EXPECT_EQ(*f->get_bool(key), want.get<bool>()) << key;
      } else if (want.is_number_integer()) {
        EXPECT_EQ(*f->get_int(key), want.get<int64_t>()) << key;
      } else if (want.is_number_float()) {
        EXPECT_EQ(*f->get_float(key), want.get<double>()) << key;
      } else if (want.is_array()) {
        const Value* v = f->find(key);
        ASSERT_NE(v, nullptr) << key;
        EXPECT_EQ(v->array_size(), want.size()) << key;
      }
    }
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no model manifests found";
}

// Every vocab/*.gguf opens; those listed in index.json match its entry.
TEST(GgufRef, VocabsMatchTheIndex) {
  ENGRAM_REQUIRE_REF();
  const fs::path index_path = test::ref_dir() / "vocab" / "index.json";
  std::map<std::string, nlohmann::json> entries;
  if (fs::exists(index_path)) {
    const nlohmann::json index = nlohmann::json::parse(test::read_text_file(index_path));
    for (const auto& v : index.at("vocabs")) entries[v.at("vocab").get<std::string>()] = v;
  }
  const std::vector<fs::path> files = ref_ggufs("vocab");
  if (files.empty()) GTEST_SKIP() << "no .gguf files under " << test::ref_dir() / "vocab";
  EXPECT_EQ(files.size(), entries.size());
  for (const fs::path& p : files) {
    SCOPED_TRACE(p.string());
    Expected<File> f = File::open(p.string());
    ASSERT_TRUE(f.has_value()) << f.error().message;
    check_structure(*f);
    auto it = entries.find(p.filename().string());
    if (it == entries.end()) continue;
    const nlohmann::json& v = it->second;
    EXPECT_EQ(*f->get_string("tokenizer.ggml.model"), v.at("tokenizer.ggml.model").get<std::string>());
    if (v.at("tokenizer.ggml.pre").is_string())
      EXPECT_EQ(*f->get_string("tokenizer.ggml.pre"), v.at("tokenizer.ggml.pre").get<std::string>());
    EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens")->size(), v.at("n_tokens").get<size_t>());
  }
}

// Rewriting a reference file with the writer and reading it back keeps every
// key, every tensor and every byte of tensor data.
TEST(GgufRef, RewriteKeepsEverything) {
  ENGRAM_REQUIRE_REF();
  const fs::path p = test::ref_dir() / "models" / "tiny-llama-q4_k_m.gguf";
  if (!fs::exists(p)) GTEST_SKIP() << p << " not present";
  Expected<File> src = File::open(p.string());
  ASSERT_TRUE(src.has_value()) << src.error().message;
  Writer w;
  w.copy_metadata(*src);
  for (const TensorInfo& t : src->tensors()) {
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + t.n_dims);
    const uint8_t* d = src->tensor_data(t);
    ASSERT_TRUE(w.add_tensor(t.name, t.type, ne, std::vector<uint8_t>(d, d + t.n_bytes)).is_ok()) << t.name;
  }
  const std::vector<uint8_t> bytes = w.serialize();
  Expected<File> dst = File::parse(bytes, "rewritten.gguf");
  ASSERT_TRUE(dst.has_value()) << dst.error().message;
  ASSERT_EQ(dst->metadata().size(), src->metadata().size());
  for (size_t i = 0; i < src->metadata().size(); ++i) {
    EXPECT_EQ(dst->metadata()[i].first, src->metadata()[i].first);
    EXPECT_EQ(dst->metadata()[i].second.type, src->metadata()[i].second.type);
    EXPECT_EQ(dst->metadata()[i].second.to_string(1000), src->metadata()[i].second.to_string(1000));
  }
  ASSERT_EQ(dst->tensors().size(), src->tensors().size());
  for (size_t i = 0; i < src->tensors().size(); ++i) {
    const TensorInfo& a = src->tensors()[i];
    const TensorInfo& b = dst->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.ne, b.ne);
    ASSERT_EQ(a.n_bytes, b.n_bytes);
    EXPECT_TRUE(std::equal(src->tensor_data(a), src->tensor_data(a) + a.n_bytes, dst->tensor_data(b))) << a.name;
  }
}

}  // namespace
}  // namespace engram::gguf
