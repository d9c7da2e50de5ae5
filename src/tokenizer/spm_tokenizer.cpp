// SentencePiece-style tokenizer ("llama"), as llama.cpp's llm_tokenizer_spm:
// start from single UTF-8 characters, repeatedly merge the adjacent pair
// whose concatenation is the vocabulary token with the highest score, then
// emit the resulting pieces, falling back to <0xXX> byte tokens for pieces
// that are not tokens.
#include <map>
#include <queue>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace engram::tok {

namespace {

constexpr std::string_view kSpaceMarker = "\xe2\x96\x81";  // U+2581, SentencePiece's space

std::string escape_spaces(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 2);
  for (char c : text) {
    if (c == ' ') out += kSpaceMarker;
    else out += c;
  }
  return out;
}

class SpmTokenizer final : public VocabTokenizer {
 public:
  std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const override;

 protected:
  std::string decode_normal(const std::string& token_text) const override;

 private:
  void encode_text(const std::string& text, std::vector<TokenId>& out) const;
  TokenId byte_token(uint8_t byte) const;
};

// One symbol of the text being merged: a byte range, linked to its neighbours.
struct Symbol {
  int prev, next;
  size_t begin, size;  // size 0: merged into the symbol on its left
};

struct Bigram {
  int left, right;
  float score;
  size_t size;
};

// Highest score first; on ties the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

// One run of the merge loop over one text.
class SpmSession {
 public:
  SpmSession(const VocabTokenizer& vocab, const std::string& text) : vocab_(vocab), text_(text) {}

  std::vector<Symbol> symbols;
  std::map<std::string, std::pair<int, int>, std::less<>> rev_merge;  // merged text -> the pair it came from

  void run() {
    for (size_t offs = 0; offs < text_.size();) {
      const size_t len = std::min(utf8_seq_len(static_cast<uint8_t>(text_[offs])), text_.size() - offs);
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({index - 1, offs + len == text_.size() ? -1 : index + 1, offs, len});
      offs += len;
    }
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add_bigram(i - 1, i);

    while (!queue_.empty()) {
      const Bigram bigram = queue_.top();
      queue_.pop();
      Symbol& left = symbols[static_cast<size_t>(bigram.left)];
      Symbol& right = symbols[static_cast<size_t>(bigram.right)];
      // Stale entry: one side was merged away or grew since it was queued.
      if (left.size == 0 || right.size == 0 || left.size + right.size != bigram.size) continue;
      left.size += right.size;
      right.size = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = bigram.left;
      try_add_bigram(left.prev, bigram.left);
      try_add_bigram(bigram.left, left.next);
    }
  }

 private:
  void try_add_bigram(int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    std::string_view merged(text_.data() + l.begin, l.size + r.size);
    const TokenId id = vocab_.find_token(merged);
    if (id < 0) return;
    queue_.push({left, right, vocab_.token_score(id), merged.size()});
    rev_merge[std::string(merged)] = {left, right};
  }

  const VocabTokenizer& vocab_;
  const std::string& text_;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue_;
};

}  // namespace

std::vector<TokenId> SpmTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<TokenId> out;
  if (add_special && add_bos_) out.push_back(bos_);
  // The dummy prefix space goes before the text and after every special token.
  bool prev_special = true;
  for (const Fragment& f : partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    std::string piece = (add_space_prefix_ && prev_special) ? " " : "";
    piece.append(text.substr(f.begin, f.end - f.begin));
    encode_text(escape_spaces(piece), out);
    prev_special = false;
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

TokenId SpmTokenizer::byte_token(uint8_t byte) const {
  static constexpr char kHex[] = "0123456789ABCDEF";
  const char name[] = {'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
  TokenId id = find_token(std::string_view(name, sizeof name));
  if (id < 0) id = find_token(std::string_view(reinterpret_cast<const char*>(&byte), 1));
  return id >= 0 ? id : unk_;  // llama.cpp would abort here; the unknown token is the safe choice
}

void SpmTokenizer::encode_text(const std::string& text, std::vector<TokenId>& out) const {
  SpmSession session(*this, text);
  session.run();
  if (session.symbols.empty()) return;

  // Emits a symbol: its token, or the two symbols it was merged from, or bytes.
  const auto resegment = [&](auto&& self, size_t begin, size_t size) -> void {
    std::string_view piece(text.data() + begin, size);
    if (TokenId id = find_token(piece); id >= 0) {
      out.push_back(id);
      return;
    }
    auto it = session.rev_merge.find(piece);
    if (it == session.rev_merge.end()) {
      for (char c : piece) {
        if (TokenId id = byte_token(static_cast<uint8_t>(c)); id >= 0) out.push_back(id);
      }
      return;
    }
    const Symbol& l = session.symbols[static_cast<size_t>(it->second.first)];
    const Symbol& r = session.symbols[static_cast<size_t>(it->second.second)];
    self(self, l.begin, l.size);
    self(self, r.begin, r.size);
  };
  for (int i = 0; i != -1; i = session.symbols[static_cast<size_t>(i)].next) {
    const Symbol& s = session.symbols[static_cast<size_t>(i)];
    resegment(resegment, s.begin, s.size);
  }
}

std::string SpmTokenizer::decode_normal(const std::string& token_text) const {
  std::string out;
  out.reserve(token_text.size());
  for (size_t i = 0; i < token_text.size();) {
    if (token_text.compare(i, kSpaceMarker.size(), kSpaceMarker) == 0) {
      out += ' ';
      i += kSpaceMarker.size();
    } else {
      out += token_text[i++];
    }
  }
  return out;
}

Expected<std::unique_ptr<Tokenizer>> make_spm_tokenizer(const gguf::File& file) {
  auto tok = std::make_unique<SpmTokenizer>();
  VocabTokenizer::SpecialDefaults defaults;
  defaults.bos = 1;
  defaults.eos = 2;
  defaults.unk = 0;
  defaults.add_bos = true;
  defaults.add_space_prefix = true;
  ENGRAM_RETURN_IF_ERROR(tok->load_vocab(file, defaults));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace engram::tok
