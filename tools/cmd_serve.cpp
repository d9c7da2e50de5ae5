// engram serve: an OpenAI-compatible HTTP server (docs/server.md).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>

#include "commands.h"
#include "common.h"
#include "model/model.h"
#include "runtime/generate.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/http_server.h"

namespace engram::tools {
namespace {

struct ServeOptions {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 4;
  int64_t ctx = 0;
  int threads = 0;
  int max_queue = -1;
  LoadMode load = LoadMode::kAuto;
  std::string config;
  std::vector<std::string> api_keys;
  std::string cache_dir;
  std::string model_alias;
  std::string ledger;
  size_t max_body_mb = 64;
  MemoryFlags memory;
};

// SIGINT and SIGTERM are blocked in every thread (set before any thread
// starts, so they inherit it) and taken by one thread with sigwait(): the
// first asks the server to stop gracefully, a second one exits at once.
// SIGUSR1 only wakes that thread when the server stopped by itself.
sigset_t shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  return set;
}

int serve(ServeOptions& o) {
  const sigset_t signals = shutdown_signals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that went away must not kill the server

  auto path = resolve_model_path(o.model);
  if (!path) return fail(path.error().message);
  server::ServerConfig config;
  if (!o.config.empty()) {
    auto c = server::load_server_config(o.config);
    if (!c) return fail(c.error().message);
    config = std::move(*c);
  }
  if (!o.ledger.empty()) config.ledger_path = o.ledger;
  if (o.max_queue >= 0) config.max_queue = o.max_queue;

  auto model = Model::load(*path, o.load);
  if (!model) return fail(model.error().message);
  const ModelConfig& cfg = (*model)->config();

  server::EngineOptions eo;
  eo.parallel = o.parallel;
  eo.n_ctx = resolve_context(cfg, o.ctx);
  eo.max_queue = config.max_queue;
  eo.threads = o.threads;
  eo.memory_kind = choose_memory_kind(o.memory.kind, eo.n_ctx, cfg.n_ctx_train);
  // As in `engram run`: beyond dense, the prompt chunk and the layout flags
  // not given are fitted to the model's training context.
  if (eo.memory_kind != "dense") eo.n_batch = std::max(eo.parallel, fit_prompt_batch(eo.n_batch, cfg.n_ctx_train));
  auto mem_opts = memory_options(o.memory, cfg.n_ctx_train, eo.n_batch);
  if (!mem_opts) return fail(mem_opts.error().message);
  eo.memory_options = *mem_opts;
  if (!o.memory.no_remap) eo.memory_options.rotate_keys = (*model)->key_rotator();
  eo.cache_dir = o.cache_dir;
  auto engine = server::Engine::create(**model, eo);
  if (!engine) return fail(engine.error().message);

  server::ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.model_id = !o.model_alias.empty() ? o.model_alias : std::filesystem::path(*path).stem().string();
  so.config = std::move(config);
  so.api_keys = o.api_keys;
  so.parallel = o.parallel;
  so.max_body_bytes = o.max_body_mb << 20;
  auto server = server::HttpServer::create(**engine, std::move(so));
  if (!server) return fail(server.error().message);
  auto port = (*server)->bind();
  if (!port) return fail(port.error().message);

  if (!server::is_loopback_host(o.host) && !(*server)->auth_enabled()) {
    std::fprintf(stderr,
                 "engram: WARNING: listening on %s without authentication: anyone who can reach this address can "
                 "use the model. Add --api-key KEY or keys in --config.\n",
                 o.host.c_str());
  }
  const std::string host = o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host;
  std::printf("engram: serving %s on http://%s:%d (parallel %d, context %lld, memory %s%s)\n",
              (*server)->model_id().c_str(), host.c_str(), *port, o.parallel,
              static_cast<long long>((*engine)->n_ctx()), eo.memory_kind.c_str(),
              (*server)->auth_enabled() ? ", API keys required" : "");
  std::fflush(stdout);

  server::HttpServer* srv = server->get();
  std::thread signal_thread([srv, signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGUSR1) return;  // the server stopped on its own
    std::fprintf(stderr, "engram: %s: finishing (again to quit at once)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    std::thread again([signals] {
      int s2 = 0;
      sigwait(&signals, &s2);
      if (s2 != SIGUSR1) _exit(130);
    });
    again.detach();
    srv->stop();
  });

  Status st = (*server)->listen();
  (*server)->stop();  // idempotent: already done when a signal ended listen()
  pthread_kill(signal_thread.native_handle(), SIGUSR1);
  signal_thread.join();
  server->reset();  // closes the ledger
  std::fprintf(stderr, "engram: server stopped\n");
  if (!st) return fail(st.message());
  return 0;
}

}  // namespace

Command add_serve_command(CLI::App& parent) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* app = parent.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  add_model_option(app, o->model);
  add_load_option(app, o->load);
  app->add_option("--host", o->host, "Address to listen on (loopback unless you ask)")->capture_default_str();
  app->add_option("--port", o->port, "Port (0: any free port; the URL line says which)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app->add_option("--parallel", o->parallel, "Requests decoded together (slots)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app->add_option("-c,--ctx", o->ctx, "Context per slot (0: the model's, at most 4096)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--max-queue", o->max_queue, "Waiting requests before 429 (default: the config's, else 64)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--config", o->config, "Server config (JSON): keys, prices, limits, ledger (docs/server.md)");
  app->add_option("--api-key", o->api_keys, "An API key clients must send (repeatable); turns on authentication");
  app->add_option("--ledger", o->ledger, "SQLite usage ledger (default: the config's, else engram-ledger.db)");
  app->add_option("--cache-dir", o->cache_dir, "Directory for the on-disk prompt cache (default: RAM only)");
  app->add_option("--model-alias", o->model_alias, "Model id in the API (default: the file name without .gguf)");
  app->add_option("--max-body-mb", o->max_body_mb, "Largest request body in MiB (larger: 413)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  add_threads_option(app, o->threads);
  add_memory_options(app, o->memory,
                     "Attention memory: dense, window or engram (default: dense when the context fits the model's "
                     "training context, else engram)",
                     /*top_k_alias=*/false);
  return {app, [o] { return serve(*o); }};
}

}  // namespace engram::tools
