// Fitting the window/engram layout to a model's training context.
#include <algorithm>

#include "memory/memory.h"

namespace engram {

int64_t attended_span(const EngramMemoryOptions& o, int n_batch) {
  // The tail keeps window positions before the chunk's first query, plus up
  // to a block that is not yet whole (eviction works in whole blocks).
  return static_cast<int64_t>(o.sinks) + (static_cast<int64_t>(o.top_k) + o.shared_blocks) * o.block_size + o.window +
         (o.block_size - 1) + std::max({n_batch, o.single_query_gap + 1, 1});
}

int fit_prompt_batch(int n_batch, int64_t n_ctx_train) {
  if (n_ctx_train <= 0) return n_batch;
  return static_cast<int>(std::clamp<int64_t>(n_ctx_train / 4, 1, std::max(n_batch, 1)));
}

EngramMemoryOptions fit_memory_options(EngramMemoryOptions o, const ExplicitMemoryOptions& set, int64_t n_ctx_train,
                                       int n_batch) {
  if (n_ctx_train <= 0 || attended_span(o, n_batch) <= n_ctx_train) return o;
  const int64_t chunk = fit_prompt_batch(n_batch, n_ctx_train);
  // What the sinks, the retrieved blocks and the window share.
  const int64_t avail = n_ctx_train - chunk;
  if (!set.block_size) {  // 64 or 128, smaller when the room is small (at least 8 blocks of room)
    int b = n_ctx_train <= 4096 ? 64 : 128;
    while (b > 8 && b * 8 > avail) b /= 2;
    o.block_size = b;
  }
  const int64_t B = o.block_size;
  if (!set.sinks) o.sinks = static_cast<int>(std::clamp<int64_t>(avail / 16, 4, 64));
  // About 3/8 of the room for retrieved blocks and the rest for the window:
  // the window holds the local context that language modelling needs most.
  if (!set.top_k) o.top_k = static_cast<int>(std::max<int64_t>(2, avail * 3 / 8 / B));
  if (!set.shared_blocks) o.shared_blocks = o.top_k / 3;
  // The window takes the rest, up to a third of the room: a longer one
  // dilutes a retrieval head's attention over more local keys (measured on
  // engram's model: window 512 instead of 833 recalled more facts at 64K
  // and 1M; stories260K's perplexity at 64K moved by 1.3% at most from
  // window 201 down to 96; docs/benchmarks.md).
  if (!set.window) {
    const int64_t rest = avail - o.sinks - (static_cast<int64_t>(o.top_k) + o.shared_blocks) * B - (B - 1);
    o.window = static_cast<int>(std::max<int64_t>(B, std::min(rest, avail / 3)));
  }
  // Single queries: blocks and sinks as far back as for a chunk's last query.
  if (!set.single_query_gap) o.single_query_gap = static_cast<int>(chunk - 1);
  return o;
}

}  // namespace engram
