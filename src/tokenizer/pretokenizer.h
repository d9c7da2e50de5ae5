// Regex pre-tokenizers of byte-level BPE vocabularies (internal).
//
// tokenizer.ggml.pre names a list of regexes. As in llama.cpp, the text is
// split by the first regex into matches and the unmatched text between them,
// then every piece is split again by the next regex, and so on. Matching uses
// PCRE2 in UTF + UCP mode (JIT when available), so \p{L}, \p{N}, \s etc. are
// the Unicode classes.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/status.h"

namespace engram::tok {

struct PreTokenizerSpec {
  std::vector<std::string> regexes;
  bool ignore_merges = false;  // a whole word that is in the vocabulary is one token
  bool add_bos = false;        // llama.cpp's add_bos default for this pre-tokenizer
  bool no_bos_token = false;   // the pre-tokenizer has no BOS token (chatglm)
};

// The spec for a tokenizer.ggml.pre value ("" means "default"), or nullptr
// when this value is not supported.
const PreTokenizerSpec* find_pre_tokenizer(std::string_view pre_name);

class PreTokenizer {
 public:
  // Compiles the regexes; errors name the regex.
  static Expected<PreTokenizer> create(const PreTokenizerSpec& spec);

  // Splits valid UTF-8 `text` into pieces (byte ranges [begin, end) of text).
  std::vector<std::pair<size_t, size_t>> split(std::string_view text) const;

 private:
  struct Regex;
  std::vector<std::shared_ptr<const Regex>> regexes_;
};

}  // namespace engram::tok
