#include "util/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace engram {

namespace {

// How long a waiting thread spins before it sleeps. Parallel loops of one
// token follow each other within microseconds, so a short spin catches
// nearly every hand-off; between tokens (sampling, I/O) the threads sleep.
constexpr auto kSpin = std::chrono::microseconds(100);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or kSpin has passed; returns done(). After a few
// microseconds of pause instructions the spinner yields between checks: on a
// machine with more runnable threads than cores (a shared host) a pure spin
// would take the core from the very thread it is waiting for.
template <class Done>
bool spin_until(const Done& done) {
  for (int i = 0; i < 256; ++i) {
    if (done()) return true;
    cpu_relax();
  }
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 8; ++i) {
      if (done()) return true;
      std::this_thread::yield();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

}  // namespace

int ThreadPool::default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads <= 0 ? default_threads() : n_threads) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::parallel_for(size_t n, RangeFn fn, size_t grain) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  size_t units = (n + grain - 1) / grain;
  int used = static_cast<int>(std::min<size_t>(units, static_cast<size_t>(n_threads_)));
  if (used <= 1) {
    fn(0, n, 0);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = ((units + used - 1) / used) * grain;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  // seq_cst with the sleepers' increment in wait_for_job: either a sleeping
  // worker sees the new generation in its wait predicate, or we see it
  // counted here and notify under the mutex.
  generation_.fetch_add(1);
  if (sleeping_workers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  fn(0, std::min(job_chunk_, n), 0);
  wait_for_workers();
  job_ = nullptr;
}

void ThreadPool::wait_for_workers() {
  const auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (spin_until(done)) return;
  std::unique_lock<std::mutex> lock(mutex_);
  caller_sleeping_.store(true);
  done_.wait(lock, [this] { return pending_.load() == 0; });  // seq_cst: see worker_loop
  caller_sleeping_.store(false);
}

uint64_t ThreadPool::wait_for_job(uint64_t seen) {
  const auto changed = [&] { return generation_.load(std::memory_order_acquire) != seen; };
  if (!spin_until(changed)) {
    std::unique_lock<std::mutex> lock(mutex_);
    sleeping_workers_.fetch_add(1);
    wake_.wait(lock, [&] { return generation_.load() != seen; });  // seq_cst: see parallel_for
    sleeping_workers_.fetch_sub(1);
  }
  return generation_.load(std::memory_order_acquire);
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    seen = wait_for_job(seen);
    if (stop_.load()) return;
    const RangeFn* job = job_;
    const size_t n = job_n_, chunk = job_chunk_;
    const size_t begin = chunk * static_cast<size_t>(index);
    if (begin < n) (*job)(begin, std::min(begin + chunk, n), index);
    // seq_cst with caller_sleeping_ in wait_for_workers (as for the wake-up).
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

}  // namespace engram
