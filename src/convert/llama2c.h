// Conversion of a llama2.c checkpoint (karpathy/llama2.c, legacy "version 0"
// export that run.c reads) and its tokenizer.bin into a GGUF file of
// architecture "llama" that engram and llama.cpp load.
//
// Checkpoint layout (little-endian):
//   Config: 7 x int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len}
//           (vocab_size < 0: the classifier wcls is stored separately at the end)
//   float32 weights, PyTorch row-major [out][in]:
//     token_embedding_table [vocab][dim]
//     rms_att_weight [layer][dim]
//     wq [layer][dim][dim]   wk, wv [layer][kv_dim][dim]   wo [layer][dim][dim]
//     rms_ffn_weight [layer][dim]
//     w1 [layer][hidden][dim]   w2 [layer][dim][hidden]   w3 [layer][hidden][dim]
//     rms_final_weight [dim]
//     freq_cis_real, freq_cis_imag [seq_len][head_size/2]   (unused: RoPE is recomputed)
//     wcls [vocab][dim]   only when vocab_size < 0
// A [out][in] row-major matrix is exactly ggml's ne = {in, out}, so weights are
// copied unchanged. wq/wk need no permutation either: run.c rotates adjacent
// pairs (2i, 2i+1), which is llama's "normal" RoPE.
//
// tokenizer.bin: int32 max_token_length, then per token {float score, int32 len, len bytes}.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"
#include "util/status.h"

namespace engram::convert {

struct Llama2cConfig {
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t vocab_size = 0;        // always positive here
  bool shared_classifier = true; // false when the header's vocab_size was negative
  int32_t seq_len = 0;

  int32_t head_size() const { return dim / n_heads; }
  int32_t kv_dim() const { return head_size() * n_kv_heads; }
  // Bytes the checkpoint must have: header plus every float array.
  uint64_t expected_bytes() const;
};

// Reads and checks the 28-byte header. `name` is used in error messages.
Expected<Llama2cConfig> parse_llama2c_config(std::span<const uint8_t> bytes, const std::string& name);

struct Llama2cVocab {
  std::vector<std::string> tokens;  // GGUF form: spaces as U+2581, ids 0/1/2 as <unk>/<s>/</s>
  std::vector<float> scores;
  std::vector<TokenType> types;
};

// Reads exactly n_vocab tokens from tokenizer.bin bytes.
Expected<Llama2cVocab> parse_llama2c_tokenizer(std::span<const uint8_t> bytes, int32_t n_vocab,
                                               const std::string& name);

// Builds the GGUF (metadata and tensors) from the two files.
Expected<gguf::Writer> llama2c_to_gguf(const std::string& checkpoint_path, const std::string& tokenizer_path);

// Converts and writes OUT; returns a one-line summary.
Expected<std::string> convert_llama2c(const std::string& checkpoint_path, const std::string& tokenizer_path,
                                      const std::string& out_path);

}  // namespace engram::convert
