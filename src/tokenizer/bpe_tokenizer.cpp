// Byte-level BPE tokenizer ("gpt2"), as llama.cpp's llm_tokenizer_bpe:
// the regex pre-tokenizer splits the text into words, each word's bytes are
// mapped to the GPT-2 byte alphabet, and within a word the adjacent pair with
// the lowest merge rank (tokenizer.ggml.merges order) is merged until no
// pair is a known merge.
#include <queue>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace engram::tok {

namespace {

constexpr std::string_view kKeyMerges = "tokenizer.ggml.merges";

class BpeTokenizer final : public VocabTokenizer {
 public:
  BpeTokenizer(PreTokenizer pre, bool ignore_merges) : pre_tokenizer_(std::move(pre)), ignore_merges_(ignore_merges) {}

  std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const override;

  Status read_merges(const gguf::File& file);

 protected:
  std::string decode_normal(const std::string& token_text) const override;

 private:
  void encode_text(std::string_view text, std::vector<TokenId>& out) const;
  void encode_word(const std::string& word, std::vector<TokenId>& out) const;
  int merge_rank(std::string_view left, std::string_view right, std::string& key) const;

  PreTokenizer pre_tokenizer_;
  bool ignore_merges_;
  StringMap merge_ranks_;  // "left right" -> rank
};

Status BpeTokenizer::read_merges(const gguf::File& file) {
  if (!file.has(kKeyMerges)) return make_error(file.path(), ": ", kKeyMerges, " is missing (needed by gpt2 tokenizers)");
  auto merges = file.get_string_array(kKeyMerges);
  if (!merges) return merges.error();
  merge_ranks_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    // "first second"; the first space after position 0 separates them. A
    // repeated pair keeps its first (lowest) rank.
    const std::string& m = (*merges)[i];
    const size_t space = m.find(' ', 1);
    std::string key = space == std::string::npos ? " " : m;
    merge_ranks_.emplace(std::move(key), static_cast<int32_t>(i));
  }
  return Status::ok();
}

int BpeTokenizer::merge_rank(std::string_view left, std::string_view right, std::string& key) const {
  key.assign(left);
  key += ' ';
  key.append(right);
  auto it = merge_ranks_.find(key);
  return it == merge_ranks_.end() ? -1 : it->second;
}

std::vector<TokenId> BpeTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<TokenId> out;
  if (add_special && add_bos_) out.push_back(bos_);
  for (const Fragment& f : partition(text, parse_special)) {
    if (f.token >= 0) out.push_back(f.token);
    else encode_text(text.substr(f.begin, f.end - f.begin), out);
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<TokenId>& out) const {
  // Like llama.cpp, invalid UTF-8 is read as U+FFFD before pre-tokenizing.
  const std::string clean = utf8_sanitize(text);
  std::string word;
  for (const auto& [begin, end] : pre_tokenizer_.split(clean)) {
    word.clear();
    for (size_t i = begin; i < end; ++i) utf8_append(word, byte_to_unicode(static_cast<uint8_t>(clean[i])));
    encode_word(word, out);
  }
}

struct Symbol {
  int prev, next;
  size_t begin, size;  // size 0: merged into the symbol on its left
};

struct Bigram {
  int left, right;
  int rank;
  std::string text;
};

// Lowest rank first; on ties the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

void BpeTokenizer::encode_word(const std::string& word, std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (TokenId id = find_token(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<Symbol> symbols;
  for (size_t offs = 0; offs < word.size();) {
    const size_t len = std::min(utf8_seq_len(static_cast<uint8_t>(word[offs])), word.size() - offs);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, offs + len == word.size() ? -1 : index + 1, offs, len});
    offs += len;
  }
  const auto text_of = [&](const Symbol& s) { return std::string_view(word.data() + s.begin, s.size); };

  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
  std::string key;
  const auto add_bigram = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    std::string_view l = text_of(symbols[static_cast<size_t>(left)]);
    std::string_view r = text_of(symbols[static_cast<size_t>(right)]);
    const int rank = merge_rank(l, r, key);
    if (rank < 0) return;
    std::string merged(l);
    merged.append(r);
    queue.push({left, right, rank, std::move(merged)});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_bigram(i - 1, i);

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(bigram.left)];
    Symbol& right = symbols[static_cast<size_t>(bigram.right)];
    if (left.size == 0 || right.size == 0) continue;
    // Stale entry: a side changed since the pair was queued.
    if (left.size + right.size != bigram.text.size() ||
        word.compare(left.begin, left.size, bigram.text, 0, left.size) != 0 ||
        word.compare(right.begin, right.size, bigram.text, left.size, right.size) != 0)
      continue;
    left.size += right.size;
    right.size = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = bigram.left;
    add_bigram(left.prev, bigram.left);
    add_bigram(bigram.left, left.next);
  }

  for (int i = 0; i != -1; i = symbols[static_cast<size_t>(i)].next) {
    std::string_view piece = text_of(symbols[static_cast<size_t>(i)]);
    if (TokenId id = find_token(piece); id >= 0) {
      out.push_back(id);
      continue;
    }
    // Not a token: llama.cpp looks up each byte of the piece on its own and
    // drops the bytes that are not tokens either.
    for (char c : piece) {
      if (TokenId id = find_token(std::string_view(&c, 1)); id >= 0) out.push_back(id);
    }
  }
}

std::string BpeTokenizer::decode_normal(const std::string& token_text) const {
  std::string out;
  out.reserve(token_text.size());
  for (size_t pos = 0; pos < token_text.size();) {
    const size_t start = pos;
    const int byte = unicode_to_byte(utf8_decode(token_text, pos));
    if (byte >= 0) {
      out += static_cast<char>(byte);
      continue;
    }
    // Not a byte-level character: llama.cpp writes this marker.
    static constexpr char kHex[] = "0123456789abcdef";
    out += "[UNK_BYTE_0x";
    for (size_t i = start; i < pos; ++i) {
      const auto b = static_cast<uint8_t>(token_text[i]);
      out += kHex[b >> 4];
      out += kHex[b & 15];
    }
    out += token_text;
    out += ']';
  }
  return out;
}

}  // namespace

Expected<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(const gguf::File& file) {
  auto pre_name = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : Expected<std::string>("");
  if (!pre_name) return pre_name.error();
  const PreTokenizerSpec* spec = find_pre_tokenizer(*pre_name);
  if (spec == nullptr)
    return make_error(file.path(), ": unsupported pre-tokenizer '", *pre_name, "' (tokenizer.ggml.pre)");
  auto pre = PreTokenizer::create(*spec);
  if (!pre) return make_error(file.path(), ": ", pre.error().message);

  auto tok = std::make_unique<BpeTokenizer>(std::move(*pre), spec->ignore_merges);
  ENGRAM_RETURN_IF_ERROR(tok->read_merges(file));
  VocabTokenizer::SpecialDefaults defaults;
  defaults.bos = spec->no_bos_token ? -1 : 11;  // llama.cpp's gpt2 defaults
  defaults.eos = 11;
  defaults.add_bos = spec->add_bos;
  ENGRAM_RETURN_IF_ERROR(tok->load_vocab(file, defaults));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace engram::tok
