// `engram run --draft MODEL` and `engram run --spec mtp`: the same text as
// plain greedy generation, speculation figures on stderr, clear refusals.
#include <gtest/gtest.h>

#include <filesystem>

#include "model/mtp_test_model.h"
#include "run_engram.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using test::CliResult;

std::string ref_model(const std::string& name) { return (test::ref_dir() / "models" / (name + ".gguf")).string(); }

std::vector<std::string> run_args(const std::string& model, const std::string& prompt, int n) {
  return {"run", "-m", model, "-p", prompt, "-n", std::to_string(n), "--temp", "0", "-t", "1"};
}

TEST(SpeculativeCli, DraftModelPrintsTheSameTextAndItsStats) {
  ENGRAM_REQUIRE_REF();
  const std::string stories = ref_model("stories260K");
  const CliResult plain = test::run_engram(run_args(stories, "Once upon a time", 48));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  std::vector<std::string> args = run_args(stories, "Once upon a time", 48);
  args.insert(args.end(), {"--draft", stories, "--draft-n", "5"});
  const CliResult spec = test::run_engram(args);
  ASSERT_EQ(spec.exit_code, 0) << spec.err;
  EXPECT_EQ(spec.out, plain.out);
  EXPECT_NE(spec.err.find("accepted (100.0%)"), std::string::npos) << spec.err;  // the draft is the target
  EXPECT_NE(spec.err.find("target calls"), std::string::npos) << spec.err;
  EXPECT_NE(spec.err.find("tok/s"), std::string::npos) << spec.err;
}

TEST(SpeculativeCli, DraftWithoutTempIsGreedyAndSaysSo) {
  ENGRAM_REQUIRE_REF();
  const std::string stories = ref_model("stories260K");
  const CliResult plain = test::run_engram(run_args(stories, "Lily and Ben were", 30));
  const CliResult spec = test::run_engram(
      {"run", "-m", stories, "-p", "Lily and Ben were", "-n", "30", "-t", "1", "--draft", stories});
  ASSERT_EQ(spec.exit_code, 0) << spec.err;
  EXPECT_EQ(spec.out, plain.out);
  EXPECT_NE(spec.err.find("greedy"), std::string::npos) << spec.err;
}

// stories260K with one token's text changed: the same size, another vocabulary.
std::string write_changed_vocab(const fs::path& dir) {
  auto src = gguf::File::open(ref_model("stories260K"));
  EXPECT_TRUE(src);
  if (!src) return "";
  gguf::Writer w;
  w.copy_metadata(*src);
  auto tokens = src->get_string_array("tokenizer.ggml.tokens");
  EXPECT_TRUE(tokens);
  if (!tokens) return "";
  tokens->at(300) = "<changed>";
  w.set_string_array("tokenizer.ggml.tokens", *tokens);
  for (const gguf::TensorInfo& t : src->tensors()) {
    const uint8_t* data = src->tensor_data(t);
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
    EXPECT_TRUE(w.add_tensor(t.name, t.type, ne, std::vector<uint8_t>(data, data + t.n_bytes)).is_ok());
  }
  const std::string path = (dir / "other-vocab.gguf").string();
  EXPECT_TRUE(w.write(path).is_ok());
  return path;
}

TEST(SpeculativeCli, Refusals) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("cli-spec-refusals");
  const std::string stories = ref_model("stories260K"), other = write_changed_vocab(dir);
  struct Case {
    std::vector<std::string> extra;
    std::vector<std::string> said;
  };
  const Case cases[] = {
      {{"--draft", other}, {"stories260K.gguf", "other-vocab.gguf", "vocabulary"}},
      {{"--draft", (dir / "missing.gguf").string()}, {"--draft", "missing.gguf"}},
      {{"--draft", stories, "--temp", "0.7"}, {"greedy only"}},
      {{"--spec", "mtp"}, {"next-n"}},
      {{"--spec", "medusa"}, {"--spec", "medusa"}},
      {{"--draft", stories, "--memory", "window"}, {"dense"}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"run", "-m", stories, "-p", "Once", "-n", "4", "-t", "1"};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    const CliResult r = test::run_engram(args);
    EXPECT_NE(r.exit_code, 0) << c.extra[0] << " " << c.extra[1];
    for (const std::string& s : c.said) EXPECT_NE(r.err.find(s), std::string::npos) << s << " in: " << r.err;
  }
  fs::remove_all(dir);
}

TEST(SpeculativeCli, MtpGivesTheSameTokens) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("cli-mtp");
  const std::string path = (dir / "mtp.gguf").string();
  Status s = test::write_mtp_model(ref_model("tiny-deepseek2-v3-f32"), path);
  ASSERT_TRUE(s.is_ok()) << s.message();
  std::vector<std::string> args = run_args(path, "hello world", 24);
  args.push_back("--ignore-eos");
  const CliResult plain = test::run_engram(args);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  args.insert(args.end(), {"--spec", "mtp", "--draft-n", "2"});
  const CliResult spec = test::run_engram(args);
  ASSERT_EQ(spec.exit_code, 0) << spec.err;
  EXPECT_EQ(spec.out, plain.out);
  EXPECT_NE(spec.err.find("drafted"), std::string::npos) << spec.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace engram
