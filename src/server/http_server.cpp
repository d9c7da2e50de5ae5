#include "server/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <strings.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include <httplib.h>

#include "server/batch.h"
#include "server/chat_template.h"
#include "server/limits.h"
#include "server/metrics_text.h"
#include "server/openai.h"
#include "server/pricing.h"
#include "server/reasoning.h"
#include "util/clock.h"

namespace engram::server {

using nlohmann::json;
using Headers = std::vector<std::pair<std::string, std::string>>;

namespace {

using SteadyClock = std::chrono::steady_clock;

// ---------------------------------------------------------------- errors

ApiError make_api_error(int status, std::string message, std::string type, std::string code, std::string param = "") {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

ApiError server_error(const std::string& message) {
  return make_api_error(500, message, "server_error", "internal_error");
}

ApiError shutting_down_error() {
  ApiError e = make_api_error(503, "The server is shutting down; retry on another instance or later.", "server_error",
                              "shutting_down");
  e.headers.emplace_back("Retry-After", "5");
  return e;
}

ApiError not_found(const std::string& message, const std::string& param = "") {
  return make_api_error(404, message, "invalid_request_error", "not_found", param);
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump_json(j), "application/json");
}

void add_headers(httplib::Response& res, const Headers& headers) {
  for (const auto& [name, value] : headers) res.set_header(name, value);
}

void send_error(httplib::Response& res, const ApiError& e) {
  add_headers(res, e.headers);
  send_json(res, e.status, e.to_json());
}

// "sk-abcdef...wxyz": enough to recognize a key in an error, not to use it.
std::string mask_key(const std::string& key) {
  if (key.size() <= 12) return "***";
  return key.substr(0, 6) + "..." + key.substr(key.size() - 4);
}

// Comparison that takes the same time wherever the strings differ (admin key).
bool same_secret(const std::string& a, const std::string& b) {
  unsigned diff = a.size() != b.size();
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

// ---------------------------------------------------------------- client disconnects

// cpp-httplib 0.11 gives a handler no access to its connection, and its
// DataSink::is_writable() only asks whether the send buffer has room, which
// stays true after the client has gone. So the handler finds its own socket
// among the process's descriptors by the connection's two endpoints (they
// identify it uniquely while the handler runs: the socket is closed only
// after the handler returns) and polls it for the peer's hang-up.
class ConnectionWatch {
 public:
  explicit ConnectionWatch(const httplib::Request& req) : fd_(find_socket(req)) {}

  bool found() const { return fd_ >= 0; }

  // True once the peer has closed or reset the connection. A client that
  // shuts down only its sending side (rare for HTTP) counts as gone too.
  bool peer_closed() const {
    if (fd_ < 0) return false;
    pollfd p{fd_, static_cast<short>(POLLRDHUP), 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }

 private:
  static bool endpoint_matches(const sockaddr_storage& a, const std::string& want_ip, int want_port) {
    char ip[INET6_ADDRSTRLEN] = {0};
    int port = -1;
    if (a.ss_family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
      ::inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
      port = ntohs(in->sin_port);
    } else if (a.ss_family == AF_INET6) {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
      port = ntohs(in6->sin6_port);
    } else {
      return false;
    }
    return port == want_port && (want_ip.empty() || want_ip == ip);
  }

  static int find_socket(const httplib::Request& req) {
    if (req.remote_port <= 0 || req.local_port <= 0) return -1;
    DIR* dir = ::opendir("/proc/self/fd");
    if (!dir) return -1;
    int found = -1;
    while (dirent* e = ::readdir(dir)) {
      char* end = nullptr;
      const long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || fd == ::dirfd(dir)) continue;
      struct stat st {};
      if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
      sockaddr_storage local{}, peer{};
      socklen_t ll = sizeof local, pl = sizeof peer;
      if (::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
      if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
      if (endpoint_matches(local, "", req.local_port) && endpoint_matches(peer, req.remote_addr, req.remote_port)) {
        found = static_cast<int>(fd);
        break;
      }
    }
    ::closedir(dir);
    return found;
  }

  int fd_;
};

// ---------------------------------------------------------------- one request

struct Caller {
  std::string key;  // "" when authentication is off
  bool admin = false;
  KeyLimits limits;
  std::optional<double> balance;
};

// A validated request, tokenized, ready for the engine.
struct Prepared {
  CompletionParams params;
  std::vector<TokenId> prompt;
  bool start_in_reasoning = false;
};

// What the HTTP thread and the engine's callbacks (scheduler thread) share
// about one request. The parser and the counters are touched only by the
// callbacks; the queue and the outcome under `mu`.
struct Job {
  Endpoint endpoint = Endpoint::CHAT;
  ResponseMeta meta;
  std::string key;
  std::string limiter_key;  // batch work has its own window, apart from the key's interactive limits
  bool batch = false;
  std::string batch_line;   // "batch_...:N" for batch work: the ledger bills each line once
  bool include_usage = false;
  std::chrono::system_clock::time_point started;  // prices use the window in force here
  int64_t estimated_tokens = 0;
  bool admitted = false;  // counted by the rate limiter until on_done

  ReasoningParser reasoning;
  bool split_reasoning = false;  // chat only

  std::atomic<bool> cancelled{false};
  std::atomic<RequestId> engine_id{0};

  std::mutex mu;
  std::condition_variable cv;
  std::deque<ReasoningParser::Delta> deltas;  // not yet streamed
  std::string content, reasoning_text;        // everything, for the non-streaming answer
  bool done = false;
  GenerationResult result;
  Usage usage;
  Cost cost;

  explicit Job(bool start_in_reasoning) : reasoning(start_in_reasoning) {}
};

// The finish_reason OpenAI clients know; "" for endings answered as errors.
std::string finish_reason_of(FinishReason f) {
  if (f == FinishReason::STOP) return "stop";
  if (f == FinishReason::LENGTH) return "length";
  return "";
}

}  // namespace

bool is_loopback_host(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  in_addr a{};
  if (::inet_pton(AF_INET, host.c_str(), &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
  return false;
}

// ================================================================ the server

struct HttpServer::Impl {
  Engine& engine;
  ServerOptions opts;
  const Model& model;
  const Tokenizer& tok;
  ChatTemplateKind chat_kind;
  std::string bos_text, eos_text;
  int64_t created_at = unix_now_seconds();

  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<FileStore> files;
  std::unique_ptr<BatchService> batches;
  RateLimiter limiter;
  const ModelPrice* price = nullptr;  // into opts.config.prices; nullptr: free
  bool auth = false;

  httplib::Server http;
  std::atomic<bool> stopping{false};
  std::atomic<bool> listen_started{false}, listen_returned{false};
  std::atomic<int> open_streams{0};  // SSE responses not yet written out
  std::mutex stop_mu;
  bool ready = false;  // create() finished: stop() has something to stop
  bool stopped = false;
  int bound_port = -1;

  std::mutex rng_mu;
  std::mt19937_64 rng{std::random_device{}()};

  Impl(Engine& e, ServerOptions o)
      : engine(e), opts(std::move(o)), model(e.model()), tok(model.tokenizer()), chat_kind(chat_template_for(model)) {
    if (opts.model_id.empty()) opts.model_id = "engram";
    if (tok.bos() >= 0) bos_text = tok.token_text(tok.bos());
    if (tok.eos() >= 0) eos_text = tok.token_text(tok.eos());
  }

  std::string new_id(const char* prefix) {
    std::lock_guard<std::mutex> lock(rng_mu);
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string id = prefix;
    for (int i = 0; i < 24; ++i) id += kDigits[rng() & 15];
    return id;
  }
  uint64_t random_seed() {
    std::lock_guard<std::mutex> lock(rng_mu);
    return rng();
  }

  // ------------------------------------------------------------ auth

  std::optional<ApiError> authenticate(const httplib::Request& req, Caller& caller) const {
    if (!auth) return std::nullopt;
    const std::string header = req.get_header_value("Authorization");
    if (header.empty()) {
      return make_api_error(401,
                            "You didn't provide an API key. Send it in the Authorization header: "
                            "'Authorization: Bearer YOUR_KEY'.",
                            "invalid_request_error", "missing_api_key");
    }
    std::string token = header;
    if (token.size() > 7 && strncasecmp(token.c_str(), "Bearer ", 7) == 0) token = token.substr(7);
    while (!token.empty() && token.front() == ' ') token.erase(0, 1);
    while (!token.empty() && token.back() == ' ') token.pop_back();
    if (!opts.config.admin_key.empty() && same_secret(token, opts.config.admin_key)) {
      caller.admin = true;
      return std::nullopt;
    }
    std::optional<KeyRecord> rec = ledger->find_key(token);
    if (!rec || rec->revoked) {
      return make_api_error(401, "Incorrect API key provided: " + mask_key(token) + (rec ? " (revoked)." : "."),
                            "invalid_request_error", "invalid_api_key");
    }
    caller.key = token;
    caller.limits = rec->limits;
    caller.balance = rec->balance_usd;
    return std::nullopt;
  }

  // For endpoints that run the model: a user key (or none without auth).
  std::optional<ApiError> authenticate_user(const httplib::Request& req, Caller& caller) const {
    if (auto e = authenticate(req, caller)) return e;
    if (caller.admin) {
      return make_api_error(403, "The admin key cannot run requests; create an API key with POST /v1/admin/keys.",
                            "permission_error", "admin_key_not_allowed");
    }
    return std::nullopt;
  }

  std::optional<ApiError> authenticate_admin(const httplib::Request& req, Caller& caller) const {
    if (opts.config.admin_key.empty()) {
      return make_api_error(403, "Admin endpoints are disabled: the server's config has no admin_key.",
                            "permission_error", "admin_disabled");
    }
    if (auto e = authenticate(req, caller)) return e;
    if (!caller.admin) {
      return make_api_error(403, "This endpoint needs the admin key.", "permission_error", "admin_key_required");
    }
    return std::nullopt;
  }

  // ------------------------------------------------------------ the completion path

  std::optional<ApiError> prepare(const json& body, Endpoint endpoint, Prepared& out) {
    if (auto e = parse_completion_request(body, endpoint, out.params)) return e;
    CompletionParams& p = out.params;
    if (p.model != opts.model_id) {
      return make_api_error(404,
                            "The model '" + p.model + "' does not exist. This server serves '" + opts.model_id + "'.",
                            "invalid_request_error", "model_not_found", "model");
    }
    if (endpoint == Endpoint::CHAT) {
      const std::string text = render_chat(chat_kind, p.messages, /*add_generation_prompt=*/true, bos_text, eos_text);
      out.prompt = tok.encode(text, tokenizer_adds_bos(chat_kind), /*parse_special=*/true);
      const size_t n = text.size();
      out.start_in_reasoning =
          (n >= 7 && text.compare(n - 7, 7, "<think>") == 0) || (n >= 8 && text.compare(n - 8, 8, "<think>\n") == 0);
    } else if (p.prompt_is_tokens) {
      for (size_t i = 0; i < p.prompt_tokens.size(); ++i) {
        if (p.prompt_tokens[i] >= tok.n_vocab()) {
          return invalid_request("Invalid token id " + std::to_string(p.prompt_tokens[i]) + " at 'prompt[" +
                                     std::to_string(i) + "]': the vocabulary has " + std::to_string(tok.n_vocab()) +
                                     " tokens",
                                 "prompt", "invalid_value");
        }
      }
      out.prompt = p.prompt_tokens;
    } else {
      out.prompt = tok.encode(p.prompt_text, /*add_special=*/true, /*parse_special=*/true);
    }
    if (out.prompt.empty()) {
      return invalid_request("The prompt is empty", endpoint == Endpoint::CHAT ? "messages" : "prompt",
                             "invalid_value");
    }
    // Refused before any queueing, with both numbers.
    const int64_t n_ctx = engine.n_ctx();
    const int64_t n_prompt = static_cast<int64_t>(out.prompt.size());
    if (n_prompt >= n_ctx) {
      return invalid_request("This model's maximum context length is " + std::to_string(n_ctx) +
                                 " tokens, but the prompt has " + std::to_string(n_prompt) +
                                 " tokens (at least one token must be left for the completion).",
                             endpoint == Endpoint::CHAT ? "messages" : "prompt", "context_length_exceeded");
    }
    if (p.max_tokens > 0 && n_prompt + p.max_tokens > n_ctx) {
      return invalid_request(
          "This model's maximum context length is " + std::to_string(n_ctx) + " tokens. However, you requested " +
              std::to_string(n_prompt + p.max_tokens) + " tokens (" + std::to_string(n_prompt) + " in the prompt, " +
              std::to_string(p.max_tokens) + " for the completion). Reduce the prompt or " + "max_tokens.",
          "max_tokens", "context_length_exceeded");
    }
    if (!p.seed_given) p.sampler.seed = random_seed();
    return std::nullopt;
  }

  // Usage and cost of a finished request, and its ledger row.
  void bill(Job& job, const GenerationResult& r) {
    Usage u;
    u.cached_tokens = std::max(0, r.cached_tokens);
    const bool ended_early = r.finish == FinishReason::CANCELLED || r.finish == FinishReason::ERROR;
    // A request cut short pays for the prompt tokens it reached only.
    u.prompt_tokens =
        ended_early ? std::min(r.prompt_tokens, r.cached_tokens + r.prompt_tokens_computed) : r.prompt_tokens;
    u.prompt_tokens = std::max<int64_t>(u.prompt_tokens, u.cached_tokens);
    u.completion_tokens = std::max(0, r.completion_tokens);
    u.reasoning_tokens =
        job.split_reasoning ? std::min<int64_t>(job.reasoning.reasoning_tokens(), u.completion_tokens) : 0;
    Cost cost;
    if (price) cost = price_request(*price, u, job.started, job.batch);
    job.usage = u;
    job.cost = cost;

    UsageRecord rec;
    rec.request_id = job.meta.id;
    rec.key = job.key;
    rec.model = job.meta.model;
    rec.endpoint = endpoint_path(job.endpoint);
    rec.created_unix = job.meta.created;
    rec.usage = u;
    rec.cost = cost;
    rec.batch = job.batch;
    rec.batch_line = job.batch_line;
    rec.finish = finish_reason_name(r.finish);
    Expected<bool> recorded = ledger->record(rec);
    if (!recorded) {
      std::fprintf(stderr, "engram: ledger: request %s not recorded: %s\n", rec.request_id.c_str(),
                   recorded.error().message.c_str());
    } else if (!*recorded) {
      std::fprintf(stderr, "engram: ledger: batch line %s was already billed; its rerun is not billed again\n",
                   rec.batch_line.c_str());
    }
    if (job.admitted) limiter.finish(job.limiter_key, job.estimated_tokens, u.prompt_tokens + u.completion_tokens);
  }

  // Admits the caller and submits to the engine: an interactive request, or
  // the batch line `batch_line`. On success `job` runs and `headers` holds
  // the x-ratelimit-* headers for the response.
  std::optional<ApiError> start(Prepared& prep, const Caller& caller, const std::optional<std::string>& batch_line,
                                std::shared_ptr<Job>& job, Headers& headers) {
    const bool batch = batch_line.has_value();
    if (stopping) return shutting_down_error();
    const CompletionParams& p = prep.params;
    job = std::make_shared<Job>(prep.start_in_reasoning);
    job->endpoint = p.endpoint;
    job->meta = {new_id(p.endpoint == Endpoint::CHAT ? "chatcmpl-" : "cmpl-"), unix_now_seconds(), opts.model_id};
    job->key = caller.key;
    job->limiter_key = batch ? "batch:" + caller.key : caller.key;
    job->batch = batch;
    job->batch_line = batch_line.value_or("");
    job->include_usage = p.stream && p.include_usage;
    job->started = std::chrono::system_clock::now();
    job->split_reasoning = p.endpoint == Endpoint::CHAT;
    // Requests without max_tokens are admitted on their prompt; their output counts when they end.
    job->estimated_tokens = static_cast<int64_t>(prep.prompt.size()) + std::max<int64_t>(p.max_tokens, 0);

    if (!caller.key.empty()) {
      // Batch work has no per-minute limits (it waits for capacity), only the balance.
      const Admission a =
          limiter.admit(job->limiter_key, batch ? KeyLimits{} : caller.limits, caller.balance, job->estimated_tokens);
      headers = a.headers();
      if (!a.ok()) {
        ApiError e = a.refusal == Refusal::BALANCE
                         ? make_api_error(402, a.message, "insufficient_quota", "insufficient_balance")
                         : make_api_error(429, a.message, "rate_limit_exceeded", "rate_limit_exceeded");
        e.headers = headers;
        if (a.refusal != Refusal::BALANCE)
          e.headers.emplace_back("Retry-After", std::to_string(std::max(1, a.retry_after_seconds)));
        return e;
      }
      job->admitted = true;
    }

    GenerationRequest g;
    g.prompt = prep.prompt;
    g.sampler = p.sampler;
    g.max_tokens = p.max_tokens > 0 ? static_cast<int>(std::min<int64_t>(p.max_tokens, INT32_MAX)) : -1;
    g.stop = p.stop;
    g.ignore_eos = p.ignore_eos;
    g.priority = batch ? Priority::BATCH : Priority::INTERACTIVE;
    // on_done holds the job until the request ends (the engine drops its
    // callbacks then); on_token runs only before on_done, so a raw pointer will do.
    Job* raw = job.get();
    std::shared_ptr<Job> keep = job;
    g.on_token = [raw](const TokenEvent& ev) {
      if (raw->cancelled) return false;
      ReasoningParser::Delta d;
      if (raw->split_reasoning)
        d = raw->reasoning.push(ev.text);
      else
        d.content = ev.text;
      if (!d.empty()) {
        std::lock_guard<std::mutex> lock(raw->mu);
        raw->content += d.content;
        raw->reasoning_text += d.reasoning;
        raw->deltas.push_back(std::move(d));
        raw->cv.notify_all();
      }
      return !raw->cancelled.load();
    };
    g.on_prompt_progress = [raw](int, int) { return !raw->cancelled.load(); };
    g.on_done = [this, keep](const GenerationResult& r) {
      Job& j = *keep;
      // The text held back to the end (r.tail) comes last, then what the parser holds.
      ReasoningParser::Delta tail;
      try {
        if (j.split_reasoning) {
          tail = j.reasoning.push_text(r.tail);
          ReasoningParser::Delta rest = j.reasoning.flush();
          tail.content += rest.content;
          tail.reasoning += rest.reasoning;
        } else {
          tail.content = r.tail;
        }
        bill(j, r);                        // before the answer is released: a client that saw it finds it in the ledger
      } catch (const std::exception& e) {  // never on the scheduler thread, never leave the job hanging
        std::fprintf(stderr, "engram: request %s: %s\n", j.meta.id.c_str(), e.what());
      }
      std::lock_guard<std::mutex> lock(j.mu);
      if (!tail.empty()) {
        j.content += tail.content;
        j.reasoning_text += tail.reasoning;
        j.deltas.push_back(std::move(tail));
      }
      j.result = r;
      j.done = true;
      j.cv.notify_all();
    };

    Submitted s = engine.submit(std::move(g));
    if (!s.ok()) {
      if (job->admitted) limiter.finish(job->limiter_key, job->estimated_tokens, 0);
      switch (s.rejection) {
        case Rejection::QUEUE_FULL: {
          ApiError e = make_api_error(429, "The server is busy (" + s.message + "). Retry shortly.",
                                      "rate_limit_exceeded", "queue_full");
          e.headers = headers;
          e.headers.emplace_back("Retry-After", std::to_string(std::max(1, s.retry_after_seconds)));
          return e;
        }
        case Rejection::PROMPT_TOO_LONG:
          return invalid_request(s.message, "messages", "context_length_exceeded");
        case Rejection::SHUTTING_DOWN:
          return shutting_down_error();
        default:
          return invalid_request(s.message.empty() ? "The request was refused" : s.message);
      }
    }
    job->engine_id = s.id;
    if (job->cancelled) engine.cancel(s.id);  // cancelled while being submitted
    return std::nullopt;
  }

  void cancel(Job& job) {
    if (job.cancelled.exchange(true)) return;
    if (RequestId id = job.engine_id.load()) engine.cancel(id);
  }

  // Waits for the end of a request; `watch` (non-streaming HTTP) cancels it
  // when the client goes away meanwhile.
  void wait_done(Job& job, const ConnectionWatch* watch) {
    std::unique_lock<std::mutex> lock(job.mu);
    while (!job.done) {
      job.cv.wait_for(lock, std::chrono::milliseconds(100));
      if (!job.done && watch && !job.cancelled && watch->peer_closed()) {
        lock.unlock();
        cancel(job);
        lock.lock();
      }
    }
  }

  // The non-streaming answer of a finished job.
  std::pair<int, json> final_response(Job& job) {
    std::lock_guard<std::mutex> lock(job.mu);
    const GenerationResult& r = job.result;
    if (r.finish == FinishReason::ERROR) {
      return {500, server_error("Generation failed: " + r.error).to_json()};
    }
    if (r.finish == FinishReason::CANCELLED) {
      return {503, stopping ? shutting_down_error().to_json()
                            : make_api_error(503, "The request was cancelled.", "server_error", "cancelled").to_json()};
    }
    const json usage = usage_json(job.usage, price ? &job.cost : nullptr, job.batch);
    if (job.endpoint == Endpoint::CHAT) {
      return {200, chat_completion_json(job.meta, job.content, job.reasoning_text, finish_reason_of(r.finish), usage)};
    }
    return {200, text_completion_json(job.meta, job.content, finish_reason_of(r.finish), usage)};
  }

  // ------------------------------------------------------------ streaming

  struct Stream {
    std::shared_ptr<Job> job;
    ConnectionWatch watch;
    bool role_sent = false;
    bool finished = false;
    SteadyClock::time_point last_write = SteadyClock::now();
    Stream(std::shared_ptr<Job> j, const httplib::Request& req) : job(std::move(j)), watch(req) {}
  };

  json delta_chunk(const Job& job, const ReasoningParser::Delta& d, bool reasoning) const {
    if (job.endpoint == Endpoint::COMPLETIONS) return text_chunk_json(job.meta, d.content, "", job.include_usage);
    json delta = reasoning ? json{{"reasoning_content", d.reasoning}} : json{{"content", d.content}};
    return chat_chunk_json(job.meta, delta, "", job.include_usage);
  }

  // One call of the chunked content provider: waits briefly for news, writes
  // it, returns false to abort (the client went away: the request is cancelled).
  bool stream_step(Stream& s, httplib::DataSink& sink) {
    // httplib calls the provider outside its handler's try block: nothing may escape.
    try {
      return stream_step_unguarded(s, sink);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "engram: stream %s: %s\n", s.job->meta.id.c_str(), e.what());
      cancel(*s.job);
      return false;
    }
  }

  bool stream_step_unguarded(Stream& s, httplib::DataSink& sink) {
    Job& job = *s.job;
    auto write = [&](const std::string& text) {
      if (!sink.write(text.data(), text.size())) return false;
      s.last_write = SteadyClock::now();
      return true;
    };
    auto fail = [&] {
      cancel(job);
      return false;
    };
    if (!s.role_sent) {
      s.role_sent = true;
      if (job.endpoint == Endpoint::CHAT &&
          !write(sse_event(
              chat_chunk_json(job.meta, json{{"role", "assistant"}, {"content", ""}}, "", job.include_usage)))) {
        return fail();
      }
    }
    std::deque<ReasoningParser::Delta> deltas;
    bool done = false;
    {
      std::unique_lock<std::mutex> lock(job.mu);
      job.cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return job.done || !job.deltas.empty(); });
      deltas.swap(job.deltas);
      done = job.done;
    }
    for (const ReasoningParser::Delta& d : deltas) {
      if (!d.reasoning.empty() && !write(sse_event(delta_chunk(job, d, true)))) return fail();
      if (!d.content.empty() && !write(sse_event(delta_chunk(job, d, false)))) return fail();
    }
    if (!done) {
      if (s.watch.peer_closed()) return fail();
      if (SteadyClock::now() - s.last_write >= std::chrono::milliseconds(opts.keep_alive_ms) && !write(kSseKeepAlive)) {
        return fail();
      }
      return true;
    }
    // The end: finish_reason, the usage chunk, [DONE].
    s.finished = true;
    const GenerationResult& r = job.result;  // written before done, read-only after
    const std::string finish = finish_reason_of(r.finish);
    std::string tail;
    if (finish.empty()) {
      const ApiError e = r.finish == FinishReason::ERROR ? server_error("Generation failed: " + r.error)
                         : stopping                      ? shutting_down_error()
                                    : make_api_error(503, "The request was cancelled.", "server_error", "cancelled");
      tail += sse_event(e.to_json());
    } else if (job.endpoint == Endpoint::CHAT) {
      tail += sse_event(chat_chunk_json(job.meta, json::object(), finish, job.include_usage));
    } else {
      tail += sse_event(text_chunk_json(job.meta, "", finish, job.include_usage));
    }
    if (job.include_usage) {
      const json usage = usage_json(job.usage, price ? &job.cost : nullptr, job.batch);
      tail += sse_event(job.endpoint == Endpoint::CHAT ? chat_usage_chunk_json(job.meta, usage)
                                                       : text_usage_chunk_json(job.meta, usage));
    }
    tail += kSseDone;
    if (!write(tail)) return false;  // billed already; nothing left to cancel
    sink.done();
    return true;
  }

  // ------------------------------------------------------------ handlers

  void handle_completion(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    Caller caller;
    if (auto e = authenticate_user(req, caller)) return send_error(res, *e);
    if (stopping) return send_error(res, shutting_down_error());
    json body;
    if (auto e = parse_json_body(req.body, body)) return send_error(res, *e);
    Prepared prep;
    if (auto e = prepare(body, endpoint, prep)) return send_error(res, *e);
    std::shared_ptr<Job> job;
    Headers headers;
    if (auto e = start(prep, caller, /*batch_line=*/std::nullopt, job, headers)) return send_error(res, *e);
    add_headers(res, headers);

    if (!prep.params.stream) {
      ConnectionWatch watch(req);
      wait_done(*job, &watch);
      auto [status, answer] = final_response(*job);
      return send_json(res, status, answer);
    }
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto stream = std::make_shared<Stream>(job, req);
    ++open_streams;
    res.set_chunked_content_provider(
        "text/event-stream", [this, stream](size_t, httplib::DataSink& sink) { return stream_step(*stream, sink); },
        [this, stream](bool) {
          // The response is gone (written, or the connection failed before
          // the stream ended): a request still running has no reader left.
          if (!stream->finished) cancel(*stream->job);
          --open_streams;
        });
  }

  void handle_models(const httplib::Request& req, httplib::Response& res, const std::string& id) {
    Caller caller;
    if (auto e = authenticate(req, caller)) return send_error(res, *e);
    const json entry = {{"id", opts.model_id},
                        {"object", "model"},
                        {"created", created_at},
                        {"owned_by", "engram"},
                        {"max_model_len", engine.n_ctx()},
                        {"meta",
                         {{"architecture", model.config().arch},
                          {"n_vocab", model.config().n_vocab},
                          {"n_ctx_train", model.config().n_ctx_train},
                          {"n_params", model.parameter_count()},
                          {"chat_template", chat_template_name(chat_kind)}}}};
    if (!id.empty()) {
      if (id != opts.model_id) return send_error(res, not_found("The model '" + id + "' does not exist.", "model"));
      return send_json(res, 200, entry);
    }
    send_json(res, 200, json{{"object", "list"}, {"data", json::array({entry})}});
  }

  void handle_tokenize(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate(req, caller)) return send_error(res, *e);
    json body;
    if (auto e = parse_json_body(req.body, body)) return send_error(res, *e);
    auto content = body.find("content");
    if (content == body.end()) {
      return send_error(
          res, invalid_request("Missing required parameter: 'content'", "content", "missing_required_parameter"));
    }
    if (!content->is_string())
      return send_error(res, invalid_request("'content' must be a string", "content", "invalid_type"));
    auto flag = [&](const char* name, bool def) {
      auto it = body.find(name);
      return it != body.end() && it->is_boolean() ? it->get<bool>() : def;
    };
    const std::vector<TokenId> ids =
        tok.encode(content->get<std::string>(), flag("add_special", false), flag("parse_special", true));
    json tokens = json::array();
    const bool with_pieces = flag("with_pieces", false);
    for (TokenId id : ids) {
      if (with_pieces)
        tokens.push_back(json{{"id", id}, {"piece", tok.token_to_piece(id, true)}});
      else
        tokens.push_back(id);
    }
    send_json(res, 200, json{{"tokens", tokens}});
  }

  void handle_detokenize(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate(req, caller)) return send_error(res, *e);
    json body;
    if (auto e = parse_json_body(req.body, body)) return send_error(res, *e);
    auto tokens = body.find("tokens");
    if (tokens == body.end()) {
      return send_error(
          res, invalid_request("Missing required parameter: 'tokens'", "tokens", "missing_required_parameter"));
    }
    if (!tokens->is_array())
      return send_error(res, invalid_request("'tokens' must be an array of token ids", "tokens", "invalid_type"));
    std::string text;
    for (size_t i = 0; i < tokens->size(); ++i) {
      const json& t = (*tokens)[i];
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok.n_vocab()) {
        return send_error(res,
                          invalid_request("Invalid token id at 'tokens[" + std::to_string(i) + "]': " +
                                              (t.is_structured() ? std::string(t.type_name()) : dump_json(t)) +
                                              " (the vocabulary has " + std::to_string(tok.n_vocab()) + " tokens)",
                                          "tokens", "invalid_value"));
      }
      text += tok.token_to_piece(static_cast<TokenId>(t.get<int64_t>()));
    }
    // SentencePiece vocabularies encode a leading space ("dummy prefix")
    // that is not part of the text; remove it as llama.cpp does.
    if (tok.model_name() == "llama" && !text.empty() && text[0] == ' ') text.erase(0, 1);
    send_json(res, 200, json{{"content", text}});
  }

  void handle_usage(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate(req, caller)) return send_error(res, *e);
    std::string key = req.get_param_value("key");
    if (auth && !caller.admin) {
      if (!key.empty() && key != caller.key) {
        return send_error(
            res, make_api_error(403, "A key can only read its own usage.", "permission_error", "forbidden", "key"));
      }
      key = caller.key;
    }
    int64_t from = 0, to = 0;
    if (req.has_param("from")) {
      auto t = parse_usage_time(req.get_param_value("from"), false);
      if (!t) return send_error(res, invalid_request("Invalid 'from': " + t.error().message, "from", "invalid_value"));
      from = *t;
    }
    if (req.has_param("to")) {
      auto t = parse_usage_time(req.get_param_value("to"), true);
      if (!t) return send_error(res, invalid_request("Invalid 'to': " + t.error().message, "to", "invalid_value"));
      to = *t;
    }
    std::string group_name = req.has_param("group_by") ? req.get_param_value("group_by") : "none";
    auto group = parse_usage_group(group_name);
    if (!group)
      return send_error(res,
                        invalid_request("Invalid 'group_by': " + group.error().message, "group_by", "invalid_value"));
    auto rows = ledger->usage(key, from, to, *group);
    if (!rows) return send_error(res, server_error(rows.error().message));
    json data = json::array();
    for (const UsageRow& r : *rows) {
      data.push_back(json{{"group", r.group},
                          {"requests", r.requests},
                          {"prompt_tokens", r.prompt_tokens},
                          {"cached_tokens", r.cached_tokens},
                          {"completion_tokens", r.completion_tokens},
                          {"reasoning_tokens", r.reasoning_tokens},
                          {"total_tokens", r.prompt_tokens + r.completion_tokens},
                          {"cost_usd", r.cost_usd}});
    }
    send_json(res, 200,
              json{{"object", "list"},
                   {"key", key.empty() ? json() : json(key)},
                   {"from", from ? json(from) : json()},
                   {"to", to ? json(to) : json()},
                   {"group_by", group_name},
                   {"data", data}});
  }

  static json key_json(const KeyRecord& k) {
    return json{{"key", k.key},
                {"name", k.name},
                {"limits",
                 {{"rpm", k.limits.requests_per_minute},
                  {"tpm", k.limits.tokens_per_minute},
                  {"concurrent", k.limits.concurrent}}},
                {"balance_usd", k.balance_usd ? json(*k.balance_usd) : json()},
                {"revoked", k.revoked},
                {"created_at", k.created_unix}};
  }

  void handle_create_key(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate_admin(req, caller)) return send_error(res, *e);
    json body = json::object();
    if (!req.body.empty()) {
      if (auto e = parse_json_body(req.body, body)) return send_error(res, *e);
    }
    std::string name;
    if (auto it = body.find("name"); it != body.end() && !it->is_null()) {
      if (!it->is_string()) return send_error(res, invalid_request("'name' must be a string", "name", "invalid_type"));
      name = it->get<std::string>();
    }
    std::optional<double> balance;
    if (auto it = body.find("balance_usd"); it != body.end() && !it->is_null()) {
      if (!it->is_number() || it->get<double>() < 0) {
        return send_error(res, invalid_request("'balance_usd' must be a number >= 0 (or null: unlimited)",
                                               "balance_usd", "invalid_value"));
      }
      balance = it->get<double>();
    }
    KeyLimits limits = opts.config.default_limits;
    if (auto it = body.find("limits"); it != body.end() && !it->is_null()) {
      if (!it->is_object())
        return send_error(res, invalid_request("'limits' must be an object", "limits", "invalid_type"));
      for (auto [field, target] : {std::pair<const char*, int64_t*>{"rpm", &limits.requests_per_minute},
                                   {"tpm", &limits.tokens_per_minute},
                                   {"concurrent", &limits.concurrent}}) {
        auto f = it->find(field);
        if (f == it->end() || f->is_null()) continue;
        if (!f->is_number_integer() || f->get<int64_t>() < 0) {
          return send_error(res, invalid_request(std::string("'limits.") + field + "' must be an integer >= 0",
                                                 std::string("limits.") + field, "invalid_value"));
        }
        *target = f->get<int64_t>();
      }
    }
    auto rec = ledger->create_key(name, limits, balance);
    if (!rec) return send_error(res, server_error(rec.error().message));
    send_json(res, 200, key_json(*rec));
  }

  void handle_list_keys(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate_admin(req, caller)) return send_error(res, *e);
    json data = json::array();
    for (const KeyRecord& k : ledger->list_keys()) data.push_back(key_json(k));
    send_json(res, 200, json{{"object", "list"}, {"data", data}});
  }

  void handle_revoke_key(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate_admin(req, caller)) return send_error(res, *e);
    const std::string key = req.matches[1];
    if (!ledger->find_key(key)) return send_error(res, not_found("No such API key: " + mask_key(key), "key"));
    Status st = ledger->revoke_key(key);
    if (!st) return send_error(res, server_error(st.message()));
    send_json(res, 200, json{{"key", key}, {"revoked", true}});
  }

  void handle_top_up(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = authenticate_admin(req, caller)) return send_error(res, *e);
    const std::string key = req.matches[1];
    json body;
    if (auto e = parse_json_body(req.body, body)) return send_error(res, *e);
    auto usd = body.find("usd");
    if (usd == body.end() || !usd->is_number() || !(usd->get<double>() > 0) || !std::isfinite(usd->get<double>())) {
      return send_error(res, invalid_request("'usd' must be a number > 0", "usd",
                                             usd == body.end() ? "missing_required_parameter" : "invalid_value"));
    }
    if (!ledger->find_key(key)) return send_error(res, not_found("No such API key: " + mask_key(key), "key"));
    auto balance = ledger->top_up(key, usd->get<double>());
    if (!balance) return send_error(res, invalid_request(balance.error().message, "key"));
    send_json(res, 200, json{{"key", key}, {"balance_usd", *balance}});
  }

  // ------------------------------------------------------------ files and batches

  // Files and batches belong to the key that created them ("" without auth).
  std::optional<ApiError> owner(const httplib::Request& req, Caller& caller) { return authenticate_user(req, caller); }

  static ApiError store_error(const std::string& message, const std::string& param = "") {
    if (is_not_found_error(message)) return not_found(message, param);
    return invalid_request(message, param);
  }

  void handle_upload(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = owner(req, caller)) return send_error(res, *e);
    if (!req.is_multipart_form_data()) {
      return send_error(
          res, invalid_request("Upload files as multipart/form-data with the fields 'file' and 'purpose'", "file"));
    }
    if (!req.has_file("file")) {
      return send_error(res,
                        invalid_request("Missing required parameter: 'file'", "file", "missing_required_parameter"));
    }
    if (!req.has_file("purpose")) {
      return send_error(
          res, invalid_request("Missing required parameter: 'purpose'", "purpose", "missing_required_parameter"));
    }
    const httplib::MultipartFormData file = req.get_file_value("file");
    const std::string purpose = req.get_file_value("purpose").content;
    auto obj = files->put(file.filename.empty() ? "upload.jsonl" : file.filename, purpose, file.content, caller.key);
    if (!obj) return send_error(res, store_error(obj.error().message, "file"));
    send_json(res, 200, obj->to_json());
  }

  void handle_get_file(const httplib::Request& req, httplib::Response& res, bool content) {
    Caller caller;
    if (auto e = owner(req, caller)) return send_error(res, *e);
    const std::string id = req.matches[1];
    if (content) {
      auto text = files->content(id, caller.key);
      if (!text) return send_error(res, store_error(text.error().message, "file_id"));
      res.status = 200;
      res.set_content(*text, "application/octet-stream");
      return;
    }
    auto obj = files->get(id, caller.key);
    if (!obj) return send_error(res, store_error(obj.error().message, "file_id"));
    send_json(res, 200, obj->to_json());
  }

  void handle_create_batch(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = owner(req, caller)) return send_error(res, *e);
    json body;
    if (auto e = parse_json_body(req.body, body)) return send_error(res, *e);
    std::string fields[3];
    const char* names[3] = {"input_file_id", "endpoint", "completion_window"};
    for (int i = 0; i < 3; ++i) {
      auto it = body.find(names[i]);
      if (it == body.end() || it->is_null()) {
        return send_error(res, invalid_request(std::string("Missing required parameter: '") + names[i] + "'", names[i],
                                               "missing_required_parameter"));
      }
      if (!it->is_string()) {
        return send_error(
            res, invalid_request(std::string("'") + names[i] + "' must be a string", names[i], "invalid_type"));
      }
      fields[i] = it->get<std::string>();
    }
    json metadata = body.contains("metadata") ? body["metadata"] : json();
    auto b = batches->create(caller.key, fields[0], fields[1], fields[2], metadata);
    if (!b) return send_error(res, store_error(b.error().message));
    send_json(res, 200, b->to_json());
  }

  void handle_get_batch(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = owner(req, caller)) return send_error(res, *e);
    auto b = batches->get(req.matches[1], caller.key);
    if (!b) return send_error(res, store_error(b.error().message, "batch_id"));
    send_json(res, 200, b->to_json());
  }

  void handle_list_batches(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = owner(req, caller)) return send_error(res, *e);
    int limit = 20;
    if (req.has_param("limit")) {
      const std::string text = req.get_param_value("limit");
      char* end = nullptr;
      const long v = std::strtol(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || v < 1 || v > 100) {
        return send_error(res, invalid_request("'limit' must be an integer from 1 to 100, got '" + text + "'", "limit",
                                               "invalid_value"));
      }
      limit = static_cast<int>(v);
    }
    // One more than asked tells whether there is a next page.
    auto list = batches->list(caller.key, req.get_param_value("after"), std::min(limit + 1, 100));
    if (!list) return send_error(res, store_error(list.error().message, "after"));
    const bool has_more =
        static_cast<int>(list->size()) > limit || (limit == 100 && static_cast<int>(list->size()) == 100);
    if (static_cast<int>(list->size()) > limit) list->resize(static_cast<size_t>(limit));
    json data = json::array();
    for (const BatchObject& b : *list) data.push_back(b.to_json());
    send_json(res, 200,
              json{{"object", "list"},
                   {"data", data},
                   {"first_id", list->empty() ? json() : json(list->front().id)},
                   {"last_id", list->empty() ? json() : json(list->back().id)},
                   {"has_more", has_more}});
  }

  void handle_cancel_batch(const httplib::Request& req, httplib::Response& res) {
    Caller caller;
    if (auto e = owner(req, caller)) return send_error(res, *e);
    auto b = batches->cancel(req.matches[1], caller.key);
    if (!b) return send_error(res, store_error(b.error().message, "batch_id"));
    send_json(res, 200, b->to_json());
  }

  std::pair<int, json> execute_batch_line(const BatchLineRequest& line) {
    const std::string& endpoint = line.endpoint;
    const json& body = line.body;
    const std::string& owner_key = line.owner_key;
    Endpoint ep;
    if (endpoint == "/v1/chat/completions")
      ep = Endpoint::CHAT;
    else if (endpoint == "/v1/completions")
      ep = Endpoint::COMPLETIONS;
    else
      return {400, invalid_request("Unsupported batch endpoint '" + endpoint + "'", "url").to_json()};
    if (stopping) return {503, shutting_down_error().to_json()};
    Caller caller;
    if (auth && !owner_key.empty()) {
      std::optional<KeyRecord> rec = ledger->find_key(owner_key);
      if (!rec || rec->revoked) {
        return {401, make_api_error(401, "The batch's API key " + mask_key(owner_key) + " is unknown or revoked.",
                                    "invalid_request_error", "invalid_api_key")
                         .to_json()};
      }
      caller.key = owner_key;
      caller.balance = rec->balance_usd;
    }
    if (!body.is_object()) return {400, invalid_request("The request body must be a JSON object", "body").to_json()};
    Prepared prep;
    if (auto e = prepare(body, ep, prep)) return {e->status, e->to_json()};
    if (prep.params.stream) {
      return {400, invalid_request("Streaming is not available in a batch", "stream", "unsupported_value").to_json()};
    }
    std::shared_ptr<Job> job;
    Headers headers;
    // A full queue is no answer for a batch line: it waits its turn (the
    // service only starts lines when there is capacity, so this is rare).
    for (;;) {
      std::optional<ApiError> e = start(prep, caller, line.line_id, job, headers);
      if (!e) break;
      if (e->code != "queue_full" || stopping) return {e->status, e->to_json()};
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    wait_done(*job, nullptr);
    return final_response(*job);
  }

  // ------------------------------------------------------------ routes

  template <class Fn>
  httplib::Server::Handler guarded(Fn fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        (this->*fn)(req, res);
      } catch (const std::exception& e) {
        send_error(res, server_error(std::string("Internal error: ") + e.what()));
      }
    };
  }

  void routes() {
    using R = const httplib::Request&;
    using W = httplib::Response&;
    auto chat = [this](R req, W res) { handle_completion(req, res, Endpoint::CHAT); };
    auto text = [this](R req, W res) { handle_completion(req, res, Endpoint::COMPLETIONS); };
    http.Post("/v1/chat/completions", chat);
    http.Post("/chat/completions", chat);
    http.Post("/v1/completions", text);
    http.Post("/completions", text);
    http.Get("/v1/models", [this](R req, W res) { handle_models(req, res, ""); });
    http.Get(R"(/v1/models/([^/]+))", [this](R req, W res) { handle_models(req, res, req.matches[1]); });
    auto health = [this](R, W res) {
      if (stopping) return send_json(res, 503, json{{"status", "shutting down"}});
      send_json(res, 200, json{{"status", "ok"}});
    };
    http.Get("/health", health);
    http.Get("/v1/health", health);
    http.Post("/tokenize", guarded(&Impl::handle_tokenize));
    http.Post("/detokenize", guarded(&Impl::handle_detokenize));
    http.Get("/metrics", [this](R, W res) {
      res.set_content(format_metrics(engine.metrics(), opts.model_id), "text/plain; version=0.0.4; charset=utf-8");
    });
    http.Get("/v1/usage", guarded(&Impl::handle_usage));
    http.Post("/v1/admin/keys", guarded(&Impl::handle_create_key));
    http.Get("/v1/admin/keys", guarded(&Impl::handle_list_keys));
    http.Delete(R"(/v1/admin/keys/([^/]+))", guarded(&Impl::handle_revoke_key));
    http.Post(R"(/v1/admin/keys/([^/]+)/top_up)", guarded(&Impl::handle_top_up));
    http.Post("/v1/files", guarded(&Impl::handle_upload));
    http.Get(R"(/v1/files/([^/]+))", [this](R req, W res) { handle_get_file(req, res, false); });
    http.Get(R"(/v1/files/([^/]+)/content)", [this](R req, W res) { handle_get_file(req, res, true); });
    http.Post("/v1/batches", guarded(&Impl::handle_create_batch));
    http.Get("/v1/batches", guarded(&Impl::handle_list_batches));
    http.Get(R"(/v1/batches/([^/]+))", guarded(&Impl::handle_get_batch));
    http.Post(R"(/v1/batches/([^/]+)/cancel)", guarded(&Impl::handle_cancel_batch));

    // Errors httplib answers by itself (unknown route, body too large, bad
    // request line) get OpenAI's error shape too.
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](R req, W res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiError e;
      e.status = res.status;
      if (res.status == 404) {
        e = make_api_error(404, "Unknown endpoint: " + req.method + " " + req.path, "invalid_request_error",
                           "unknown_url");
      } else if (res.status == 413) {
        e = make_api_error(
            413, "The request body is larger than the limit of " + std::to_string(opts.max_body_bytes) + " bytes",
            "invalid_request_error", "body_too_large");
      } else {
        e = make_api_error(res.status, "HTTP error " + std::to_string(res.status), "invalid_request_error", "");
      }
      send_error(res, e);
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](R, W res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, server_error("Internal error: " + what));
    });
  }
};

// ================================================================ HttpServer

HttpServer::HttpServer() = default;

HttpServer::~HttpServer() {
  if (impl_ && impl_->ready) stop();
}

Expected<std::unique_ptr<HttpServer>> HttpServer::create(Engine& engine, ServerOptions options) {
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::make_unique<Impl>(engine, std::move(options));
  Impl& s = *server->impl_;
  const ServerConfig& cfg = s.opts.config;

  auto ledger = Ledger::open(cfg.ledger_path);
  if (!ledger) return ledger.error();
  s.ledger = std::move(*ledger);
  std::vector<KeyConfig> keys = cfg.keys;
  for (size_t i = 0; i < s.opts.api_keys.size(); ++i) {
    KeyConfig k;
    k.key = s.opts.api_keys[i];
    k.name = "--api-key " + std::to_string(i + 1);
    k.limits = cfg.default_limits;
    keys.push_back(k);
  }
  if (Status st = s.ledger->sync_config_keys(keys, cfg.default_limits); !st) return Error{st.message()};
  s.auth = !keys.empty() || !cfg.admin_key.empty();
  s.price = find_price(cfg, s.opts.model_id);

  auto files = FileStore::open(*s.ledger, cfg.files_dir);
  if (!files) return files.error();
  s.files = std::move(*files);
  BatchOptions bo;
  const int parallel = std::max(1, s.opts.parallel);
  Engine* eng = &engine;
  bo.capacity_available = [eng, parallel] {
    const EngineMetrics m = eng->metrics();
    return m.requests_waiting == 0 && m.requests_running < parallel;
  };
  if (s.price) bo.price = *s.price;
  bo.concurrency = std::max(1, parallel - 1);  // one slot stays free for interactive requests
  Impl* impl = &s;
  s.batches = std::make_unique<BatchService>(
      *s.ledger, *s.files,
      [impl](const BatchLineRequest& line) { return impl->execute_batch_line(line); },
      std::move(bo));
  if (Status st = s.batches->start(); !st) return Error{st.message()};

  const int threads = s.opts.http_threads > 0 ? s.opts.http_threads : cfg.max_queue + 2 * parallel + 8;
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.http.set_payload_max_length(s.opts.max_body_bytes);
  s.http.set_read_timeout(30, 0);
  s.http.set_write_timeout(10, 0);
  s.routes();
  s.ready = true;
  return server;
}

Expected<int> HttpServer::bind() {
  Impl& s = *impl_;
  int port = s.opts.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.opts.host);
    if (port <= 0) return make_error("cannot listen on ", s.opts.host, " (any port)");
  } else if (!s.http.bind_to_port(s.opts.host, port)) {
    return make_error("cannot listen on ", s.opts.host, ":", std::to_string(port),
                      " (address in use, or not an address of this machine?)");
  }
  s.bound_port = port;
  return port;
}

Status HttpServer::listen() {
  Impl& s = *impl_;
  if (s.bound_port < 0) {
    auto p = bind();
    if (!p) return p.error();
  }
  s.listen_started = true;
  if (s.stopping) {
    s.listen_returned = true;
    return Status::ok();
  }
  const bool ok = s.http.listen_after_bind();
  s.listen_returned = true;
  if (!ok && !s.stopping) return make_error("the HTTP listener on port ", std::to_string(s.bound_port), " failed");
  return Status::ok();
}

void HttpServer::stop() {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.stop_mu);
  if (s.stopped || !s.ready) return;
  s.stopped = true;
  s.stopping = true;
  // Batch workers first: they stop taking lines, and a line still running
  // gets two seconds to finish. After that the engine shutdown cancels it,
  // and the service (already stopping) leaves it for a restart.
  std::atomic<bool> batches_stopped{false};
  std::thread batch_stopper([&] {
    s.batches->stop();
    batches_stopped = true;
  });
  for (int i = 0; i < 200 && !batches_stopped; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s.engine.shutdown();  // cancels what runs; every on_done bills before this returns
  batch_stopper.join();
  // Streams end with an error event and [DONE] once their request is done;
  // give them a moment to write it before the listener stops their loops.
  for (int i = 0; i < 300 && s.open_streams > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // The listener: httplib's stop() only acts on a running server (and must
  // be called once), so wait for listen() to be running if it is starting.
  if (s.listen_started) {
    while (!s.listen_returned && !s.http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  s.http.stop();
}

int HttpServer::port() const { return impl_->bound_port; }
const std::string& HttpServer::model_id() const { return impl_->opts.model_id; }
bool HttpServer::auth_enabled() const { return impl_->auth; }
Ledger& HttpServer::ledger() { return *impl_->ledger; }

std::pair<int, json> HttpServer::execute_batch_line(const BatchLineRequest& line) {
  return impl_->execute_batch_line(line);
}

}  // namespace engram::server
