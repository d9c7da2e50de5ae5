// The inference engine behind `engram serve`: one model, one attention memory
// with one sequence per slot, and a scheduler thread that advances every
// active request in one batched forward pass per step (continuous batching):
// prompt chunks of new requests and the next token of generating ones share
// the step. Requests that share a prompt prefix reuse its K/V (context
// caching, in RAM and optionally on disk).
//
// Threading: submit() and cancel() may be called from any thread (HTTP
// handlers); every callback of a request runs on the scheduler thread, so a
// callback must not block for long.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "memory/memory.h"
#include "model/model.h"
#include "runtime/sampler.h"
#include "util/status.h"

namespace engram::server {

using RequestId = uint64_t;

// Batch work (the batch API) runs only when interactive requests leave a
// slot free, and yields its place in the queue to interactive work.
enum class Priority { INTERACTIVE, BATCH };

enum class FinishReason {
  STOP,       // end-of-generation token or a stop string
  LENGTH,     // max_tokens reached, or the context is full
  CANCELLED,  // cancel() or a callback returned false (client went away)
  ERROR,      // the forward pass failed (message in GenerationResult::error)
};
const char* finish_reason_name(FinishReason r);  // "stop" | "length" | "cancelled" | "error"

// One generated token and the text it completes (UTF-8 held back until a
// character is whole; stop strings held back until they can no longer match).
struct TokenEvent {
  TokenId id = 0;
  std::string text;  // may be empty while text is held back
};

struct GenerationResult {
  FinishReason finish = FinishReason::STOP;
  std::string error;             // when finish == ERROR
  std::string text;              // all generated text, stop string excluded
  std::vector<TokenId> tokens;   // all generated tokens
  int prompt_tokens = 0;         // tokens of the prompt
  int cached_tokens = 0;         // prompt tokens whose K/V came from the prefix cache
  int prompt_tokens_computed = 0;  // prompt tokens actually run (< prompt - cached when cancelled early)
  int completion_tokens = 0;     // tokens generated (what was generated before a cancel counts)
  double queue_seconds = 0;      // submit -> first scheduled
  double time_to_first_token = 0;  // submit -> first generated token
  double generate_seconds = 0;   // first token -> done
  // Text released only at the end, which no TokenEvent carried: what was
  // held back (a possible stop string's start, an unfinished UTF-8
  // character) when an end-of-generation token or a cancel ended the
  // request. `text` ends with it; a stream sends it last.
  std::string tail;
};

struct GenerationRequest {
  std::vector<TokenId> prompt;   // already tokenized (chat template applied)
  SamplerParams sampler;
  int max_tokens = -1;           // < 0: until a stop or a full context
  std::vector<std::string> stop; // stop strings; the text stops before them
  bool ignore_eos = false;
  Priority priority = Priority::INTERACTIVE;
  // Called for every generated token; return false to cancel (billing
  // counts what was done). Optional.
  std::function<bool(const TokenEvent&)> on_token;
  // Called exactly once, when the request ends for any reason.
  std::function<void(const GenerationResult&)> on_done;
  // Called during long prompt processing (after each chunk), so a streaming
  // handler can send keep-alives and notice a closed connection: return
  // false to cancel. Optional.
  std::function<bool(int done, int total)> on_prompt_progress;
};

// Why submit() refused a request.
enum class Rejection {
  NONE,
  QUEUE_FULL,       // 429/503 with Retry-After
  PROMPT_TOO_LONG,  // 400: names the prompt length and the context
  INVALID,          // 400: empty prompt, max_tokens == 0, ...
  SHUTTING_DOWN,    // 503
};

struct Submitted {
  RequestId id = 0;
  Rejection rejection = Rejection::NONE;
  std::string message;          // for a rejection: what is wrong, with the numbers
  int retry_after_seconds = 0;  // for QUEUE_FULL
  bool ok() const { return rejection == Rejection::NONE; }
};

struct EngineOptions {
  int parallel = 4;              // slots: sequences decoded together
  int64_t n_ctx = 0;             // context per slot; <= 0: resolve_context(model)
  int max_queue = 64;            // waiting requests before submit() answers QUEUE_FULL
  int n_batch = 512;             // most tokens in one forward step (prompt chunks share it)
  int threads = 0;               // thread pool size; <= 0: ThreadPool::default_threads()
  std::string memory_kind = "dense";   // dense | window | engram
  EngramMemoryOptions memory_options;
  // Disk prefix cache: K/V of finished prompts saved here and found again by
  // the hash of their tokens. "": RAM only (the slots' own K/V).
  std::string cache_dir;
  int64_t cache_dir_max_bytes = 1LL << 30;
  // Prompt prefixes are saved to and found in cache_dir at multiples of this
  // many tokens (a prompt shorter than one block is not saved).
  int cache_block = 256;
};

// A fixed-bucket histogram (Prometheus: cumulative buckets, sum, count).
struct Histogram {
  std::vector<double> bounds;       // upper bounds of the buckets, ascending (+Inf implied)
  std::vector<uint64_t> counts;     // per bucket, not cumulative; size bounds.size() + 1
  double sum = 0;
  uint64_t count = 0;
  void observe(double v);
  static Histogram seconds();       // 1 ms .. 60 s buckets
};

// Counters for /metrics (vLLM names are chosen by the HTTP layer).
struct EngineMetrics {
  int requests_running = 0;
  int requests_waiting = 0;
  uint64_t requests_finished = 0;
  uint64_t prompt_tokens_total = 0;       // prompt tokens computed
  uint64_t generation_tokens_total = 0;
  uint64_t prefix_cache_queries = 0;      // prompt tokens looked up
  uint64_t prefix_cache_hits = 0;         // of them, found in the cache
  uint64_t prefix_cache_disk_hits = 0;    // of the hits, loaded from cache_dir
  // Scheduler activity: forward passes, those that ran more than one
  // sequence (continuous batching at work), and the most sequences in one.
  uint64_t batch_steps = 0;
  uint64_t multi_sequence_steps = 0;
  int max_sequences_per_step = 0;
  Histogram time_to_first_token = Histogram::seconds();
  Histogram inter_token_latency = Histogram::seconds();
  Histogram queue_time = Histogram::seconds();
  Histogram request_latency = Histogram::seconds();
};

class Engine {
 public:
  // Builds the memory (options.memory_kind, options.parallel sequences) and
  // starts the scheduler thread. The model must outlive the engine.
  static Expected<std::unique_ptr<Engine>> create(Model& model, const EngineOptions& options);
  virtual ~Engine() = default;

  virtual Submitted submit(GenerationRequest request) = 0;
  // Cancels a queued or running request (no-op when it has ended). Its
  // on_done runs with CANCELLED and the counts of the work done.
  virtual void cancel(RequestId id) = 0;
  virtual EngineMetrics metrics() const = 0;
  virtual int64_t n_ctx() const = 0;         // per slot
  virtual const Model& model() const = 0;
  // Stops taking requests, cancels what is queued or running, joins the thread.
  virtual void shutdown() = 0;
};

}  // namespace engram::server
