// Drives the built `engram` binary (ENGRAM_BINARY) end to end.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "run_engram.h"
#include "test_support.h"

namespace engram {
namespace {

using test::max_abs_diff;

namespace fs = std::filesystem;

using Result = test::CliResult;
Result engram(const std::vector<std::string>& args) { return test::run_engram(args); }

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(test::read_text_file(p)); }

std::vector<int> parse_ids(const std::string& line) {
  std::istringstream in(line);
  std::vector<int> ids;
  int v;
  while (in >> v) ids.push_back(v);
  return ids;
}

int argmax_row(const std::vector<float>& data, size_t row, size_t n) {
  auto first = data.begin() + static_cast<std::ptrdiff_t>(row * n);
  return static_cast<int>(std::max_element(first, first + static_cast<std::ptrdiff_t>(n)) - first);
}

const char* kSlugs[] = {"once_upon_a_time", "lily_and_ben_were", "empty"};

// `engram run --temp 0 --echo` prints exactly what llama2.c's run.c printed.
void expect_runc_text(const fs::path& model) {
  const fs::path dir = test::ref_dir() / "stories260K";
  for (const char* slug : kSlugs) {
    auto manifest = read_json(dir / (std::string(slug) + ".json"));
    const std::string prompt = manifest["prompt"];
    const int n = manifest["n_greedy"];
    Result r = engram({"run", "-m", model.string(), "-p", prompt, "-n", std::to_string(n), "--temp", "0", "--echo",
                       "-t", "1"});
    ASSERT_EQ(r.exit_code, 0) << slug << ": " << r.err;
    EXPECT_EQ(r.out, test::read_text_file(dir / (std::string(slug) + ".runc.txt"))) << slug << " from " << model;
    EXPECT_NE(r.err.find("generated: " + std::to_string(n) + " tokens"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  }
}

TEST(Cli, RunMatchesLlama2cText) {
  ENGRAM_REQUIRE_REF();
  expect_runc_text(test::ref_dir() / "models" / "stories260K.gguf");
}

class ConvertedStories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (test::ref_dir().empty()) return;
    dir_ = test::temp_dir("cli-convert");
    const fs::path models = test::ref_dir() / "models";
    Result r = engram({"convert-llama2c", (models / "stories260K.bin").string(), (models / "tok512.bin").string(),
                       (dir_ / "stories260K.gguf").string()});
    convert_ = r;
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  static fs::path model() { return dir_ / "stories260K.gguf"; }
  static inline fs::path dir_;
  static inline Result convert_;
};

TEST_F(ConvertedStories, ConvertSucceeds) {
  ENGRAM_REQUIRE_REF();
  ASSERT_EQ(convert_.exit_code, 0) << convert_.err;
  EXPECT_TRUE(fs::exists(model()));
}

TEST_F(ConvertedStories, RunMatchesLlama2cText) {
  ENGRAM_REQUIRE_REF();
  ASSERT_EQ(convert_.exit_code, 0) << convert_.err;
  expect_runc_text(model());
}

// The converted weights reproduce llama.cpp's logits (no RoPE permutation needed).
TEST_F(ConvertedStories, LogitsMatchLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  ASSERT_EQ(convert_.exit_code, 0) << convert_.err;
  const fs::path dir = test::ref_dir() / "stories260K";
  auto manifest = read_json(dir / "once_upon_a_time.json");
  std::vector<int> want = manifest["prompt_ids"];
  for (int id : manifest["greedy_ids"]) want.push_back(id);
  const int n_greedy = manifest["n_greedy"];
  const fs::path out = dir_ / "logits.f32";
  Result r = engram({"logits", "-m", model().string(), "-p", manifest["prompt"], "-n", std::to_string(n_greedy),
                     "--out", out.string(), "-t", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parse_ids(r.out), want);
  auto ours = test::read_f32_file(out);
  auto ref = test::read_f32_file(dir / "once_upon_a_time.llamacpp.logits.f32");
  ASSERT_EQ(ours.size(), ref.size());
  EXPECT_LT(max_abs_diff(ours, ref), 1e-3f);
}

TEST(Cli, LogitsRowsMatchGreedyIdsOnTinyModel) {
  ENGRAM_REQUIRE_REF();
  const fs::path models = test::ref_dir() / "models";
  auto manifest = read_json(models / "tiny-llama-f32.json");
  const fs::path dir = test::temp_dir("cli-logits");
  const fs::path out = dir / "l.f32";
  const std::vector<int> prompt_ids = manifest["prompt_ids"];
  std::string ids;
  for (int id : prompt_ids) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const int steps = 8;
  Result r = engram({"logits", "-m", (models / "tiny-llama-f32.gguf").string(), "--ids", ids, "-n",
                     std::to_string(steps), "--out", out.string(), "-t", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<int> printed = parse_ids(r.out);
  ASSERT_EQ(printed.size(), prompt_ids.size() + steps);
  auto logits = test::read_f32_file(out);
  const size_t n_vocab = 512, rows = prompt_ids.size() + steps;
  ASSERT_EQ(logits.size(), rows * n_vocab);
  for (int k = 0; k < steps; ++k) {
    EXPECT_EQ(argmax_row(logits, prompt_ids.size() - 1 + static_cast<size_t>(k), n_vocab),
              printed[prompt_ids.size() + static_cast<size_t>(k)])
        << "step " << k;
    EXPECT_EQ(printed[prompt_ids.size() + static_cast<size_t>(k)], manifest["greedy_ids"][static_cast<size_t>(k)]);
  }
  auto ref = test::read_f32_file(models / "tiny-llama-f32.logits.f32");
  ref.resize(logits.size());
  EXPECT_LT(max_abs_diff(logits, ref), 1e-3f);
  fs::remove_all(dir);
}

TEST(Cli, TokenizeVocabOnlyFile) {
  ENGRAM_REQUIRE_REF();
  const std::string vocab = (test::ref_dir() / "vocab" / "ggml-vocab-llama-spm.gguf").string();
  // Expected ids are llama.cpp's test vectors (add_special = false).
  const std::string inp = test::read_text_file(test::ref_dir() / "vocab" / "ggml-vocab-llama-spm.gguf.inp");
  const std::string outp = test::read_text_file(test::ref_dir() / "vocab" / "ggml-vocab-llama-spm.gguf.out");
  std::vector<std::string> texts, lines;
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (size_t pos = 0;;) {
    size_t next = inp.find(sep, pos);
    texts.push_back(inp.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  std::istringstream lin(outp);
  for (std::string line; std::getline(lin, line);) lines.push_back(line);
  ASSERT_GE(lines.size(), 12u);
  int checked = 0;
  for (size_t i = 0; i < texts.size() && i < lines.size() && checked < 6; ++i) {
    if (texts[i].empty()) continue;
    Result r = engram({"tokenize", "-m", vocab, "-p", texts[i], "--no-special"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(parse_ids(r.out), parse_ids(lines[i])) << "text: " << texts[i];
    ++checked;
  }
  // add_special (the default) puts BOS first.
  Result r = engram({"tokenize", "-m", vocab, "-p", "Hello world"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ids = parse_ids(r.out);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
}

TEST(Cli, InfoShowsMetadataTensorsAndMemory) {
  ENGRAM_REQUIRE_REF();
  Result r = engram({"info", (test::ref_dir() / "models" / "stories260K.gguf").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("llama.block_count"), std::string::npos);
  EXPECT_NE(r.out.find("blk.4.ffn_down.weight"), std::string::npos);
  EXPECT_NE(r.out.find("172 x 64"), std::string::npos);
  // dim 64, 5 layers, kv_dim 32, ffn 172, vocab 512, untied output.
  const long params = 2L * 512 * 64 + 64 + 5L * (2 * 64 * 64 + 2 * 64 * 32 + 2 * 64 + 3 * 64 * 172);
  EXPECT_NE(r.out.find("parameters: " + std::to_string(params)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("KV cache"), std::string::npos);
}

// A mixture of experts reports the parameters a token uses: all but the
// routed experts it does not pick (2 of 8 here).
TEST(Cli, InfoShowsActiveParametersOfAMixtureOfExperts) {
  ENGRAM_REQUIRE_REF();
  const fs::path models = test::ref_dir() / "models";
  auto manifest = read_json(models / "tiny-deepseek2-v3-f32.json");
  const uint64_t n_expert = manifest["hparams"]["n_expert"], n_used = manifest["hparams"]["n_expert_used"];
  uint64_t total = 0, active = 0;
  for (const auto& [tensor, ne] : manifest["tensor_shapes_ggml_ne"].items()) {
    uint64_t n = 1;
    for (int64_t d : ne.get<std::vector<int64_t>>()) n *= static_cast<uint64_t>(d);
    total += n;
    active += tensor.find("_exps.") != std::string::npos ? n / n_expert * n_used : n;
  }
  Result r = engram({"info", (models / "tiny-deepseek2-v3-f32.gguf").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: " + std::to_string(total)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("active:     " + std::to_string(active)), std::string::npos) << r.out;
  // Dense models print no active line.
  Result dense = engram({"info", (models / "tiny-llama-f32.gguf").string()});
  ASSERT_EQ(dense.exit_code, 0) << dense.err;
  EXPECT_EQ(dense.out.find("active:"), std::string::npos);
}

TEST(Cli, SameSeedSameTextDifferentSeedDifferentText) {
  ENGRAM_REQUIRE_REF();
  const std::string model = (test::ref_dir() / "models" / "stories260K.gguf").string();
  auto sample = [&](const std::string& seed) {
    return engram({"run", "-m", model, "-p", "Once upon a time", "-n", "40", "--temp", "1.0", "--seed", seed, "-t",
                   "1"});
  };
  Result a = sample("42"), b = sample("42"), c = sample("43");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(Cli, QuantizeThenRun) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("cli-quant");
  const std::string q = (dir / "q8.gguf").string();
  Result r = engram({"quantize", (test::ref_dir() / "models" / "stories260K.gguf").string(), q, "q8_0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Result info = engram({"info", q});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("q8_0"), std::string::npos);
  Result run = engram({"run", "-m", q, "-p", "Once upon a time", "-n", "10", "--temp", "0", "-t", "1"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_FALSE(run.out.empty());
  fs::remove_all(dir);
}

// -f reads the prompt from a file: the same text as -p gives the same output.
TEST(Cli, PromptFromAFileEqualsTheSamePrompt) {
  ENGRAM_REQUIRE_REF();
  const std::string model = (test::ref_dir() / "models" / "stories260K.gguf").string();
  const fs::path dir = test::temp_dir("cli-prompt-file");
  const fs::path file = dir / "prompt.txt";
  std::ofstream(file) << "Once upon a time";
  const std::vector<std::string> common = {"-n", "12", "--temp", "0", "-t", "1"};
  std::vector<std::string> by_flag = {"run", "-m", model, "-p", "Once upon a time"}, by_file = {"run", "-m", model,
                                                                                              "-f", file.string()};
  by_flag.insert(by_flag.end(), common.begin(), common.end());
  by_file.insert(by_file.end(), common.begin(), common.end());
  Result a = engram(by_flag), b = engram(by_file);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  fs::remove_all(dir);
}

// --- errors: non-zero exit and a message naming the problem, never a crash.

void expect_failure(const Result& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_LT(r.exit_code, 128) << "crashed: " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
}

TEST(CliErrors, MissingModelFile) {
  expect_failure(engram({"run", "-m", "/nonexistent/model.gguf", "-p", "hi"}), "/nonexistent/model.gguf");
  expect_failure(engram({"info", "/nonexistent/model.gguf"}), "/nonexistent/model.gguf");
  expect_failure(engram({"run", "-f", "/nonexistent/prompt.txt"}), "--file: cannot open '/nonexistent/prompt.txt'");
  expect_failure(engram({"tokenize", "-m", "/nonexistent/model.gguf", "-p", "hi"}), "/nonexistent/model.gguf");
  expect_failure(engram({"convert-llama2c", "/nonexistent/a.bin", "/nonexistent/t.bin", "/tmp/x.gguf"}),
                 "/nonexistent/a.bin");
}

// deepseek2 (MLA + MoE) runs; its greedy ids are llama.cpp's.
TEST(Cli, LogitsOnDeepseek2MatchGreedyIds) {
  ENGRAM_REQUIRE_REF();
  const fs::path models = test::ref_dir() / "models";
  auto manifest = read_json(models / "tiny-deepseek2-v3-f32.json");
  const std::vector<int> prompt_ids = manifest["prompt_ids"];
  std::string ids;
  for (int id : prompt_ids) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const int steps = 4;
  const fs::path dir = test::temp_dir("cli-deepseek2");
  Result r = engram({"logits", "-m", (models / "tiny-deepseek2-v3-f32.gguf").string(), "--ids", ids, "-n",
                     std::to_string(steps), "--out", (dir / "l.f32").string(), "-t", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<int> printed = parse_ids(r.out);
  ASSERT_EQ(printed.size(), prompt_ids.size() + steps);
  for (int k = 0; k < steps; ++k)
    EXPECT_EQ(printed[prompt_ids.size() + static_cast<size_t>(k)], manifest["greedy_ids"][static_cast<size_t>(k)]);
  fs::remove_all(dir);
}

TEST(CliErrors, UnsupportedArchitecture) {
  ENGRAM_REQUIRE_REF();
  // A tiny llama file relabelled as an architecture engram has no loader for.
  const fs::path dir = test::temp_dir("cli-arch");
  std::string bytes = test::read_text_file(test::ref_dir() / "models" / "tiny-llama-f32.gguf");
  const std::string key = "general.architecture";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  // The value follows the key: u32 type, u64 length, then "llama" (same length as "mamba").
  const size_t value = bytes.find("llama", at + key.size());
  ASSERT_NE(value, std::string::npos);
  bytes.replace(value, 5, "mamba");
  std::ofstream(dir / "mamba.gguf", std::ios::binary) << bytes;
  Result r = engram({"run", "-m", (dir / "mamba.gguf").string(), "-p", "hi", "-n", "2"});
  expect_failure(r, "mamba");
  fs::remove_all(dir);
}

TEST(CliErrors, TruncatedFiles) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("cli-trunc");
  auto truncate_copy = [&](const fs::path& src, const fs::path& dst) {
    std::string bytes = test::read_text_file(src);
    bytes.resize(bytes.size() / 2);
    std::ofstream(dst, std::ios::binary) << bytes;
  };
  truncate_copy(test::ref_dir() / "models" / "stories260K.gguf", dir / "half.gguf");
  Result r = engram({"run", "-m", (dir / "half.gguf").string(), "-p", "hi"});
  expect_failure(r, "half.gguf");

  truncate_copy(test::ref_dir() / "models" / "stories260K.bin", dir / "half.bin");
  Result c = engram({"convert-llama2c", (dir / "half.bin").string(),
                     (test::ref_dir() / "models" / "tok512.bin").string(), (dir / "out.gguf").string()});
  expect_failure(c, "half.bin");
  EXPECT_NE(c.err.find("truncated"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("1056540"), std::string::npos) << c.err;  // the expected size of stories260K.bin
  EXPECT_FALSE(fs::exists(dir / "out.gguf"));
  fs::remove_all(dir);
}

TEST(CliErrors, BadFlag) {
  Result r = engram({"run", "--no-such-flag"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.exit_code, 128);
  EXPECT_NE(r.err.find("--no-such-flag"), std::string::npos) << r.err;
  Result t = engram({"run", "-m", "x.gguf", "-t", "minus-one"});
  EXPECT_NE(t.exit_code, 0);
  EXPECT_LT(t.exit_code, 128);
  Result none = engram({});
  EXPECT_NE(none.exit_code, 0);
}

TEST(CliErrors, MalformedIds) {
  ENGRAM_REQUIRE_REF();
  const std::string model = (test::ref_dir() / "models" / "stories260K.gguf").string();
  expect_failure(engram({"logits", "-m", model, "--ids", "1,x,3", "--out", "/tmp/never.f32"}), "'x'");
  expect_failure(engram({"logits", "-m", model, "--ids", "1,,3", "--out", "/tmp/never.f32"}), "malformed");
  expect_failure(engram({"logits", "-m", model, "--ids", "1,512", "--out", "/tmp/never.f32"}), "512");
}

TEST(CliErrors, PromptLongerThanContext) {
  ENGRAM_REQUIRE_REF();
  const std::string model = (test::ref_dir() / "models" / "stories260K.gguf").string();
  Result r = engram({"run", "-m", model, "-p", "Once upon a time there was a girl", "--ctx-size", "4"});
  expect_failure(r, "context holds 4");
  EXPECT_NE(r.err.find("prompt has"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(CliErrors, UnknownQuantType) {
  ENGRAM_REQUIRE_REF();
  expect_failure(engram({"quantize", (test::ref_dir() / "models" / "stories260K.gguf").string(), "/tmp/never.gguf",
                         "q9_9"}),
                 "q9_9");
}

}  // namespace
}  // namespace engram
