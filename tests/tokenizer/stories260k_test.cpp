// The real stories260K SentencePiece vocabulary (512 tokens): prompts must
// tokenize to llama.cpp's prompt_ids (add_special = true), and the greedy ids
// printed with llama2.c's rules must give run.c's output byte for byte.
#include <cctype>
#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include "gguf/gguf.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace engram {
namespace {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_file) {
  auto file = gguf::File::open((test::ref_dir() / "models" / model_file).string());
  EXPECT_TRUE(file.has_value()) << file.error().message;
  if (!file) return nullptr;
  auto tok = Tokenizer::from_gguf(*file);
  EXPECT_TRUE(tok.has_value()) << tok.error().message;
  return tok ? std::move(*tok) : nullptr;
}

nlohmann::json read_json(const std::filesystem::path& path) {
  return nlohmann::json::parse(test::read_text_file(path));
}

const char* const kSlugs[] = {"once_upon_a_time", "lily_and_ben_were", "empty"};

TEST(Stories260K, SpecialTokensAndDefaults) {
  ENGRAM_REQUIRE_REF();
  auto tok = load_tokenizer("stories260K.gguf");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->model_name(), "llama");
  EXPECT_EQ(tok->n_vocab(), 512);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_TRUE(tok->add_bos());  // no add_bos_token key: SPM default
  EXPECT_FALSE(tok->add_eos());
  EXPECT_TRUE(tok->is_eog(2));
  EXPECT_FALSE(tok->is_eog(1));
  EXPECT_EQ(tok->token_type(1), TokenType::CONTROL);
  EXPECT_EQ(tok->token_type(3), TokenType::BYTE);
  EXPECT_EQ(tok->token_to_piece(3 + 'A'), "A");  // <0x41>
  EXPECT_EQ(tok->token_to_piece(1), "");
  EXPECT_EQ(tok->token_to_piece(1, /*render_special=*/true), "<s>");
}

TEST(Stories260K, PromptIdsMatchLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  auto tok = load_tokenizer("stories260K.gguf");
  ASSERT_NE(tok, nullptr);
  for (const char* slug : kSlugs) {
    const auto manifest = read_json(test::ref_dir() / "stories260K" / (std::string(slug) + ".json"));
    const std::string prompt = manifest.at("prompt");
    const auto want = manifest.at("prompt_ids").get<std::vector<TokenId>>();
    EXPECT_EQ(tok->encode(prompt, /*add_special=*/true, /*parse_special=*/false), want) << slug;
  }
}

// The tiny random models share the stories260K vocabulary and a longer prompt.
TEST(Stories260K, TinyModelPromptMatchesLlamaCpp) {
  ENGRAM_REQUIRE_REF();
  auto tok = load_tokenizer("tiny-llama-f32.gguf");
  ASSERT_NE(tok, nullptr);
  const auto manifest = read_json(test::ref_dir() / "models" / "tiny-llama-f32.json");
  const std::string prompt = manifest.at("prompt");
  const auto want = manifest.at("prompt_ids").get<std::vector<TokenId>>();
  EXPECT_EQ(tok->encode(prompt, true, false), want);
}

// run.c prints every token after BOS: the leading space of the first piece
// is dropped, and a single byte that is neither printable nor whitespace is
// skipped. Its stdout ends with one newline.
TEST(Stories260K, PiecesReproduceRunCText) {
  ENGRAM_REQUIRE_REF();
  auto tok = load_tokenizer("stories260K.gguf");
  ASSERT_NE(tok, nullptr);
  for (const char* slug : kSlugs) {
    const auto manifest = read_json(test::ref_dir() / "stories260K" / (std::string(slug) + ".json"));
    auto ids = manifest.at("prompt_ids").get<std::vector<TokenId>>();
    const auto greedy = manifest.at("greedy_ids").get<std::vector<TokenId>>();
    ids.insert(ids.end(), greedy.begin(), greedy.end());

    Utf8StreamDecoder decoder;
    std::string text;
    for (size_t i = 1; i < ids.size(); ++i) {
      std::string piece = tok->token_to_piece(ids[i]);
      if (ids[i - 1] == tok->bos() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
      if (piece.size() == 1) {
        const auto c = static_cast<unsigned char>(piece[0]);
        if (!(std::isprint(c) || std::isspace(c))) continue;
      }
      text += decoder.push(piece);
    }
    text += decoder.flush();
    text += '\n';
    const std::string want = test::read_text_file(test::ref_dir() / "stories260K" / (std::string(slug) + ".runc.txt"));
    EXPECT_EQ(text, want) << slug;
  }
}

}  // namespace
}  // namespace engram
