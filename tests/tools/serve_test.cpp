// `engram serve` as a process: it prints its URL, answers over HTTP, and
// shuts down cleanly on SIGTERM/SIGINT with every request in the ledger.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

// One `engram serve` child process. Its stdout is read for the URL line;
// stderr goes to a file.
class ServeProcess {
 public:
  ServeProcess(const std::vector<std::string>& args, const fs::path& dir) : stderr_path_(dir / "serve.stderr") {
    int out[2];
    if (::pipe(out) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      const int err = ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (err >= 0) ::dup2(err, 2);
      ::close(out[0]);
      std::vector<std::string> all = {ENGRAM_BINARY, "serve"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (std::string& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = out[0];
  }
  ~ServeProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }

  // The first stdout line (the URL line), or "" after the timeout.
  std::string first_line(std::chrono::milliseconds timeout = 20000ms) {
    std::string line;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char c;
      if (::read(out_, &c, 1) != 1) break;
      if (c == '\n') return line;
      line += c;
    }
    return "";
  }

  // Sends `sig` and waits for the exit; the exit code (128 + signal if killed by one).
  int stop(int sig, std::chrono::milliseconds timeout = 20000ms) {
    ::kill(pid_, sig);
    const auto end = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < end) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

  std::string err() const { return test::read_text_file(stderr_path_); }
  bool started() const { return pid_ > 0; }

 private:
  fs::path stderr_path_;
  pid_t pid_ = -1;
  int out_ = -1;
  bool reaped_ = false;
};

int port_of(const std::string& url_line) {
  std::smatch m;
  if (!std::regex_search(url_line, m, std::regex("http://[^ ]*:([0-9]+)"))) return -1;
  return std::stoi(m[1]);
}

int64_t count_rows(const fs::path& db_path, const std::string& where = "1") {
  sqlite3* db = nullptr;
  int64_t n = -1;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    const std::string sql = "SELECT count(*) FROM usage WHERE " + where;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
      n = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return n;
}

fs::path write_config(const fs::path& dir, const json& extra) {
  json cfg = {{"ledger", (dir / "ledger.db").string()}, {"files_dir", (dir / "files").string()}};
  for (auto it = extra.begin(); it != extra.end(); ++it) cfg[it.key()] = it.value();
  const fs::path p = dir / "server.json";
  std::ofstream(p) << cfg.dump(2);
  return p;
}

std::string model_path() { return (test::ref_dir() / "models" / "stories260K.gguf").string(); }

TEST(Serve, AnswersAndShutsDownCleanlyOnSigterm) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("serve");
  const fs::path cfg = write_config(
      dir,
      json{{"prices", json::array({json{{"model", "*"}, {"input_miss", 1.0}, {"input_hit", 0.5}, {"output", 2.0}}})}});
  ServeProcess p({"-m", model_path(), "--port", "0", "--parallel", "2", "--ctx", "256", "-t", "1", "--config",
                  cfg.string(), "--model-alias", "stories"},
                 dir);
  ASSERT_TRUE(p.started());
  const std::string line = p.first_line();
  ASSERT_NE(line, "") << p.err();
  EXPECT_NE(line.find("http://127.0.0.1:"), std::string::npos) << line;
  const int port = port_of(line);
  ASSERT_GT(port, 0) << line;

  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(20, 0);
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const json body = {{"model", "stories"},
                     {"messages", json::array({json{{"role", "user"}, {"content", "Hello"}}})},
                     {"max_tokens", 5}};
  auto res = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_GT(j["usage"]["cost"]["usd"].get<double>(), 0);

  EXPECT_EQ(p.stop(SIGTERM), 0) << p.err();
  EXPECT_NE(p.err().find("server stopped"), std::string::npos) << p.err();
  EXPECT_EQ(count_rows(dir / "ledger.db"), 1);
}

TEST(Serve, SigintCancelsRunningRequestsAndBillsThem) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("serve-int");
  const fs::path cfg = write_config(dir, json::object());
  ServeProcess p({"-m", model_path(), "--port", "0", "--ctx", "512", "-t", "1", "--config", cfg.string(),
                  "--model-alias", "stories", "--api-key", "sk-serve-test-0001"},
                 dir);
  const int port = port_of(p.first_line());
  ASSERT_GT(port, 0) << p.err();
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(20, 0);
  // Authentication is on with --api-key.
  auto anon = c.Get("/v1/models");
  ASSERT_TRUE(anon);
  EXPECT_EQ(anon->status, 401);
  // A long generation, stopped by SIGINT while it runs: the client gets an
  // end to its stream, the ledger a row.
  std::string stream_body;
  std::thread client([&] {
    httplib::Client sc("127.0.0.1", port);
    sc.set_read_timeout(20, 0);
    const json body = {{"model", "stories"},
                       {"prompt", "Once upon a time"},
                       {"max_tokens", 500},
                       {"ignore_eos", true},
                       {"stream", true}};
    auto r = sc.Post("/v1/completions", httplib::Headers{{"Authorization", "Bearer sk-serve-test-0001"}}, body.dump(),
                     "application/json");
    if (r) stream_body = r->body;
  });
  std::this_thread::sleep_for(100ms);
  const int code = p.stop(SIGINT);
  client.join();
  EXPECT_EQ(code, 0) << p.err();
  EXPECT_NE(stream_body.find("data: [DONE]"), std::string::npos) << stream_body.substr(0, 300);
  EXPECT_EQ(count_rows(dir / "ledger.db", "api_key = 'sk-serve-test-0001'"), 1);
}

TEST(Serve, WarnsWhenOpenBeyondLoopback) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("serve-open");
  const fs::path cfg = write_config(dir, json::object());
  ServeProcess p({"-m", model_path(), "--host", "0.0.0.0", "--port", "0", "-t", "1", "--config", cfg.string()}, dir);
  const std::string line = p.first_line();
  ASSERT_NE(line, "") << p.err();
  EXPECT_EQ(p.stop(SIGTERM), 0);
  EXPECT_NE(p.err().find("WARNING"), std::string::npos) << p.err();
  EXPECT_NE(p.err().find("without authentication"), std::string::npos) << p.err();
}

TEST(Serve, BadConfigIsAnError) {
  ENGRAM_REQUIRE_REF();
  const fs::path dir = test::temp_dir("serve-bad");
  const fs::path cfg = dir / "bad.json";
  std::ofstream(cfg) << "{\"keys\": [{\"key\": 5}]}";
  ServeProcess p({"-m", model_path(), "--port", "0", "--config", cfg.string()}, dir);
  EXPECT_EQ(p.first_line(5000ms), "");
  EXPECT_EQ(p.stop(0), 1);  // signal 0: only waits for the exit
  EXPECT_NE(p.err().find("bad.json"), std::string::npos) << p.err();
}

}  // namespace
}  // namespace engram
