// engram run: generate text from a prompt, streamed to stdout.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>

#include "commands.h"
#include "common.h"
#include "model/model.h"
#include "runtime/generate.h"
#include "runtime/progress.h"
#include "runtime/speculative.h"

namespace engram::tools {
namespace {

struct RunOptions {
  std::string model;
  std::string prompt;
  std::string prompt_file;  // -f: the prompt read from a file (a long document)
  int threads = 0;
  int64_t ctx_size = 0;
  bool echo = false;
  bool parse_special = false;
  int64_t seed = -1;
  GenerateParams gen;
  MemoryFlags memory;
  // Speculative decoding (greedy only): a draft model, or the model's own next-n layers.
  std::string draft;
  LoadMode load = LoadMode::kAuto;
  std::string spec;
  SpeculativeParams speculative;
  const CLI::Option* temp_option = nullptr;  // to tell an explicit --temp from the default
};

// Checks the speculation flags against the sampling and memory ones; may
// switch the default temperature to greedy (said on stderr).
std::optional<std::string> check_speculation(RunOptions& o, const std::string& memory_kind) {
  const std::string what = !o.draft.empty() ? "--draft" : "--spec " + o.spec;
  if (!o.spec.empty() && o.spec != "mtp")
    return "--spec: unknown kind '" + o.spec + "' (supported: mtp; for a draft model use --draft)";
  if (!o.spec.empty() && !o.draft.empty()) return std::string("--spec mtp and --draft cannot be combined");
  if (o.gen.sampler.temperature > 0) {
    if (o.temp_option != nullptr && o.temp_option->count() > 0)
      return what + " is greedy only: drop --temp or use --temp 0";
    o.gen.sampler.temperature = 0;
    std::fprintf(stderr, "engram: %s: greedy decoding (speculation is greedy only)\n", what.c_str());
  }
  if (memory_kind != "dense")
    return what + " needs the dense memory (got --memory " + memory_kind + "): its verification takes positions back";
  return std::nullopt;
}

void write_out(const std::string& s) {
  if (!s.empty()) std::fwrite(s.data(), 1, s.size(), stdout);
}

int run(RunOptions& o) {
  auto path = resolve_model_path(o.model);
  if (!path) return fail(path.error().message);
  auto model = Model::load(*path, o.load);
  if (!model) return fail(model.error().message);
  const Tokenizer& tok = (*model)->tokenizer();

  if (!o.prompt_file.empty()) {
    auto text = read_text_file(o.prompt_file, "--file");
    if (!text) return fail(text.error().message);
    o.prompt = std::move(*text);
  }
  std::vector<TokenId> prompt = tok.encode(o.prompt, /*add_special=*/true, o.parse_special);
  o.gen.sampler.seed = o.seed >= 0 ? static_cast<uint64_t>(o.seed) : std::random_device{}();

  // Context: -c, else the default one, grown to hold the prompt and the
  // tokens to generate (a long prompt then runs on engram memory, below).
  const ModelConfig& cfg = (*model)->config();
  int64_t n_ctx = resolve_context(cfg, o.ctx_size);
  if (o.ctx_size <= 0) {
    const int64_t need = static_cast<int64_t>(prompt.size()) + std::max(o.gen.n_predict, 0);
    n_ctx = std::max(n_ctx, need);
  }
  const std::string kind = choose_memory_kind(o.memory.kind, n_ctx, cfg.n_ctx_train);
  // Beyond dense, the memory layout (and the prompt chunk) not given by
  // flags is fitted to the training context, so that every attended key
  // stays within the distances the model was trained on.
  if (kind != "dense") o.gen.n_batch = fit_prompt_batch(o.gen.n_batch, cfg.n_ctx_train);
  auto mem_opts = memory_options(o.memory, cfg.n_ctx_train, o.gen.n_batch);
  if (!mem_opts) return fail(mem_opts.error().message);
  if (!o.memory.no_remap) mem_opts->rotate_keys = (*model)->key_rotator();
  auto memory = make_memory(kind, (*model)->memory_layout(n_ctx), *mem_opts);
  if (!memory) return fail("--memory: " + memory.error().message);
  if (kind == "dense" && cfg.n_ctx_train > 0 && n_ctx > cfg.n_ctx_train) {
    std::fprintf(stderr,
                 "engram: warning: dense attention over %lld positions, beyond the model's training context of "
                 "%lld: expect degraded output (--memory engram keeps it in range)\n",
                 static_cast<long long>(n_ctx), static_cast<long long>(cfg.n_ctx_train));
  }

  const bool speculate = !o.draft.empty() || !o.spec.empty();
  if (speculate)
    if (auto bad = check_speculation(o, kind)) return fail(*bad);

  ThreadPool pool(o.threads);
  Session session(**model, pool, n_ctx, std::move(*memory));
  std::unique_ptr<Model> draft_model;
  std::unique_ptr<Drafter> drafter;
  if (!o.draft.empty()) {
    auto draft_path = resolve_model_path(o.draft);
    if (!draft_path) return fail("--draft: " + draft_path.error().message);
    auto loaded = Model::load(*draft_path, o.load);
    if (!loaded) return fail("--draft: " + loaded.error().message);
    draft_model = std::move(*loaded);
    Status same = check_same_vocabulary(tok, *path, draft_model->tokenizer(), *draft_path);
    if (!same.is_ok()) return fail(same.message());
    drafter = std::make_unique<ModelDrafter>(*draft_model, pool, session.n_ctx(), o.gen.n_batch);
  } else if (o.spec == "mtp") {
    auto mtp = MtpDrafter::create(**model, pool, session.n_ctx());
    if (!mtp) return fail(mtp.error().message);
    drafter = std::move(*mtp);
  }
  // Checked before anything is printed (generate() checks it too).
  if (static_cast<int64_t>(prompt.size()) > session.n_ctx()) {
    return fail("prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " +
                std::to_string(session.n_ctx()) + " (see --ctx-size)");
  }
  TokenPrinter printer(tok);
  std::string echo;
  for (TokenId id : prompt) {
    std::string text = printer.push(id);  // keeps the printer's state right even without --echo
    if (o.echo) echo += text;
  }

  // Long prompts are prefilled in batches under a progress bar; the echo is
  // printed once the bar has finished its line.
  const bool bar_on = show_progress(o.memory) && static_cast<int64_t>(prompt.size()) > o.gen.n_batch;
  ProgressBar bar("prefill", static_cast<int64_t>(prompt.size()), bar_on);
  o.gen.on_prompt_progress = [&](int64_t done, int64_t total) {
    bar.update(done, session.memory().bytes_used());
    if (done == total) {
      bar.finish();
      write_out(echo);
      std::fflush(stdout);
    }
  };

  auto on_token = [&](TokenId id) {
    write_out(printer.push(id));
    std::fflush(stdout);
    return true;
  };
  SpeculativeStats spec_stats;
  auto stats = drafter ? generate_speculative(session, *drafter, prompt, o.gen, o.speculative, &spec_stats, on_token)
                       : generate(session, prompt, o.gen, on_token);
  write_out(printer.flush());
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!stats) return fail(stats.error().message);
  std::string line = stats->summary();
  if (o.gen.sampler.temperature > 0) line += " | seed " + std::to_string(o.gen.sampler.seed);
  if (drafter) line += " | " + spec_stats.summary();
  line += " | memory " + kind + " " + format_bytes(session.memory().bytes_used()) + " | peak RSS " +
          format_bytes(peak_rss_bytes());
  std::fprintf(stderr, "%s\n", line.c_str());
  return 0;
}

}  // namespace

Command add_run_command(CLI::App& parent) {
  auto o = std::make_shared<RunOptions>();
  o->gen.n_predict = 256;
  CLI::App* app = parent.add_subcommand("run", "Generate text from a prompt");
  add_model_option(app, o->model);
  add_load_option(app, o->load);
  CLI::Option* prompt_opt = app->add_option("-p,--prompt", o->prompt, "Prompt text (BOS is added as the model asks)");
  app->add_option("-f,--file", o->prompt_file, "Read the prompt from a file (e.g. a long document)")
      ->excludes(prompt_opt);
  app->add_option("-n,--n-predict", o->gen.n_predict, "Tokens to generate (-1: until end of text or a full context)")
      ->capture_default_str();
  o->temp_option =
      app->add_option("--temp", o->gen.sampler.temperature, "Temperature (<= 0: greedy)")->capture_default_str();
  app->add_option("--top-k", o->gen.sampler.top_k, "Top-k (0: off)")->capture_default_str();
  app->add_option("--top-p", o->gen.sampler.top_p, "Top-p (1: off)")->capture_default_str();
  app->add_option("--min-p", o->gen.sampler.min_p, "Min-p (0: off)")->capture_default_str();
  app->add_option("--repeat-penalty", o->gen.sampler.repeat_penalty, "Repetition penalty (1: off)")
      ->capture_default_str();
  app->add_option("--presence-penalty", o->gen.sampler.presence_penalty, "Presence penalty (0: off)")
      ->capture_default_str();
  app->add_option("--repeat-last-n", o->gen.sampler.penalty_last_n, "Tokens the penalties look back on (-1: all)")
      ->capture_default_str();
  app->add_option("-s,--seed", o->seed, "Random seed (-1: random)")->capture_default_str();
  app->add_option("-c,--ctx-size", o->ctx_size,
                  "Context length (0: the model's, at most 4096, grown to fit the prompt and -n)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("-b,--batch-size", o->gen.n_batch, "Prompt tokens per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_flag("--ignore-eos", o->gen.ignore_eos, "Do not stop at end-of-text tokens");
  app->add_flag("--echo", o->echo, "Print the prompt before the generated text");
  app->add_flag("--special", o->parse_special, "Parse special-token text (e.g. <s>) in the prompt");
  app->add_option("--draft", o->draft,
                  "Speculative decoding with this draft model (same vocabulary; greedy, same output as without)");
  app->add_option("--draft-n", o->speculative.n_draft, "Tokens drafted per verification step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--spec", o->spec,
                  "Speculative decoding with the model's own next-n layers: mtp (DeepSeek-V3 style; greedy)");
  add_threads_option(app, o->threads);
  add_memory_options(app, o->memory,
                     "Attention memory: dense, window or engram (default: dense when the context fits the "
                     "model's training context, else engram)",
                     /*top_k_alias=*/false);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
