// Text generation: a Session owns the attention memory of one sequence and
// runs tokens through the model; generate() feeds a prompt in batches and then
// samples token by token; TokenPrinter turns tokens into printable text.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "memory/memory.h"
#include "model/model.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"
#include "util/status.h"
#include "util/thread_pool.h"

namespace engram {

// Context length used when none is asked for: the model's training context,
// but no more than this (a 128K-context model would otherwise reserve GBs of KV).
inline constexpr int64_t kDefaultMaxContext = 4096;

// The context a session gets for a requested n_ctx (<= 0: the default above).
int64_t resolve_context(const ModelConfig& config, int64_t requested);

// Called after each forward batch of a long decode: tokens done and total.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// One sequence in an attention memory (dense unless given), and the position reached in it.
class Session {
 public:
  // n_ctx <= 0: resolve_context's default.
  Session(Model& model, ThreadPool& pool, int64_t n_ctx = 0);
  // With a memory the caller built for model.memory_layout(n_ctx), e.g. by
  // make_memory("engram", ...) (n_ctx must be resolve_context's result).
  Session(Model& model, ThreadPool& pool, int64_t n_ctx, std::unique_ptr<Memory> memory);

  Model& model() { return model_; }
  const Tokenizer& tokenizer() const { return model_.tokenizer(); }
  Memory& memory() { return *memory_; }
  ThreadPool& pool() { return pool_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_past() const { return n_past_; }
  int n_vocab() const { return model_.config().n_vocab; }

  // Runs `tokens` at positions n_past .. n_past+n-1, n_batch tokens per
  // forward call. Afterwards logits() holds the last token's logits; when
  // `all_logits` is given, the logits of every token are appended to it
  // (rows of n_vocab). Error when the context cannot hold the tokens.
  // `progress`, if set, is called after every batch (chunked prefill).
  Status decode(std::span<const TokenId> tokens, int n_batch, std::vector<float>* all_logits = nullptr,
                const ProgressFn& progress = {});

  // Logits [n_vocab] of the last token decoded.
  std::span<const float> logits() const { return last_logits_; }

  // Forgets everything (the memory and the position).
  void reset();
  // Forgets the positions from n_past on (n_past <= n_past()): asking
  // several questions about one long prefilled document. logits() is stale
  // until the next decode.
  void rewind(int64_t n_past);

 private:
  Model& model_;
  ThreadPool& pool_;
  int64_t n_ctx_;
  int64_t n_past_ = 0;
  std::unique_ptr<Memory> memory_;
  std::vector<float> last_logits_;  // [n_vocab]
};

struct GenerateParams {
  int n_predict = -1;         // tokens to generate; < 0: until a stop or a full context
  int n_batch = 512;          // prompt tokens per forward call
  bool ignore_eos = false;    // do not stop at end-of-generation tokens
  bool stop_at_bos = true;    // llama2.c's rule: stop before emitting BOS
  SamplerParams sampler;
  ProgressFn on_prompt_progress;  // called after every prompt batch (progress bars)
};

enum class StopReason { N_PREDICT, END_OF_GENERATION, BOS, CONTEXT_FULL, CALLER };
const char* stop_reason_name(StopReason r);

struct GenerateStats {
  int n_prompt = 0;
  double prompt_seconds = 0;
  int n_generated = 0;
  double generate_seconds = 0;
  StopReason stop = StopReason::N_PREDICT;

  double prompt_tokens_per_second() const { return prompt_seconds > 0 ? n_prompt / prompt_seconds : 0; }
  double generate_tokens_per_second() const { return generate_seconds > 0 ? n_generated / generate_seconds : 0; }
  // "prompt: 5 tokens, 1234.5 tok/s | generated: 252 tokens, 987.6 tok/s"
  std::string summary() const;
};

// Called with every generated token; return false to stop.
using TokenCallback = std::function<bool(TokenId)>;

// Decodes `prompt` into the session (which should be empty), then samples up
// to n_predict tokens, decoding each one before sampling the next. Stops
// before emitting an end-of-generation token (unless ignore_eos) or BOS (if
// stop_at_bos); the token that stops generation is not passed to on_token.
// Error "prompt has N tokens but the context holds M" for a prompt too long.
Expected<GenerateStats> generate(Session& session, std::span<const TokenId> prompt, const GenerateParams& params,
                                 const TokenCallback& on_token);

// Text of a token stream as llama2.c's run.c prints it: control tokens print
// nothing, the piece after BOS loses its leading space, a lone non-printable
// ASCII byte (other than whitespace) is dropped. Bytes >= 0x80 are kept, and
// a multi-byte UTF-8 character is held back until complete (run.c drops such
// bytes instead; for ASCII output the two agree byte for byte).
class TokenPrinter {
 public:
  explicit TokenPrinter(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // Text to print for the next token of the stream.
  std::string push(TokenId id);
  // Bytes held back at the end of the stream.
  std::string flush() { return utf8_.flush(); }

 private:
  const Tokenizer& tokenizer_;
  Utf8StreamDecoder utf8_;
  TokenId prev_ = -1;
};

// Seconds since `start`, for throughput figures.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace engram
