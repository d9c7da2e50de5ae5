// Tokenizers read from GGUF metadata (tokenizer.ggml.*), matching llama.cpp:
//  - "llama": SentencePiece-style, merges by score, byte fallback <0xXX>,
//    dummy-prefix space, spaces as U+2581.
//  - "gpt2": byte-level BPE with merges ranks and a regex pre-tokenizer chosen
//    by tokenizer.ggml.pre (llama3/llama-bpe, qwen2, deepseek-llm,
//    deepseek-v3, gpt-2, ...), Unicode classes through PCRE2.
// Special and control tokens (token_type) are honoured; with parse_special
// the text of a special token maps to that token.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"
#include "util/status.h"

namespace engram {

using TokenId = int32_t;

enum class TokenType : int32_t {
  UNDEFINED = 0, NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Reads the vocabulary from a GGUF file (works on vocabulary-only files).
  // Unsupported tokenizer.ggml.model / .pre values give an Error naming them.
  static Expected<std::unique_ptr<Tokenizer>> from_gguf(const gguf::File& file);

  // add_special: add BOS/EOS as the add_bos/add_eos flags say.
  virtual std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const = 0;

  // The bytes a token stands for (byte tokens -> that byte, U+2581 -> space,
  // byte-level BPE decoded). Control tokens give "" unless render_special.
  virtual std::string token_to_piece(TokenId id, bool render_special = false) const = 0;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  const std::string& token_text(TokenId id) const { return tokens_.at(static_cast<size_t>(id)); }
  TokenType token_type(TokenId id) const;
  TokenId bos() const { return bos_; }   // -1 when none
  TokenId eos() const { return eos_; }   // -1 when none
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool is_eog(TokenId id) const;         // end of generation (eos, eot, ...)
  const std::string& model_name() const { return model_; }  // "llama", "gpt2"
  const std::string& pre_name() const { return pre_; }

 protected:
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<TokenType> types_;
  TokenId bos_ = -1, eos_ = -1, eot_ = -1, unk_ = -1, pad_ = -1;
  std::vector<TokenId> eog_ids_;  // every end-of-generation token (eos, eot, eom, <|im_end|>, ...)
  bool add_bos_ = false, add_eos_ = false;
  std::string model_, pre_;
};

// Turns a stream of tokens into text without ever splitting a multi-byte
// UTF-8 character: bytes of an incomplete character are held back until the
// character is complete (or flushed at the end).
class Utf8StreamDecoder {
 public:
  // Appends bytes; returns the longest prefix that ends on a character boundary.
  std::string push(std::string_view bytes);
  // Whatever is held back (possibly invalid UTF-8), at the end of generation.
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace engram
