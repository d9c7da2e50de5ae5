// Token sampling. The chain follows llama.cpp's order of operations:
//   penalties -> (greedy) | top-k -> temperature -> top-p -> min-p -> draw.
// Candidates are (logit, id) pairs; every filter keeps at least one of them.
#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace engram {

TokenId argmax(std::span<const float> logits) {
  TokenId best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<TokenId>(i);  // strict: ties keep the lowest id
  }
  return best;
}

Sampler::Sampler(SamplerParams params) : params_(params), rng_(params.seed) {}

namespace {

using Candidates = std::vector<std::pair<float, TokenId>>;

// Sorts by logit, highest first; equal logits by id so results never depend on sort stability.
void sort_descending(Candidates& c) {
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
}

// Repetition penalty (divide positive logits, multiply negative ones) and
// presence penalty, once per distinct token in the last `last_n` of history.
void apply_penalties(Candidates& c, std::span<const TokenId> history, const SamplerParams& p) {
  const bool repeat = p.repeat_penalty != 1.0f;
  const bool presence = p.presence_penalty != 0.0f;
  if ((!repeat && !presence) || p.penalty_last_n == 0 || history.empty()) return;
  const size_t n = p.penalty_last_n < 0 ? history.size()
                                        : std::min(history.size(), static_cast<size_t>(p.penalty_last_n));
  std::unordered_map<TokenId, int> seen;
  for (TokenId id : history.subspan(history.size() - n)) ++seen[id];
  // c is still indexed by id here (penalties run first).
  for (const auto& [id, count] : seen) {
    if (id < 0 || static_cast<size_t>(id) >= c.size()) continue;
    float& logit = c[static_cast<size_t>(id)].first;
    if (repeat) logit = logit > 0 ? logit / p.repeat_penalty : logit * p.repeat_penalty;
    if (presence) logit -= p.presence_penalty;
  }
}

// Softmax probabilities of sorted candidates (highest logit first).
std::vector<double> probabilities(const Candidates& c) {
  std::vector<double> probs(c.size());
  double sum = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    probs[i] = std::exp(static_cast<double>(c[i].first) - static_cast<double>(c[0].first));
    sum += probs[i];
  }
  for (double& q : probs) q /= sum;
  return probs;
}

// Keeps the smallest prefix whose probability mass reaches top_p.
void apply_top_p(Candidates& c, float top_p) {
  if (top_p >= 1.0f || c.size() <= 1) return;
  const std::vector<double> probs = probabilities(c);
  double cum = 0;
  size_t keep = c.size();
  for (size_t i = 0; i < c.size(); ++i) {
    cum += probs[i];
    if (cum >= top_p) {
      keep = i + 1;
      break;
    }
  }
  c.resize(std::max<size_t>(keep, 1));
}

// Keeps tokens whose probability is at least min_p times the top one's.
void apply_min_p(Candidates& c, float min_p) {
  if (min_p <= 0.0f || c.size() <= 1) return;
  // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
  const float threshold = c[0].first + std::log(min_p);
  size_t keep = 1;
  while (keep < c.size() && c[keep].first >= threshold) ++keep;
  c.resize(keep);
}

// A uniform double in [0, 1) from the top 53 bits, the same on every platform
// (std::uniform_real_distribution's algorithm is implementation-defined).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

TokenId Sampler::sample(std::span<const float> logits, std::span<const TokenId> history) {
  if (logits.empty()) return 0;
  candidates_.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) candidates_[i] = {logits[i], static_cast<TokenId>(i)};
  apply_penalties(candidates_, history, params_);

  if (params_.temperature <= 0.0f) {
    auto best = candidates_.begin();
    for (auto it = candidates_.begin(); it != candidates_.end(); ++it) {
      if (it->first > best->first) best = it;
    }
    return best->second;
  }

  sort_descending(candidates_);
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < candidates_.size()) {
    candidates_.resize(static_cast<size_t>(params_.top_k));
  }
  for (auto& cand : candidates_) cand.first /= params_.temperature;
  apply_top_p(candidates_, params_.top_p);
  apply_min_p(candidates_, params_.min_p);

  const std::vector<double> probs = probabilities(candidates_);
  const double r = uniform01(rng_);
  double cum = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    cum += probs[i];
    if (r < cum) return candidates_[i].second;
  }
  return candidates_.back().second;  // r fell in the rounding gap at the top
}

}  // namespace engram
