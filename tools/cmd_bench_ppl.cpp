// engram bench ppl: perplexity of a long text, by ranges of positions, for
// one or more attention memories (does quality hold beyond the trained length?).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "cmd_bench.h"
#include "common.h"
#include "model/model.h"
#include "runtime/niah.h"
#include "runtime/perplexity.h"
#include "runtime/progress.h"

namespace engram::tools {
namespace {

struct PplOptions {
  std::string model;
  std::string text;
  std::string ctx = "16K";
  std::string ranges;  // "" = the training context, then x4 steps
  int threads = 0;
  int n_batch = 512;
  std::string json_out;
  MemoryFlags memory;
};

std::string range_name(const PerplexityRange& r) {
  return "[" + format_token_count(r.begin) + ", " + format_token_count(r.end) + ")";
}

int run(PplOptions& o) {
  auto ctx = parse_token_count(o.ctx);
  if (!ctx) return fail("--ctx: " + ctx.error().message);
  auto setup = load_bench_setup(o.model, o.memory, "dense,engram", o.n_batch);
  if (!setup) return fail(setup.error().message);
  BenchSetup& b = *setup;
  const Tokenizer& tok = b.model->tokenizer();
  const ModelConfig& cfg = b.model->config();

  std::vector<int64_t> boundaries;
  if (!o.ranges.empty()) {
    auto b = parse_token_counts(o.ranges);
    if (!b) return fail("--ranges: " + b.error().message);
    boundaries = *b;
  } else {
    for (int64_t b = cfg.n_ctx_train > 0 ? cfg.n_ctx_train : 512; b < *ctx; b *= 4) boundaries.push_back(b);
  }

  // The text's tokens: BOS, then each unit as a continuation, up to --ctx.
  std::string source;
  auto units = load_text_units(o.text, "--text", &source);
  if (!units) return fail(units.error().message);
  std::vector<TokenId> tokens;
  if (tok.add_bos() && tok.bos() >= 0) tokens.push_back(tok.bos());
  for (const std::string& u : *units) {
    if (static_cast<int64_t>(tokens.size()) >= *ctx) break;
    std::vector<TokenId> ids = encode_continuation(tok, u);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  if (static_cast<int64_t>(tokens.size()) > *ctx) tokens.resize(static_cast<size_t>(*ctx));
  if (static_cast<int64_t>(tokens.size()) < *ctx) {
    std::fprintf(stderr, "ppl: the text has only %zu tokens (--ctx %lld)\n", tokens.size(),
                 static_cast<long long>(*ctx));
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::fprintf(stderr, "ppl: %s, text %s, %lld tokens, trained context %lld\n",
               std::filesystem::path(b.model_path).filename().c_str(), source.c_str(), static_cast<long long>(n),
               static_cast<long long>(cfg.n_ctx_train));

  ThreadPool pool(o.threads);
  nlohmann::json runs = nlohmann::json::array();
  std::vector<std::pair<std::string, PerplexityResult>> results;
  for (const std::string& requested : b.kinds) {
    const std::string kind = choose_memory_kind(requested, n, cfg.n_ctx_train);
    auto memory = make_memory(kind, b.model->memory_layout(n), b.memory);
    if (!memory) return fail("--memory: " + memory.error().message);
    Session session(*b.model, pool, n, std::move(*memory));
    ProgressBar bar("ppl " + kind, n, show_progress(o.memory) && n > o.n_batch);
    PerplexityParams pp;
    pp.n_batch = o.n_batch;
    pp.boundaries = boundaries;
    pp.progress = [&](int64_t done, int64_t) { bar.update(done, session.memory().bytes_used()); };
    auto r = perplexity(session, tokens, pp);
    bar.finish();
    if (!r) return fail(r.error().message);
    results.emplace_back(kind, *r);

    nlohmann::json rj = {{"memory", kind},
                         {"perplexity", r->all.perplexity()},
                         {"tokens_per_second", r->tokens_per_second()},
                         {"memory_bytes", r->memory_bytes},
                         {"peak_rss_bytes", peak_rss_bytes()}};
    rj["ranges"] = nlohmann::json::array();
    for (const PerplexityRange& g : r->ranges) {
      rj["ranges"].push_back({{"begin", g.begin}, {"end", g.end}, {"tokens", g.count}, {"perplexity", g.perplexity()}});
    }
    runs.push_back(rj);
  }

  // Table: ranges down, memories across.
  std::printf("\nperplexity by position range (%lld tokens)\n%-18s", static_cast<long long>(n), "positions");
  for (const auto& [kind, r] : results) std::printf(" %12s", kind.c_str());
  std::printf("\n");
  const size_t n_ranges = results.empty() ? 0 : results[0].second.ranges.size();
  for (size_t i = 0; i < n_ranges; ++i) {
    std::printf("%-18s", range_name(results[0].second.ranges[i]).c_str());
    for (const auto& [kind, r] : results) std::printf(" %12.3f", r.ranges[i].perplexity());
    std::printf("\n");
  }
  std::printf("%-18s", "all");
  for (const auto& [kind, r] : results) std::printf(" %12.3f", r.all.perplexity());
  std::printf("\n%-18s", "tok/s");
  for (const auto& [kind, r] : results) std::printf(" %12.1f", r.tokens_per_second());
  std::printf("\n%-18s", "memory");
  for (const auto& [kind, r] : results) std::printf(" %12s", format_bytes(r.memory_bytes).c_str());
  std::printf("\npeak RSS %s\n", format_bytes(peak_rss_bytes()).c_str());
  std::fflush(stdout);

  if (!o.json_out.empty()) {
    nlohmann::json j = {{"model", b.model_path},
                        {"text", source},
                        {"tokens", n},
                        {"n_ctx_train", cfg.n_ctx_train},
                        {"threads", pool.size()},
                        {"memory_options", memory_options_json(b.memory)},
                        {"runs", runs}};
    std::ofstream f(o.json_out);
    f << j.dump(1) << "\n";
    if (!f) return fail("--json: cannot write '" + o.json_out + "'");
  }
  return 0;
}

}  // namespace

Command add_bench_ppl_command(CLI::App& bench) {
  auto o = std::make_shared<PplOptions>();
  CLI::App* app = bench.add_subcommand("ppl", "Perplexity of a long text by ranges of positions");
  add_model_option(app, o->model);
  app->add_option("--text", o->text, "Text file, one unit per line (default: the KJV of Debian's bible-kjv)");
  app->add_option("--ctx", o->ctx, "Tokens of the text to score (K = 1024, M = 1048576)")->capture_default_str();
  app->add_option("--ranges", o->ranges,
                  "Range boundaries in positions, e.g. 512,4K,16K (default: the training context, then x4 steps)");
  app->add_option("--json", o->json_out, "Write the results as JSON");
  app->add_option("-b,--batch-size", o->n_batch, "Tokens per forward pass (and per chunk of logits)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_threads_option(app, o->threads);
  add_memory_options(app, o->memory,
                     "Memories to run side by side, comma-separated: dense, window, engram, auto "
                     "(default: dense,engram)",
                     /*top_k_alias=*/true);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
