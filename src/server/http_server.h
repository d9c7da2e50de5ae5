// The HTTP front of `engram serve` (cpp-httplib): OpenAI's endpoints on top
// of the Engine, with API keys, rate limits, prepaid balances, the usage
// ledger, the batch API and Prometheus metrics. docs/server.md lists the
// endpoints and what each answers.
//
// Every completion, interactive or batch, runs through one code path: parse
// and validate the body, render the chat template and tokenize, check the
// context, admit the key (limits, balance), submit to the engine, and bill
// in the request's on_done callback: one ledger row per request, whatever
// way it ended (completed, cancelled by a client that went away, or cut by a
// shutdown: then only the work done is billed).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/config.h"
#include "server/engine.h"
#include "server/batch.h"
#include "server/ledger.h"
#include "util/status.h"

namespace engram::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0: any free port (see bind())
  std::string model_id;               // the id in /v1/models and in requests; "" -> "engram"
  ServerConfig config;                // keys, prices, limits, ledger and files paths
  std::vector<std::string> api_keys;  // --api-key: more keys (default limits, no balance)
  int parallel = 4;                   // the engine's slots (batch work runs when one is free)
  size_t max_body_bytes = 64u << 20;  // larger bodies get 413
  int keep_alive_ms = 2000;           // SSE ": keep-alive" comment after this long without a write
  int http_threads = 0;               // connections served at once; <= 0: max_queue + 2 * parallel + 8
};

class HttpServer {
 public:
  // Opens the ledger (config.ledger_path), syncs the configured keys into it,
  // opens the file store (config.files_dir) and starts the batch service.
  // The engine must outlive the server.
  static Expected<std::unique_ptr<HttpServer>> create(Engine& engine, ServerOptions options);
  ~HttpServer();

  // Binds the listening socket; returns the port (the chosen one for port 0).
  // Connections are queued from here on, even before listen() runs.
  Expected<int> bind();
  // Serves until stop(); returns once the listener has closed.
  Status listen();
  // Graceful stop, from any thread, idempotent: new requests get 503, batch
  // workers stop (their lines in flight finish, or are cancelled and left
  // for a restart), the engine shuts down (running requests are cancelled
  // and billed for the work done), then the listener closes.
  void stop();

  int port() const;
  const std::string& model_id() const;
  bool auth_enabled() const;  // keys configured, --api-key given, or an admin key
  Ledger& ledger();

  // The batch API's executor: runs one line's body as its endpoint would,
  // for the owner's key, at batch priority, billed as batch under the line's
  // id (once, however often the line runs). Blocks until done.
  std::pair<int, nlohmann::json> execute_batch_line(const BatchLineRequest& line);

 private:
  HttpServer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether a host name or address is loopback ("127.0.0.1", "::1", "localhost", "127.x.y.z").
bool is_loopback_host(const std::string& host);

}  // namespace engram::server
