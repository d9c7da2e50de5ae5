// llama.cpp's tokenizer test vectors (../shared/ref/vocab): for every
// vocabulary whose model engram supports, each input must tokenize exactly to
// the ids llama.cpp's test-tokenizer-0 expects (add_special = false,
// parse_special = false). Unsupported models must be refused by name.
#include <map>
#include <random>
#include <sstream>

#include <gtest/gtest.h>

#include "gguf/gguf.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace engram {
namespace {

constexpr std::string_view kSeparator = "\n__ggml_vocab_test__\n";

struct VocabCase {
  std::string vocab;     // file name in ref/vocab
  bool supported;        // whether engram implements its tokenizer.ggml.model
  std::string model;     // tokenizer.ggml.model
};

// The vocabularies of ref/vocab/index.json.
const std::vector<VocabCase>& vocab_cases() {
  static const std::vector<VocabCase> cases = {
      {"ggml-vocab-bert-bge.gguf", false, "bert"},      {"ggml-vocab-deepseek-coder.gguf", true, "gpt2"},
      {"ggml-vocab-deepseek-llm.gguf", true, "gpt2"},   {"ggml-vocab-falcon.gguf", true, "gpt2"},
      {"ggml-vocab-gpt-2.gguf", true, "gpt2"},          {"ggml-vocab-llama-spm.gguf", true, "llama"},
      {"ggml-vocab-mpt.gguf", true, "gpt2"},            {"ggml-vocab-phi-3.gguf", true, "llama"},
      {"ggml-vocab-refact.gguf", true, "gpt2"},         {"ggml-vocab-starcoder.gguf", true, "gpt2"},
  };
  return cases;
}

// Inputs are joined by the separator, which also ends the file.
std::vector<std::string> read_inputs(const std::filesystem::path& path) {
  const std::string all = test::read_text_file(path);
  std::vector<std::string> inputs;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t sep = all.find(kSeparator, pos);
    if (sep == std::string::npos) {
      inputs.push_back(all.substr(pos));
      break;
    }
    inputs.push_back(all.substr(pos, sep - pos));
    pos = sep + kSeparator.size();
  }
  return inputs;
}

std::vector<std::vector<TokenId>> read_expected(const std::filesystem::path& path) {
  std::istringstream in(test::read_text_file(path));
  std::vector<std::vector<TokenId>> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ids(line);
    std::vector<TokenId> row;
    TokenId id;
    while (ids >> id) row.push_back(id);
    out.push_back(std::move(row));
  }
  return out;
}

std::string show(const std::vector<TokenId>& ids) {
  std::string s;
  for (TokenId id : ids) s += " " + std::to_string(id);
  return s;
}

// Loading is the slow part (100k-token vocabularies): each file is read once.
struct Loaded {
  Expected<std::unique_ptr<Tokenizer>> tokenizer = Error{"not loaded"};
};

const Loaded& load(const std::string& vocab) {
  static std::map<std::string, Loaded> cache;
  auto [it, inserted] = cache.try_emplace(vocab);
  if (inserted) {
    auto file = gguf::File::open((test::ref_dir() / "vocab" / vocab).string());
    it->second.tokenizer = file ? Tokenizer::from_gguf(*file) : Expected<std::unique_ptr<Tokenizer>>(file.error());
  }
  return it->second;
}

class VocabVectors : public ::testing::TestWithParam<VocabCase> {};

TEST_P(VocabVectors, MatchesLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  const VocabCase& c = GetParam();
  const auto dir = test::ref_dir() / "vocab";
  const auto& tok = load(c.vocab).tokenizer;
  if (!c.supported) {
    ASSERT_FALSE(tok.has_value()) << c.vocab << " loaded although its model is not implemented";
    EXPECT_NE(tok.error().message.find(c.model), std::string::npos) << tok.error().message;
    EXPECT_NE(tok.error().message.find(c.vocab), std::string::npos) << tok.error().message;
    return;
  }
  ASSERT_TRUE(tok.has_value()) << tok.error().message;
  EXPECT_EQ((*tok)->model_name(), c.model);

  const auto inputs = read_inputs(dir / (c.vocab + ".inp"));
  const auto expected = read_expected(dir / (c.vocab + ".out"));
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_EQ(expected.size(), inputs.size());

  int passed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto ids = (*tok)->encode(inputs[i], /*add_special=*/false, /*parse_special=*/false);
    if (ids == expected[i]) {
      ++passed;
    } else {
      ADD_FAILURE() << c.vocab << " case " << i << " input '" << inputs[i] << "'\n  expected:" << show(expected[i])
                    << "\n  got:     " << show(ids);
    }
  }
  std::printf("%s: %d/%zu cases pass\n", c.vocab.c_str(), passed, inputs.size());
}

// Decoding the expected ids gives back the input (where the tokenizer is
// lossless): SPM loses only the dummy-prefix space.
TEST_P(VocabVectors, PiecesRebuildInput) {
  ENGRAM_REQUIRE_REF();
  const VocabCase& c = GetParam();
  if (!c.supported) GTEST_SKIP() << c.model << " is not implemented";
  const auto dir = test::ref_dir() / "vocab";
  const auto& tok = load(c.vocab).tokenizer;
  ASSERT_TRUE(tok.has_value()) << tok.error().message;

  const auto inputs = read_inputs(dir / (c.vocab + ".inp"));
  const auto expected = read_expected(dir / (c.vocab + ".out"));
  ASSERT_EQ(expected.size(), inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::string text;
    for (TokenId id : expected[i]) text += (*tok)->token_to_piece(id);
    std::string want = inputs[i];
    if (c.model == "llama" && !want.empty()) want = " " + want;
    EXPECT_EQ(text, want) << c.vocab << " case " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(RefVocab, VocabVectors, ::testing::ValuesIn(vocab_cases()),
                         [](const ::testing::TestParamInfo<VocabCase>& info) {
                           std::string name = info.param.vocab.substr(11);  // drop "ggml-vocab-"
                           name = name.substr(0, name.size() - 5);          // drop ".gguf"
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

}  // namespace
}  // namespace engram

namespace engram {
namespace {

// Random text survives encode + token_to_piece: SPM falls back to byte
// tokens, so any bytes come back (after the dummy-prefix space); byte-level
// BPE gives back any valid UTF-8.
TEST(RefVocabRoundTrip, RandomTextComesBack) {
  ENGRAM_REQUIRE_REF();
  const auto& spm = load("ggml-vocab-llama-spm.gguf").tokenizer;
  const auto& bpe = load("ggml-vocab-gpt-2.gguf").tokenizer;
  ASSERT_TRUE(spm.has_value()) << spm.error().message;
  ASSERT_TRUE(bpe.has_value()) << bpe.error().message;
  const std::vector<std::string> alphabet = {"a", "Z", " ", "  ", "\n", "\t", "'s", "1", "42", ".", "!", "\xc3\xa9",
                                             "\xd0\xb6", "\xe4\xbd\xa0", "\xf0\x9f\xa6\x99", "\xc2\xa0", "\xe3\x80\x80",
                                             "\xc2\x85", "<s>", "\xe2\x96\x81"};
  std::mt19937 rng(1234);
  for (int round = 0; round < 200; ++round) {
    std::string text;
    const int n = static_cast<int>(rng() % 24);
    for (int i = 0; i < n; ++i) text += alphabet[rng() % alphabet.size()];
    // For SPM, raw bytes too (possibly invalid UTF-8). Not spaces: like
    // llama.cpp, a broken lead byte swallows the U+2581 a space became, and
    // byte fallback then gives back U+2581's bytes.
    std::string bytes = text;
    for (int i = 0; i < 4; ++i) {
      char c = static_cast<char>(rng() % 256);
      bytes += c == ' ' ? 'x' : c;
    }

    std::string spm_text;
    for (TokenId id : (*spm)->encode(bytes, false, false)) spm_text += (*spm)->token_to_piece(id);
    std::string want = " " + bytes;  // and U+2581 in the input reads back as a space
    for (size_t p = want.find("\xe2\x96\x81"); p != std::string::npos; p = want.find("\xe2\x96\x81", p))
      want.replace(p, 3, " ");
    EXPECT_EQ(spm_text, want) << "round " << round;

    std::string bpe_text;
    for (TokenId id : (*bpe)->encode(text, false, false)) bpe_text += (*bpe)->token_to_piece(id);
    EXPECT_EQ(bpe_text, text) << "round " << round;
  }
}

// Long inputs stay fast and never fail.
TEST(RefVocabRoundTrip, LongInputs) {
  ENGRAM_REQUIRE_REF();
  const auto& bpe = load("ggml-vocab-gpt-2.gguf").tokenizer;
  const auto& spm = load("ggml-vocab-llama-spm.gguf").tokenizer;
  ASSERT_TRUE(bpe.has_value() && spm.has_value());
  for (const std::string& text : {std::string(50000, ' '), std::string(50000, 'a'), std::string(50000, '\n')}) {
    std::string out;
    for (TokenId id : (*bpe)->encode(text, false, false)) out += (*bpe)->token_to_piece(id);
    EXPECT_EQ(out, text);
    out.clear();
    for (TokenId id : (*spm)->encode(text.substr(0, 20000), false, false)) out += (*spm)->token_to_piece(id);
    EXPECT_EQ(out, " " + text.substr(0, 20000));
  }
}

}  // namespace
}  // namespace engram
