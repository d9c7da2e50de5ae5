#include "convert/llama2c.h"

#include <bit>
#include <cstring>
#include <filesystem>

#include "util/mapped_file.h"

namespace engram::convert {

static_assert(std::endian::native == std::endian::little, "llama2.c files are read as little-endian");

namespace {

constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);
// llama2.c's newer exports (export.py --version 1/2) start with this magic ("ak42").
constexpr uint32_t kVersionedMagic = 0x616b3432;
// Sanity bounds that keep every size computation far from overflow.
constexpr int32_t kMaxDim = 1 << 16;
constexpr int32_t kMaxVocab = 1 << 22;
constexpr int32_t kMaxLayers = 1 << 12;
constexpr int32_t kMaxSeqLen = 1 << 24;

int32_t read_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::string str(uint64_t v) { return std::to_string(v); }

// A cursor over the float arrays of a checkpoint, in file order.
class FloatReader {
 public:
  FloatReader(std::span<const uint8_t> bytes, size_t offset) : bytes_(bytes), offset_(offset) {}
  // The next n floats (the caller has checked the total size).
  std::span<const float> take(uint64_t n) {
    const float* p = reinterpret_cast<const float*>(bytes_.data() + offset_);
    offset_ += n * sizeof(float);
    return {p, static_cast<size_t>(n)};
  }
  void skip(uint64_t n) { offset_ += n * sizeof(float); }

 private:
  std::span<const uint8_t> bytes_;
  size_t offset_;
};

// As llama.cpp's converter names llama2.c tokens: fixed names for the three
// special ids, "<0xXX>" kept as byte tokens, spaces as U+2581.
TokenType classify_token(int32_t id, const std::string& text) {
  if (id == 0) return TokenType::UNKNOWN;
  if (id == 1 || id == 2) return TokenType::CONTROL;
  if (text.empty()) return TokenType::CONTROL;
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  if (text.size() == 6 && text.compare(0, 3, "<0x") == 0 && hex(text[3]) && hex(text[4]) && text[5] == '>') {
    return TokenType::BYTE;
  }
  return TokenType::NORMAL;
}

std::string escape_spaces(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == ' ') {
      out += "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

uint64_t Llama2cConfig::expected_bytes() const {
  const uint64_t d = static_cast<uint64_t>(dim), h = static_cast<uint64_t>(hidden_dim);
  const uint64_t L = static_cast<uint64_t>(n_layers), V = static_cast<uint64_t>(vocab_size);
  const uint64_t kv = static_cast<uint64_t>(kv_dim());
  uint64_t floats = V * d;                       // token_embedding_table
  floats += L * d;                               // rms_att_weight
  floats += L * (d * d + 2 * kv * d + d * d);    // wq, wk, wv, wo
  floats += L * d;                               // rms_ffn_weight
  floats += L * 3 * h * d;                       // w1, w2, w3
  floats += d;                                   // rms_final_weight
  floats += static_cast<uint64_t>(seq_len) * static_cast<uint64_t>(head_size());  // freq_cis real + imag
  if (!shared_classifier) floats += V * d;       // wcls
  return kHeaderBytes + floats * sizeof(float);
}

Expected<Llama2cConfig> parse_llama2c_config(std::span<const uint8_t> bytes, const std::string& name) {
  if (bytes.size() < kHeaderBytes) {
    return make_error(name, ": too small for a llama2.c checkpoint (", str(bytes.size()), " bytes, the header alone is ",
                      str(kHeaderBytes), ")");
  }
  uint32_t magic;
  std::memcpy(&magic, bytes.data(), sizeof magic);
  if (magic == kVersionedMagic) {
    return make_error(name, ": llama2.c versioned export (magic 'ak42', version ", std::to_string(read_i32(bytes.data() + 4)),
                      ") is not supported; export with llama2.c's legacy format (version 0, as run.c reads)");
  }
  Llama2cConfig c;
  const uint8_t* p = bytes.data();
  c.dim = read_i32(p + 0);
  c.hidden_dim = read_i32(p + 4);
  c.n_layers = read_i32(p + 8);
  c.n_heads = read_i32(p + 12);
  c.n_kv_heads = read_i32(p + 16);
  const int32_t vocab = read_i32(p + 20);
  c.seq_len = read_i32(p + 24);
  c.shared_classifier = vocab > 0;
  c.vocab_size = vocab > 0 ? vocab : (vocab == INT32_MIN ? 0 : -vocab);

  auto in_range = [&](const char* field, int32_t v, int32_t max) -> Status {
    if (v <= 0 || v > max) {
      return make_error(name, ": config field ", field, " = ", std::to_string(v), " is out of range (1..",
                        std::to_string(max), ")");
    }
    return Status::ok();
  };
  ENGRAM_RETURN_IF_ERROR(in_range("dim", c.dim, kMaxDim));
  ENGRAM_RETURN_IF_ERROR(in_range("hidden_dim", c.hidden_dim, kMaxDim * 4));
  ENGRAM_RETURN_IF_ERROR(in_range("n_layers", c.n_layers, kMaxLayers));
  ENGRAM_RETURN_IF_ERROR(in_range("n_heads", c.n_heads, c.dim));
  ENGRAM_RETURN_IF_ERROR(in_range("n_kv_heads", c.n_kv_heads, c.n_heads));
  ENGRAM_RETURN_IF_ERROR(in_range("vocab_size", c.vocab_size, kMaxVocab));
  ENGRAM_RETURN_IF_ERROR(in_range("seq_len", c.seq_len, kMaxSeqLen));
  if (c.dim % c.n_heads != 0 || c.head_size() % 2 != 0) {
    return make_error(name, ": dim ", std::to_string(c.dim), " is not n_heads ", std::to_string(c.n_heads),
                      " times an even head size");
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return make_error(name, ": n_heads ", std::to_string(c.n_heads), " is not a multiple of n_kv_heads ",
                      std::to_string(c.n_kv_heads));
  }
  const uint64_t want = c.expected_bytes();
  if (bytes.size() != want) {
    return make_error(name, ": ", bytes.size() < want ? "truncated" : "unexpected trailing data in",
                      " llama2.c checkpoint: expected ", str(want), " bytes for this config, got ", str(bytes.size()));
  }
  return c;
}

Expected<Llama2cVocab> parse_llama2c_tokenizer(std::span<const uint8_t> bytes, int32_t n_vocab,
                                               const std::string& name) {
  size_t pos = 0;
  auto need = [&](size_t n, const std::string& what) -> Status {
    if (bytes.size() - pos < n) {
      return make_error(name, ": truncated tokenizer: ", what, " needs ", str(n), " bytes at offset ", str(pos),
                        ", file has ", str(bytes.size()));
    }
    return Status::ok();
  };
  ENGRAM_RETURN_IF_ERROR(need(4, "max_token_length"));
  const int32_t max_len = read_i32(bytes.data());
  pos = 4;
  Llama2cVocab v;
  v.tokens.reserve(static_cast<size_t>(n_vocab));
  v.scores.reserve(static_cast<size_t>(n_vocab));
  v.types.reserve(static_cast<size_t>(n_vocab));
  for (int32_t id = 0; id < n_vocab; ++id) {
    const std::string which = "token " + std::to_string(id);
    ENGRAM_RETURN_IF_ERROR(need(8, which));
    float score;
    std::memcpy(&score, bytes.data() + pos, sizeof score);
    const int32_t len = read_i32(bytes.data() + pos + 4);
    pos += 8;
    if (len < 0 || (max_len > 0 && len > max_len)) {
      return make_error(name, ": ", which, " has length ", std::to_string(len), " (max_token_length ",
                        std::to_string(max_len), ")");
    }
    ENGRAM_RETURN_IF_ERROR(need(static_cast<size_t>(len), which));
    std::string text(reinterpret_cast<const char*>(bytes.data() + pos), static_cast<size_t>(len));
    pos += static_cast<size_t>(len);

    const TokenType type = classify_token(id, text);
    if (id == 0) text = "<unk>";
    if (id == 1) text = "<s>";
    if (id == 2) text = "</s>";
    v.tokens.push_back(escape_spaces(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  if (pos != bytes.size()) {
    return make_error(name, ": tokenizer has ", str(bytes.size() - pos), " bytes after token ",
                      std::to_string(n_vocab - 1), " (the checkpoint's vocab_size is ", std::to_string(n_vocab),
                      "): wrong tokenizer for this model?");
  }
  return v;
}

Expected<gguf::Writer> llama2c_to_gguf(const std::string& checkpoint_path, const std::string& tokenizer_path) {
  auto ckpt = MappedFile::open(checkpoint_path);
  if (!ckpt) return ckpt.error();
  auto cfg = parse_llama2c_config(ckpt->bytes(), checkpoint_path);
  if (!cfg) return cfg.error();
  const Llama2cConfig& c = *cfg;

  auto tok_file = MappedFile::open(tokenizer_path);
  if (!tok_file) return tok_file.error();
  auto vocab = parse_llama2c_tokenizer(tok_file->bytes(), c.vocab_size, tokenizer_path);
  if (!vocab) return vocab.error();

  gguf::Writer w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", std::filesystem::path(checkpoint_path).stem().string());
  w.set_u32("general.file_type", 0);  // all F32
  w.set_u32("llama.context_length", static_cast<uint32_t>(c.seq_len));
  w.set_u32("llama.embedding_length", static_cast<uint32_t>(c.dim));
  w.set_u32("llama.feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
  w.set_u32("llama.block_count", static_cast<uint32_t>(c.n_layers));
  w.set_u32("llama.attention.head_count", static_cast<uint32_t>(c.n_heads));
  w.set_u32("llama.attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  w.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_size()));
  w.set_f32("llama.rope.freq_base", 10000.0f);           // run.c's fixed base
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);  // run.c's rmsnorm epsilon
  w.set_u32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));

  std::vector<int32_t> types;
  types.reserve(vocab->types.size());
  for (TokenType t : vocab->types) types.push_back(static_cast<int32_t>(t));
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", std::move(vocab->tokens));
  w.set_f32_array("tokenizer.ggml.scores", vocab->scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_bool("tokenizer.ggml.add_eos_token", false);

  // Weights, in checkpoint order; shapes are ggml ne = {in, out}.
  const int64_t d = c.dim, h = c.hidden_dim, L = c.n_layers, V = c.vocab_size, kv = c.kv_dim();
  FloatReader r(ckpt->bytes(), kHeaderBytes);
  auto embd = r.take(static_cast<uint64_t>(V * d));
  auto rms_att = r.take(static_cast<uint64_t>(L * d));
  auto wq = r.take(static_cast<uint64_t>(L * d * d));
  auto wk = r.take(static_cast<uint64_t>(L * kv * d));
  auto wv = r.take(static_cast<uint64_t>(L * kv * d));
  auto wo = r.take(static_cast<uint64_t>(L * d * d));
  auto rms_ffn = r.take(static_cast<uint64_t>(L * d));
  auto w1 = r.take(static_cast<uint64_t>(L * h * d));
  auto w2 = r.take(static_cast<uint64_t>(L * d * h));
  auto w3 = r.take(static_cast<uint64_t>(L * h * d));
  auto rms_final = r.take(static_cast<uint64_t>(d));
  r.skip(static_cast<uint64_t>(c.seq_len) * static_cast<uint64_t>(c.head_size()));  // freq_cis_real, freq_cis_imag
  // llama.cpp's converter always writes output.weight (a copy of the
  // embeddings for a shared classifier), so every loader finds it.
  auto wcls = c.shared_classifier ? embd : r.take(static_cast<uint64_t>(V * d));

  auto layer = [](std::span<const float> all, int64_t l, int64_t n) {
    return all.subspan(static_cast<size_t>(l * n), static_cast<size_t>(n));
  };
  ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32("token_embd.weight", {d, V}, embd));
  ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32("output_norm.weight", {d}, rms_final));
  ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32("output.weight", {d, V}, wcls));
  for (int64_t l = 0; l < L; ++l) {
    const std::string blk = "blk." + std::to_string(l) + ".";
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "attn_q.weight", {d, d}, layer(wq, l, d * d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "attn_k.weight", {d, kv}, layer(wk, l, kv * d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "attn_v.weight", {d, kv}, layer(wv, l, kv * d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "attn_output.weight", {d, d}, layer(wo, l, d * d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "attn_norm.weight", {d}, layer(rms_att, l, d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "ffn_gate.weight", {d, h}, layer(w1, l, h * d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "ffn_down.weight", {h, d}, layer(w2, l, d * h)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "ffn_up.weight", {d, h}, layer(w3, l, h * d)));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor_f32(blk + "ffn_norm.weight", {d}, layer(rms_ffn, l, d)));
  }
  return w;
}

Expected<std::string> convert_llama2c(const std::string& checkpoint_path, const std::string& tokenizer_path,
                                      const std::string& out_path) {
  auto w = llama2c_to_gguf(checkpoint_path, tokenizer_path);
  if (!w) return w.error();
  ENGRAM_RETURN_IF_ERROR(w->write(out_path));
  std::error_code ec;
  const auto size = std::filesystem::file_size(out_path, ec);
  return "wrote " + out_path + " (" + (ec ? std::string("?") : std::to_string(size)) + " bytes, architecture llama, F32)";
}

}  // namespace engram::convert
