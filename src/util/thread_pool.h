// A fixed pool of worker threads for data-parallel loops.
//
// The pool is passed explicitly to every kernel that may split its work
// (gemma.cpp style); nothing global. parallel_for splits [0, n) into
// contiguous ranges, one per thread, and blocks until all are done.
//
// Generation issues ~100+ parallel_for calls per token, each a few tens of
// microseconds of work, so the hand-off is cheap: workers wait for a new job
// by spinning briefly on an atomic generation counter (the next call usually
// comes within microseconds) and only then sleep on a condition variable; the
// caller likewise spins before sleeping while it waits for the workers. A call
// allocates nothing (the job is a non-owning RangeFn). One caller at a time:
// parallel_for must not be called concurrently on the same pool, nor from
// inside one of its own jobs.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace engram {

// A non-owning reference to a callable fn(begin, end, thread_index): binds to
// a lambda or std::function without copying it or allocating. It must not
// outlive the callable (parallel_for's argument lives until the call returns).
class RangeFn {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeFn>>>
  RangeFn(const F& fn)  // NOLINT: implicit, so call sites pass lambdas as before
      : object_(&fn), call_([](const void* f, size_t begin, size_t end, int thread) {
          (*static_cast<const F*>(f))(begin, end, thread);
        }) {}

  void operator()(size_t begin, size_t end, int thread) const { call_(object_, begin, end, thread); }

 private:
  const void* object_;
  void (*call_)(const void*, size_t, size_t, int);
};

class ThreadPool {
 public:
  // n_threads <= 0 means all hardware threads.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end, thread_index) on disjoint ranges covering [0, n).
  // Ranges are multiples of `grain` except the last. The calling thread takes
  // part, so a pool of size 1 runs inline.
  void parallel_for(size_t n, RangeFn fn, size_t grain = 1);

  static int default_threads();

 private:
  void worker_loop(int index);
  // Blocks until generation_ differs from `seen` (or stop_): spins first.
  uint64_t wait_for_job(uint64_t seen);
  // Blocks until every worker has finished the current job: spins first.
  void wait_for_workers();

  int n_threads_;
  std::vector<std::thread> workers_;

  // The current job: written by the caller before generation_ is bumped,
  // read by workers after they observe the new generation. Not changed again
  // until pending_ reaches 0, i.e. until every worker has read it.
  const RangeFn* job_ = nullptr;
  size_t job_n_ = 0;
  size_t job_chunk_ = 0;

  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};  // workers not yet done with the job
  alignas(64) std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};

  std::mutex mutex_;
  std::condition_variable wake_;  // workers sleep here (generation_ / stop_)
  std::condition_variable done_;  // the caller sleeps here (pending_ == 0)
};

}  // namespace engram
