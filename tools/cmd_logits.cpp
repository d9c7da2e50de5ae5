// engram logits: raw logits of a prompt and of greedy steps, for comparing
// against reference implementations.
#include <cstdio>
#include <fstream>
#include <memory>

#include "commands.h"
#include "common.h"
#include "model/model.h"
#include "runtime/generate.h"

namespace engram::tools {
namespace {

struct LogitsOptions {
  std::string model;
  std::string prompt;
  std::string ids;
  std::string out;
  bool use_ids = false;  // --ids given (else -p, which may be "")
  int steps = 0;
  int threads = 0;
};

int run(const LogitsOptions& o) {
  auto path = resolve_model_path(o.model);
  if (!path) return fail(path.error().message);
  std::vector<TokenId> ids;
  if (o.use_ids) {
    auto parsed = parse_token_ids(o.ids);
    if (!parsed) return fail(parsed.error().message);
    ids = std::move(*parsed);
  }
  auto model = Model::load(*path);
  if (!model) return fail(model.error().message);
  Model& m = **model;
  const int n_vocab = m.config().n_vocab;
  if (!o.use_ids) {
    ids = m.tokenizer().encode(o.prompt, /*add_special=*/true, /*parse_special=*/false);
  } else if (Status s = check_token_ids(ids, n_vocab); !s) {
    return fail("--ids: " + s.message());
  }
  if (ids.empty()) return fail("the prompt has no tokens");

  // Context just large enough, as the reference logits were made.
  const int64_t n_ctx = static_cast<int64_t>(ids.size()) + o.steps;
  ThreadPool pool(o.threads);
  Session session(m, pool, n_ctx);
  std::vector<float> logits;
  // The whole prompt in one forward pass, logits at every position.
  if (Status s = session.decode(ids, static_cast<int>(ids.size()), &logits); !s) return fail(s.message());
  const size_t n_prompt = ids.size();
  for (int step = 0; step < o.steps; ++step) {
    const TokenId next = argmax(session.logits());
    ids.push_back(next);
    const TokenId one[1] = {next};
    if (Status s = session.decode(one, 1, &logits); !s) return fail(s.message());
  }

  std::ofstream out(o.out, std::ios::binary | std::ios::trunc);
  if (!out) return fail("cannot open " + o.out + " for writing");
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  out.close();
  if (!out) return fail("error writing " + o.out);

  std::printf("%s\n", join_ids(ids).c_str());
  std::fprintf(stderr, "wrote %zu rows x %d logits to %s (%zu prompt tokens, %d greedy steps)\n",
               logits.size() / static_cast<size_t>(n_vocab), n_vocab, o.out.c_str(), n_prompt, o.steps);
  return 0;
}

}  // namespace

Command add_logits_command(CLI::App& parent) {
  auto o = std::make_shared<LogitsOptions>();
  CLI::App* app = parent.add_subcommand(
      "logits", "Write float32 logits rows (prompt positions, then greedy steps) and print the token ids");
  add_model_option(app, o->model);
  auto* p = app->add_option("-p,--prompt", o->prompt, "Prompt text (tokenized with BOS)");
  auto* ids = app->add_option("--ids", o->ids, "Comma-separated token ids instead of a prompt, e.g. 1,403,407");
  p->excludes(ids);
  ids->excludes(p);
  app->add_option("-n,--steps", o->steps, "Greedy steps after the prompt")->check(CLI::NonNegativeNumber);
  app->add_option("-o,--out", o->out, "Output file: little-endian float32, one row of n_vocab per token")
      ->required();
  add_threads_option(app, o->threads);
  return {app, [o, app] {
            if (app->count("--prompt") == 0 && app->count("--ids") == 0) {
              return fail("logits needs -p TEXT or --ids LIST");
            }
            o->use_ids = app->count("--ids") > 0;
            return run(*o);
          }};
}

}  // namespace engram::tools
