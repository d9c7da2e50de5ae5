// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition and
// presence penalties, with a seeded RNG (same seed, same output).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace engram {

struct SamplerParams {
  float temperature = 0.8f;  // <= 0: greedy (argmax, ties -> lowest id)
  int top_k = 40;            // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;   // 1: off (llama.cpp semantics: divide positive logits, multiply negative)
  float presence_penalty = 0.0f; // subtracted once from tokens seen in the window
  int penalty_last_n = 64;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerParams params);
  // Picks the next token from logits [n_vocab]; `history` is prompt + output so far.
  TokenId sample(std::span<const float> logits, std::span<const TokenId> history);
  const SamplerParams& params() const { return params_; }

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, TokenId>> candidates_;
};

// argmax, ties -> lowest id.
TokenId argmax(std::span<const float> logits);

}  // namespace engram
