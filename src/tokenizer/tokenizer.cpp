// Loading a vocabulary from GGUF metadata, special tokens, token_to_piece:
// the parts every tokenizer model shares. The rules (defaults per model,
// which tokens end generation, how special tokens are split out of the text)
// follow llama.cpp's llama-vocab.cpp so that token ids agree with it.
#include <algorithm>
#include <array>
#include <cctype>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace engram {

namespace {

constexpr std::string_view kKeyModel = "tokenizer.ggml.model";
constexpr std::string_view kKeyTokens = "tokenizer.ggml.tokens";
constexpr std::string_view kKeyScores = "tokenizer.ggml.scores";
constexpr std::string_view kKeyTokenTypes = "tokenizer.ggml.token_type";

}  // namespace

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const gguf::File& file) {
  auto model = file.get_string(kKeyModel);
  if (!model) return model.error();
  if (*model == "llama") return tok::make_spm_tokenizer(file);
  if (*model == "gpt2") return tok::make_bpe_tokenizer(file);
  return make_error(file.path(), ": unsupported tokenizer model '", *model, "' (", kKeyModel,
                    "); supported: llama (SentencePiece), gpt2 (byte-level BPE)");
}

TokenType Tokenizer::token_type(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= types_.size()) return TokenType::UNDEFINED;
  return types_[static_cast<size_t>(id)];
}

bool Tokenizer::is_eog(TokenId id) const {
  return id >= 0 && std::find(eog_ids_.begin(), eog_ids_.end(), id) != eog_ids_.end();
}

}  // namespace engram

namespace engram::tok {

namespace {

uint32_t attr_from_type(int64_t type) {
  switch (type) {
    case 1: return kAttrNormal;
    case 2: return kAttrUnknown;
    case 3: return kAttrControl;
    case 4: return kAttrUserDefined;
    case 5: return kAttrUnused;
    case 6: return kAttrByte;
    default: return kAttrUndefined;
  }
}

TokenType type_from_attr(uint32_t attr) {
  if (attr & kAttrControl) return TokenType::CONTROL;
  if (attr & kAttrUserDefined) return TokenType::USER_DEFINED;
  if (attr & kAttrUnknown) return TokenType::UNKNOWN;
  if (attr & kAttrByte) return TokenType::BYTE;
  if (attr & kAttrUnused) return TokenType::UNUSED;
  if (attr & kAttrNormal) return TokenType::NORMAL;
  return TokenType::UNDEFINED;
}

bool is_one_of(std::string_view text, std::initializer_list<std::string_view> list) {
  return std::find(list.begin(), list.end(), text) != list.end();
}

}  // namespace

TokenId VocabTokenizer::find_token(std::string_view text) const {
  auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

Status VocabTokenizer::load_vocab(const gguf::File& file, const SpecialDefaults& defaults) {
  auto model = file.get_string(kKeyModel);
  model_ = model ? *model : "";
  auto pre = file.get_string("tokenizer.ggml.pre");
  pre_ = pre.has_value() && !pre->empty() ? *pre : "default";
  ENGRAM_RETURN_IF_ERROR(read_tokens(file));
  read_special_ids(file, defaults);
  // A present key of the wrong kind is an error; an absent key keeps the default.
  auto add_bos = file.get_bool_or("tokenizer.ggml.add_bos_token", add_bos_);
  if (!add_bos) return add_bos.error();
  auto add_eos = file.get_bool_or("tokenizer.ggml.add_eos_token", add_eos_);
  if (!add_eos) return add_eos.error();
  auto add_prefix = file.get_bool_or("tokenizer.ggml.add_space_prefix", add_space_prefix_);
  if (!add_prefix) return add_prefix.error();
  add_bos_ = *add_bos;
  add_eos_ = *add_eos;
  add_space_prefix_ = *add_prefix;
  if (add_bos_ && bos_ < 0)
    return make_error(file.path(), ": tokenizer.ggml.add_bos_token is true but there is no BOS token");
  if (add_eos_ && eos_ < 0)
    return make_error(file.path(), ": tokenizer.ggml.add_eos_token is true but there is no EOS token");

  detect_end_of_generation();

  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (attrs_[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) special_cache_.push_back(static_cast<TokenId>(id));
  }
  std::stable_sort(special_cache_.begin(), special_cache_.end(), [&](TokenId a, TokenId b) {
    return tokens_[static_cast<size_t>(a)].size() > tokens_[static_cast<size_t>(b)].size();
  });
  apply_model_attrs(file);
  for (size_t id = 0; id < tokens_.size(); ++id) types_[id] = type_from_attr(attrs_[id]);
  return Status::ok();
}

Status VocabTokenizer::read_tokens(const gguf::File& file) {
  auto tokens = file.get_string_array(kKeyTokens);
  if (!tokens) return tokens.error();
  tokens_ = std::move(*tokens);
  const size_t n = tokens_.size();

  scores_.assign(n, 0.0f);
  if (file.has(kKeyScores)) {
    auto scores = file.get_float_array(kKeyScores);
    if (!scores) return scores.error();
    if (scores->size() < n)
      return make_error(file.path(), ": ", kKeyScores, " has ", std::to_string(scores->size()), " entries for ",
                        std::to_string(n), " tokens");
    for (size_t i = 0; i < n; ++i) scores_[i] = static_cast<float>((*scores)[i]);
  }

  attrs_.assign(n, kAttrNormal);
  if (file.has(kKeyTokenTypes)) {
    auto types = file.get_int_array(kKeyTokenTypes);
    if (!types) return types.error();
    if (types->size() < n)
      return make_error(file.path(), ": ", kKeyTokenTypes, " has ", std::to_string(types->size()), " entries for ",
                        std::to_string(n), " tokens");
    for (size_t i = 0; i < n; ++i) attrs_[i] = attr_from_type((*types)[i]);
  }
  types_.resize(n);

  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (tokens_[i].empty()) tokens_[i] = "[EMPTY_" + std::to_string(i) + "]";  // as llama.cpp
    auto [it, inserted] = token_to_id_.emplace(tokens_[i], static_cast<TokenId>(i));
    if (!inserted)
      return make_error(file.path(), ": ", kKeyTokens, ": token '", tokens_[i], "' appears twice (ids ",
                        std::to_string(it->second), " and ", std::to_string(i), ")");
  }
  return Status::ok();
}

void VocabTokenizer::read_special_ids(const gguf::File& file, const SpecialDefaults& defaults) {
  const auto n = static_cast<int64_t>(tokens_.size());
  const auto in_range = [&](int64_t id) { return id >= 0 && id < n; };
  // A key that is absent, of the wrong kind or out of range (converters
  // write 0xFFFFFFFF for "none") keeps llama.cpp's default, as llama.cpp does.
  const auto read = [&](std::string_view key, TokenId fallback) -> TokenId {
    if (!in_range(fallback)) fallback = -1;
    auto v = file.get_int(key);
    return v && in_range(*v) ? static_cast<TokenId>(*v) : fallback;
  };
  bos_ = read("tokenizer.ggml.bos_token_id", defaults.bos);
  eos_ = read("tokenizer.ggml.eos_token_id", defaults.eos);
  eot_ = read("tokenizer.ggml.eot_token_id", -1);
  unk_ = read("tokenizer.ggml.unknown_token_id", defaults.unk);
  pad_ = read("tokenizer.ggml.padding_token_id", -1);
  // End-of-message and fill-in-the-middle ids only matter for is_eog.
  for (std::string_view key : {"tokenizer.ggml.eom_token_id", "tokenizer.ggml.fim_pad_token_id",
                               "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id"}) {
    TokenId id = read(key, -1);
    if (id >= 0) eog_ids_.push_back(id);
  }
  add_bos_ = defaults.add_bos;
  add_eos_ = defaults.add_eos;
  add_space_prefix_ = defaults.add_space_prefix;
}

// llama.cpp finds end-of-turn and similar tokens by their text, marks them
// CONTROL and stops generation on them.
void VocabTokenizer::detect_end_of_generation() {
  const auto mark_control = [&](size_t id) { attrs_[id] |= kAttrControl; };
  bool has_fim_or_eom = !eog_ids_.empty();
  for (size_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    if (eot_ < 0 && is_one_of(t, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                  "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                                  "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                  "<end_of_utterance>"})) {
      eot_ = static_cast<TokenId>(id);
      mark_control(id);
    }
    if (!has_fim_or_eom && is_one_of(t, {"<|eom_id|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
                                          "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
                                          "<|file_sep|>"})) {
      eog_ids_.push_back(static_cast<TokenId>(id));
      mark_control(id);
    }
  }
  for (size_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    if (is_one_of(t, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                      "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                      "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                      "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~["})) {
      eog_ids_.push_back(static_cast<TokenId>(id));
      mark_control(id);
    }
    // gpt-oss: these structure tokens are always rendered.
    if (is_one_of(t, {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})) attrs_[id] = kAttrUserDefined;
  }
  for (TokenId id : {eos_, eot_}) {
    if (id >= 0) eog_ids_.push_back(id);
  }
  std::sort(eog_ids_.begin(), eog_ids_.end());
  eog_ids_.erase(std::unique(eog_ids_.begin(), eog_ids_.end()), eog_ids_.end());

  // o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
  bool has_return = false, has_call = false, has_flush = false;
  TokenId end_id = -1;
  for (TokenId id : eog_ids_) {
    const std::string& t = tokens_[static_cast<size_t>(id)];
    has_return |= t == "<|return|>";
    has_call |= t == "<|call|>" || t == "<|calls|>";
    has_flush |= t == "<|flush|>";
    if (t == "<|end|>") end_id = id;
  }
  if (end_id >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
    eog_ids_.erase(std::find(eog_ids_.begin(), eog_ids_.end(), end_id));
    attrs_[static_cast<size_t>(end_id)] = kAttrUserDefined;
  }
}

// Per-model strip flags llama.cpp sets by model name.
void VocabTokenizer::apply_model_attrs(const gguf::File& file) {
  auto general_name = file.get_string("general.name");
  std::string name = general_name ? *general_name : "";
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto set = [&](std::string_view text, uint32_t attr, bool on) {
    TokenId id = find_token(text);
    if (id < 0) return;
    auto& a = attrs_[static_cast<size_t>(id)];
    a = on ? (a | attr) : (a & ~attr);
  };
  const bool jina = pre_.find("jina-v2-") != std::string::npos;
  if (jina) {
    set("<mask>", kAttrLstrip, true);
  } else if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (TokenId id : special_cache_) attrs_[static_cast<size_t>(id)] |= kAttrRstrip;
    set("</s>", kAttrRstrip, true);
    for (std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) set(t, kAttrRstrip, false);
  } else if (name.find("modern-bert") != std::string::npos) {
    set("[MASK]", kAttrLstrip, true);
  }
}

std::vector<Fragment> VocabTokenizer::partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({-1, 0, text.size()});
  const auto is_space = [&](size_t i) { return std::isspace(static_cast<unsigned char>(text[i])) != 0; };

  for (TokenId special : special_cache_) {
    const uint32_t attr = attrs_[static_cast<size_t>(special)];
    // CONTROL and UNKNOWN tokens are plain text unless parse_special;
    // USER_DEFINED tokens are always split out (as Hugging Face does).
    if (!parse_special && (attr & (kAttrControl | kAttrUnknown))) continue;
    const std::string& needle = tokens_[static_cast<size_t>(special)];

    std::vector<Fragment> next;
    next.reserve(fragments.size());
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t pos = f.begin;
      while (pos < f.end) {
        const size_t match = text.substr(0, f.end).find(needle, pos);
        if (match == std::string_view::npos) break;
        size_t left_end = match;
        if (attr & kAttrLstrip) {
          while (left_end > pos && is_space(left_end - 1)) --left_end;
        }
        if (left_end > pos) next.push_back({-1, pos, left_end});
        next.push_back({special, 0, 0});
        pos = match + needle.size();
        if (attr & kAttrRstrip) {
          while (pos < f.end && is_space(pos)) ++pos;
        }
      }
      if (pos < f.end) next.push_back({-1, pos, f.end});
    }
    fragments = std::move(next);
  }
  return fragments;
}

std::string VocabTokenizer::token_to_piece(TokenId id, bool render_special) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size()) return "";
  const uint32_t attr = attrs_[static_cast<size_t>(id)];
  const std::string& text = tokens_[static_cast<size_t>(id)];
  if (attr & (kAttrUnknown | kAttrControl)) return render_special ? text : "";
  if (attr & kAttrUserDefined) return text;
  if (attr & kAttrNormal) return decode_normal(text);
  if (attr & kAttrByte) {
    // "<0xXX>": the byte XX.
    int value = 0;
    for (size_t i = 3; i < 5 && i < text.size(); ++i) {
      const char c = text[i];
      const int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                        : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
      if (digit < 0) break;
      value = value * 16 + digit;
    }
    return std::string(1, static_cast<char>(value));
  }
  return "";  // UNUSED and UNDEFINED tokens render as nothing
}

}  // namespace engram::tok
