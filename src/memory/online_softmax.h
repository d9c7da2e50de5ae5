// The online-softmax step that dense and Engram memory share: attention over
// keys taken a chunk at a time, with one running (max, sum, output) per
// (query, head), so no query ever holds all of its scores at once.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include "kernels/kernels.h"

namespace engram {

// Folds one chunk into a running softmax: scores[0, n) are the chunk's
// scaled scores (-infinity: not visible) and are overwritten with
// exp(score - max); value row r is v + r * v_stride. acc[0, v_dim) holds
// sum exp(score - max) * value (unnormalised), run_sum the sum of the
// weights; both are rescaled when the chunk raises run_max.
inline void fold_chunk(float* scores, size_t n, const float* v, size_t v_stride, size_t v_dim, float& run_max,
                       float& run_sum, float* acc) {
  const float chunk_max = kernels::max_value(scores, n);
  if (chunk_max == -std::numeric_limits<float>::infinity()) return;  // nothing visible in this chunk
  if (chunk_max > run_max) {
    const float rescale = std::exp(run_max - chunk_max);  // 0 while run_max is -infinity
    if (run_sum > 0.f) kernels::scale(acc, rescale, v_dim);
    run_sum *= rescale;
    run_max = chunk_max;
  }
  run_sum += kernels::exp_shift_sum(scores, n, run_max);
  kernels::add_weighted_rows(scores, v, v_stride, n, v_dim, acc);
}

}  // namespace engram
