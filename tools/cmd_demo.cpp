// engram demo: the README's main command. Hides facts ("The special magic
// number for tiger is 482.") at spread-out depths of a long document (the
// KJV, 128K tokens by default), reads the document once into the attention
// memory, then asks the model for every fact and prints its answers, the
// memory used and the speed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cmd_bench.h"
#include "commands.h"
#include "common.h"
#include "model/model.h"
#include "runtime/generate.h"
#include "runtime/niah.h"
#include "runtime/progress.h"
#include "runtime/sampler.h"

namespace engram::tools {
namespace {

struct DemoOptions {
  std::string model;
  std::string length = "128K";
  int facts = 5;
  uint64_t seed = 7;
  std::string haystack;   // "" = the KJV
  std::string keys_file;
  int n_batch = 512;
  int threads = 0;
  MemoryFlags memory;
};

struct Fact {
  std::string key;
  int value = 0;
  double depth = 0;  // fraction of the document before it
};

// The document: BOS, then haystack units from a random start (wrapping),
// with one needle per fact at its depth, up to `length` tokens in all.
std::vector<TokenId> build_document(const Tokenizer& tok, const std::vector<std::vector<TokenId>>& units,
                                    const std::vector<std::vector<TokenId>>& needles, const std::vector<Fact>& facts,
                                    int64_t length, std::mt19937_64& rng) {
  int64_t needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += static_cast<int64_t>(n.size());
  const int64_t hay_budget = length - 1 - needle_tokens;
  std::vector<TokenId> doc;
  doc.reserve(static_cast<size_t>(length));
  if (tok.bos() >= 0) doc.push_back(tok.bos());
  size_t unit = std::uniform_int_distribution<size_t>(0, units.size() - 1)(rng);
  int64_t hay = 0;
  size_t next_fact = 0;
  while (true) {
    // Needles whose depth has been reached go in before the next unit.
    while (next_fact < facts.size() && hay >= static_cast<int64_t>(facts[next_fact].depth * hay_budget)) {
      doc.insert(doc.end(), needles[next_fact].begin(), needles[next_fact].end());
      ++next_fact;
    }
    const std::vector<TokenId>& u = units[unit];
    if (hay + static_cast<int64_t>(u.size()) > hay_budget) break;
    doc.insert(doc.end(), u.begin(), u.end());
    hay += static_cast<int64_t>(u.size());
    unit = (unit + 1) % units.size();
  }
  for (; next_fact < facts.size(); ++next_fact) doc.insert(doc.end(), needles[next_fact].begin(), needles[next_fact].end());
  return doc;
}

// Greedy answer after the question: at most `max_tokens` tokens, stopping
// after a period. Returns the text; adds the decode time and steps.
Expected<std::string> answer(Session& s, int max_tokens, double* decode_seconds, int* steps) {
  std::string text;
  for (int i = 0; i < max_tokens; ++i) {
    const TokenId id = argmax(s.logits());
    if (s.tokenizer().is_eog(id)) break;
    text += s.tokenizer().token_to_piece(id);
    if (text.find('.') != std::string::npos) break;
    const auto t0 = Clock::now();
    ENGRAM_RETURN_IF_ERROR(s.decode(std::vector<TokenId>{id}, 1));
    *decode_seconds += seconds_since(t0);
    ++*steps;
  }
  return text;
}

int run(DemoOptions& o) {
  auto length = parse_token_count(o.length);
  if (!length) return fail("--length: " + length.error().message);
  if (*length < 1024) return fail("--length: at least 1K tokens, got " + o.length);
  auto path = resolve_model_path(o.model);
  if (!path) return fail(path.error().message);
  auto model = Model::load(*path);
  if (!model) return fail(model.error().message);
  const Tokenizer& tok = (*model)->tokenizer();
  const ModelConfig& cfg = (*model)->config();

  std::string source;
  auto texts = load_text_units(o.haystack, "--haystack", &source);
  if (!texts) return fail(texts.error().message);
  std::vector<std::vector<TokenId>> units;
  for (const std::string& t : *texts) {
    std::vector<TokenId> ids = encode_continuation(tok, t);
    if (!ids.empty()) units.push_back(std::move(ids));
  }
  if (units.empty()) return fail("--haystack: no text in " + source);
  auto keys = load_niah_keys(o.keys_file, *path, tok, o.facts);
  if (!keys) return fail(keys.error().message);
  if (static_cast<int>(keys->size()) < o.facts)
    return fail("--facts " + std::to_string(o.facts) + ": only " + std::to_string(keys->size()) + " keys");

  // The facts: distinct keys, random values, depths spread over the document.
  std::mt19937_64 rng(o.seed);
  std::vector<std::string> pool_keys = *keys;
  std::shuffle(pool_keys.begin(), pool_keys.end(), rng);
  const NiahTemplates templates;
  std::vector<Fact> facts(static_cast<size_t>(o.facts));
  std::vector<std::vector<TokenId>> needles;
  for (int i = 0; i < o.facts; ++i) {
    Fact& f = facts[static_cast<size_t>(i)];
    f.key = pool_keys[static_cast<size_t>(i)];
    f.value = std::uniform_int_distribution<int>(100, 999)(rng);
    f.depth = (i + 0.5) / o.facts;
    needles.push_back(encode_continuation(tok, fill_template(templates.needle, f.key, std::to_string(f.value))));
  }
  // The context is --length: the document and room for a question and its answer.
  constexpr int64_t kQuestionRoom = 32;
  std::vector<TokenId> doc = build_document(tok, units, needles, facts, *length - kQuestionRoom, rng);

  // Memory: engram beyond the training context, its layout fitted to it.
  const int64_t n_ctx = *length;
  const std::string kind = choose_memory_kind(o.memory.kind, n_ctx, cfg.n_ctx_train);
  if (kind != "dense") o.n_batch = fit_prompt_batch(o.n_batch, cfg.n_ctx_train);
  auto mem_opts = memory_options(o.memory, cfg.n_ctx_train, o.n_batch);
  if (!mem_opts) return fail(mem_opts.error().message);
  if (!o.memory.no_remap) mem_opts->rotate_keys = (*model)->key_rotator();
  auto memory = make_memory(kind, (*model)->memory_layout(n_ctx), *mem_opts);
  if (!memory) return fail("--memory: " + memory.error().message);
  ThreadPool pool(o.threads);
  Session session(**model, pool, n_ctx, std::move(*memory));

  std::printf("engram demo: %s (trained on %lld-token contexts)\n", path->c_str(),
              static_cast<long long>(cfg.n_ctx_train));
  std::printf("document: %zu tokens of %s with %d facts hidden in it; memory: %s", doc.size(), source.c_str(),
              o.facts, kind.c_str());
  if (kind == "engram")
    std::printf(" (sinks %d, window %d, blocks of %d, top %d + %d shared, %s)", mem_opts->sinks, mem_opts->window,
                mem_opts->block_size, mem_opts->top_k, mem_opts->shared_blocks,
                block_compression_name(mem_opts->compression));
  std::printf("\n\n");
  std::fflush(stdout);

  ProgressBar bar("reading", static_cast<int64_t>(doc.size()), show_progress(o.memory));
  const auto t_prefill = Clock::now();
  Status st = session.decode(doc, o.n_batch, nullptr,
                             [&](int64_t done, int64_t) { bar.update(done, session.memory().bytes_used()); });
  bar.finish();
  if (!st.is_ok()) return fail(st.message());
  const double prefill_seconds = seconds_since(t_prefill);
  const uint64_t memory_bytes = session.memory().bytes_used();

  const int64_t doc_end = session.n_past();
  int recalled = 0, steps = 0, question_tokens = 0;
  double decode_seconds = 0, question_seconds = 0;  // generation steps; the questions' prompt tokens
  for (const Fact& f : facts) {
    const std::vector<TokenId> question = encode_continuation(tok, fill_template(templates.question, f.key, ""));
    const auto t0 = Clock::now();
    st = session.decode(question, o.n_batch);
    if (!st.is_ok()) return fail(st.message());
    question_seconds += seconds_since(t0);
    question_tokens += static_cast<int>(question.size());
    auto text = answer(session, 4, &decode_seconds, &steps);
    if (!text) return fail(text.error().message);
    const bool ok = niah_correct(*text, std::to_string(f.value));
    recalled += ok;
    std::printf("  Q: What is the special magic number for %s?  (hidden at %2.0f%% depth)\n", f.key.c_str(),
                100 * f.depth);
    std::printf("  A:%s   %s (planted: %d)\n\n", text->c_str(), ok ? "correct" : "WRONG", f.value);
    std::fflush(stdout);
    session.rewind(doc_end);
  }

  std::printf("recalled %d of %d facts from a %zu-token document\n", recalled, o.facts, doc.size());
  std::printf("reading: %.1f s, %.0f tokens/s | questions: %.1f ms per token | answers: %.1f ms per token | "
              "threads: %d\n",
              prefill_seconds, static_cast<double>(doc.size()) / std::max(prefill_seconds, 1e-9),
              question_tokens ? 1000.0 * question_seconds / question_tokens : 0.0,
              steps ? 1000.0 * decode_seconds / steps : 0.0, pool.size());
  std::printf("attention memory: %.1f MiB (%.0f bytes per token; dense f32 KV would need %zu) | peak RSS: %.1f MiB\n",
              static_cast<double>(memory_bytes) / (1 << 20),
              static_cast<double>(memory_bytes) / static_cast<double>(doc.size()), (*model)->kv_bytes_per_token(),
              static_cast<double>(peak_rss_bytes()) / (1 << 20));
  return 0;
}

}  // namespace

Command add_demo_command(CLI::App& parent) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* app = parent.add_subcommand(
      "demo", "Hide facts in a long document, read it once, and ask the model for each (the README's main command)");
  add_model_option(app, o->model);
  app->add_option("--length", o->length, "Document length in tokens (K = 1024, M = 1048576)")->capture_default_str();
  app->add_option("--facts", o->facts, "Facts hidden in the document (one question each)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app->add_option("-s,--seed", o->seed, "Seed of the keys, values and document start")->capture_default_str();
  app->add_option("--haystack", o->haystack, "Document text file, one unit per line (default: the KJV)");
  app->add_option("--keys", o->keys_file, "File of keys, one per line (default: engram-keys.txt beside the model)");
  app->add_option("-b,--batch-size", o->n_batch, "Document tokens per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_threads_option(app, o->threads);
  add_memory_options(app, o->memory, "dense, window, engram or auto (default: engram beyond the training context)",
                     /*top_k_alias=*/true);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
