#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace engram {

double token_nll(std::span<const float> logits, TokenId target) {
  float mx = -std::numeric_limits<float>::infinity();
  for (float x : logits) mx = std::max(mx, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - mx);
  return std::log(sum) - (static_cast<double>(logits[static_cast<size_t>(target)]) - mx);
}

double PerplexityRange::perplexity() const {
  return count > 0 ? std::exp(mean_nll()) : std::numeric_limits<double>::quiet_NaN();
}

double PerplexityResult::tokens_per_second() const {
  const int64_t n = all.count + 1;
  return seconds > 0 ? static_cast<double>(n) / seconds : 0;
}

Expected<PerplexityResult> perplexity(Session& session, std::span<const TokenId> tokens,
                                      const PerplexityParams& params) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2) return make_error("perplexity needs at least 2 tokens, the text has ", std::to_string(n));
  if (session.n_past() + n > session.n_ctx()) {
    return make_error("the text has ", std::to_string(n), " tokens but the context holds ",
                      std::to_string(session.n_ctx() - session.n_past()));
  }
  const int n_vocab = session.n_vocab();
  for (TokenId t : tokens) {
    if (t < 0 || t >= n_vocab) return make_error("token id ", std::to_string(t), " is outside the vocabulary");
  }

  PerplexityResult r;
  int64_t begin = 1;
  for (int64_t b : params.boundaries) {
    if (b <= begin) {
      if (b <= 1 && r.ranges.empty()) continue;  // a first boundary of 0 or 1 adds nothing
      return make_error("perplexity range boundaries must be increasing (", std::to_string(b), " after ",
                        std::to_string(begin), ")");
    }
    if (begin >= n) break;
    r.ranges.push_back({begin, std::min(b, n)});
    begin = b;
  }
  if (begin < n) r.ranges.push_back({begin, n});
  r.all = {1, n};

  const int64_t batch = params.n_batch > 0 ? params.n_batch : 512;
  std::vector<float> logits;  // [chunk, n_vocab], reused
  size_t range = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t p0 = 0; p0 < n; p0 += batch) {
    const int64_t len = std::min(batch, n - p0);
    logits.clear();
    ENGRAM_RETURN_IF_ERROR(
        session.decode(tokens.subspan(static_cast<size_t>(p0), static_cast<size_t>(len)), static_cast<int>(len),
                       &logits));
    // Row i predicts the token at position p0 + i + 1.
    for (int64_t i = 0; i < len && p0 + i + 1 < n; ++i) {
      const int64_t pos = p0 + i + 1;
      std::span<const float> row(logits.data() + static_cast<size_t>(i) * static_cast<size_t>(n_vocab),
                                 static_cast<size_t>(n_vocab));
      const double nll = token_nll(row, tokens[static_cast<size_t>(pos)]);
      while (range < r.ranges.size() && pos >= r.ranges[range].end) ++range;
      if (range < r.ranges.size()) {
        r.ranges[range].nll_sum += nll;
        ++r.ranges[range].count;
      }
      r.all.nll_sum += nll;
      ++r.all.count;
    }
    if (params.progress) params.progress(p0 + len, n);
  }
  r.seconds = seconds_since(t0);
  r.memory_bytes = session.memory().bytes_used();
  return r;
}

}  // namespace engram
