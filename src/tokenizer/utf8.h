// UTF-8 helpers shared by the tokenizers (internal to the tokenizer layer).
//
// Decoding follows llama.cpp's rules so that tokenization matches it byte for
// byte: the length of a sequence is read from the high nibble of its first
// byte, and a byte that does not start a complete sequence decodes to U+FFFD
// and consumes one byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace engram::tok {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Length of the sequence that `lead` starts (1 for continuation bytes, as llama.cpp).
size_t utf8_seq_len(uint8_t lead);

// Decodes the code point at `pos` and advances `pos`; invalid input gives
// U+FFFD and advances by one byte.
uint32_t utf8_decode(std::string_view s, size_t& pos);

void utf8_append(std::string& out, uint32_t cpt);

// Valid UTF-8 (what PCRE2 requires): every invalid byte, surrogate or
// out-of-range code point becomes U+FFFD.
std::string utf8_sanitize(std::string_view s);

// GPT-2 byte-level encoding: every byte maps to one printable code point
// (printable Latin-1 bytes to themselves, the others to U+0100 and up).
uint32_t byte_to_unicode(uint8_t byte);
// The byte a code point stands for, or -1 when it is not in the mapping.
int unicode_to_byte(uint32_t cpt);

// Code points llama.cpp treats as whitespace outside ASCII (Unicode White_Space).
bool is_unicode_space(uint32_t cpt);

}  // namespace engram::tok
