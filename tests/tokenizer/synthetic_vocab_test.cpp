// Small vocabularies written in memory: the SPM merge order, byte fallback,
// special tokens (parse_special, user-defined tokens), BOS/EOS flags, byte-level
// BPE merges, and the errors for vocabularies engram cannot read.
#include <gtest/gtest.h>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace engram {
namespace {

const std::string kSp = "\xe2\x96\x81";  // U+2581

struct VocabEntry {
  std::string text;
  float score;
  int32_t type;  // TokenType value
};

// A GGUF image kept alive with the File that points into it.
struct MemoryGguf {
  std::vector<uint8_t> bytes;
  Expected<gguf::File> file = Error{"unparsed"};
};

std::unique_ptr<MemoryGguf> build(gguf::Writer& w, const std::string& name = "synthetic.gguf") {
  auto g = std::make_unique<MemoryGguf>();
  g->bytes = w.serialize();
  g->file = gguf::File::parse(g->bytes, name);
  return g;
}

void set_vocab(gguf::Writer& w, const std::string& model, const std::vector<VocabEntry>& vocab) {
  std::vector<std::string> texts;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const auto& e : vocab) {
    texts.push_back(e.text);
    scores.push_back(e.score);
    types.push_back(e.type);
  }
  w.set_string("tokenizer.ggml.model", model);
  w.set_string_array("tokenizer.ggml.tokens", texts);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
}

// <unk> <s> </s>, the 256 byte tokens, then a few merges and special tokens.
std::vector<VocabEntry> spm_vocab() {
  std::vector<VocabEntry> v = {{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.push_back({name, 0, 6});
  }
  v.push_back({kSp, -1, 1});          // 259
  v.push_back({"a", -2, 1});          // 260
  v.push_back({"b", -2, 1});          // 261
  v.push_back({kSp + "a", -3, 1});    // 262
  v.push_back({"ab", -1.5f, 1});      // 263: beats ▁a, so "▁ab" merges as ▁ + ab
  v.push_back({kSp + "ab", -4, 1});   // 264
  v.push_back({"<tool>", 0, 4});      // 265: user-defined
  return v;
}

constexpr TokenId kSpace = 259, kA = 260, kB = 261, kSpaceA = 262, kSpaceAb = 264, kTool = 265;
constexpr TokenId kByte0 = 3;

std::unique_ptr<Tokenizer> spm_tokenizer(bool add_eos = false) {
  gguf::Writer w;
  set_vocab(w, "llama", spm_vocab());
  if (add_eos) w.set_bool("tokenizer.ggml.add_eos_token", true);
  auto g = build(w);
  EXPECT_TRUE(g->file.has_value()) << g->file.error().message;
  auto tok = Tokenizer::from_gguf(*g->file);
  EXPECT_TRUE(tok.has_value()) << tok.error().message;
  return tok ? std::move(*tok) : nullptr;
}

TEST(SpmSynthetic, MergesByScoreWithDummyPrefix) {
  auto tok = spm_tokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->encode("ab", false, false), (std::vector<TokenId>{kSpaceAb}));
  EXPECT_EQ(tok->encode("a", false, false), (std::vector<TokenId>{kSpaceA}));
  EXPECT_EQ(tok->encode("b a", false, false), (std::vector<TokenId>{kSpace, kB, kSpaceA}));
  EXPECT_EQ(tok->encode("", false, false), (std::vector<TokenId>{}));
  EXPECT_EQ(tok->encode("", true, false), (std::vector<TokenId>{1}));
}

TEST(SpmSynthetic, ByteFallbackForUnknownCharacters) {
  auto tok = spm_tokenizer();
  ASSERT_NE(tok, nullptr);
  // "é" is not a token: its two UTF-8 bytes become <0xC3> <0xA9>.
  EXPECT_EQ(tok->encode("\xc3\xa9", false, false), (std::vector<TokenId>{kSpace, kByte0 + 0xC3, kByte0 + 0xA9}));
  std::string text;
  for (TokenId id : tok->encode("a\xc3\xa9", false, false)) text += tok->token_to_piece(id);
  EXPECT_EQ(text, " a\xc3\xa9");
}

TEST(SpmSynthetic, SpecialTokensOnlyWithParseSpecial) {
  auto tok = spm_tokenizer();
  ASSERT_NE(tok, nullptr);
  // As text, "<s>" is three bytes after the prefix space.
  EXPECT_EQ(tok->encode("<s>ab", false, false),
            (std::vector<TokenId>{kSpace, kByte0 + '<', kByte0 + 's', kByte0 + '>', 263}));
  // Parsed, it is the BOS token and the text after it gets the prefix space.
  EXPECT_EQ(tok->encode("<s>ab", false, true), (std::vector<TokenId>{1, kSpaceAb}));
}

TEST(SpmSynthetic, UserDefinedTokensAlwaysSplitOut) {
  auto tok = spm_tokenizer();
  ASSERT_NE(tok, nullptr);
  const std::vector<TokenId> want = {kSpaceA, kTool, kSpace, kB};
  EXPECT_EQ(tok->encode("a<tool>b", false, false), want);
  EXPECT_EQ(tok->encode("a<tool>b", false, true), want);
  EXPECT_EQ(tok->token_to_piece(kTool), "<tool>");
}

TEST(SpmSynthetic, AddSpecialFlags) {
  auto tok = spm_tokenizer(/*add_eos=*/true);
  ASSERT_NE(tok, nullptr);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_TRUE(tok->add_eos());
  EXPECT_EQ(tok->encode("a", true, false), (std::vector<TokenId>{1, kSpaceA, 2}));
  EXPECT_EQ(tok->encode("a", false, false), (std::vector<TokenId>{kSpaceA}));
}

TEST(SpmSynthetic, TokenToPiece) {
  auto tok = spm_tokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->token_to_piece(kSpaceAb), " ab");
  EXPECT_EQ(tok->token_to_piece(kByte0 + 0x0A), "\n");
  EXPECT_EQ(tok->token_to_piece(2), "");
  EXPECT_EQ(tok->token_to_piece(2, true), "</s>");
  EXPECT_EQ(tok->token_to_piece(0), "");  // <unk> is special too
  EXPECT_EQ(tok->token_to_piece(-1), "");
  EXPECT_EQ(tok->token_to_piece(100000), "");
  EXPECT_TRUE(tok->is_eog(2));
  EXPECT_FALSE(tok->is_eog(kA));
}

// Byte-level BPE: "Ġ" (U+0120) stands for the space byte.
TEST(BpeSynthetic, MergesByRankAndDecodesBytes) {
  std::vector<VocabEntry> vocab;
  const std::vector<std::string> texts = {"h", "e", "l", "o", "\xc4\xa0", "he", "ll", "hell", "hello", "\xc4\xa0h",
                                          "<|endoftext|>"};
  for (const auto& t : texts) vocab.push_back({t, 0, t == "<|endoftext|>" ? 3 : 1});
  gguf::Writer w;
  set_vocab(w, "gpt2", vocab);
  w.set_string("tokenizer.ggml.pre", "gpt-2");
  w.set_string_array("tokenizer.ggml.merges", {"\xc4\xa0 h", "h e", "l l", "he ll", "hell o"});
  w.set_u32("tokenizer.ggml.eos_token_id", 10);
  auto g = build(w);
  ASSERT_TRUE(g->file.has_value()) << g->file.error().message;
  auto tok = Tokenizer::from_gguf(*g->file);
  ASSERT_TRUE(tok.has_value()) << tok.error().message;
  EXPECT_EQ((*tok)->pre_name(), "gpt-2");
  EXPECT_FALSE((*tok)->add_bos());
  EXPECT_TRUE((*tok)->is_eog(10));  // "<|endoftext|>"
  // "hello" is one word; " hell" keeps its space: "Ġ h" merges first (rank 0),
  // so "h e" never applies there: Ġh + e + ll.
  EXPECT_EQ((*tok)->encode("hello hell", false, false), (std::vector<TokenId>{8, 9, 1, 6}));
  EXPECT_EQ((*tok)->token_to_piece(9), " h");
  // Special token text is plain text unless parse_special.
  EXPECT_EQ((*tok)->encode("<|endoftext|>", false, true), (std::vector<TokenId>{10}));
}

TEST(TokenizerErrors, UnsupportedModelNamesItAndTheFile) {
  gguf::Writer w;
  set_vocab(w, "t5", {{"<pad>", 0, 3}, {"a", 0, 1}});
  auto g = build(w, "t5-vocab.gguf");
  ASSERT_TRUE(g->file.has_value());
  auto tok = Tokenizer::from_gguf(*g->file);
  ASSERT_FALSE(tok.has_value());
  EXPECT_NE(tok.error().message.find("'t5'"), std::string::npos) << tok.error().message;
  EXPECT_NE(tok.error().message.find("t5-vocab.gguf"), std::string::npos) << tok.error().message;
}

TEST(TokenizerErrors, UnsupportedPreTokenizerNamesIt) {
  gguf::Writer w;
  set_vocab(w, "gpt2", {{"a", 0, 1}});
  w.set_string("tokenizer.ggml.pre", "no-such-pre");
  w.set_string_array("tokenizer.ggml.merges", {});
  auto g = build(w, "pre.gguf");
  ASSERT_TRUE(g->file.has_value());
  auto tok = Tokenizer::from_gguf(*g->file);
  ASSERT_FALSE(tok.has_value());
  EXPECT_NE(tok.error().message.find("no-such-pre"), std::string::npos) << tok.error().message;
  EXPECT_NE(tok.error().message.find("pre.gguf"), std::string::npos) << tok.error().message;
}

TEST(TokenizerErrors, MissingOrBrokenKeys) {
  {
    gguf::Writer w;  // no tokenizer at all
    w.set_string("general.architecture", "llama");
    auto g = build(w, "empty.gguf");
    ASSERT_TRUE(g->file.has_value());
    auto tok = Tokenizer::from_gguf(*g->file);
    ASSERT_FALSE(tok.has_value());
    EXPECT_NE(tok.error().message.find("tokenizer.ggml.model"), std::string::npos) << tok.error().message;
  }
  {
    gguf::Writer w;  // gpt2 without merges
    set_vocab(w, "gpt2", {{"a", 0, 1}});
    auto g = build(w);
    ASSERT_TRUE(g->file.has_value());
    auto tok = Tokenizer::from_gguf(*g->file);
    ASSERT_FALSE(tok.has_value());
    EXPECT_NE(tok.error().message.find("tokenizer.ggml.merges"), std::string::npos) << tok.error().message;
  }
  {
    gguf::Writer w;  // duplicate token text
    set_vocab(w, "llama", {{"<unk>", 0, 2}, {"a", 0, 1}, {"a", 0, 1}});
    auto g = build(w);
    ASSERT_TRUE(g->file.has_value());
    auto tok = Tokenizer::from_gguf(*g->file);
    ASSERT_FALSE(tok.has_value());
    EXPECT_NE(tok.error().message.find("'a'"), std::string::npos) << tok.error().message;
  }
  {
    gguf::Writer w;  // fewer scores than tokens
    set_vocab(w, "llama", {{"<unk>", 0, 2}, {"a", 0, 1}});
    w.set_f32_array("tokenizer.ggml.scores", {0.0f});
    auto g = build(w);
    ASSERT_TRUE(g->file.has_value());
    auto tok = Tokenizer::from_gguf(*g->file);
    ASSERT_FALSE(tok.has_value());
    EXPECT_NE(tok.error().message.find("tokenizer.ggml.scores"), std::string::npos) << tok.error().message;
  }
}

}  // namespace
}  // namespace engram
