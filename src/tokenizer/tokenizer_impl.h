// What the SPM and BPE tokenizers share (internal to the tokenizer layer):
// the vocabulary lookups, llama.cpp's token attributes and the splitting of
// special tokens out of the text before the model's own algorithm runs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace engram::tok {

// Token attributes as llama.cpp keeps them: a bit set, because it adds
// CONTROL to end-of-turn tokens a converter left NORMAL, and strip flags to
// special tokens of some models.
enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1 << 0,
  kAttrUnused = 1 << 1,
  kAttrNormal = 1 << 2,
  kAttrControl = 1 << 3,
  kAttrUserDefined = 1 << 4,
  kAttrByte = 1 << 5,
  kAttrLstrip = 1 << 7,  // whitespace before the token is dropped when it is split out
  kAttrRstrip = 1 << 8,  // whitespace after it is dropped
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// A piece of the input after special tokens were split out: either a token
// or the byte range [begin, end) of raw text.
struct Fragment {
  TokenId token = -1;  // -1 for raw text
  size_t begin = 0, end = 0;
};

class VocabTokenizer : public Tokenizer {
 public:
  std::string token_to_piece(TokenId id, bool render_special) const override;

  // Reads tokens, scores, types and special ids; `defaults` are llama.cpp's
  // per-model ids used when the file has no key. Errors name the key and file.
  struct SpecialDefaults {
    TokenId bos = -1, eos = -1, unk = -1;
    bool add_bos = false, add_eos = false;
    bool add_space_prefix = false;
  };
  Status load_vocab(const gguf::File& file, const SpecialDefaults& defaults);

  // The id of the token with exactly this text, or -1.
  TokenId find_token(std::string_view text) const;
  float token_score(TokenId id) const { return scores_[static_cast<size_t>(id)]; }

 protected:
  bool has_attr(TokenId id, uint32_t attr) const { return (attrs_[static_cast<size_t>(id)] & attr) != 0; }

  // Splits special tokens out of `text` (llama.cpp tokenizer_st_partition):
  // longest token text first; USER_DEFINED tokens always, CONTROL and UNKNOWN
  // tokens only with parse_special.
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;

  // NORMAL tokens: the text the token stands for.
  virtual std::string decode_normal(const std::string& token_text) const = 0;

  StringMap token_to_id_;
  std::vector<uint32_t> attrs_;
  std::vector<TokenId> special_cache_;  // CONTROL / USER_DEFINED / UNKNOWN ids, longest text first
  bool add_space_prefix_ = false;

 private:
  Status read_tokens(const gguf::File& file);
  void read_special_ids(const gguf::File& file, const SpecialDefaults& defaults);
  void detect_end_of_generation();
  void apply_model_attrs(const gguf::File& file);
};

// The model-specific tokenizers; from_gguf picks one by tokenizer.ggml.model.
Expected<std::unique_ptr<Tokenizer>> make_spm_tokenizer(const gguf::File& file);
Expected<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(const gguf::File& file);

}  // namespace engram::tok
