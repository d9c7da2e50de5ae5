// Pre-tokenizer regexes per tokenizer.ggml.pre value, and the PCRE2 splitter.
//
// The regexes are those of the original Hugging Face tokenizers, in the form
// llama.cpp runs them (case-insensitive groups spelled out). Non-ASCII
// literals are written as \x{...} escapes so the source stays ASCII.
#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstring>

#include "tokenizer/utf8.h"

namespace engram::tok {

namespace {

// GPT-2: 's|'t|... then letters, digits, other symbols, each with an optional
// leading space, and runs of whitespace not followed by non-whitespace.
constexpr const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";

constexpr const char* kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kQwen35 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Cased letters (Lu, Ll, Lt) as DeepSeek's tokenizer lists them.
constexpr const char* kDeepseekLlmLetters = R"(\s?[\x{41}-\x{5A}\x{61}-\x{7A}\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";

constexpr const char* kCjk = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

constexpr const char* kDeepseekV3Main =
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kPoro = R"( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+)";

constexpr const char* kSeedCoder =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Letters split at case changes (lookaheads stand for "letter but not a-z / A-Z").
constexpr const char* kTekken =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kGpt4o =
    R"([^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct NamedSpec {
  std::vector<std::string_view> names;
  PreTokenizerSpec spec;
};

const std::vector<NamedSpec>& pre_tokenizer_table() {
  static const std::vector<NamedSpec> table = {
      {{"default"}, {{R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"},
       {{kLlama3}, /*ignore_merges=*/true, /*add_bos=*/true}},
      {{"dbrx", "smaug-bpe"}, {{kLlama3}}},
      {{"glm4", "chatglm-bpe"}, {{kLlama3}, false, false, /*no_bos_token=*/true}},
      {{"deepseek-llm"},
       {{R"([\r\n])", kDeepseekLlmLetters,
         R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)", R"(\s+$)", kCjk,
         R"(\p{N}+)"}}},
      {{"deepseek-coder"}, {{R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"}}},
      {{"deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"},
       {{R"(\p{N}{1,3})", R"([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)", kDeepseekV3Main}}},
      {{"falcon"}, {{R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"},
       {{R"(\p{N})", kGpt2}}},
      {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
        "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "trillion",
        "granite-docling", "exaone4"},
       {{kGpt2}}},
      {{"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "hunyuan", "solar-open", "megrez"},
       {{kQwen2}}},
      {{"qwen35"}, {{kQwen35}}},
      {{"poro-chat", "bloom", "gpt3-finnish"}, {{kPoro}}},
      {{"viking"}, {{kPoro, R"(\p{N})"}}},
      {{"seed-coder"}, {{kSeedCoder}}},
      {{"grok-2"}, {{kQwen2}}},
      {{"tekken"}, {{kTekken}, /*ignore_merges=*/true, /*add_bos=*/true}},
      {{"gpt-4o", "llama4", "kanana2", "talkie"}, {{kGpt4o}}},
  };
  return table;
}

}  // namespace

const PreTokenizerSpec* find_pre_tokenizer(std::string_view pre_name) {
  if (pre_name.empty()) pre_name = "default";
  for (const NamedSpec& entry : pre_tokenizer_table()) {
    for (std::string_view name : entry.names) {
      if (name == pre_name) return &entry.spec;
    }
  }
  return nullptr;
}

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

Expected<PreTokenizer> PreTokenizer::create(const PreTokenizerSpec& spec) {
  PreTokenizer pre;
  for (const std::string& pattern : spec.regexes) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    // DOLLAR_ENDONLY: $ means the end of the piece only, as in ECMAScript.
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                     &error, &error_offset, nullptr);
    if (code == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      return make_error("pre-tokenizer regex '", pattern, "' does not compile at offset ",
                        std::to_string(error_offset), ": ", reinterpret_cast<const char*>(message.data()));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional: without JIT, the interpreter runs
    auto regex = std::make_shared<Regex>();
    regex->code = code;
    pre.regexes_.push_back(std::move(regex));
  }
  return pre;
}

namespace {

// The text the regexes see: like llama.cpp, every non-ASCII whitespace code
// point becomes "\v", so \s matches it and no literal class does. offsets[i]
// is the position in the original text of byte i of the match text.
struct MatchText {
  std::string text;
  std::vector<size_t> offsets;
};

MatchText make_match_text(std::string_view original) {
  MatchText m;
  m.text.reserve(original.size());
  m.offsets.reserve(original.size() + 1);
  size_t pos = 0;
  while (pos < original.size()) {
    const size_t start = pos;
    const uint32_t cpt = utf8_decode(original, pos);
    if (cpt >= 0x80 && is_unicode_space(cpt)) {
      m.text += '\v';
      m.offsets.push_back(start);
    } else {
      for (size_t i = start; i < pos; ++i) {
        m.text += original[i];
        m.offsets.push_back(i);
      }
    }
  }
  m.offsets.push_back(original.size());
  return m;
}

using Pieces = std::vector<std::pair<size_t, size_t>>;

// Splits one piece [begin, end) of `text` by `code`: matches and the text
// between them both become pieces.
void split_piece(const pcre2_code* code, pcre2_match_data* match_data, const std::string& text, size_t begin,
                 size_t end, Pieces& out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + begin);
  const size_t length = end - begin;
  size_t emitted = 0;  // piece-relative end of what has been emitted
  size_t search = 0;
  while (search < length) {
    int rc = pcre2_match(code, subject, length, search, PCRE2_NO_UTF_CHECK, match_data, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code, subject, length, search, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, match_data, nullptr);
    }
    if (rc < 0) break;  // no further match (or a resource limit): the rest is one piece
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_data);
    const size_t m_begin = ov[0], m_end = ov[1];
    if (m_end == m_begin) {
      // An empty match produces no piece; step over one character.
      search = m_begin + 1;
      while (search < length && (static_cast<uint8_t>(text[begin + search]) & 0xC0) == 0x80) ++search;
      continue;
    }
    if (m_begin > emitted) out.emplace_back(begin + emitted, begin + m_begin);
    out.emplace_back(begin + m_begin, begin + m_end);
    emitted = search = m_end;
  }
  if (emitted < length) out.emplace_back(begin + emitted, end);
}

}  // namespace

std::vector<std::pair<size_t, size_t>> PreTokenizer::split(std::string_view text) const {
  const MatchText m = make_match_text(text);
  Pieces pieces;
  if (!m.text.empty()) pieces.emplace_back(0, m.text.size());
  for (const auto& regex : regexes_) {
    pcre2_match_data* match_data = pcre2_match_data_create_from_pattern(regex->code, nullptr);
    Pieces next;
    next.reserve(pieces.size() * 2);
    for (const auto& [begin, end] : pieces) split_piece(regex->code, match_data, m.text, begin, end, next);
    pcre2_match_data_free(match_data);
    pieces = std::move(next);
  }
  for (auto& [begin, end] : pieces) {
    begin = m.offsets[begin];
    end = m.offsets[end];
  }
  return pieces;
}

}  // namespace engram::tok
