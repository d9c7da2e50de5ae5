// The engine: a queue of requests, `parallel` slots (one memory sequence
// each) and a scheduler thread that runs one batched forward pass per step.
//
// A step holds the next token of every generating slot and prompt chunks of
// the slots still reading their prompt, within n_batch tokens: decode tokens
// always go (n_batch >= parallel), and the rest of the budget is shared
// evenly between the prompts. After the pass each slot samples from its own
// logits row with its own Sampler, detokenizes, applies stop strings and
// decides whether it is done.
//
// Locking: mu_ guards the queue, the id -> job map and the metrics. Slots
// belong to the scheduler thread alone. No callback runs with mu_ held, so a
// callback may call cancel() or submit().
#include "server/engine.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>

#include "runtime/generate.h"
#include "server/prefix_cache.h"
#include "server/stop_strings.h"

namespace engram::server {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::STOP: return "stop";
    case FinishReason::LENGTH: return "length";
    case FinishReason::CANCELLED: return "cancelled";
    case FinishReason::ERROR: return "error";
  }
  return "?";
}

void Histogram::observe(double v) {
  if (counts.size() != bounds.size() + 1) counts.assign(bounds.size() + 1, 0);
  const size_t bucket = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[bucket];  // le semantics: v <= bound; past the last bound: +Inf
  sum += v;
  ++count;
}

Histogram Histogram::seconds() {
  Histogram h;
  h.bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60};
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// A request from submit() to on_done.
struct Job {
  RequestId id = 0;
  GenerationRequest req;
  Clock::time_point submitted;
  std::atomic<bool> cancelled{false};
};

// One sequence of the memory, and the request running in it (if any).
struct Slot {
  int seq = 0;
  // Tokens whose K/V the sequence holds (positions 0 .. held.size()-1): the
  // running request's prompt and generated tokens, or what the last one
  // left behind, for the prefix cache.
  std::vector<TokenId> held;
  uint64_t last_used = 0;  // when a request last ended here (older slots are reused first)

  std::shared_ptr<Job> job;  // null: free
  uint64_t admitted = 0;     // admission order: older prompts get the budget's remainder first
  std::vector<TokenId> history;  // prompt + generated: the sampler's penalty window
  std::optional<Sampler> sampler;
  Utf8StreamDecoder utf8;
  StopStringMatcher stops;
  TokenId next = -1;  // emitted token still to be run (-1: the prompt is still being read)
  GenerationResult result;
  Clock::time_point first_token, last_token;
  bool generating = false;

  int64_t prompt_left() const { return static_cast<int64_t>(job->req.prompt.size()) - static_cast<int64_t>(held.size()); }
};

// Calls a request's callback; a callback that throws counts as one that
// asked to stop (a handler's bug must not take the scheduler down).
template <class Fn, class... Args>
bool call(const Fn& fn, Args&&... args) {
  if (!fn) return true;
  try {
    return fn(std::forward<Args>(args)...);
  } catch (...) {
    return false;
  }
}

class EngineImpl final : public Engine {
 public:
  EngineImpl(Model& model, const EngineOptions& options, int64_t n_ctx, std::unique_ptr<Memory> memory,
             std::unique_ptr<DiskPrefixCache> disk, bool reuse_prefixes)
      : model_(model),
        options_(options),
        n_ctx_(n_ctx),
        memory_(std::move(memory)),
        disk_(std::move(disk)),
        reuse_prefixes_(reuse_prefixes),
        pool_(options.threads > 0 ? options.threads : ThreadPool::default_threads()),
        slots_(static_cast<size_t>(options.parallel)) {
    for (size_t i = 0; i < slots_.size(); ++i) slots_[i].seq = static_cast<int>(i);
    thread_ = std::thread([this] { run(); });
  }

  ~EngineImpl() override { shutdown(); }

  Submitted submit(GenerationRequest request) override;
  void cancel(RequestId id) override;
  EngineMetrics metrics() const override;
  int64_t n_ctx() const override { return n_ctx_; }
  const Model& model() const override { return model_; }
  void shutdown() override;

 private:
  void run();
  std::shared_ptr<Job> next_waiting_locked();
  int retry_after_locked() const;

  void start(std::shared_ptr<Job> job);
  Slot& choose_slot(std::span<const TokenId> prompt, int64_t& reuse, int64_t& from_disk);
  void step();
  void after_prompt_chunk(Slot& s, const float* logits);
  void sample_and_emit(Slot& s, const float* logits);
  void finish(Slot& s, FinishReason reason, std::string error = "");
  void finish_unstarted(Job& job);

  Model& model_;
  const EngineOptions options_;
  const int64_t n_ctx_;
  std::unique_ptr<Memory> memory_;
  std::unique_ptr<DiskPrefixCache> disk_;
  const bool reuse_prefixes_;  // prefix reuse is exact only where truncation is (dense)
  ThreadPool pool_;

  // Scheduler thread only.
  std::vector<Slot> slots_;
  uint64_t admissions_ = 0, endings_ = 0;
  std::vector<TokenId> batch_tokens_;
  std::vector<BatchSegment> batch_segments_;
  std::vector<Slot*> batch_slots_;
  std::vector<float> logits_;

  // Guarded by mu_.
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  RequestId next_id_ = 1;
  std::deque<std::shared_ptr<Job>> interactive_, batch_;  // waiting, oldest first
  std::unordered_map<RequestId, std::shared_ptr<Job>> jobs_;  // waiting or running
  int running_ = 0;
  EngineMetrics metrics_;
  double busy_seconds_ = 0;     // time spent in forward steps
  uint64_t tokens_processed_ = 0;

  std::thread thread_;
};

// ---- Requests in ---------------------------------------------------------------

Submitted EngineImpl::submit(GenerationRequest request) {
  Submitted out;
  auto reject = [&](Rejection why, std::string message) {
    out.rejection = why;
    out.message = std::move(message);
    return out;
  };
  const std::vector<TokenId>& prompt = request.prompt;
  if (prompt.empty()) return reject(Rejection::INVALID, "the prompt is empty");
  if (request.max_tokens == 0) return reject(Rejection::INVALID, "max_tokens must be at least 1, got 0");
  const int n_vocab = model_.config().n_vocab;
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= n_vocab)
      return reject(Rejection::INVALID, "prompt token " + std::to_string(i) + " has id " + std::to_string(prompt[i]) +
                                            ", outside the vocabulary of " + std::to_string(n_vocab) + " tokens");
  if (static_cast<int64_t>(prompt.size()) > n_ctx_)
    return reject(Rejection::PROMPT_TOO_LONG, "the prompt has " + std::to_string(prompt.size()) +
                                                  " tokens, more than the context of " + std::to_string(n_ctx_) +
                                                  " tokens");

  auto job = std::make_shared<Job>();
  job->req = std::move(request);
  job->submitted = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return reject(Rejection::SHUTTING_DOWN, "the server is shutting down");
    if (static_cast<int>(interactive_.size() + batch_.size()) >= options_.max_queue) {
      out.retry_after_seconds = retry_after_locked();
      return reject(Rejection::QUEUE_FULL, "the queue is full (" + std::to_string(options_.max_queue) +
                                               " requests waiting); retry in " +
                                               std::to_string(out.retry_after_seconds) + " s");
    }
    job->id = next_id_++;
    (job->req.priority == Priority::BATCH ? batch_ : interactive_).push_back(job);
    jobs_[job->id] = job;
    metrics_.requests_waiting = static_cast<int>(interactive_.size() + batch_.size());
    out.id = job->id;
  }
  wake_.notify_one();
  return out;
}

// A queue place frees when a running request ends: the mean time between
// endings while busy. Before any has ended, the time to read the waiting
// prompts at the throughput seen so far.
int EngineImpl::retry_after_locked() const {
  double estimate = 1;
  if (metrics_.requests_finished > 0) {
    estimate = busy_seconds_ / static_cast<double>(metrics_.requests_finished);
  } else if (tokens_processed_ > 0 && busy_seconds_ > 0) {
    double waiting_tokens = 0;
    for (const auto* q : {&interactive_, &batch_})
      for (const auto& j : *q) waiting_tokens += static_cast<double>(j->req.prompt.size());
    estimate = waiting_tokens / (static_cast<double>(tokens_processed_) / busy_seconds_);
  }
  return static_cast<int>(std::clamp(std::ceil(estimate), 1.0, 3600.0));
}

void EngineImpl::cancel(RequestId id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;  // ended already (or never was)
    it->second->cancelled = true;
  }
  wake_.notify_one();
}

EngineMetrics EngineImpl::metrics() const {
  std::lock_guard<std::mutex> lock(mu_);
  return metrics_;
}

void EngineImpl::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  // From a callback (the scheduler thread itself) the loop just ends after
  // this step; the destructor joins.
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
}

// ---- The scheduler -------------------------------------------------------------

// Interactive work first; batch work only when no interactive request waits.
std::shared_ptr<Job> EngineImpl::next_waiting_locked() {
  for (auto* q : {&interactive_, &batch_}) {
    if (!q->empty()) {
      std::shared_ptr<Job> job = std::move(q->front());
      q->pop_front();
      return job;
    }
  }
  return nullptr;
}

void EngineImpl::run() {
  for (;;) {
    std::vector<std::shared_ptr<Job>> dropped, admitted;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || running_ > 0 || !interactive_.empty() || !batch_.empty(); });
      if (stopping_) break;
      // Requests cancelled while waiting leave the queue without running.
      for (auto* q : {&interactive_, &batch_}) {
        auto cancelled = [](const std::shared_ptr<Job>& j) { return j->cancelled.load(); };
        std::copy_if(q->begin(), q->end(), std::back_inserter(dropped), cancelled);
        q->erase(std::remove_if(q->begin(), q->end(), cancelled), q->end());
      }
      while (running_ < options_.parallel) {
        std::shared_ptr<Job> job = next_waiting_locked();
        if (!job) break;
        admitted.push_back(std::move(job));
        ++running_;
      }
      metrics_.requests_waiting = static_cast<int>(interactive_.size() + batch_.size());
      metrics_.requests_running = running_;
    }
    for (const auto& job : dropped) finish_unstarted(*job);
    for (auto& job : admitted) start(std::move(job));
    step();
  }
  // Shutting down: whatever runs or waits ends as cancelled.
  for (Slot& s : slots_)
    if (s.job) finish(s, FinishReason::CANCELLED);
  std::vector<std::shared_ptr<Job>> waiting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* q : {&interactive_, &batch_}) {
      waiting.insert(waiting.end(), q->begin(), q->end());
      q->clear();
    }
    metrics_.requests_waiting = 0;
  }
  for (const auto& job : waiting) finish_unstarted(*job);
}

// The free slot whose sequence shares the longest prefix with the prompt
// (least recently used among equals), or one a saved prefix on disk is
// loaded into when that is longer. reuse: positions kept; from_disk: of
// them, loaded from disk.
Slot& EngineImpl::choose_slot(std::span<const TokenId> prompt, int64_t& reuse, int64_t& from_disk) {
  Slot* best = nullptr;
  Slot* oldest = nullptr;
  size_t best_prefix = 0;
  for (Slot& s : slots_) {
    if (s.job) continue;
    const size_t prefix = reuse_prefixes_ ? common_prefix(s.held, prompt) : 0;
    if (!best || prefix > best_prefix || (prefix == best_prefix && s.last_used < best->last_used)) {
      best = &s;
      best_prefix = prefix;
    }
    if (!oldest || s.last_used < oldest->last_used) oldest = &s;
  }
  // At least the last prompt token runs again: its logits start generation.
  const int64_t most = static_cast<int64_t>(prompt.size()) - 1;
  reuse = std::min<int64_t>(static_cast<int64_t>(best_prefix), most);
  from_disk = 0;
  if (disk_ && reuse < most) {
    // Loaded into the least recently used slot, so the RAM prefixes of the
    // others stay.
    const int64_t loaded = disk_->load_longest(prompt, reuse, most, *memory_, oldest->seq);
    if (loaded > 0) {
      oldest->held.assign(prompt.begin(), prompt.begin() + loaded);
      best = oldest;
      reuse = from_disk = loaded;
    }
  }
  return *best;
}

void EngineImpl::start(std::shared_ptr<Job> job) {
  const Clock::time_point now = Clock::now();
  const std::vector<TokenId>& prompt = job->req.prompt;
  int64_t reuse = 0, from_disk = 0;
  Slot& s = choose_slot(prompt, reuse, from_disk);
  memory_->remove(s.seq, reuse, -1);
  s.held.resize(static_cast<size_t>(reuse));

  s.admitted = ++admissions_;
  s.history = prompt;
  s.sampler.emplace(job->req.sampler);
  s.utf8 = Utf8StreamDecoder();
  s.stops = StopStringMatcher(job->req.stop);
  s.next = -1;
  s.generating = false;
  s.result = GenerationResult();
  s.result.prompt_tokens = static_cast<int>(prompt.size());
  s.result.cached_tokens = static_cast<int>(reuse);
  s.result.queue_seconds = seconds(job->submitted, now);
  s.job = std::move(job);

  std::lock_guard<std::mutex> lock(mu_);
  metrics_.prefix_cache_queries += prompt.size();
  metrics_.prefix_cache_hits += static_cast<uint64_t>(reuse);
  metrics_.prefix_cache_disk_hits += static_cast<uint64_t>(from_disk);
  metrics_.queue_time.observe(s.result.queue_seconds);
}

void EngineImpl::step() {
  // Cancelled requests end before the pass (between prompt chunks too).
  for (Slot& s : slots_)
    if (s.job && s.job->cancelled) finish(s, FinishReason::CANCELLED);

  batch_tokens_.clear();
  batch_segments_.clear();
  batch_slots_.clear();
  auto add = [&](Slot& s, std::span<const TokenId> tokens) {
    batch_segments_.push_back({s.seq, static_cast<int64_t>(s.held.size()), static_cast<int>(tokens.size())});
    batch_tokens_.insert(batch_tokens_.end(), tokens.begin(), tokens.end());
    batch_slots_.push_back(&s);
  };
  // Every generating slot's next token...
  std::vector<Slot*> reading;
  for (Slot& s : slots_) {
    if (!s.job) continue;
    if (s.next >= 0) add(s, {&s.next, 1});
    else reading.push_back(&s);
  }
  // ...and the rest of n_batch shared evenly between the prompts being read
  // (what one does not need goes to the others; older requests first).
  std::sort(reading.begin(), reading.end(), [](const Slot* a, const Slot* b) { return a->admitted < b->admitted; });
  std::vector<int64_t> chunk(reading.size(), 0);
  int64_t budget = options_.n_batch - static_cast<int64_t>(batch_segments_.size());
  for (bool gave = true; budget > 0 && gave;) {
    gave = false;
    int64_t wanting = 0;
    for (size_t i = 0; i < reading.size(); ++i) wanting += chunk[i] < reading[i]->prompt_left();
    if (wanting == 0) break;
    const int64_t share = std::max<int64_t>(1, budget / wanting);
    for (size_t i = 0; i < reading.size() && budget > 0; ++i) {
      const int64_t take = std::min({share, reading[i]->prompt_left() - chunk[i], budget});
      if (take <= 0) continue;
      chunk[i] += take;
      budget -= take;
      gave = true;
    }
  }
  for (size_t i = 0; i < reading.size(); ++i) {
    if (chunk[i] == 0) continue;
    const std::vector<TokenId>& prompt = reading[i]->job->req.prompt;
    add(*reading[i], std::span<const TokenId>(prompt).subspan(reading[i]->held.size(), static_cast<size_t>(chunk[i])));
  }
  if (batch_segments_.empty()) return;

  const size_t V = static_cast<size_t>(model_.config().n_vocab);
  logits_.resize(batch_segments_.size() * V);
  const Clock::time_point t0 = Clock::now();
  Status status = model_.forward_batch(batch_tokens_, batch_segments_, *memory_, logits_.data(), pool_);
  if (status.is_ok()) status = memory_->last_error();
  const double took = seconds(t0, Clock::now());
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++metrics_.batch_steps;
    if (batch_segments_.size() > 1) ++metrics_.multi_sequence_steps;
    metrics_.max_sequences_per_step = std::max(metrics_.max_sequences_per_step, static_cast<int>(batch_segments_.size()));
    busy_seconds_ += took;
    tokens_processed_ += batch_tokens_.size();
  }
  if (!status.is_ok()) {
    // The sequences in the pass hold partial layers: forget them.
    for (Slot* s : batch_slots_) finish(*s, FinishReason::ERROR, status.message());
    return;
  }

  for (size_t i = 0; i < batch_slots_.size(); ++i) {
    Slot& s = *batch_slots_[i];
    const BatchSegment& seg = batch_segments_[i];
    const float* row = logits_.data() + i * V;
    if (s.next >= 0) {
      s.held.push_back(s.next);
      sample_and_emit(s, row);
    } else {
      const std::vector<TokenId>& prompt = s.job->req.prompt;
      s.held.insert(s.held.end(), prompt.begin() + static_cast<ptrdiff_t>(s.held.size()),
                    prompt.begin() + static_cast<ptrdiff_t>(s.held.size()) + seg.n);
      s.result.prompt_tokens_computed += seg.n;
      {
        std::lock_guard<std::mutex> lock(mu_);
        metrics_.prompt_tokens_total += static_cast<uint64_t>(seg.n);
      }
      after_prompt_chunk(s, row);
    }
  }
}

void EngineImpl::after_prompt_chunk(Slot& s, const float* logits) {
  const std::vector<TokenId>& prompt = s.job->req.prompt;
  const int done = static_cast<int>(s.held.size()), total = static_cast<int>(prompt.size());
  if (!call(s.job->req.on_prompt_progress, done, total)) {
    finish(s, FinishReason::CANCELLED);
    return;
  }
  if (done < total) return;
  // The whole prompt is in: keep its K/V on disk for later requests (a
  // failure only costs a later miss).
  if (disk_) (void)disk_->save(prompt, *memory_, s.seq);
  sample_and_emit(s, logits);
}

// Samples the next token from `logits` [n_vocab] and hands it out, or ends
// the request (end of generation, stop string, max_tokens, full context,
// or a callback that asks to stop).
void EngineImpl::sample_and_emit(Slot& s, const float* logits) {
  const GenerationRequest& req = s.job->req;
  const Tokenizer& tok = model_.tokenizer();
  const TokenId id = s.sampler->sample({logits, static_cast<size_t>(model_.config().n_vocab)}, s.history);
  if (!req.ignore_eos && tok.is_eog(id)) {
    finish(s, FinishReason::STOP);  // the end-of-generation token itself is not output
    return;
  }

  const Clock::time_point now = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!s.generating) metrics_.time_to_first_token.observe(seconds(s.job->submitted, now));
    else metrics_.inter_token_latency.observe(seconds(s.last_token, now));
    ++metrics_.generation_tokens_total;
  }
  if (!s.generating) {
    s.generating = true;
    s.first_token = now;
    s.result.time_to_first_token = seconds(s.job->submitted, now);
  }
  s.last_token = now;
  ++s.result.completion_tokens;
  s.result.tokens.push_back(id);
  s.history.push_back(id);

  TokenEvent event{id, s.stops.push(s.utf8.push(tok.token_to_piece(id)))};
  std::optional<FinishReason> end;
  if (s.stops.matched()) end = FinishReason::STOP;
  else if (req.max_tokens > 0 && s.result.completion_tokens >= req.max_tokens) end = FinishReason::LENGTH;
  else if (static_cast<int64_t>(s.held.size()) >= n_ctx_) end = FinishReason::LENGTH;  // no room to run it
  if (end == FinishReason::LENGTH) {
    // The last token: release whatever is held back with it.
    event.text += s.stops.push(s.utf8.flush());
    if (s.stops.matched()) end = FinishReason::STOP;
    else event.text += s.stops.flush();
  }
  s.result.text += event.text;
  const bool go_on = call(req.on_token, event);
  if (end) finish(s, *end);
  else if (!go_on) finish(s, FinishReason::CANCELLED);
  else s.next = id;
}

void EngineImpl::finish(Slot& s, FinishReason reason, std::string error) {
  const Clock::time_point now = Clock::now();
  GenerationResult& r = s.result;
  r.finish = reason;
  r.error = std::move(error);
  // Text still held back (cut short by an end-of-generation token or a cancel).
  r.tail = s.stops.push(s.utf8.flush());
  r.tail += s.stops.flush();
  r.text += r.tail;
  if (s.generating) r.generate_seconds = seconds(s.first_token, now);
  if (reason == FinishReason::ERROR) {
    memory_->remove(s.seq, 0, -1);
    s.held.clear();
  }
  std::shared_ptr<Job> job = std::move(s.job);
  s.job = nullptr;
  s.next = -1;
  s.last_used = ++endings_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.erase(job->id);
    --running_;
    metrics_.requests_running = running_;
    ++metrics_.requests_finished;
    metrics_.request_latency.observe(seconds(job->submitted, now));
  }
  try {
    if (job->req.on_done) job->req.on_done(r);
  } catch (...) {
    // Nothing to undo: the request has ended either way.
  }
}

void EngineImpl::finish_unstarted(Job& job) {
  GenerationResult r;
  r.finish = FinishReason::CANCELLED;
  r.prompt_tokens = static_cast<int>(job.req.prompt.size());
  const Clock::time_point now = Clock::now();
  r.queue_seconds = seconds(job.submitted, now);
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.erase(job.id);
    ++metrics_.requests_finished;
    metrics_.request_latency.observe(r.queue_seconds);
  }
  try {
    if (job.req.on_done) job.req.on_done(r);
  } catch (...) {
  }
}

}  // namespace

Expected<std::unique_ptr<Engine>> Engine::create(Model& model, const EngineOptions& options) {
  if (options.parallel < 1) return make_error("parallel must be at least 1, got ", std::to_string(options.parallel));
  if (options.n_batch < options.parallel)
    return make_error("n_batch (", std::to_string(options.n_batch), ") must be at least parallel (",
                      std::to_string(options.parallel), "): every slot's next token goes in each step");
  if (options.max_queue < 0) return make_error("max_queue must not be negative, got ", std::to_string(options.max_queue));
  const int64_t n_ctx = resolve_context(model.config(), options.n_ctx);
  Expected<std::unique_ptr<Memory>> memory =
      make_memory(options.memory_kind, model.memory_layout(n_ctx, options.parallel), options.memory_options);
  if (!memory) return memory.error();
  // Dropping a sequence's tail is exact only in the dense memory (the
  // others compress or forget positions), so only it reuses prefixes.
  const bool dense = options.memory_kind == "dense";
  std::unique_ptr<DiskPrefixCache> disk;
  if (!options.cache_dir.empty()) {
    if (!dense)
      return make_error("the prefix cache on disk (cache_dir ", options.cache_dir, ") needs the dense memory, not '",
                        options.memory_kind, "'");
    Expected<std::unique_ptr<DiskPrefixCache>> opened = DiskPrefixCache::open(
        options.cache_dir, options.cache_dir_max_bytes, options.cache_block, model_fingerprint(model));
    if (!opened) return opened.error();
    disk = std::move(opened).value();
  }
  return std::unique_ptr<Engine>(
      new EngineImpl(model, options, n_ctx, std::move(memory).value(), std::move(disk), dense));
}

}  // namespace engram::server
