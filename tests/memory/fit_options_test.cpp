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
  // 2048 with the usual prefill chunk: 64-position blocks, window > retrieved.
  const EngramMemoryOptions f = fit_memory_options({}, {}, 2048, 512);
  EXPECT_EQ(f.block_size, 64);
  EXPECT_EQ(f.sinks, 64);
  EXPECT_EQ(f.top_k, 9);
  EXPECT_EQ(f.window, 2048 - 512 - 64 - 9 * 64 - 63);
  EXPECT_EQ(fit_prompt_batch(512, 2048), 512);
  EXPECT_EQ(fit_prompt_batch(512, 512), 128);
}

TEST(FitMemoryOptions, ExplicitFieldsAreKept) {
  EngramMemoryOptions o;
  o.top_k = 4;
  o.block_size = 32;
  ExplicitMemoryOptions set;
  set.top_k = set.block_size = true;
  const EngramMemoryOptions f = fit_memory_options(o, set, 2048, 256);
  EXPECT_EQ(f.top_k, 4);
  EXPECT_EQ(f.block_size, 32);
  EXPECT_LE(attended_span(f, 256), 2048);
}

}  // namespace
}  // namespace engram
