// The engine behind `engram serve`, on the real stories260K model: batched
// requests give what engram::generate() gives on each alone (greedy and
// seeded sampling), requests really share forward passes, the queue, limits,
// cancellation, the prefix cache (RAM and disk), stop strings, priorities
// and shutdown behave as engine.h promises.
//
// Tests that need a request to stay in flight hold the scheduler inside a
// callback (callbacks run on the scheduler thread) until the test is ready.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/model.h"
#include "runtime/generate.h"
#include "server/engine.h"
#include "test_support.h"

namespace engram::server {
namespace {

namespace fs = std::filesystem;

Model* stories() {
  static std::unique_ptr<Model> model = [] {
    std::unique_ptr<Model> m;
    if (test::ref_dir().empty()) return m;
    auto loaded = Model::load((test::ref_dir() / "models" / "stories260K.gguf").string());
    if (loaded) m = std::move(loaded).value();
    return m;
  }();
  return model.get();
}

#define REQUIRE_MODEL()                                                              \
  ENGRAM_REQUIRE_REF();                                                              \
  Model* model_ptr = stories();                                                      \
  ASSERT_NE(model_ptr, nullptr) << "stories260K.gguf did not load";                  \
  Model& model = *model_ptr

std::vector<TokenId> encode(const Model& m, const std::string& text) {
  return m.tokenizer().encode(text, /*add_special=*/true, /*parse_special=*/false);
}

SamplerParams greedy() {
  SamplerParams p;
  p.temperature = 0;
  return p;
}

// What generate() alone produces: the tokens it hands out.
std::vector<TokenId> reference(Model& model, const std::vector<TokenId>& prompt, int max_tokens,
                               const SamplerParams& sampler, int64_t n_ctx = 0, bool ignore_eos = false) {
  ThreadPool pool(1);
  Session session(model, pool, n_ctx);
  GenerateParams p;
  p.n_predict = max_tokens;
  p.ignore_eos = ignore_eos;
  p.stop_at_bos = false;  // the engine stops at end-of-generation tokens only
  p.sampler = sampler;
  std::vector<TokenId> out;
  auto stats = generate(session, prompt, p, [&](TokenId id) {
    out.push_back(id);
    return true;
  });
  EXPECT_TRUE(stats.has_value()) << (stats ? "" : stats.error().message);
  return out;
}

// True when every token of `tokens`, teacher-forced after `prompt` in a
// session alone, is one `sampler` could have picked there up to rounding:
// greedy, within 1e-3 of the best logit; sampled, a probability (at the
// sampler's temperature) of at least min_p times the best one, the
// sampler's own cut. The engine runs a sequence's rows in one matmul with
// other sequences' rows; 8 rows or more take the GEMM kernel, fewer take row
// dots, and the two sum in different orders. Where a greedy tie or a sampling
// draw falls within rounding (seen with AVX2 kernels), the engine's tokens
// then part from generate() alone although both runs are correct; tokens
// from another sequence's context would fail this check.
bool valid_up_to_rounding(Model& model, const std::vector<TokenId>& prompt, const std::vector<TokenId>& tokens,
                          const SamplerParams& sampler) {
  ThreadPool pool(1);
  Session session(model, pool);
  if (!session.decode(prompt, 512).is_ok()) return false;
  const bool greedy = sampler.temperature <= 0.f;
  for (TokenId id : tokens) {
    const auto logits = session.logits();
    const float best = *std::max_element(logits.begin(), logits.end());
    const float gap = best - logits[static_cast<size_t>(id)];
    if (greedy ? gap > 1e-3f : std::exp(-gap / sampler.temperature) < sampler.min_p) return false;
    if (!session.decode(std::span<const TokenId>(&id, 1), 1).is_ok()) return false;
  }
  return true;
}

// A request's observed life: its events and its on_done calls.
struct Record {
  std::vector<TokenEvent> events;
  GenerationResult result;
  int done_calls = 0;
  int order = -1;  // position among all on_done calls
};

// Owns the records and waits for them to finish.
class Collector {
 public:
  Record& add() {
    std::lock_guard<std::mutex> lock(mu_);
    return records_.emplace_back();
  }
  // Fills on_token / on_done of `r` to record into `rec` (keeping the
  // request's own on_token, if any, as a filter).
  GenerationRequest wire(GenerationRequest r, Record& rec) {
    auto user_token = r.on_token;
    r.on_token = [this, &rec, user_token](const TokenEvent& e) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        rec.events.push_back(e);
      }
      return user_token ? user_token(e) : true;
    };
    r.on_done = [this, &rec](const GenerationResult& res) {
      std::lock_guard<std::mutex> lock(mu_);
      rec.result = res;
      rec.order = n_done_++;
      ++rec.done_calls;
      cv_.notify_all();
    };
    return r;
  }
  bool wait_for(int n, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return n_done_ >= n; });
  }
  int done() {
    std::lock_guard<std::mutex> lock(mu_);
    return n_done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Record> records_;
  int n_done_ = 0;
};

// A one-shot signal between the test and a callback.
struct Latch {
  std::promise<void> promise;
  std::shared_future<void> future = promise.get_future().share();
  void open() { promise.set_value(); }
  void wait() const { future.wait(); }
};

std::unique_ptr<Engine> make_engine(Model& model, EngineOptions o) {
  o.threads = 1;
  auto e = Engine::create(model, o);
  EXPECT_TRUE(e.has_value()) << (e ? "" : e.error().message);
  return e ? std::move(e).value() : nullptr;
}

std::string events_text(const Record& r) {
  std::string s;
  for (const TokenEvent& e : r.events) s += e.text;
  return s + r.result.tail;
}

std::vector<TokenId> event_ids(const Record& r) {
  std::vector<TokenId> ids;
  for (const TokenEvent& e : r.events) ids.push_back(e.id);
  return ids;
}

// A request whose first token blocks the scheduler until `release` opens
// (and tells `arrived` it got there).
GenerationRequest gate_request(const Model& model, Latch& arrived, Latch& release) {
  GenerationRequest r;
  r.prompt = encode(model, "The gate");
  r.sampler = greedy();
  r.max_tokens = 4;
  r.ignore_eos = true;
  auto first = std::make_shared<bool>(true);
  r.on_token = [&arrived, &release, first](const TokenEvent&) {
    if (*first) {
      *first = false;
      arrived.open();
      release.wait();
    }
    return true;
  };
  return r;
}

const char* const kStories[] = {
    "Once upon a time",
    "Lily and Ben were",
    "One day, a little girl named Sue went to the park with her mom. She saw a big tree and",
    "Tom had a red ball",
    "The sun was shining and the birds were singing. A small dog",
    "There was a cat who liked to",
};

// (a) + (b): concurrent requests, decoded together, equal generate() alone.
TEST(Engine, BatchedRequestsEqualGenerateAlone) {
  REQUIRE_MODEL();
  struct Case {
    std::vector<TokenId> prompt;
    SamplerParams sampler;
    int max_tokens;
    std::vector<TokenId> want;
  };
  std::vector<Case> cases;
  for (size_t i = 0; i < std::size(kStories); ++i) {
    Case c;
    c.prompt = encode(model, kStories[i]);
    c.sampler = greedy();
    if (i % 3 == 2) {  // seeded sampling: each request's own RNG stream
      c.sampler = SamplerParams();
      c.sampler.temperature = 0.9f;
      c.sampler.seed = 1000 + i;
    }
    c.max_tokens = 24 + static_cast<int>(i) * 7;
    c.want = reference(model, c.prompt, c.max_tokens, c.sampler);
    cases.push_back(c);
  }

  // The rounding check refuses another prompt's continuation.
  EXPECT_FALSE(valid_up_to_rounding(model, cases[0].prompt, cases[1].want, greedy()));
  EXPECT_TRUE(valid_up_to_rounding(model, cases[0].prompt, cases[0].want, greedy()));

  EngineOptions o;
  o.parallel = 4;
  o.n_batch = 16;  // long prompts take several chunks, next to decode tokens
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  Latch arrived, release;
  Record& gate = col.add();
  ASSERT_TRUE(engine->submit(col.wire(gate_request(model, arrived, release), gate)).ok());
  arrived.wait();  // the scheduler is held: everything below is admitted together
  std::vector<Record*> recs;
  for (const Case& c : cases) {
    GenerationRequest r;
    r.prompt = c.prompt;
    r.sampler = c.sampler;
    r.max_tokens = c.max_tokens;
    Record& rec = col.add();
    recs.push_back(&rec);
    Submitted s = engine->submit(col.wire(r, rec));
    ASSERT_TRUE(s.ok()) << s.message;
  }
  release.open();
  ASSERT_TRUE(col.wait_for(static_cast<int>(cases.size()) + 1));

  uint64_t generated = 0, computed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Record& r = *recs[i];
    SCOPED_TRACE(kStories[i]);
    EXPECT_EQ(r.done_calls, 1);
    std::vector<TokenId> want = cases[i].want;
    if (r.result.tokens != want) {
      // A run may part from generate() at a rounding tie (see
      // valid_up_to_rounding); anything else is a real difference.
      EXPECT_TRUE(valid_up_to_rounding(model, cases[i].prompt, r.result.tokens, cases[i].sampler));
      want = r.result.tokens;
    }
    EXPECT_EQ(r.result.tokens, want);
    EXPECT_EQ(event_ids(r), want);
    EXPECT_EQ(r.result.completion_tokens, static_cast<int>(want.size()));
    EXPECT_EQ(r.result.prompt_tokens, static_cast<int>(cases[i].prompt.size()));
    EXPECT_EQ(r.result.prompt_tokens_computed + r.result.cached_tokens, r.result.prompt_tokens);
    const bool full = static_cast<int>(want.size()) == cases[i].max_tokens;
    EXPECT_EQ(r.result.finish, full ? FinishReason::LENGTH : FinishReason::STOP);
    EXPECT_EQ(events_text(r), r.result.text);
    std::string pieces;  // no stop strings: the text is every token's piece
    for (TokenId id : r.result.tokens) pieces += model.tokenizer().token_to_piece(id);
    EXPECT_EQ(r.result.text, pieces);
    EXPECT_GE(r.result.time_to_first_token, r.result.queue_seconds);
    generated += static_cast<uint64_t>(r.result.completion_tokens);
    computed += static_cast<uint64_t>(r.result.prompt_tokens_computed);
  }
  generated += static_cast<uint64_t>(gate.result.completion_tokens);
  computed += static_cast<uint64_t>(gate.result.prompt_tokens_computed);
  uint64_t with_tokens = 1;  // the gate's
  for (const Record* r : recs) with_tokens += r->result.completion_tokens > 0;

  const EngineMetrics m = engine->metrics();
  // (b): steps held several sequences at once; four slots were all busy.
  EXPECT_GT(m.multi_sequence_steps, 0u);
  EXPECT_EQ(m.max_sequences_per_step, 4);
  EXPECT_LT(m.batch_steps, generated + computed);
  EXPECT_EQ(m.requests_finished, cases.size() + 1);
  EXPECT_EQ(m.requests_running, 0);
  EXPECT_EQ(m.requests_waiting, 0);
  EXPECT_EQ(m.generation_tokens_total, generated);
  EXPECT_EQ(m.prompt_tokens_total, computed);
  EXPECT_EQ(m.time_to_first_token.count, with_tokens);
  EXPECT_EQ(m.inter_token_latency.count, generated - with_tokens);
  EXPECT_EQ(m.queue_time.count, cases.size() + 1);
  EXPECT_EQ(m.request_latency.count, cases.size() + 1);
  uint64_t bucketed = 0;
  for (uint64_t c : m.request_latency.counts) bucketed += c;
  EXPECT_EQ(bucketed, m.request_latency.count);
}

// (c): a full queue, a prompt over the context, invalid requests.
TEST(Engine, RejectsWhatItCannotTake) {
  REQUIRE_MODEL();
  EngineOptions o;
  o.parallel = 1;
  o.max_queue = 2;
  o.n_ctx = 32;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  EXPECT_EQ(engine->n_ctx(), 32);
  EXPECT_EQ(&engine->model(), &model);

  GenerationRequest r;
  r.sampler = greedy();
  r.prompt = std::vector<TokenId>(40, 300);
  r.prompt[0] = 1;
  Submitted s = engine->submit(r);
  EXPECT_EQ(s.rejection, Rejection::PROMPT_TOO_LONG);
  EXPECT_NE(s.message.find("40"), std::string::npos) << s.message;
  EXPECT_NE(s.message.find("32"), std::string::npos) << s.message;
  r.prompt = {};
  EXPECT_EQ(engine->submit(r).rejection, Rejection::INVALID);
  r.prompt = {1, 300};
  r.max_tokens = 0;
  EXPECT_EQ(engine->submit(r).rejection, Rejection::INVALID);
  r.max_tokens = 3;
  r.prompt = {1, 512};
  s = engine->submit(r);
  EXPECT_EQ(s.rejection, Rejection::INVALID);
  EXPECT_NE(s.message.find("512"), std::string::npos) << s.message;

  Collector col;
  Latch arrived, release;
  Record& gate = col.add();
  ASSERT_TRUE(engine->submit(col.wire(gate_request(model, arrived, release), gate)).ok());
  arrived.wait();  // the only slot is busy and the scheduler held
  r.prompt = encode(model, "Once upon a time");
  ASSERT_TRUE(engine->submit(col.wire(r, col.add())).ok());
  ASSERT_TRUE(engine->submit(col.wire(r, col.add())).ok());
  EXPECT_EQ(engine->metrics().requests_waiting, 2);
  s = engine->submit(r);
  EXPECT_EQ(s.rejection, Rejection::QUEUE_FULL);
  EXPECT_GE(s.retry_after_seconds, 1);
  EXPECT_NE(s.message.find("2"), std::string::npos) << s.message;
  release.open();
  ASSERT_TRUE(col.wait_for(3));
  // The queue drained: room again.
  Record& later = col.add();
  ASSERT_TRUE(engine->submit(col.wire(r, later)).ok());
  ASSERT_TRUE(col.wait_for(4));
  EXPECT_EQ(later.result.finish, FinishReason::LENGTH);
  EXPECT_EQ(later.result.completion_tokens, 3);
  // After the first request ended, the estimate comes from measured time.
  EXPECT_GE(engine->metrics().requests_finished, 4u);
}

// A full context ends generation with LENGTH, where generate() stops too.
TEST(Engine, FullContextEndsWithLength) {
  REQUIRE_MODEL();
  const std::vector<TokenId> prompt = encode(model, "Lily and Ben were");
  const std::vector<TokenId> want = reference(model, prompt, -1, greedy(), /*n_ctx=*/16, /*ignore_eos=*/true);
  ASSERT_EQ(want.size(), 16 - prompt.size() + 1);  // the last token is output, never run
  EngineOptions o;
  o.parallel = 2;
  o.n_ctx = 16;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  GenerationRequest r;
  r.prompt = prompt;
  r.sampler = greedy();
  r.ignore_eos = true;
  Record& rec = col.add();
  ASSERT_TRUE(engine->submit(col.wire(r, rec)).ok());
  // A prompt exactly as long as the context still gets its one token.
  GenerationRequest whole = r;
  whole.prompt.resize(16, 300);
  Record& full = col.add();
  ASSERT_TRUE(engine->submit(col.wire(whole, full)).ok());
  ASSERT_TRUE(col.wait_for(2));
  EXPECT_EQ(rec.result.finish, FinishReason::LENGTH);
  EXPECT_EQ(rec.result.tokens, want);
  EXPECT_EQ(full.result.finish, FinishReason::LENGTH);
  EXPECT_EQ(full.result.completion_tokens, 1);
}

// (d): cancel during the prompt and during generation, by cancel() and by
// callbacks; partial counts; the slot serves the next request correctly.
TEST(Engine, CancelDuringPromptAndGeneration) {
  REQUIRE_MODEL();
  EngineOptions o;
  o.parallel = 1;
  o.n_batch = 8;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  const std::vector<TokenId> long_prompt =
      encode(model, "One day, a little girl named Sue went to the park with her mom. She saw a big tree and a bird.");
  ASSERT_GT(long_prompt.size(), 24u);

  // cancel() from this thread while the first chunk's progress callback holds the scheduler.
  {
    Latch arrived, release;
    GenerationRequest r;
    r.prompt = long_prompt;
    r.sampler = greedy();
    r.on_prompt_progress = [&](int done, int total) {
      if (done == 8) {
        arrived.open();
        release.wait();
      }
      return true;
    };
    Record& rec = col.add();
    Submitted s = engine->submit(col.wire(r, rec));
    ASSERT_TRUE(s.ok());
    arrived.wait();
    engine->cancel(s.id);
    release.open();
    ASSERT_TRUE(col.wait_for(1));
    EXPECT_EQ(rec.result.finish, FinishReason::CANCELLED);
    EXPECT_EQ(rec.result.prompt_tokens_computed, 8);
    EXPECT_EQ(rec.result.completion_tokens, 0);
    EXPECT_TRUE(rec.events.empty());
    engine->cancel(s.id);  // ended: a no-op
  }
  // The progress callback asks to stop after the second chunk.
  {
    GenerationRequest r;
    r.prompt = long_prompt;
    r.prompt[1] = 400;  // shares only BOS with what the slot holds
    r.sampler = greedy();
    int calls = 0;
    r.on_prompt_progress = [&](int, int) { return ++calls < 2; };
    Record& rec = col.add();
    ASSERT_TRUE(engine->submit(col.wire(r, rec)).ok());
    ASSERT_TRUE(col.wait_for(2));
    EXPECT_EQ(rec.result.finish, FinishReason::CANCELLED);
    EXPECT_EQ(rec.result.cached_tokens, 1);
    EXPECT_EQ(rec.result.prompt_tokens_computed, 16);
  }
  // on_token asks to stop at the fifth token.
  {
    GenerationRequest r;
    r.prompt = encode(model, "Tom had a red ball");
    r.sampler = greedy();
    r.ignore_eos = true;
    r.max_tokens = 50;
    int n = 0;
    r.on_token = [&](const TokenEvent&) { return ++n < 5; };
    Record& rec = col.add();
    ASSERT_TRUE(engine->submit(col.wire(r, rec)).ok());
    ASSERT_TRUE(col.wait_for(3));
    EXPECT_EQ(rec.result.finish, FinishReason::CANCELLED);
    EXPECT_EQ(rec.result.completion_tokens, 5);
    EXPECT_EQ(rec.result.tokens.size(), 5u);
    EXPECT_EQ(rec.events.size(), 5u);
  }
  // cancel() while generating: at the third token.
  {
    Latch arrived, release;
    GenerationRequest r;
    r.prompt = encode(model, "Lily and Ben were");
    r.sampler = greedy();
    r.ignore_eos = true;
    r.max_tokens = 50;
    int n = 0;
    r.on_token = [&](const TokenEvent&) {
      if (++n == 3) {
        arrived.open();
        release.wait();
      }
      return true;
    };
    Record& rec = col.add();
    Submitted s = engine->submit(col.wire(r, rec));
    ASSERT_TRUE(s.ok());
    arrived.wait();
    engine->cancel(s.id);
    release.open();
    ASSERT_TRUE(col.wait_for(4));
    EXPECT_EQ(rec.result.finish, FinishReason::CANCELLED);
    EXPECT_EQ(rec.result.completion_tokens, 3);
    EXPECT_EQ(events_text(rec), rec.result.text);
  }
  // The slot is reused, and what it held does not leak into the next request.
  {
    const std::vector<TokenId> prompt = encode(model, "Lily and Ben were playing");
    const std::vector<TokenId> want = reference(model, prompt, 30, greedy());
    GenerationRequest r;
    r.prompt = prompt;
    r.sampler = greedy();
    r.max_tokens = 30;
    Record& rec = col.add();
    ASSERT_TRUE(engine->submit(col.wire(r, rec)).ok());
    ASSERT_TRUE(col.wait_for(5));
    EXPECT_EQ(rec.result.tokens, want);
    EXPECT_GT(rec.result.cached_tokens, 1);  // "Lily and Ben were" was still there
  }
  // A request cancelled while it waits never runs.
  {
    Latch arrived, release;
    Record& gate = col.add();
    ASSERT_TRUE(engine->submit(col.wire(gate_request(model, arrived, release), gate)).ok());
    arrived.wait();
    GenerationRequest r;
    r.prompt = long_prompt;
    r.sampler = greedy();
    Record& rec = col.add();
    Submitted s = engine->submit(col.wire(r, rec));
    ASSERT_TRUE(s.ok());
    engine->cancel(s.id);
    release.open();
    ASSERT_TRUE(col.wait_for(7));
    EXPECT_EQ(rec.result.finish, FinishReason::CANCELLED);
    EXPECT_EQ(rec.result.prompt_tokens_computed, 0);
    EXPECT_EQ(rec.result.prompt_tokens, static_cast<int>(long_prompt.size()));
    EXPECT_EQ(rec.done_calls, 1);
  }
}

// (e): prefix cache in RAM.
TEST(Engine, SharedPrefixIsReusedWithTheSameOutput) {
  REQUIRE_MODEL();
  const std::vector<TokenId> a = encode(
      model, "One day, a little girl named Sue went to the park with her mom. She saw a big tree and a bird in it.");
  std::vector<TokenId> b(a.begin(), a.begin() + 20);
  for (TokenId t : encode(model, "Tom had a red ball")) b.push_back(t);  // BOS included: differs at 20 for sure
  ASSERT_NE(b[20], a[20]);
  const std::vector<TokenId> want_a = reference(model, a, 20, greedy());
  const std::vector<TokenId> want_b = reference(model, b, 20, greedy());

  EngineOptions o;
  o.parallel = 2;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  auto run = [&](const std::vector<TokenId>& prompt, int n_done) -> const Record& {
    GenerationRequest r;
    r.prompt = prompt;
    r.sampler = greedy();
    r.max_tokens = 20;
    Record& rec = col.add();
    EXPECT_TRUE(engine->submit(col.wire(r, rec)).ok());
    EXPECT_TRUE(col.wait_for(n_done));
    return rec;
  };
  const Record& first = run(a, 1);
  EXPECT_EQ(first.result.cached_tokens, 0);
  EXPECT_EQ(first.result.tokens, want_a);
  // The same prompt again: everything but the last token comes from the cache.
  const Record& second = run(a, 2);
  EXPECT_EQ(second.result.cached_tokens, static_cast<int>(a.size()) - 1);
  EXPECT_EQ(second.result.prompt_tokens_computed, 1);
  EXPECT_EQ(second.result.tokens, want_a);
  // Another prompt with the same first 20 tokens.
  const Record& third = run(b, 3);
  EXPECT_EQ(third.result.cached_tokens, 20);
  EXPECT_EQ(third.result.prompt_tokens_computed, static_cast<int>(b.size()) - 20);
  EXPECT_EQ(third.result.tokens, want_b);
  const EngineMetrics m = engine->metrics();
  EXPECT_EQ(m.prefix_cache_queries, 2 * a.size() + b.size());
  EXPECT_EQ(m.prefix_cache_hits, 20 + a.size() - 1);
  EXPECT_EQ(m.prefix_cache_disk_hits, 0u);
}

// (e) on disk: a prompt's prefix outlives the engine.
TEST(Engine, PrefixCacheOnDiskSurvivesARestart) {
  REQUIRE_MODEL();
  const fs::path dir = test::temp_dir("engine_cache");
  const std::vector<TokenId> a = encode(
      model, "One day, a little girl named Sue went to the park with her mom. She saw a big tree and a bird in it.");
  ASSERT_GT(a.size(), 32u);
  std::vector<TokenId> b(a.begin(), a.begin() + 35);
  b.push_back(400);
  b.push_back(401);
  const std::vector<TokenId> want_b = reference(model, b, 16, greedy());

  EngineOptions o;
  o.parallel = 2;
  o.cache_dir = dir.string();
  o.cache_block = 16;
  {
    auto engine = make_engine(model, o);
    ASSERT_TRUE(engine);
    Collector col;
    GenerationRequest r;
    r.prompt = a;
    r.sampler = greedy();
    r.max_tokens = 4;
    ASSERT_TRUE(engine->submit(col.wire(r, col.add())).ok());
    ASSERT_TRUE(col.wait_for(1));
  }
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) entries += e.path().extension() == ".kv";
  EXPECT_EQ(entries, 1);  // at the largest multiple of 16 in the prompt

  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  GenerationRequest r;
  r.prompt = b;
  r.sampler = greedy();
  r.max_tokens = 16;
  Record& rec = col.add();
  ASSERT_TRUE(engine->submit(col.wire(r, rec)).ok());
  ASSERT_TRUE(col.wait_for(1));
  EXPECT_EQ(rec.result.cached_tokens, 32);
  EXPECT_EQ(rec.result.prompt_tokens_computed, static_cast<int>(b.size()) - 32);
  EXPECT_EQ(rec.result.tokens, want_b);
  EXPECT_EQ(engine->metrics().prefix_cache_disk_hits, 32u);

  // The disk cache needs the dense memory.
  EngineOptions w = o;
  w.memory_kind = "window";
  auto refused = Engine::create(model, w);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message.find("dense"), std::string::npos) << refused.error().message;
}

// (f): stop strings end the text before them, across token boundaries.
TEST(Engine, StopStringsEndTheTextBeforeThem) {
  REQUIRE_MODEL();
  EngineOptions o;
  o.parallel = 2;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  GenerationRequest r;
  r.prompt = encode(model, "Once upon a time");
  r.sampler = greedy();
  r.max_tokens = 60;
  r.ignore_eos = true;
  Record& plain = col.add();
  ASSERT_TRUE(engine->submit(col.wire(r, plain)).ok());
  ASSERT_TRUE(col.wait_for(1));
  const std::string text = plain.result.text;
  ASSERT_GT(text.size(), 40u);

  // A stop string from the middle of the text, likely spanning tokens.
  const std::string stop = text.substr(25, 6);
  const size_t at = text.find(stop);
  r.stop = {"never appears \x01", stop};
  Record& stopped = col.add();
  ASSERT_TRUE(engine->submit(col.wire(r, stopped)).ok());
  ASSERT_TRUE(col.wait_for(2));
  EXPECT_EQ(stopped.result.finish, FinishReason::STOP);
  EXPECT_EQ(stopped.result.text, text.substr(0, at));
  EXPECT_EQ(events_text(stopped), stopped.result.text);
  EXPECT_LT(stopped.result.completion_tokens, plain.result.completion_tokens);
  // The tokens are the plain run's, cut where the stop string completed.
  ASSERT_LE(stopped.result.tokens.size(), plain.result.tokens.size());
  EXPECT_TRUE(std::equal(stopped.result.tokens.begin(), stopped.result.tokens.end(), plain.result.tokens.begin()));

  // A stop string that never matches changes nothing.
  r.stop = {"zzzz"};
  Record& unmatched = col.add();
  ASSERT_TRUE(engine->submit(col.wire(r, unmatched)).ok());
  ASSERT_TRUE(col.wait_for(3));
  EXPECT_EQ(unmatched.result.text, text);
  EXPECT_EQ(unmatched.result.finish, FinishReason::LENGTH);
}

// (g): batch work waits while interactive work waits.
TEST(Engine, InteractiveRequestsGoBeforeBatchOnes) {
  REQUIRE_MODEL();
  EngineOptions o;
  o.parallel = 1;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  Latch arrived, release;
  Record& gate = col.add();
  ASSERT_TRUE(engine->submit(col.wire(gate_request(model, arrived, release), gate)).ok());
  arrived.wait();
  auto submit = [&](Priority p) -> Record& {
    GenerationRequest r;
    r.prompt = encode(model, "Tom had a red ball");
    r.sampler = greedy();
    r.max_tokens = 3;
    r.priority = p;
    Record& rec = col.add();
    EXPECT_TRUE(engine->submit(col.wire(r, rec)).ok());
    return rec;
  };
  Record& b1 = submit(Priority::BATCH);
  Record& i1 = submit(Priority::INTERACTIVE);
  Record& b2 = submit(Priority::BATCH);
  Record& i2 = submit(Priority::INTERACTIVE);
  release.open();
  ASSERT_TRUE(col.wait_for(5));
  EXPECT_EQ(gate.order, 0);
  EXPECT_EQ(i1.order, 1);
  EXPECT_EQ(i2.order, 2);
  EXPECT_EQ(b1.order, 3);
  EXPECT_EQ(b2.order, 4);
  for (const Record* r : {&i1, &i2, &b1, &b2}) EXPECT_EQ(r->result.finish, FinishReason::LENGTH);
}

// (h): shutdown with work running and waiting calls every on_done once.
TEST(Engine, ShutdownEndsEveryRequestOnce) {
  REQUIRE_MODEL();
  EngineOptions o;
  o.parallel = 2;
  auto engine = make_engine(model, o);
  ASSERT_TRUE(engine);
  Collector col;
  Latch first_token;
  std::vector<Record*> recs;
  for (int i = 0; i < 5; ++i) {
    GenerationRequest r;
    r.prompt = encode(model, kStories[i]);
    r.sampler = greedy();
    r.ignore_eos = true;  // runs to the full context unless stopped
    if (i == 0) {
      auto once = std::make_shared<bool>(true);
      r.on_token = [&first_token, once](const TokenEvent&) {
        if (*once) first_token.open();
        *once = false;
        return true;
      };
    }
    Record& rec = col.add();
    recs.push_back(&rec);
    ASSERT_TRUE(engine->submit(col.wire(r, rec)).ok());
  }
  first_token.wait();
  engine->shutdown();
  EXPECT_EQ(col.done(), 5);
  int started = 0;
  for (const Record* r : recs) {
    EXPECT_EQ(r->done_calls, 1);
    EXPECT_EQ(r->result.finish, FinishReason::CANCELLED);
    started += r->result.prompt_tokens_computed > 0;
  }
  EXPECT_GE(recs[0]->result.completion_tokens, 1);
  EXPECT_LE(started, 2);  // the waiting ones never ran
  GenerationRequest late;
  late.prompt = {1, 300};
  EXPECT_EQ(engine->submit(late).rejection, Rejection::SHUTTING_DOWN);
  engine->shutdown();  // twice is fine
  engine.reset();
  EXPECT_EQ(col.done(), 5);
}

TEST(Engine, CreateChecksItsOptions) {
  REQUIRE_MODEL();
  EngineOptions o;
  o.parallel = 8;
  o.n_batch = 4;
  auto e = Engine::create(model, o);
  ASSERT_FALSE(e.has_value());
  EXPECT_NE(e.error().message.find("n_batch"), std::string::npos) << e.error().message;
  o = EngineOptions();
  o.parallel = 0;
  EXPECT_FALSE(Engine::create(model, o).has_value());
  o = EngineOptions();
  o.memory_kind = "bogus";
  EXPECT_FALSE(Engine::create(model, o).has_value());
  o = EngineOptions();
  EXPECT_EQ(make_engine(model, o)->n_ctx(), 512);  // resolve_context: the model's 512
}

TEST(EngineMetrics, HistogramBucketsAreUpperBounds) {
  Histogram h = Histogram::seconds();
  ASSERT_EQ(h.counts.size(), h.bounds.size() + 1);
  EXPECT_DOUBLE_EQ(h.bounds.front(), 0.001);
  EXPECT_DOUBLE_EQ(h.bounds.back(), 60);
  h.observe(0.001);  // on a bound: that bucket
  h.observe(0.0011);
  h.observe(1000);   // past the last: +Inf
  EXPECT_EQ(h.counts[0], 1u);
  EXPECT_EQ(h.counts[1], 1u);
  EXPECT_EQ(h.counts.back(), 1u);
  EXPECT_EQ(h.count, 3u);
  EXPECT_DOUBLE_EQ(h.sum, 1000.0021);
  EXPECT_STREQ(finish_reason_name(FinishReason::STOP), "stop");
  EXPECT_STREQ(finish_reason_name(FinishReason::LENGTH), "length");
  EXPECT_STREQ(finish_reason_name(FinishReason::CANCELLED), "cancelled");
  EXPECT_STREQ(finish_reason_name(FinishReason::ERROR), "error");
}

}  // namespace
}  // namespace engram::server
