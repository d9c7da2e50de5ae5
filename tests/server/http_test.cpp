// The HTTP layer end to end: a server in-process on an ephemeral loopback
// port, driven with httplib::Client (and raw sockets for clients that go
// away). Most tests run a scripted FakeEngine, which makes timing, token
// texts and cancellation deterministic; the last ones run the real Engine on
// stories260K. The model (for its tokenizer) comes from the reference data:
// the tests skip without it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "model/model.h"
#include "server/engine.h"
#include "server/http_server.h"
#include "server/metrics_text.h"
#include "server/openai.h"
#include "test_support.h"

namespace engram::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// ---------------------------------------------------------------- the model

Model* stories() {
  static std::unique_ptr<Model> model = [] {
    std::unique_ptr<Model> m;
    if (test::ref_dir().empty()) return m;
    auto loaded = Model::load((test::ref_dir() / "models" / "stories260K.gguf").string());
    if (loaded) m = std::move(*loaded);
    return m;
  }();
  return model.get();
}

#define REQUIRE_MODEL()                                               \
  do {                                                                \
    ENGRAM_REQUIRE_REF();                                             \
    ASSERT_NE(stories(), nullptr) << "stories260K.gguf did not load"; \
  } while (0)

// ---------------------------------------------------------------- a scripted engine

// Emits `script` token by token (one per token_delay) on its own thread,
// one request at a time; reports as cached the prompt's common prefix with
// the previous prompt (as a prefix cache would, keeping the last token to
// recompute); honours max_tokens, cancel() and callbacks returning false.
class FakeEngine : public Engine {
 public:
  struct Step {
    TokenId id;
    std::string text;
  };

  FakeEngine(Model& model, int64_t n_ctx) : model_(model), n_ctx_(n_ctx) {
    const Tokenizer& tok = model.tokenizer();
    for (TokenId id : tok.encode(" Once upon a time there was a little cat named Tom.", false, false)) {
      script.push_back({id, tok.token_to_piece(id)});
    }
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeEngine() override { shutdown(); }

  // Knobs, set before the requests.
  std::vector<Step> script;
  std::chrono::milliseconds token_delay{0};
  std::chrono::milliseconds prompt_chunk_delay{0};
  int prompt_chunk = 64;
  std::atomic<bool> queue_full{false};

  std::string script_text(size_t n) const {
    std::string s;
    for (size_t i = 0; i < n && i < script.size(); ++i) s += script[i].text;
    return s;
  }
  void repeat_script(size_t n) {
    const std::vector<Step> base = script;
    while (script.size() < n) script.insert(script.end(), base.begin(), base.end());
    script.resize(n);
  }

  Submitted submit(GenerationRequest r) override {
    std::lock_guard<std::mutex> lock(mu_);
    Submitted s;
    if (stopping_) {
      s.rejection = Rejection::SHUTTING_DOWN;
      s.message = "shutting down";
      return s;
    }
    if (queue_full) {
      s.rejection = Rejection::QUEUE_FULL;
      s.message = "the queue is full (1 waiting)";
      s.retry_after_seconds = 3;
      return s;
    }
    s.id = ++next_id_;
    queue_.push_back({s.id, std::move(r)});
    ++metrics_.requests_waiting;
    cv_.notify_all();
    return s;
  }
  void cancel(RequestId id) override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.insert(id);
  }
  EngineMetrics metrics() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return metrics_;
  }
  int64_t n_ctx() const override { return n_ctx_; }
  const Model& model() const override { return model_; }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Item {
    RequestId id;
    GenerationRequest req;
  };

  bool cancelled(RequestId id) {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_ || cancelled_.count(id) > 0;
  }

  void loop() {
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || stopping_; });
        if (queue_.empty()) return;
        item = std::move(queue_.front());
        queue_.pop_front();
        --metrics_.requests_waiting;
        ++metrics_.requests_running;
      }
      run(item);
      std::lock_guard<std::mutex> lock(mu_);
      --metrics_.requests_running;
      ++metrics_.requests_finished;
    }
  }

  void run(Item& item) {
    GenerationRequest& q = item.req;
    GenerationResult r;
    r.prompt_tokens = static_cast<int>(q.prompt.size());
    size_t common = 0;
    while (common < last_prompt_.size() && common + 1 < q.prompt.size() && last_prompt_[common] == q.prompt[common]) {
      ++common;
    }
    last_prompt_ = q.prompt;
    r.cached_tokens = static_cast<int>(common);
    r.finish = FinishReason::STOP;
    int done = static_cast<int>(common);
    const int total = r.prompt_tokens;
    while (done < total) {
      if (cancelled(item.id)) {
        r.finish = FinishReason::CANCELLED;
        break;
      }
      std::this_thread::sleep_for(prompt_chunk_delay);
      done = std::min(total, done + prompt_chunk);
      r.prompt_tokens_computed = done - static_cast<int>(common);
      if (q.on_prompt_progress && !q.on_prompt_progress(done, total)) {
        r.finish = FinishReason::CANCELLED;
        break;
      }
    }
    if (r.finish != FinishReason::CANCELLED) {
      for (size_t i = 0;; ++i) {
        if (cancelled(item.id)) {
          r.finish = FinishReason::CANCELLED;
          break;
        }
        if (q.max_tokens >= 0 && r.completion_tokens >= q.max_tokens) {
          r.finish = FinishReason::LENGTH;
          break;
        }
        if (i >= script.size()) break;
        std::this_thread::sleep_for(token_delay);
        const TokenEvent ev{script[i].id, script[i].text};
        r.tokens.push_back(ev.id);
        r.text += ev.text;
        ++r.completion_tokens;
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++metrics_.generation_tokens_total;
        }
        if (q.on_token && !q.on_token(ev)) {
          r.finish = FinishReason::CANCELLED;
          break;
        }
      }
    }
    if (q.on_done) q.on_done(r);
  }

  Model& model_;
  int64_t n_ctx_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::set<RequestId> cancelled_;
  EngineMetrics metrics_;
  RequestId next_id_ = 0;
  bool stopping_ = false;
  std::vector<TokenId> last_prompt_;  // the loop thread's alone
  std::thread thread_;
};

// ---------------------------------------------------------------- a server under test

struct LedgerRow {
  std::string key, finish;
  int64_t prompt = 0, cached = 0, completion = 0, reasoning = 0;
  double cost = 0;
  bool batch = false;
};

class Harness {
 public:
  Harness(Engine& engine, ServerOptions o) : dir_(test::temp_dir("http")) {
    o.host = "127.0.0.1";
    o.port = 0;
    o.model_id = "stories";
    o.config.ledger_path = (dir_ / "ledger.db").string();
    o.config.files_dir = (dir_ / "files").string();
    auto s = HttpServer::create(engine, std::move(o));
    if (!s) {
      error = s.error().message;
      return;
    }
    server = std::move(*s);
    auto p = server->bind();
    if (!p) {
      error = p.error().message;
      return;
    }
    port = *p;
    thread_ = std::thread([this] { (void)server->listen(); });
  }
  ~Harness() { stop(); }

  void stop() {
    if (server) server->stop();
    if (thread_.joinable()) thread_.join();
  }

  httplib::Result post(const std::string& path, const json& body, const std::string& key = "") {
    return post_raw(path, body.dump(), key);
  }
  httplib::Result post_raw(const std::string& path, const std::string& body, const std::string& key = "") {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(20, 0);
    return c.Post(path.c_str(), headers(key), body, "application/json");
  }
  httplib::Result get(const std::string& path, const std::string& key = "") {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(20, 0);
    return c.Get(path.c_str(), headers(key));
  }
  httplib::Result del(const std::string& path, const std::string& key = "") {
    httplib::Client c("127.0.0.1", port);
    return c.Delete(path.c_str(), headers(key));
  }
  static httplib::Headers headers(const std::string& key) {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
    return h;
  }

  // The usage rows, oldest first (a second connection, as `engram usage` reads).
  std::vector<LedgerRow> rows() const {
    std::vector<LedgerRow> out;
    sqlite3* db = nullptr;
    if (sqlite3_open_v2((dir_ / "ledger.db").string().c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
      sqlite3_close(db);
      return out;
    }
    sqlite3_busy_timeout(db, 2000);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db,
                       "SELECT api_key, finish, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, "
                       "cost_usd, batch FROM usage ORDER BY id",
                       -1, &st, nullptr);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
      LedgerRow r;
      r.key = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      r.finish = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
      r.prompt = sqlite3_column_int64(st, 2);
      r.cached = sqlite3_column_int64(st, 3);
      r.completion = sqlite3_column_int64(st, 4);
      r.reasoning = sqlite3_column_int64(st, 5);
      r.cost = sqlite3_column_double(st, 6);
      r.batch = sqlite3_column_int(st, 7) != 0;
      out.push_back(r);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }
  std::vector<LedgerRow> wait_rows(size_t n, std::chrono::milliseconds timeout = 5000ms) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    std::vector<LedgerRow> r = rows();
    while (r.size() < n && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(10ms);
      r = rows();
    }
    return r;
  }

  std::unique_ptr<HttpServer> server;
  int port = 0;
  std::string error;

 private:
  std::filesystem::path dir_;
  std::thread thread_;
};

// The "data:" payloads of an SSE body, in order; comments counted apart.
struct Sse {
  std::vector<std::string> data;
  int comments = 0;
};
Sse parse_sse(const std::string& body) {
  Sse s;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    const std::string event = body.substr(pos, end - pos);
    if (event.rfind("data: ", 0) == 0)
      s.data.push_back(event.substr(6));
    else if (event.rfind(":", 0) == 0)
      ++s.comments;
    pos = end + 2;
  }
  return s;
}

json chat_body(const std::string& content, int max_tokens, bool stream = false) {
  json b = {{"model", "stories"}, {"messages", json::array({json{{"role", "user"}, {"content", content}}})}};
  if (max_tokens > 0) b["max_tokens"] = max_tokens;
  if (stream) b["stream"] = true;
  return b;
}

// A client on a bare socket, to go away at a chosen moment.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawClient() { close(); }
  bool ok() const { return ok_; }
  void send_post(const std::string& path, const std::string& body) {
    const std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    (void)::send(fd_, req.data(), req.size(), MSG_NOSIGNAL);
  }
  // Reads until `needle` has appeared `count` times (or the timeout).
  std::string read_until(const std::string& needle, int count) {
    std::string got;
    char buf[4096];
    while (true) {
      int seen = 0;
      for (size_t p = got.find(needle); p != std::string::npos; p = got.find(needle, p + 1)) ++seen;
      if (seen >= count) break;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

// The prompt of a chat request, as the server builds it for stories260K
// (no template in the file: the plain format, BOS from the tokenizer).
std::vector<TokenId> plain_chat_prompt(const std::string& user) {
  const Tokenizer& tok = stories()->tokenizer();
  return tok.encode("User: " + user + "\n\nAssistant:", true, true);
}

// ================================================================ metrics text

TEST(MetricsText, PrometheusFormatWithVllmNames) {
  EngineMetrics m;
  m.requests_running = 2;
  m.requests_waiting = 1;
  m.prompt_tokens_total = 1234;
  m.generation_tokens_total = 99;
  m.prefix_cache_queries = 500;
  m.prefix_cache_hits = 300;
  m.time_to_first_token.observe(0.003);
  m.time_to_first_token.observe(0.2);
  m.time_to_first_token.observe(100);  // beyond the last bucket: only +Inf
  const std::string t = format_metrics(m, "my \"model\"");
  auto has = [&](const std::string& line) { return t.find(line + "\n") != std::string::npos; };
  EXPECT_TRUE(has("# TYPE vllm:num_requests_running gauge"));
  EXPECT_TRUE(has("vllm:num_requests_running{model_name=\"my \\\"model\\\"\"} 2"));
  EXPECT_TRUE(has("vllm:num_requests_waiting{model_name=\"my \\\"model\\\"\"} 1"));
  EXPECT_TRUE(has("# TYPE vllm:prompt_tokens_total counter"));
  EXPECT_TRUE(has("vllm:prompt_tokens_total{model_name=\"my \\\"model\\\"\"} 1234"));
  EXPECT_TRUE(has("vllm:generation_tokens_total{model_name=\"my \\\"model\\\"\"} 99"));
  EXPECT_TRUE(has("vllm:prefix_cache_queries_total{model_name=\"my \\\"model\\\"\"} 500"));
  EXPECT_TRUE(has("vllm:prefix_cache_hits_total{model_name=\"my \\\"model\\\"\"} 300"));
  EXPECT_TRUE(has("# TYPE vllm:time_to_first_token_seconds histogram"));
  // Buckets are cumulative: 0.003 is in le=0.005 and every larger one.
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"0.0025\"} 0"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"0.005\"} 1"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"0.25\"} 2"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"60\"} 2"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"+Inf\"} 3"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_count{model_name=\"my \\\"model\\\"\"} 3"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_sum{model_name=\"my \\\"model\\\"\"} 100.203"));
  for (const char* name :
       {"vllm:inter_token_latency_seconds", "vllm:request_queue_time_seconds", "vllm:e2e_request_latency_seconds"}) {
    EXPECT_TRUE(has(std::string("# TYPE ") + name + " histogram")) << name;
    EXPECT_TRUE(has(std::string(name) + "_count{model_name=\"my \\\"model\\\"\"} 0")) << name;
  }
  // Every sample line belongs to a family with HELP and TYPE lines.
  size_t pos = 0;
  while (pos < t.size()) {
    const size_t end = t.find('\n', pos);
    const std::string line = t.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    std::string family = line.substr(0, line.find('{'));
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (family.size() > s.size() && family.compare(family.size() - s.size(), s.size(), s) == 0 &&
          t.find("# TYPE " + family + " ") == std::string::npos) {
        family = family.substr(0, family.size() - s.size());
      }
    }
    EXPECT_NE(t.find("# HELP " + family + " "), std::string::npos) << line;
    EXPECT_NE(t.find("# TYPE " + family + " "), std::string::npos) << line;
  }
}

// ================================================================ the fake engine

class HttpFake : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::ref_dir().empty() || !stories()) GTEST_SKIP() << "stories260K.gguf not found in the reference data";
    engine = std::make_unique<FakeEngine>(*stories(), 128);
  }
  std::unique_ptr<Harness> start(ServerOptions o = {}) {
    auto h = std::make_unique<Harness>(*engine, std::move(o));
    EXPECT_EQ(h->error, "");
    return h;
  }
  std::unique_ptr<FakeEngine> engine;
};

TEST_F(HttpFake, HealthModelsAndUnknownRoutes) {
  auto h = start();
  auto health = h->get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");

  auto models = h->get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  const json m = json::parse(models->body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "stories");
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_EQ(h->get("/v1/models/stories")->status, 200);
  EXPECT_EQ(h->get("/v1/models/gpt-9")->status, 404);

  auto unknown = h->post("/v1/nothing", json::object());
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  const json e = json::parse(unknown->body);
  EXPECT_NE(e["error"]["message"].get<std::string>().find("/v1/nothing"), std::string::npos);

  auto wrong_model =
      h->post("/v1/chat/completions", json{{"model", "gpt-4o"}, {"messages", chat_body("hi", 1)["messages"]}});
  ASSERT_TRUE(wrong_model);
  EXPECT_EQ(wrong_model->status, 404);
  EXPECT_EQ(json::parse(wrong_model->body)["error"]["code"], "model_not_found");
}

TEST_F(HttpFake, ChatCompletion) {
  auto h = start();
  auto res = h->post("/v1/chat/completions", chat_body("Tell me a story", 5));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  const json j = json::parse(res->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "stories");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], engine->script_text(5));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  const int64_t prompt = static_cast<int64_t>(plain_chat_prompt("Tell me a story").size());
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt);
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["usage"]["total_tokens"], prompt + 5);
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(j["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);

  // Billed before the answer was sent.
  const auto rows = h->rows();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].finish, "length");
  EXPECT_EQ(rows[0].prompt, prompt);
  EXPECT_EQ(rows[0].completion, 5);
  EXPECT_FALSE(rows[0].batch);

  // The whole script, ended by the model: finish_reason stop.
  auto all = h->post("/v1/chat/completions", chat_body("Another", 0));
  ASSERT_TRUE(all);
  const json k = json::parse(all->body);
  EXPECT_EQ(k["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(k["choices"][0]["message"]["content"], engine->script_text(engine->script.size()));
}

TEST_F(HttpFake, ChatStreamWithUsage) {
  auto h = start();
  json body = chat_body("Tell me a story", 4, true);
  body["stream_options"] = {{"include_usage", true}};
  auto res = h->post("/v1/chat/completions", body);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const Sse sse = parse_sse(res->body);
  ASSERT_GE(sse.data.size(), 4u);
  EXPECT_EQ(sse.data.back(), "[DONE]");
  std::string id, content;
  int finish_chunks = 0;
  json usage;
  for (size_t i = 0; i + 1 < sse.data.size(); ++i) {
    const json c = json::parse(sse.data[i]);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    if (i == 0) {
      id = c["id"];
      EXPECT_EQ(c["choices"][0]["delta"]["role"], "assistant");
    }
    EXPECT_EQ(c["id"], id);  // one id for the whole stream
    EXPECT_TRUE(c.contains("usage"));
    if (c["choices"].empty()) {
      usage = c["usage"];
      EXPECT_EQ(i + 2, sse.data.size()) << "the usage chunk comes last";
      continue;
    }
    EXPECT_TRUE(c["usage"].is_null());
    const json& ch = c["choices"][0];
    if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) {
      ++finish_chunks;
      EXPECT_EQ(ch["finish_reason"], "length");
    }
  }
  EXPECT_EQ(content, engine->script_text(4));
  EXPECT_EQ(finish_chunks, 1);
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage["completion_tokens"], 4);
  EXPECT_EQ(usage["prompt_tokens"], static_cast<int64_t>(plain_chat_prompt("Tell me a story").size()));

  // Without include_usage: no usage chunk, no usage field, still [DONE].
  auto plain = h->post("/v1/chat/completions", chat_body("x", 2, true));
  const Sse p = parse_sse(plain->body);
  ASSERT_GE(p.data.size(), 2u);
  EXPECT_EQ(p.data.back(), "[DONE]");
  for (size_t i = 0; i + 1 < p.data.size(); ++i) {
    const json c = json::parse(p.data[i]);
    EXPECT_FALSE(c.contains("usage"));
    EXPECT_FALSE(c["choices"].empty());
  }
  EXPECT_EQ(h->wait_rows(2).size(), 2u);
}

TEST_F(HttpFake, Completions) {
  auto h = start();
  auto res = h->post("/v1/completions", json{{"model", "stories"}, {"prompt", "Once upon a time"}, {"max_tokens", 3}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], engine->script_text(3));
  const auto ids = stories()->tokenizer().encode("Once upon a time", true, true);
  EXPECT_EQ(j["usage"]["prompt_tokens"], static_cast<int64_t>(ids.size()));

  // Token ids as the prompt, streamed.
  json b = {{"model", "stories"},
            {"prompt", ids},
            {"max_tokens", 3},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}}};
  auto s = h->post("/v1/completions", b);
  ASSERT_TRUE(s);
  const Sse sse = parse_sse(s->body);
  ASSERT_FALSE(sse.data.empty());
  EXPECT_EQ(sse.data.back(), "[DONE]");
  std::string text;
  json usage;
  for (size_t i = 0; i + 1 < sse.data.size(); ++i) {
    const json c = json::parse(sse.data[i]);
    EXPECT_EQ(c["object"], "text_completion");
    if (c["choices"].empty())
      usage = c["usage"];
    else
      text += c["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, engine->script_text(3));
  EXPECT_EQ(usage["prompt_tokens"], static_cast<int64_t>(ids.size()));

  auto bad = h->post("/v1/completions", json{{"model", "stories"}, {"prompt", json::array({1, 99999})}});
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_NE(json::parse(bad->body)["error"]["message"].get<std::string>().find("99999"), std::string::npos);
}

TEST_F(HttpFake, TokenizeDetokenizeRoundTrip) {
  auto h = start();
  const std::string text = "Once upon a time, Lily had a dog.";
  auto t = h->post("/tokenize", json{{"content", text}});
  ASSERT_TRUE(t);
  ASSERT_EQ(t->status, 200);
  const json tokens = json::parse(t->body)["tokens"];
  EXPECT_EQ(tokens.get<std::vector<TokenId>>(), stories()->tokenizer().encode(text, false, true));
  auto d = h->post("/detokenize", json{{"tokens", tokens}});
  ASSERT_TRUE(d);
  ASSERT_EQ(d->status, 200);
  EXPECT_EQ(json::parse(d->body)["content"], text);

  auto pieces = h->post("/tokenize", json{{"content", "Once"}, {"with_pieces", true}, {"add_special", true}});
  const json pj = json::parse(pieces->body)["tokens"];
  ASSERT_GE(pj.size(), 2u);
  EXPECT_EQ(pj[0]["id"], stories()->tokenizer().bos());
  EXPECT_TRUE(pj[1].contains("piece"));

  EXPECT_EQ(h->post("/detokenize", json{{"tokens", json::array({1, -5})}})->status, 400);
  EXPECT_EQ(h->post("/tokenize", json{{"text", "x"}})->status, 400);
}

TEST_F(HttpFake, BadRequests) {
  ServerOptions o;
  o.max_body_bytes = 4096;
  auto h = start(o);
  // Malformed JSON: 400 naming the position.
  auto bad = h->post_raw("/v1/chat/completions", "{\"model\": \"stories\", \"messages\": [");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  const json e = json::parse(bad->body);
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["code"], "invalid_json");
  EXPECT_NE(e["error"]["message"].get<std::string>().find("column"), std::string::npos);

  // A wrong type names the field.
  auto wt = h->post("/v1/chat/completions", json{{"model", "stories"}, {"messages", 5}});
  EXPECT_EQ(wt->status, 400);
  EXPECT_EQ(json::parse(wt->body)["error"]["param"], "messages");

  // A prompt over the context: 400 with both numbers, before any queueing.
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += " once upon a time";
  const int64_t n_prompt = static_cast<int64_t>(plain_chat_prompt(long_text).size());
  ASSERT_GT(n_prompt, 128);
  auto too_long = h->post("/v1/chat/completions", chat_body(long_text, 0));
  ASSERT_TRUE(too_long);
  EXPECT_EQ(too_long->status, 400);
  const json tl = json::parse(too_long->body);
  EXPECT_EQ(tl["error"]["code"], "context_length_exceeded");
  const std::string msg = tl["error"]["message"];
  EXPECT_NE(msg.find("128"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(n_prompt)), std::string::npos) << msg;

  // Absurd max_tokens: the prompt plus it does not fit either.
  auto absurd = h->post("/v1/chat/completions", chat_body("hi", 1000000000));
  EXPECT_EQ(absurd->status, 400);
  EXPECT_EQ(json::parse(absurd->body)["error"]["code"], "context_length_exceeded");
  EXPECT_EQ(json::parse(absurd->body)["error"]["param"], "max_tokens");

  // A body over the limit: 413 in OpenAI's shape.
  auto huge = h->post_raw("/v1/chat/completions", std::string(8192, ' '));
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 413);
  EXPECT_EQ(json::parse(huge->body)["error"]["code"], "body_too_large");

  // None of it was billed, and the server still serves.
  EXPECT_EQ(h->rows().size(), 0u);
  EXPECT_EQ(h->post("/v1/chat/completions", chat_body("hi", 1))->status, 200);
}

TEST_F(HttpFake, DeeplyNestedJson) {
  auto h = start();
  // Deeply nested values are named by kind, not printed (no deep recursion).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto nested = h->post_raw("/v1/chat/completions", "{\"model\":\"stories\",\"messages\":" + deep + "}");
  ASSERT_TRUE(nested);
  EXPECT_EQ(nested->status, 400);
  auto nested_tokens = h->post_raw("/detokenize", "{\"tokens\":[" + deep + "]}");
  ASSERT_TRUE(nested_tokens);
  EXPECT_EQ(nested_tokens->status, 400);
  EXPECT_EQ(h->get("/health")->status, 200);
}

TEST_F(HttpFake, ApiKeys) {
  ServerOptions o;
  o.api_keys = {"sk-test-key-0001"};
  auto h = start(o);
  auto none = h->post("/v1/chat/completions", chat_body("hi", 1));
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(json::parse(none->body)["error"]["code"], "missing_api_key");
  auto wrong = h->post("/v1/chat/completions", chat_body("hi", 1), "sk-wrong-key-9999");
  EXPECT_EQ(wrong->status, 401);
  EXPECT_EQ(json::parse(wrong->body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(json::parse(wrong->body)["error"]["message"].get<std::string>().find("sk-wrong-key-9999"),
            std::string::npos)
      << "keys are masked in errors";
  EXPECT_EQ(h->get("/v1/models")->status, 401);
  auto ok = h->post("/v1/chat/completions", chat_body("hi", 1), "sk-test-key-0001");
  EXPECT_EQ(ok->status, 200);
  const auto rows = h->rows();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].key, "sk-test-key-0001");
  EXPECT_EQ(h->get("/health")->status, 200);  // no key needed
}

TEST_F(HttpFake, BalanceAndRateLimits) {
  ServerOptions o;
  KeyConfig broke;
  broke.key = "sk-broke-000000001";
  broke.balance_usd = 0.0;
  KeyConfig slow;
  slow.key = "sk-slow-0000000001";
  slow.limits.requests_per_minute = 1;
  o.config.keys = {broke, slow};
  auto h = start(o);

  auto p = h->post("/v1/chat/completions", chat_body("hi", 1), broke.key);
  EXPECT_EQ(p->status, 402);
  EXPECT_EQ(json::parse(p->body)["error"]["type"], "insufficient_quota");

  auto first = h->post("/v1/chat/completions", chat_body("hi", 1), slow.key);
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(first->get_header_value("x-ratelimit-limit-requests"), "1");
  auto second = h->post("/v1/chat/completions", chat_body("hi", 1), slow.key);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 429);
  EXPECT_EQ(json::parse(second->body)["error"]["code"], "rate_limit_exceeded");
  EXPECT_TRUE(second->has_header("Retry-After"));
  EXPECT_GE(std::stoi(second->get_header_value("Retry-After")), 1);
  EXPECT_EQ(second->get_header_value("x-ratelimit-limit-requests"), "1");
  EXPECT_EQ(second->get_header_value("x-ratelimit-remaining-requests"), "0");
  EXPECT_TRUE(second->has_header("x-ratelimit-reset-requests"));
}

TEST_F(HttpFake, QueueFull) {
  auto h = start();
  engine->queue_full = true;
  auto q = h->post("/v1/chat/completions", chat_body("hi", 1));
  ASSERT_TRUE(q);
  EXPECT_EQ(q->status, 429);
  EXPECT_EQ(json::parse(q->body)["error"]["code"], "queue_full");
  EXPECT_EQ(q->get_header_value("Retry-After"), "3");
  EXPECT_EQ(h->rows().size(), 0u);
}

TEST_F(HttpFake, PricesCachedTokensAndUsageEndpoint) {
  ServerOptions o;
  ModelPrice price;
  price.model = "*";
  price.rates = {1.0, 0.25, 2.0};  // $ per 1M tokens
  o.config.prices = {price};
  o.config.admin_key = "sk-admin-000000000001";
  KeyConfig a;
  a.key = "sk-alice-0000000001";
  a.balance_usd = 1.0;
  KeyConfig b;
  b.key = "sk-bob-000000000001";
  o.config.keys = {a, b};
  auto h = start(o);

  auto first = h->post("/v1/chat/completions", chat_body("Tell me a story about a cat", 4), a.key);
  ASSERT_EQ(first->status, 200) << first->body;
  auto second = h->post("/v1/chat/completions", chat_body("Tell me a story about a cat", 4), a.key);
  ASSERT_EQ(second->status, 200);
  const json u1 = json::parse(first->body)["usage"];
  const json u2 = json::parse(second->body)["usage"];
  EXPECT_EQ(u1["prompt_tokens_details"]["cached_tokens"], 0);
  const int64_t cached = u2["prompt_tokens_details"]["cached_tokens"];
  const int64_t prompt = u2["prompt_tokens"];
  EXPECT_GT(cached, 0);  // the repeated prompt came from the cache
  EXPECT_EQ(u2["prompt_cache_hit_tokens"], cached);
  EXPECT_EQ(u2["prompt_cache_miss_tokens"], prompt - cached);

  const double expected1 = (static_cast<double>(u1["prompt_tokens"].get<int64_t>()) * 1.0 + 4 * 2.0) / 1e6;
  const double expected2 =
      (static_cast<double>(prompt - cached) * 1.0 + static_cast<double>(cached) * 0.25 + 4 * 2.0) / 1e6;
  EXPECT_NEAR(u1["cost"]["usd"].get<double>(), expected1, 1e-12);
  EXPECT_NEAR(u2["cost"]["usd"].get<double>(), expected2, 1e-12);
  const auto rows = h->rows();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_NEAR(rows[0].cost, expected1, 1e-12);
  EXPECT_NEAR(rows[1].cost, expected2, 1e-12);
  EXPECT_EQ(rows[1].cached, cached);

  // The balance was debited.
  auto rec = h->server->ledger().find_key(a.key);
  ASSERT_TRUE(rec && rec->balance_usd);
  EXPECT_NEAR(*rec->balance_usd, 1.0 - expected1 - expected2, 1e-9);

  // /v1/usage: a key sees its own; another key's is refused; the admin sees any.
  (void)h->post("/v1/chat/completions", chat_body("hi", 1), b.key);
  auto mine = h->get("/v1/usage", a.key);
  ASSERT_EQ(mine->status, 200) << mine->body;
  const json mj = json::parse(mine->body);
  ASSERT_EQ(mj["data"].size(), 1u);
  EXPECT_EQ(mj["data"][0]["requests"], 2);
  EXPECT_NEAR(mj["data"][0]["cost_usd"].get<double>(), expected1 + expected2, 1e-12);
  EXPECT_EQ(h->get("/v1/usage?key=" + b.key, a.key)->status, 403);
  auto all = h->get("/v1/usage?group_by=key", o.config.admin_key);
  ASSERT_EQ(all->status, 200) << all->body;
  EXPECT_EQ(json::parse(all->body)["data"].size(), 2u);
  auto bobs = h->get("/v1/usage?key=" + b.key, o.config.admin_key);
  EXPECT_EQ(json::parse(bobs->body)["data"][0]["requests"], 1);
  EXPECT_EQ(h->get("/v1/usage?from=yesterday", a.key)->status, 400);
  // The admin key runs no requests.
  EXPECT_EQ(h->post("/v1/chat/completions", chat_body("hi", 1), o.config.admin_key)->status, 403);
}

TEST_F(HttpFake, AdminKeys) {
  ServerOptions o;
  o.config.admin_key = "sk-admin-000000000001";
  auto h = start(o);
  const std::string admin = o.config.admin_key;
  EXPECT_EQ(h->post("/v1/admin/keys", json::object())->status, 401);
  auto created =
      h->post("/v1/admin/keys", json{{"name", "carol"}, {"balance_usd", 0}, {"limits", {{"rpm", 100}}}}, admin);
  ASSERT_EQ(created->status, 200) << created->body;
  const json k = json::parse(created->body);
  const std::string key = k["key"];
  EXPECT_EQ(k["name"], "carol");
  EXPECT_EQ(k["limits"]["rpm"], 100);
  // A user key is no admin.
  EXPECT_EQ(h->get("/v1/admin/keys", key)->status, 403);
  // Balance 0: 402 until topped up.
  EXPECT_EQ(h->post("/v1/chat/completions", chat_body("hi", 1), key)->status, 402);
  auto top = h->post("/v1/admin/keys/" + key + "/top_up", json{{"usd", 5.0}}, admin);
  ASSERT_EQ(top->status, 200) << top->body;
  EXPECT_DOUBLE_EQ(json::parse(top->body)["balance_usd"].get<double>(), 5.0);
  EXPECT_EQ(h->post("/v1/admin/keys/" + key + "/top_up", json{{"usd", -1}}, admin)->status, 400);
  EXPECT_EQ(h->post("/v1/admin/keys/sk-nobody-00000000/top_up", json{{"usd", 1}}, admin)->status, 404);
  EXPECT_EQ(h->post("/v1/chat/completions", chat_body("hi", 1), key)->status, 200);
  auto list = h->get("/v1/admin/keys", admin);
  ASSERT_EQ(list->status, 200);
  EXPECT_EQ(json::parse(list->body)["data"].size(), 1u);
  auto revoked = h->del("/v1/admin/keys/" + key, admin);
  EXPECT_EQ(revoked->status, 200);
  EXPECT_EQ(h->post("/v1/chat/completions", chat_body("hi", 1), key)->status, 401);
  EXPECT_EQ(h->del("/v1/admin/keys/sk-nobody-00000000", admin)->status, 404);
}

TEST_F(HttpFake, AdminEndpointsOffWithoutAdminKey) {
  auto h = start();
  EXPECT_EQ(h->post("/v1/admin/keys", json::object())->status, 403);
}

TEST_F(HttpFake, ReasoningContent) {
  engine->script = {{5, "<think>"}, {6, "\nweigh"}, {7, " it"}, {8, "</th"}, {9, "ink>\n\n"}, {10, "Yes"}, {11, "."}};
  auto h = start();
  auto res = h->post("/v1/chat/completions", chat_body("Should I?", 0));
  ASSERT_EQ(res->status, 200);
  const json j = json::parse(res->body);
  EXPECT_EQ(j["choices"][0]["message"]["reasoning_content"], "weigh it");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Yes.");
  EXPECT_EQ(j["usage"]["completion_tokens"], 7);
  EXPECT_EQ(j["usage"]["completion_tokens_details"]["reasoning_tokens"], 5);
  EXPECT_EQ(h->rows()[0].reasoning, 5);

  auto s = h->post("/v1/chat/completions", chat_body("Should I?", 0, true));
  std::string reasoning, content;
  for (const std::string& d : parse_sse(s->body).data) {
    if (d == "[DONE]") continue;
    const json c = json::parse(d);
    const json& delta = c["choices"][0]["delta"];
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"].get<std::string>();
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(reasoning, "weigh it");
  EXPECT_EQ(content, "Yes.");

  // /v1/completions returns the raw text.
  auto t = h->post("/v1/completions", json{{"model", "stories"}, {"prompt", "Q"}});
  EXPECT_EQ(json::parse(t->body)["choices"][0]["text"], "<think>\nweigh it</think>\n\nYes.");
}

TEST_F(HttpFake, StreamingClientThatGoesAwayIsCancelledAndBilledForWhatRan) {
  engine->repeat_script(90);
  engine->token_delay = 15ms;
  auto h = start();
  RawClient c(h->port);
  ASSERT_TRUE(c.ok());
  c.send_post("/v1/chat/completions", chat_body("Tell me a long story", 90, true).dump());
  const std::string got = c.read_until("data: ", 4);  // the role chunk and three tokens
  ASSERT_NE(got.find("HTTP/1.1 200"), std::string::npos) << got;
  c.close();
  const auto rows = h->wait_rows(1);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].finish, "cancelled");
  EXPECT_GE(rows[0].completion, 3);
  // Stopped soon after the client left, not at 90. Counted in tokens, not
  // timed: a wall-clock bound adds nothing here and flakes on a busy machine.
  EXPECT_LT(rows[0].completion, 50);
  EXPECT_EQ(rows[0].prompt, static_cast<int64_t>(plain_chat_prompt("Tell me a long story").size()));
  // The server goes on serving.
  EXPECT_EQ(h->post("/v1/chat/completions", chat_body("hi", 1))->status, 200);
}

TEST_F(HttpFake, NonStreamingClientThatGoesAwayIsCancelled) {
  engine->repeat_script(90);
  engine->token_delay = 15ms;
  auto h = start();
  {
    RawClient c(h->port);
    ASSERT_TRUE(c.ok());
    c.send_post("/v1/chat/completions", chat_body("Tell me a long story", 90).dump());
    std::this_thread::sleep_for(150ms);
  }  // closed
  const auto rows = h->wait_rows(1);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].finish, "cancelled");
  EXPECT_GT(rows[0].completion, 0);
  EXPECT_LT(rows[0].completion, 50);
}

TEST_F(HttpFake, KeepAliveCommentsDuringLongPromptProcessing) {
  engine->prompt_chunk = 1;
  engine->prompt_chunk_delay = 15ms;
  ServerOptions o;
  o.keep_alive_ms = 40;
  auto h = start(o);
  auto res = h->post("/v1/chat/completions", chat_body("Tell me a story about a cat and a dog", 2, true));
  ASSERT_TRUE(res);
  const Sse sse = parse_sse(res->body);
  EXPECT_GE(sse.comments, 2) << res->body;
  EXPECT_EQ(sse.data.back(), "[DONE]");
}

TEST_F(HttpFake, MetricsEndpoint) {
  auto h = start();
  (void)h->post("/v1/chat/completions", chat_body("hi", 3));
  auto m = h->get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_NE(m->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  EXPECT_NE(m->body.find("vllm:generation_tokens_total{model_name=\"stories\"} 3\n"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("# TYPE vllm:num_requests_waiting gauge"), std::string::npos);
}

TEST_F(HttpFake, ShutdownEndsStreamsCleanlyAndBillsThem) {
  engine->repeat_script(90);
  engine->token_delay = 10ms;
  auto h = start();
  std::string body;
  std::thread client([&] {
    auto r = h->post("/v1/chat/completions", chat_body("Tell me a long story", 90, true));
    if (r) body = r->body;
  });
  std::this_thread::sleep_for(200ms);
  h->stop();
  client.join();
  const Sse sse = parse_sse(body);
  ASSERT_GE(sse.data.size(), 2u) << body;
  EXPECT_EQ(sse.data.back(), "[DONE]");
  EXPECT_NE(body.find("shutting_down"), std::string::npos);
  const auto rows = h->rows();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].finish, "cancelled");
  EXPECT_LT(rows[0].completion, 90);
}

TEST_F(HttpFake, BatchLineWaitsForAFullQueue) {
  auto h = start();
  engine->queue_full = true;
  std::thread release([&] {
    std::this_thread::sleep_for(300ms);
    engine->queue_full = false;
  });
  auto [status, body] = h->server->execute_batch_line({"/v1/chat/completions", chat_body("x", 2), "", "batch_t:0"});
  release.join();
  EXPECT_EQ(status, 200) << body.dump();
  EXPECT_EQ(body["choices"][0]["message"]["content"], engine->script_text(2));
  const auto rows = h->rows();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_TRUE(rows[0].batch);
  auto [bad_status, bad] = h->server->execute_batch_line({"/v1/embeddings", json::object(), "", "batch_t:1"});
  EXPECT_EQ(bad_status, 400);
}

// The same line run twice (as after kill -9 between billing and storing
// its answer) answers both times but is billed once.
TEST_F(HttpFake, BatchLineRunTwiceIsBilledOnce) {
  auto h = start();
  const BatchLineRequest line{"/v1/chat/completions", chat_body("x", 2), "", "batch_t:7"};
  auto [first, a] = h->server->execute_batch_line(line);
  auto [second, b] = h->server->execute_batch_line(line);
  EXPECT_EQ(first, 200) << a.dump();
  EXPECT_EQ(second, 200) << b.dump();
  EXPECT_EQ(h->rows().size(), 1u);
}

// A batch file of three lines, one of them for a model that does not exist.
std::string batch_jsonl() {
  json l1 = {
      {"custom_id", "req-1"}, {"method", "POST"}, {"url", "/v1/chat/completions"}, {"body", chat_body("One", 3)}};
  json l2 = {
      {"custom_id", "req-2"}, {"method", "POST"}, {"url", "/v1/chat/completions"}, {"body", chat_body("Two", 2)}};
  json l3 = {{"custom_id", "req-3"},
             {"method", "POST"},
             {"url", "/v1/chat/completions"},
             {"body", {{"model", "nope"}, {"messages", chat_body("x", 1)["messages"]}}}};
  return l1.dump() + "\n" + l2.dump() + "\n" + l3.dump() + "\n";
}

// Uploads, creates, polls to the end; returns the output lines by custom_id.
std::map<std::string, json> run_batch(Harness& h, const std::string& key, json* batch_out = nullptr) {
  std::map<std::string, json> by_id;
  httplib::Client c("127.0.0.1", h.port);
  httplib::MultipartFormDataItems items = {{"file", batch_jsonl(), "batch.jsonl", "application/jsonl"},
                                           {"purpose", "batch", "", ""}};
  auto up = c.Post("/v1/files", Harness::headers(key), items);
  EXPECT_TRUE(up);
  if (!up) return by_id;
  EXPECT_EQ(up->status, 200) << up->body;
  const json file = json::parse(up->body);
  EXPECT_EQ(file["purpose"], "batch");
  auto got = h.get("/v1/files/" + file["id"].get<std::string>(), key);
  EXPECT_EQ(got->status, 200);
  auto created = h.post(
      "/v1/batches",
      json{{"input_file_id", file["id"]}, {"endpoint", "/v1/chat/completions"}, {"completion_window", "24h"}}, key);
  EXPECT_EQ(created->status, 200) << created->body;
  if (created->status != 200) return by_id;
  const std::string id = json::parse(created->body)["id"];
  json batch;
  const auto end = std::chrono::steady_clock::now() + 15s;
  while (std::chrono::steady_clock::now() < end) {
    batch = json::parse(h.get("/v1/batches/" + id, key)->body);
    if (batch["status"] == "completed" || batch["status"] == "failed") break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(batch["status"], "completed") << batch.dump();
  if (batch_out) *batch_out = batch;
  if (!batch["output_file_id"].is_string()) return by_id;
  std::string out = h.get("/v1/files/" + batch["output_file_id"].get<std::string>() + "/content", key)->body;
  if (batch["error_file_id"].is_string()) {
    out += h.get("/v1/files/" + batch["error_file_id"].get<std::string>() + "/content", key)->body;
  }
  size_t pos = 0;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    if (nl == std::string::npos) nl = out.size();
    if (nl > pos) {
      const json line = json::parse(out.substr(pos, nl - pos));
      EXPECT_EQ(by_id.count(line["custom_id"]), 0u) << "custom_id twice: " << line["custom_id"];
      by_id[line["custom_id"]] = line;
    }
    pos = nl + 1;
  }
  return by_id;
}

TEST_F(HttpFake, BatchApi) {
  ServerOptions o;
  ModelPrice price;
  price.model = "*";
  price.rates = {1.0, 0.25, 2.0};
  price.batch_multiplier = 0.5;
  o.config.prices = {price};
  KeyConfig a;
  a.key = "sk-batcher-000000001";
  o.config.keys = {a};
  auto h = start(o);
  json batch;
  auto lines = run_batch(*h, a.key, &batch);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(batch["request_counts"]["total"], 3);
  EXPECT_EQ(batch["request_counts"]["completed"], 2);
  EXPECT_EQ(batch["request_counts"]["failed"], 1);
  const json& r1 = lines["req-1"]["response"];
  EXPECT_EQ(r1["status_code"], 200);
  EXPECT_EQ(r1["body"]["object"], "chat.completion");
  EXPECT_EQ(r1["body"]["choices"][0]["message"]["content"], engine->script_text(3));
  EXPECT_EQ(lines["req-2"]["response"]["body"]["choices"][0]["message"]["content"], engine->script_text(2));
  EXPECT_EQ(lines["req-3"]["response"]["status_code"], 404);
  EXPECT_EQ(lines["req-3"]["response"]["body"]["error"]["code"], "model_not_found");

  // Billed as batch work, at half price.
  const auto rows = h->rows();
  ASSERT_EQ(rows.size(), 2u);
  for (const LedgerRow& r : rows) {
    EXPECT_TRUE(r.batch);
    EXPECT_EQ(r.key, a.key);
    const double full = (static_cast<double>(r.prompt - r.cached) * 1.0 + static_cast<double>(r.cached) * 0.25 +
                         static_cast<double>(r.completion) * 2.0) /
                        1e6;
    EXPECT_NEAR(r.cost, 0.5 * full, 1e-12);
  }
  // Batches list, newest first; an unknown id is 404.
  auto list = h->get("/v1/batches?limit=10", a.key);
  ASSERT_EQ(list->status, 200);
  EXPECT_EQ(json::parse(list->body)["data"].size(), 1u);
  EXPECT_EQ(h->get("/v1/batches/batch_nope", a.key)->status, 404);
  EXPECT_EQ(h->get("/v1/files/file-nope", a.key)->status, 404);
  // Multipart fields are checked.
  httplib::Client c("127.0.0.1", h->port);
  auto no_purpose =
      c.Post("/v1/files", Harness::headers(a.key), httplib::MultipartFormDataItems{{"file", "{}", "x.jsonl", ""}});
  EXPECT_EQ(no_purpose->status, 400);
  EXPECT_EQ(json::parse(no_purpose->body)["error"]["param"], "purpose");
}

// ================================================================ the real engine

class HttpReal : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::ref_dir().empty() || !stories()) GTEST_SKIP() << "stories260K.gguf not found in the reference data";
    EngineOptions eo;
    eo.parallel = 2;
    eo.n_ctx = 256;
    eo.max_queue = 8;
    eo.threads = 1;
    auto e = Engine::create(*stories(), eo);
    ASSERT_TRUE(e) << e.error().message;
    engine = std::move(*e);
  }
  std::unique_ptr<Engine> engine;
};

TEST_F(HttpReal, ChatStreamMatchesNonStreamAndRepeatsHitTheCache) {
  ServerOptions o;
  o.parallel = 2;
  Harness h(*engine, o);
  ASSERT_EQ(h.error, "");
  json body = chat_body("Tell me about Lily and her dog", 12);
  body["temperature"] = 0;
  auto whole = h.post("/v1/chat/completions", body);
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const json w = json::parse(whole->body);
  const std::string text = w["choices"][0]["message"]["content"];
  EXPECT_FALSE(text.empty());
  EXPECT_GT(w["usage"]["completion_tokens"].get<int>(), 0);

  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto streamed = h.post("/v1/chat/completions", body);
  ASSERT_TRUE(streamed);
  const Sse sse = parse_sse(streamed->body);
  ASSERT_FALSE(sse.data.empty());
  EXPECT_EQ(sse.data.back(), "[DONE]");
  std::string content;
  json usage;
  for (size_t i = 0; i + 1 < sse.data.size(); ++i) {
    const json c = json::parse(sse.data[i]);
    if (c["choices"].empty())
      usage = c["usage"];
    else if (c["choices"][0]["delta"].contains("content"))
      content += c["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(content, text);  // greedy: the same text either way
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage["completion_tokens"], w["usage"]["completion_tokens"]);
  EXPECT_EQ(usage["prompt_tokens"], w["usage"]["prompt_tokens"]);
  EXPECT_GT(usage["prompt_tokens_details"]["cached_tokens"].get<int>(), 0) << usage.dump();

  // The ledger has both, token for token what the clients saw.
  const auto rows = h.wait_rows(2);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].completion, usage["completion_tokens"].get<int64_t>());
  EXPECT_EQ(rows[1].cached, usage["prompt_tokens_details"]["cached_tokens"].get<int64_t>());

  auto text_res =
      h.post("/v1/completions",
             json{{"model", "stories"}, {"prompt", "Once upon a time"}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_EQ(text_res->status, 200) << text_res->body;
  EXPECT_EQ(json::parse(text_res->body)["usage"]["completion_tokens"], 8);
}

TEST_F(HttpReal, ConcurrentRequestsAllAnswered) {
  ServerOptions o;
  o.parallel = 2;
  Harness h(*engine, o);
  ASSERT_EQ(h.error, "");
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  std::atomic<int64_t> tokens{0};
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back([&, i] {
      auto r = h.post("/v1/chat/completions", chat_body("Story number " + std::to_string(i), 6, i % 2 == 0));
      if (!r || r->status != 200) return;
      ++ok;
      if (i % 2 == 0) {
        const Sse sse = parse_sse(r->body);
        if (sse.data.empty() || sse.data.back() != "[DONE]") --ok;
      } else {
        tokens += json::parse(r->body)["usage"]["completion_tokens"].get<int64_t>();
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok, 6);
  const auto rows = h.wait_rows(6);
  EXPECT_EQ(rows.size(), 6u);
}

TEST_F(HttpReal, BatchApiEndToEnd) {
  ServerOptions o;
  o.parallel = 2;
  ModelPrice price;
  price.model = "*";
  price.rates = {1.0, 0.25, 2.0};
  o.config.prices = {price};
  Harness h(*engine, o);
  ASSERT_EQ(h.error, "");
  auto lines = run_batch(h, "");
  ASSERT_EQ(lines.size(), 3u);
  for (const char* id : {"req-1", "req-2"}) {
    const json& r = lines[id]["response"];
    EXPECT_EQ(r["status_code"], 200) << id;
    EXPECT_EQ(r["body"]["object"], "chat.completion");
    EXPECT_GT(r["body"]["usage"]["completion_tokens"].get<int>(), 0);
  }
  EXPECT_EQ(lines["req-1"]["response"]["body"]["usage"]["completion_tokens"], 3);
  const auto rows = h.rows();
  ASSERT_EQ(rows.size(), 2u);
  for (const LedgerRow& r : rows) {
    EXPECT_TRUE(r.batch);
    const double full = (static_cast<double>(r.prompt - r.cached) * 1.0 + static_cast<double>(r.cached) * 0.25 +
                         static_cast<double>(r.completion) * 2.0) /
                        1e6;
    EXPECT_NEAR(r.cost, 0.5 * full, 1e-12);
  }
}

}  // namespace
}  // namespace engram::server
