// UTF-8 decoding, the GPT-2 byte-level mapping and the streaming decoder.
#include "tokenizer/utf8.h"

#include <array>

#include "tokenizer/tokenizer.h"

namespace engram::tok {

size_t utf8_seq_len(uint8_t lead) {
  static constexpr uint8_t kLenByHighNibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLenByHighNibble[lead >> 4];
}

namespace {

bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

}  // namespace

uint32_t utf8_decode(std::string_view s, size_t& pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[pos + i]); };
  const uint8_t b0 = byte(0);
  const size_t n = utf8_seq_len(b0);
  // A lone continuation byte (0x80..0xBF) or a truncated / broken sequence.
  if ((n == 1 && b0 >= 0x80) || pos + n > s.size()) {
    ++pos;
    return kReplacementChar;
  }
  for (size_t i = 1; i < n; ++i) {
    if (!is_continuation(byte(i))) {
      ++pos;
      return kReplacementChar;
    }
  }
  uint32_t cpt = 0;
  switch (n) {
    case 1: cpt = b0; break;
    case 2: cpt = ((b0 & 0x1Fu) << 6) | (byte(1) & 0x3Fu); break;
    case 3: cpt = ((b0 & 0x0Fu) << 12) | ((byte(1) & 0x3Fu) << 6) | (byte(2) & 0x3Fu); break;
    default:
      // 0xF8..0xFF are not lead bytes at all.
      if (b0 & 0x08) {
        ++pos;
        return kReplacementChar;
      }
      cpt = ((b0 & 0x07u) << 18) | ((byte(1) & 0x3Fu) << 12) | ((byte(2) & 0x3Fu) << 6) | (byte(3) & 0x3Fu);
      break;
  }
  pos += n;
  return cpt;
}

void utf8_append(std::string& out, uint32_t cpt) {
  if (cpt <= 0x7F) {
    out += static_cast<char>(cpt);
  } else if (cpt <= 0x7FF) {
    out += static_cast<char>(0xC0 | (cpt >> 6));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  } else if (cpt <= 0xFFFF) {
    out += static_cast<char>(0xE0 | (cpt >> 12));
    out += static_cast<char>(0x80 | ((cpt >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cpt >> 18));
    out += static_cast<char>(0x80 | ((cpt >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cpt >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cpt & 0x3F));
  }
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    uint32_t cpt = utf8_decode(s, pos);
    // Surrogates and values past U+10FFFF are not valid UTF-8 for PCRE2.
    if ((cpt >= 0xD800 && cpt <= 0xDFFF) || cpt > 0x10FFFF) cpt = kReplacementChar;
    utf8_append(out, cpt);
  }
  return out;
}

namespace {

// byte -> code point of the GPT-2 byte-level alphabet, built at compile time.
constexpr std::array<uint16_t, 256> make_byte_to_unicode() {
  std::array<uint16_t, 256> table{};
  const auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
  int next = 0;
  for (int b = 0; b < 256; ++b) table[b] = static_cast<uint16_t>(printable(b) ? b : 256 + next++);
  return table;
}

constexpr std::array<uint16_t, 256> kByteToUnicode = make_byte_to_unicode();
constexpr uint32_t kMaxMappedCpt = 256 + 68;  // 68 bytes are not printable

constexpr std::array<int16_t, kMaxMappedCpt> make_unicode_to_byte() {
  std::array<int16_t, kMaxMappedCpt> table{};
  for (auto& v : table) v = -1;
  for (int b = 0; b < 256; ++b) table[kByteToUnicode[b]] = static_cast<int16_t>(b);
  return table;
}

constexpr std::array<int16_t, kMaxMappedCpt> kUnicodeToByte = make_unicode_to_byte();

}  // namespace

uint32_t byte_to_unicode(uint8_t byte) { return kByteToUnicode[byte]; }

int unicode_to_byte(uint32_t cpt) { return cpt < kMaxMappedCpt ? kUnicodeToByte[cpt] : -1; }

bool is_unicode_space(uint32_t cpt) {
  switch (cpt) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cpt >= 0x2000 && cpt <= 0x200A;
  }
}

}  // namespace engram::tok

namespace engram {

namespace {

// Bytes at the end of `s` that start a valid but incomplete UTF-8 character
// (a lead byte followed by fewer continuation bytes than it announces).
size_t incomplete_tail(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<uint8_t>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = 0;
    if (b >= 0xC2 && b <= 0xDF) need = 2;
    else if (b >= 0xE0 && b <= 0xEF) need = 3;
    else if (b >= 0xF0 && b <= 0xF4) need = 4;
    return need > back ? back : 0;  // ASCII, invalid lead or complete: nothing to hold
  }
  return 0;
}

}  // namespace

std::string Utf8StreamDecoder::push(std::string_view bytes) {
  pending_.append(bytes);
  const size_t hold = incomplete_tail(pending_);
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string Utf8StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace engram
