#include "util/thread_pool.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace engram {
namespace {

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (size_t n : {1u, 2u, 7u, 64u, 1000u}) {
      std::vector<std::atomic<int>> hits(n);
      pool.parallel_for(n, [&](size_t b, size_t e, int) {
        for (size_t i = b; i < e; ++i) hits[i]++;
      });
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << "threads=" << threads << " n=" << n;
    }
  }
}

TEST(ThreadPool, RangesRespectGrain) {
  ThreadPool pool(4);
  std::atomic<int> bad{0};
  pool.parallel_for(100, [&](size_t b, size_t e, int) {
    if (b % 16 != 0) bad++;
  }, 16);
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPool, ReusableManyTimes) {
  ThreadPool pool(3);
  std::atomic<long> sum{0};
  for (int r = 0; r < 200; ++r)
    pool.parallel_for(10, [&](size_t b, size_t e, int) {
      for (size_t i = b; i < e; ++i) sum += static_cast<long>(i);
    });
  EXPECT_EQ(sum.load(), 200L * 45);
}

// Calls further apart than the workers spin (they fall asleep in between)
// and back-to-back calls (they catch the next job while spinning) must both
// run every range exactly once, with each thread index used by one range.
TEST(ThreadPool, WakesSleepingAndSpinningWorkers) {
  ThreadPool pool(3);
  for (int r = 0; r < 40; ++r) {
    if (r % 10 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::vector<std::atomic<int>> hits(30);
    std::atomic<int> thread_mask{0};
    pool.parallel_for(30, [&](size_t b, size_t e, int thread) {
      ASSERT_GE(thread, 0);
      ASSERT_LT(thread, 3);
      EXPECT_EQ(thread_mask.fetch_or(1 << thread) & (1 << thread), 0) << "thread index used twice";
      for (size_t i = b; i < e; ++i) hits[i]++;
    });
    for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), 1) << "round " << r << " i=" << i;
    EXPECT_EQ(thread_mask.load(), 7);
  }
}

// Fewer units than threads: only the first `units` indices run, and a job
// that runs long (past the caller's spin) is still waited for.
TEST(ThreadPool, WaitsForSlowWorkersAndUsesFewerThreadsForSmallJobs) {
  ThreadPool pool(4);
  std::atomic<int> calls{0}, done{0};
  pool.parallel_for(2, [&](size_t b, size_t e, int thread) {
    calls++;
    EXPECT_EQ(e - b, 1u);
    EXPECT_LT(thread, 2);
    if (thread == 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    done++;
  });
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(done.load(), 2);
}

// The job may be a std::function as well as a lambda (RangeFn binds both).
TEST(ThreadPool, AcceptsStdFunction) {
  ThreadPool pool(2);
  std::atomic<int> sum{0};
  const std::function<void(size_t, size_t, int)> fn = [&](size_t b, size_t e, int) {
    for (size_t i = b; i < e; ++i) sum += static_cast<int>(i);
  };
  pool.parallel_for(10, fn);
  EXPECT_EQ(sum.load(), 45);
}

}  // namespace
}  // namespace engram
