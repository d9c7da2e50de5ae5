// deepseek2 files with next-n (MTP) layers: the main model ignores them, the
// memory holds only the main layers, and mtp_forward runs the extra block.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "model/model.h"
#include "model/mtp_test_model.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

fs::path ref_model(const std::string& name) { return test::ref_dir() / "models" / (name + ".gguf"); }

std::unique_ptr<Model> load(const fs::path& path) {
  auto m = Model::load(path.string());
  EXPECT_TRUE(m) << m.error().message;
  return m ? std::move(*m) : nullptr;
}

std::vector<float> all_logits(Model& m, std::span<const TokenId> tokens) {
  ThreadPool pool(1);
  auto memory = make_dense_memory(m.memory_layout(64));
  std::vector<float> out(tokens.size() * static_cast<size_t>(m.config().n_vocab));
  Status st = m.forward(tokens, 0, 0, *memory, out.data(), true, pool);
  EXPECT_TRUE(st.is_ok()) << st.message();
  return out;
}

class Deepseek2Mtp : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (test::ref_dir().empty()) GTEST_SKIP() << "reference data ../shared/ref not found beside the repository";
    dir_ = test::temp_dir("deepseek2-mtp");
    path_ = (dir_ / "mtp.gguf").string();
    Status s = test::write_mtp_model(ref_model(GetParam()).string(), path_, 11, /*shared_head=*/GetParam().find("v3") !=
                                                                                       std::string::npos);
    ASSERT_TRUE(s.is_ok()) << s.message();
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path dir_;
  std::string path_;
};

TEST_P(Deepseek2Mtp, MainModelSkipsTheNextNBlock) {
  auto original = load(ref_model(GetParam()));
  auto with_mtp = load(path_);
  ASSERT_TRUE(original && with_mtp);
  EXPECT_EQ(original->mtp_layers(), 0);
  EXPECT_EQ(with_mtp->mtp_layers(), 1);
  EXPECT_EQ(with_mtp->config().n_layer, original->config().n_layer);  // block_count - nextn_predict_layers
  EXPECT_EQ(with_mtp->memory_layout(16).n_layer, original->config().n_layer);
  EXPECT_EQ(with_mtp->mtp_memory_layout(16).n_layer, 1);
  EXPECT_EQ(with_mtp->kv_bytes_per_token(), original->kv_bytes_per_token());
  const std::vector<TokenId> tokens = {1, 40, 7, 300, 12, 9};
  EXPECT_EQ(all_logits(*with_mtp, tokens), all_logits(*original, tokens));  // same weights, same arithmetic
}

TEST_P(Deepseek2Mtp, NextNBlockPredictsFromHiddenStates) {
  auto m = load(path_);
  ASSERT_TRUE(m);
  const int D = m->config().n_embd, V = m->config().n_vocab;
  ThreadPool pool(1);
  auto main_memory = make_dense_memory(m->memory_layout(32));
  m->keep_hidden(true);
  const std::vector<TokenId> tokens = {1, 40, 7, 300, 12};
  std::vector<float> main_logits(static_cast<size_t>(V));
  ASSERT_TRUE(m->forward(tokens, 0, 0, *main_memory, main_logits.data(), false, pool).is_ok());
  const std::vector<float> hidden(m->last_hidden().begin(), m->last_hidden().end());
  ASSERT_EQ(hidden.size(), tokens.size() * static_cast<size_t>(D));

  auto memory = make_dense_memory(m->mtp_memory_layout(32));
  // Rows (h_i, token i+1) for i = 0..3, in one call and one by one: same last logits.
  std::vector<float> logits(static_cast<size_t>(V)), out(4 * static_cast<size_t>(D));
  const std::span<const TokenId> next(tokens.data() + 1, 4);
  Status st = m->mtp_forward(std::span<const float>(hidden.data(), 4 * static_cast<size_t>(D)), next, 0, *memory,
                             logits.data(), out.data(), pool);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(memory->n_positions(0), 4);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));

  auto memory2 = make_dense_memory(m->mtp_memory_layout(32));
  std::vector<float> logits2(static_cast<size_t>(V)), out2(static_cast<size_t>(D));
  for (int i = 0; i < 4; ++i) {
    st = m->mtp_forward(std::span<const float>(hidden.data() + static_cast<size_t>(i) * D, static_cast<size_t>(D)),
                        next.subspan(static_cast<size_t>(i), 1), i, *memory2, logits2.data(), out2.data(), pool);
    ASSERT_TRUE(st.is_ok()) << st.message();
  }
  for (size_t j = 0; j < logits.size(); ++j) ASSERT_NEAR(logits[j], logits2[j], 1e-4f) << j;
  for (int j = 0; j < D; ++j) ASSERT_NEAR(out[3 * static_cast<size_t>(D) + j], out2[j], 1e-4f) << j;

  // A different hidden state changes the prediction: the block reads it.
  std::vector<float> other(hidden.begin(), hidden.begin() + D);
  for (float& x : other) x = -x;
  auto memory3 = make_dense_memory(m->mtp_memory_layout(32));
  std::vector<float> logits3(static_cast<size_t>(V)), out3(static_cast<size_t>(D));
  ASSERT_TRUE(m->mtp_forward(other, next.subspan(0, 1), 0, *memory3, logits3.data(), out3.data(), pool).is_ok());
  auto memory4 = make_dense_memory(m->mtp_memory_layout(32));
  ASSERT_TRUE(m->mtp_forward(std::span<const float>(hidden.data(), static_cast<size_t>(D)), next.subspan(0, 1), 0,
                             *memory4, logits2.data(), out2.data(), pool)
                  .is_ok());
  EXPECT_NE(logits3, logits2);

  // Bad arguments are errors, not crashes: wrong hidden size, the main memory.
  EXPECT_FALSE(m->mtp_forward(std::span<const float>(hidden.data(), 3), next.subspan(0, 1), 0, *memory3,
                              logits3.data(), out3.data(), pool)
                   .is_ok());
  EXPECT_FALSE(m->mtp_forward(std::span<const float>(hidden.data(), static_cast<size_t>(D)), next.subspan(0, 1), 0,
                              *main_memory, logits3.data(), out3.data(), pool)
                   .is_ok());
  m->keep_hidden(false);
  EXPECT_TRUE(m->last_hidden().empty());
}

INSTANTIATE_TEST_SUITE_P(Refs, Deepseek2Mtp,
                         ::testing::Values("tiny-deepseek2-v3-f32", "tiny-deepseek2-v2lite-f32"));

TEST(Deepseek2MtpFile, TooManyNextNLayersIsAnError) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("deepseek2-mtp-bad");
  auto src = gguf::File::open(ref_model("tiny-deepseek2-v3-f32").string());
  ASSERT_TRUE(src);
  gguf::Writer w;
  w.copy_metadata(*src);
  w.set_u32("deepseek2.nextn_predict_layers", 3);  // block_count is 3
  for (const gguf::TensorInfo& t : src->tensors()) {
    const uint8_t* data = src->tensor_data(t);
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
    ASSERT_TRUE(w.add_tensor(t.name, t.type, ne, std::vector<uint8_t>(data, data + t.n_bytes)).is_ok());
  }
  const std::string path = (dir / "bad.gguf").string();
  ASSERT_TRUE(w.write(path).is_ok());
  auto m = Model::load(path);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("nextn_predict_layers"), std::string::npos) << m.error().message;
  // Declared but absent next-n tensors: the main model alone (as llama.cpp loads it).
  w.set_u32("deepseek2.block_count", 4);
  w.set_u32("deepseek2.nextn_predict_layers", 1);
  ASSERT_TRUE(w.write(path).is_ok());
  auto m2 = Model::load(path);
  ASSERT_TRUE(m2) << m2.error().message;
  EXPECT_EQ((*m2)->mtp_layers(), 0);
  EXPECT_EQ((*m2)->config().n_layer, 3);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace engram
