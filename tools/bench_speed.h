// Shared by `engram bench speed` and `engram bench roofline`: llama-bench's
// prompt-processing (pp) and generation (tg) tests on a loaded model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"
#include "util/status.h"
#include "util/thread_pool.h"

namespace engram::tools {

// One test (pp<P> or tg<N>) over its repetitions.
struct SpeedTest {
  std::string name;              // "pp512", "tg128"
  int n_prompt = 0, n_gen = 0;   // tokens in one repetition
  int n_depth = 0;               // tokens already in the memory when it starts
  std::vector<double> seconds;   // per repetition
  std::vector<double> tokens_per_s;
  double median_ts = 0, mean_ts = 0, stddev_ts = 0, min_ts = 0, max_ts = 0;
};

// pp: n_prompt random token ids in one decode (chunks of n_batch) from an
// empty memory. tg: n_gen tokens one at a time from an empty memory (BOS
// first, then random ids, as llama-bench). With n_depth > 0 (llama-bench's
// -d), each repetition first fills the memory with n_depth random tokens,
// untimed, and the test is named "pp512 @ d4096". The KV memory is dense,
// fp16 by default as llama-bench's (`kv`: F16 or F32). One warm-up run of each first, then `reps`
// timed runs. A test with 0 tokens is skipped.
Expected<std::vector<SpeedTest>> measure_speed(Model& model, ThreadPool& pool, int n_prompt, int n_gen, int reps,
                                               int n_batch, uint64_t seed, int n_depth = 0,
                                               BlockCompression kv = BlockCompression::F16);

// Weight bytes one generated token reads: every tensor, except one row of
// token_embd (when output.weight exists; tied embeddings are read whole) and
// n_used / n_expert of each routed-expert tensor (*_exps.weight).
uint64_t weight_bytes_per_token(const gguf::File& file);

// The middle value (the mean of the two middle ones for an even count); 0 when empty.
double median(std::vector<double> v);

// "q4_k_m", "f16", ... from general.file_type; else the type holding most bytes.
std::string model_type_name(const gguf::File& file);

}  // namespace engram::tools
