#include <gtest/gtest.h>

#include "memory/memory.h"

namespace engram {
namespace {

TEST(FitMemoryOptions, DefaultsStayWhenTheTrainingContextIsLongEnough) {
  EngramMemoryOptions o;
  const EngramMemoryOptions fitted = fit_memory_options(o, {}, 32768, 512);
  EXPECT_EQ(fitted.sinks, o.sinks);
  EXPECT_EQ(fitted.window, o.window);
  EXPECT_EQ(fitted.block_size, o.block_size);
  EXPECT_EQ(fitted.top_k, o.top_k);
  EXPECT_EQ(fitted.shared_blocks, o.shared_blocks);
  EXPECT_EQ(fitted.single_query_gap, 0);
  EXPECT_EQ(fit_memory_options(o, {}, 0, 512).window, o.window);  // unknown training context
}

TEST(FitMemoryOptions, ShortTrainingContextGetsASpanThatFits) {
  for (int64_t n_train : {512, 1024, 2048, 4096, 8192}) {
    for (int n_batch : {1, 128, 256, 512}) {
      const EngramMemoryOptions f = fit_memory_options({}, {}, n_train, n_batch);
      SCOPED_TRACE(testing::Message() << "n_ctx_train " << n_train << " n_batch " << n_batch);
      const int chunk = fit_prompt_batch(n_batch, n_train);
      EXPECT_LE(chunk, n_batch);
      EXPECT_LE(attended_span(f, chunk), n_train);
      EXPECT_GE(f.top_k, 2);
      EXPECT_GE(f.window, f.block_size);
      EXPECT_GT(f.sinks, 0);
    }
  }
  // 2048 with the usual prefill chunk (engram's model): 64-position blocks,
  // 9 + 3 shared retrieved, the window a third of the room.
  const EngramMemoryOptions f = fit_memory_options({}, {}, 2048, 512);
  EXPECT_EQ(f.block_size, 64);
  EXPECT_EQ(f.sinks, 64);
  EXPECT_EQ(f.top_k, 9);
  EXPECT_EQ(f.shared_blocks, 3);
  EXPECT_EQ(f.window, (2048 - 512) / 3);
  EXPECT_EQ(f.single_query_gap, 511);
  EXPECT_LE(attended_span(f, 512), 2048);
  EXPECT_EQ(attended_span(f, 1), attended_span(f, 512));  // a single query behind the gap reaches as far
  // 512 (stories260K): the window is what the blocks leave, under a third.
  const EngramMemoryOptions s = fit_memory_options({}, {}, 512, 512);
  EXPECT_EQ(s.block_size, 32);
  EXPECT_EQ(s.top_k, 4);
  EXPECT_EQ(s.shared_blocks, 1);
  EXPECT_EQ(s.window, (512 - 128) / 3);
  EXPECT_EQ(s.single_query_gap, 127);
  EXPECT_EQ(fit_prompt_batch(512, 2048), 512);
  EXPECT_EQ(fit_prompt_batch(512, 512), 128);
}

TEST(FitMemoryOptions, ExplicitFieldsAreKept) {
  EngramMemoryOptions o;
  o.top_k = 4;
  o.block_size = 32;
  ExplicitMemoryOptions set;
  o.shared_blocks = 0;
  o.single_query_gap = 0;
  set.top_k = set.block_size = set.shared_blocks = set.single_query_gap = true;
  const EngramMemoryOptions f = fit_memory_options(o, set, 2048, 256);
  EXPECT_EQ(f.top_k, 4);
  EXPECT_EQ(f.shared_blocks, 0);
  EXPECT_EQ(f.single_query_gap, 0);
  EXPECT_EQ(f.block_size, 32);
  EXPECT_LE(attended_span(f, 256), 2048);
}

}  // namespace
}  // namespace engram
