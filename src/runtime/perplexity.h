// Perplexity over a long text, by ranges of positions.
//
// The text is teacher-forced through a Session in chunks of n_batch tokens;
// each chunk's logits [n_batch, n_vocab] are turned into negative log
// likelihoods at once and dropped, so a 64K-token run never holds more than
// one chunk of logits. The token at position p (p >= 1) is scored from the
// logits at position p-1 and counted in the range holding p.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/generate.h"
#include "util/status.h"

namespace engram {

// -log softmax(logits)[target], computed stably (max subtracted).
double token_nll(std::span<const float> logits, TokenId target);

struct PerplexityRange {
  int64_t begin = 0, end = 0;  // positions [begin, end) of the scored tokens
  double nll_sum = 0;
  int64_t count = 0;           // tokens scored in the range
  double mean_nll() const { return count > 0 ? nll_sum / static_cast<double>(count) : 0; }
  double perplexity() const;   // exp(mean_nll); NaN when nothing was scored
};

struct PerplexityResult {
  std::vector<PerplexityRange> ranges;
  PerplexityRange all;         // every scored token
  double seconds = 0;          // wall time of the forward passes
  uint64_t memory_bytes = 0;   // the session memory's bytes_used() at the end
  double tokens_per_second() const;
};

struct PerplexityParams {
  int n_batch = 512;
  // Range boundaries: {512, 4096} gives ranges [1, 512), [512, 4096), and
  // [4096, n) when the text is longer. Must be increasing.
  std::vector<int64_t> boundaries;
  ProgressFn progress;         // tokens done / total, after every chunk
};

// Scores `tokens` (BOS included if the model wants one) from the session's
// current state; the session should be empty. Error when the context cannot
// hold the text or the boundaries are not increasing.
Expected<PerplexityResult> perplexity(Session& session, std::span<const TokenId> tokens,
                                      const PerplexityParams& params);

}  // namespace engram
