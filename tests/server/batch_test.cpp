// The batch API with a fake executor (no model): files, validation, the
// whole flow to OpenAI's output and error lines, cancel, expiry with an
// injected clock, resume after a restart, capacity, and the off-peak plan.
#include "server/batch.h"

#include <gtest/gtest.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "test_support.h"

namespace engram::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono;

int64_t unix_at(int hh, int mm = 0, int day = 28) {
  return duration_cast<seconds>(sys_days{year{2026} / November / day}.time_since_epoch()).count() + hh * 3600 +
         mm * 60;
}

// One request line; content "fail" makes the fake executor answer 400.
std::string line(const std::string& custom_id, const std::string& content,
                 const std::string& url = "/v1/chat/completions", const std::string& method = "POST") {
  json j{{"custom_id", custom_id},
         {"method", method},
         {"url", url},
         {"body", {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", content}}}}}}};
  return j.dump() + "\n";
}

std::string lines(int n, const std::string& prefix = "req-") {
  std::string s;
  for (int i = 0; i < n; ++i) s += line(prefix + std::to_string(i), "hello " + std::to_string(i));
  return s;
}

std::vector<json> parse_jsonl(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) {
    if (!l.empty()) out.push_back(json::parse(l));
  }
  return out;
}

// Answers like an endpoint would: 200 with the prompt echoed, or 400.
struct FakeExecutor {
  std::atomic<int> calls{0};
  std::mutex mutex;
  std::vector<std::string> seen;  // contents, in call order
  std::string last_endpoint, last_owner;
  std::vector<std::string> line_ids;  // in call order
  std::function<void()> during;   // runs inside each call (clock moves, blocking)

  BatchExecutor fn() {
    return [this](const BatchLineRequest& line) {
      const std::string content = line.body["messages"][0]["content"].get<std::string>();
      {
        std::lock_guard<std::mutex> lock(mutex);
        seen.push_back(content);
        last_endpoint = line.endpoint;
        last_owner = line.owner_key;
        line_ids.push_back(line.line_id);
      }
      calls++;
      if (during) during();
      if (content == "fail") {
        return std::make_pair(400, json{{"error", {{"message", "bad"}, {"type", "invalid_request_error"}}}});
      }
      return std::make_pair(200, json{{"object", "chat.completion"}, {"echo", content}});
    };
  }
};

class BatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("batch");
    open_store();
  }
  void TearDown() override {
    service_.reset();
    files_.reset();
    ledger_.reset();
    fs::remove_all(dir_);
  }
  void open_store() {
    auto l = Ledger::open((dir_ / "ledger.db").string());
    ASSERT_TRUE(l) << l.error().message;
    ledger_ = std::move(*l);
    auto f = FileStore::open(*ledger_, (dir_ / "files").string());
    ASSERT_TRUE(f) << f.error().message;
    files_ = std::move(*f);
  }
  BatchOptions options() {
    BatchOptions o;
    o.poll_interval = milliseconds(2);
    return o;
  }
  void start(FakeExecutor& ex, BatchOptions o) {
    service_ = std::make_unique<BatchService>(*ledger_, *files_, ex.fn(), std::move(o));
    ASSERT_TRUE(service_->start().is_ok());
  }
  std::string upload(const std::string& content, const std::string& owner = "sk-a") {
    auto f = files_->put("input.jsonl", "batch", content, owner);
    EXPECT_TRUE(f) << f.error().message;
    return f ? f->id : "";
  }
  BatchObject create(const std::string& file_id, const std::string& owner = "sk-a") {
    auto b = service_->create(owner, file_id, "/v1/chat/completions", "24h", json{{"job", "test"}});
    EXPECT_TRUE(b) << b.error().message;
    return b ? *b : BatchObject{};
  }
  // Polls until the batch reaches `status` (or 5 s pass).
  BatchObject wait_for(const std::string& id, const std::string& status, const std::string& owner = "sk-a") {
    const auto deadline = steady_clock::now() + seconds(5);
    BatchObject b;
    while (steady_clock::now() < deadline) {
      auto got = service_->get(id, owner);
      if (got) {
        b = *got;
        if (b.status == status) return b;
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
    ADD_FAILURE() << "batch " << id << " stayed '" << b.status << "', wanted '" << status << "'";
    return b;
  }
  std::vector<json> file_lines(const std::string& id, const std::string& owner = "sk-a") {
    if (id.empty()) return {};
    auto c = files_->content(id, owner);
    EXPECT_TRUE(c) << c.error().message;
    return c ? parse_jsonl(*c) : std::vector<json>{};
  }

  fs::path dir_;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<FileStore> files_;
  std::unique_ptr<BatchService> service_;
};

TEST_F(BatchTest, FileStorePutGetContentRemove) {
  const std::string content = lines(2);
  auto f = files_->put("input.jsonl", "batch", content, "sk-a");
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f->id.rfind("file-", 0), 0u);
  EXPECT_EQ(f->bytes, static_cast<int64_t>(content.size()));
  json j = f->to_json();
  EXPECT_EQ(j["object"], "file");
  EXPECT_EQ(j["id"], f->id);
  EXPECT_EQ(j["purpose"], "batch");
  EXPECT_EQ(j["filename"], "input.jsonl");
  EXPECT_EQ(j["bytes"], content.size());
  EXPECT_TRUE(j["created_at"].is_number_integer());

  auto got = files_->get(f->id, "sk-a");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->filename, "input.jsonl");
  EXPECT_EQ(*files_->content(f->id, "sk-a"), content);

  // Another key cannot see it; the error reads as "not found".
  auto other = files_->get(f->id, "sk-b");
  ASSERT_FALSE(other);
  EXPECT_TRUE(is_not_found_error(other.error().message)) << other.error().message;
  EXPECT_FALSE(files_->content(f->id, "sk-b"));

  ASSERT_TRUE(files_->remove(f->id, "sk-a").is_ok());
  EXPECT_FALSE(files_->get(f->id, "sk-a"));
  EXPECT_FALSE(files_->remove(f->id, "sk-a").is_ok());
}

TEST_F(BatchTest, FileStoreRefusesBadUploadsNamingTheLine) {
  auto not_json = files_->put("in.jsonl", "batch", line("a", "x") + "{not json\n", "");
  ASSERT_FALSE(not_json);
  EXPECT_NE(not_json.error().message.find("in.jsonl: line 2"), std::string::npos) << not_json.error().message;

  auto no_body = files_->put("in.jsonl", "batch", R"({"custom_id": "a", "method": "POST", "url": "/v1/completions"})",
                             "");
  ASSERT_FALSE(no_body);
  EXPECT_NE(no_body.error().message.find("line 1: body"), std::string::npos) << no_body.error().message;

  auto body_string = files_->put(
      "in.jsonl", "batch", "\n" + std::string(R"({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": "x"})"),
      "");
  ASSERT_FALSE(body_string);
  EXPECT_NE(body_string.error().message.find("line 2: body: expected a JSON object"), std::string::npos)
      << body_string.error().message;

  EXPECT_FALSE(files_->put("in.jsonl", "batch", "\n\n", ""));
  auto purpose = files_->put("in.jsonl", "fine-tune", lines(1), "");
  ASSERT_FALSE(purpose);
  EXPECT_EQ(purpose.error().message.rfind("purpose:", 0), 0u) << purpose.error().message;
}

TEST_F(BatchTest, CompleteFlowWritesOpenAIOutputAndErrorFiles) {
  FakeExecutor ex;
  start(ex, options());
  const std::string input = line("a", "one") + line("b", "fail") + "\n" + line("c", "three") + line("d", "four");
  const std::string file_id = upload(input);
  BatchObject created = create(file_id);
  EXPECT_EQ(created.id.rfind("batch_", 0), 0u);
  EXPECT_EQ(created.status, "in_progress");
  EXPECT_EQ(created.request_counts.total, 4);
  EXPECT_EQ(created.expires_at, created.created_at + 86400);

  BatchObject done = wait_for(created.id, "completed");
  EXPECT_EQ(done.request_counts.total, 4);
  EXPECT_EQ(done.request_counts.completed, 3);
  EXPECT_EQ(done.request_counts.failed, 1);
  EXPECT_EQ(ex.calls.load(), 4);
  EXPECT_EQ(ex.last_endpoint, "/v1/chat/completions");
  EXPECT_EQ(ex.last_owner, "sk-a");
  // Each line is billed under "<batch id>:<line number in the input file>"
  // (the ledger bills it once); the blank third line has no request.
  std::vector<std::string> line_ids = ex.line_ids;
  std::sort(line_ids.begin(), line_ids.end());
  EXPECT_EQ(line_ids, (std::vector<std::string>{created.id + ":1", created.id + ":2", created.id + ":4",
                                                created.id + ":5"}));

  json j = done.to_json();
  EXPECT_EQ(j["object"], "batch");
  EXPECT_EQ(j["endpoint"], "/v1/chat/completions");
  EXPECT_EQ(j["input_file_id"], file_id);
  EXPECT_EQ(j["completion_window"], "24h");
  EXPECT_EQ(j["status"], "completed");
  EXPECT_TRUE(j["errors"].is_null());
  for (const char* k : {"created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at"}) {
    EXPECT_TRUE(j[k].is_number_integer()) << k;
  }
  for (const char* k : {"failed_at", "expired_at", "cancelling_at", "cancelled_at"}) EXPECT_TRUE(j[k].is_null()) << k;
  EXPECT_EQ(j["request_counts"], (json{{"total", 4}, {"completed", 3}, {"failed", 1}}));
  EXPECT_EQ(j["metadata"], (json{{"job", "test"}}));

  auto out_file = files_->get(done.output_file_id, "sk-a");
  ASSERT_TRUE(out_file);
  EXPECT_EQ(out_file->purpose, "batch_output");
  std::vector<json> out = file_lines(done.output_file_id);
  ASSERT_EQ(out.size(), 3u);
  std::map<std::string, std::string> echoed;
  std::set<std::string> ids;
  for (const json& o : out) {
    EXPECT_EQ(o["id"].get<std::string>().rfind("batch_req_", 0), 0u);
    ids.insert(o["id"].get<std::string>());
    EXPECT_TRUE(o["error"].is_null());
    EXPECT_EQ(o["response"]["status_code"], 200);
    EXPECT_TRUE(o["response"]["request_id"].is_string());
    echoed[o["custom_id"]] = o["response"]["body"]["echo"];
  }
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(echoed, (std::map<std::string, std::string>{{"a", "one"}, {"c", "three"}, {"d", "four"}}));

  std::vector<json> err = file_lines(done.error_file_id);
  ASSERT_EQ(err.size(), 1u);
  EXPECT_EQ(err[0]["custom_id"], "b");
  EXPECT_EQ(err[0]["response"]["status_code"], 400);
  EXPECT_EQ(err[0]["response"]["body"]["error"]["message"], "bad");
}

TEST_F(BatchTest, NoErrorFileWhenEverythingSucceeded) {
  FakeExecutor ex;
  start(ex, options());
  BatchObject b = wait_for(create(upload(lines(3))).id, "completed");
  EXPECT_EQ(b.error_file_id, "");
  EXPECT_TRUE(b.to_json()["error_file_id"].is_null());
  EXPECT_EQ(file_lines(b.output_file_id).size(), 3u);
}

TEST_F(BatchTest, BadInputFileMakesTheBatchFailNamingTheLines) {
  FakeExecutor ex;
  start(ex, options());
  const std::string input = line("a", "ok") + line("a", "dup") + line("c", "get", "/v1/chat/completions", "GET") +
                            line("d", "url", "/v1/completions");
  BatchObject b = create(upload(input));
  EXPECT_EQ(b.status, "failed");
  EXPECT_GT(b.failed_at, 0);
  EXPECT_EQ(b.request_counts.total, 0);
  ASSERT_TRUE(b.errors.is_object());
  EXPECT_EQ(b.errors["object"], "list");
  const json& data = b.errors["data"];
  ASSERT_EQ(data.size(), 3u);
  EXPECT_EQ(data[0]["line"], 2);
  EXPECT_EQ(data[0]["code"], "duplicate_custom_id");
  EXPECT_NE(data[0]["message"].get<std::string>().find("line 1"), std::string::npos);
  EXPECT_EQ(data[1]["line"], 3);
  EXPECT_EQ(data[1]["param"], "method");
  EXPECT_EQ(data[2]["line"], 4);
  EXPECT_EQ(data[2]["param"], "url");
  EXPECT_EQ(b.to_json()["errors"]["data"].size(), 3u);

  // Stored as failed; nothing runs.
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(service_->get(b.id, "sk-a")->status, "failed");
  EXPECT_EQ(ex.calls.load(), 0);
}

TEST_F(BatchTest, CreateRefusesBadArgumentsNamingTheField) {
  FakeExecutor ex;
  start(ex, options());
  const std::string file_id = upload(lines(1));
  auto window = service_->create("sk-a", file_id, "/v1/chat/completions", "1h", nullptr);
  ASSERT_FALSE(window);
  EXPECT_EQ(window.error().message.rfind("completion_window:", 0), 0u);
  auto endpoint = service_->create("sk-a", file_id, "/v1/embeddings", "24h", nullptr);
  ASSERT_FALSE(endpoint);
  EXPECT_EQ(endpoint.error().message.rfind("endpoint:", 0), 0u);
  auto unknown = service_->create("sk-a", "file-nope", "/v1/chat/completions", "24h", nullptr);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().message.rfind("input_file_id: No such File", 0), 0u) << unknown.error().message;
  auto foreign = service_->create("sk-b", file_id, "/v1/chat/completions", "24h", nullptr);
  EXPECT_FALSE(foreign);
  auto metadata = service_->create("sk-a", file_id, "/v1/chat/completions", "24h", json::array());
  ASSERT_FALSE(metadata);
  EXPECT_EQ(metadata.error().message.rfind("metadata", 0), 0u);
  auto output = files_->put("out.jsonl", "batch_output", "{}\n", "sk-a");
  ASSERT_TRUE(output);
  auto purpose = service_->create("sk-a", output->id, "/v1/chat/completions", "24h", nullptr);
  ASSERT_FALSE(purpose);
  EXPECT_NE(purpose.error().message.find("purpose"), std::string::npos);
}

TEST_F(BatchTest, GetAndListAreScopedToTheOwnerNewestFirst) {
  FakeExecutor ex;
  BatchOptions o = options();
  o.capacity_available = [] { return false; };  // keep them in progress
  start(ex, o);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(create(upload(lines(1))).id);
  create(upload(lines(1), "sk-b"), "sk-b");

  auto all = service_->list("sk-a", "", 20);
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, ids[2]);
  EXPECT_EQ((*all)[2].id, ids[0]);
  auto page = service_->list("sk-a", ids[2], 1);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].id, ids[1]);
  EXPECT_FALSE(service_->list("sk-a", "", 0));
  EXPECT_FALSE(service_->list("sk-a", "", 101));
  EXPECT_FALSE(service_->list("sk-a", "batch_nope", 10));

  auto foreign = service_->get(ids[0], "sk-b");
  ASSERT_FALSE(foreign);
  EXPECT_TRUE(is_not_found_error(foreign.error().message));
  EXPECT_TRUE(is_not_found_error(service_->cancel(ids[0], "sk-b").error().message));
  EXPECT_EQ(ex.calls.load(), 0);
}

TEST_F(BatchTest, CancelFinishesLinesInFlightAndSkipsTheRest) {
  FakeExecutor ex;
  std::mutex m;
  std::condition_variable cv;
  bool entered = false, release = false;
  ex.during = [&] {
    std::unique_lock<std::mutex> lock(m);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  start(ex, options());
  BatchObject b = create(upload(lines(5)));
  {
    std::unique_lock<std::mutex> lock(m);
    ASSERT_TRUE(cv.wait_for(lock, seconds(5), [&] { return entered; }));
  }
  auto cancelling = service_->cancel(b.id, "sk-a");
  ASSERT_TRUE(cancelling) << cancelling.error().message;
  EXPECT_EQ(cancelling->status, "cancelling");
  EXPECT_GT(cancelling->cancelling_at, 0);
  {
    std::lock_guard<std::mutex> lock(m);
    release = true;
  }
  cv.notify_all();

  BatchObject done = wait_for(b.id, "cancelled");
  EXPECT_EQ(ex.calls.load(), 1);
  EXPECT_GT(done.cancelled_at, 0);
  EXPECT_EQ(done.request_counts.completed, 1);
  EXPECT_EQ(done.request_counts.failed, 4);
  std::vector<json> out = file_lines(done.output_file_id);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0]["custom_id"], "req-0");
  std::vector<json> err = file_lines(done.error_file_id);
  ASSERT_EQ(err.size(), 4u);
  for (const json& e : err) {
    EXPECT_TRUE(e["response"].is_null());
    EXPECT_EQ(e["error"]["code"], "batch_cancelled");
  }
  // Cancelling again is harmless; a finished batch cannot be cancelled.
  EXPECT_TRUE(service_->cancel(b.id, "sk-a"));
  BatchObject other = wait_for(create(upload(lines(1))).id, "completed");
  auto refused = service_->cancel(other.id, "sk-a");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("completed"), std::string::npos);
}

TEST_F(BatchTest, ExpiresAfter24HoursWithPartialOutput) {
  FakeExecutor ex;
  std::atomic<int64_t> clock{unix_at(10)};
  ex.during = [&] { clock += 3600; };  // every line takes an hour
  BatchOptions o = options();
  o.now_unix = [&] { return clock.load(); };
  start(ex, o);
  BatchObject b = create(upload(lines(30)));
  EXPECT_EQ(b.expires_at, unix_at(10) + 86400);
  BatchObject done = wait_for(b.id, "expired");
  // Lines start at +0h .. +23h; at +24h the window has closed.
  EXPECT_EQ(ex.calls.load(), 24);
  EXPECT_EQ(done.request_counts.completed, 24);
  EXPECT_EQ(done.request_counts.failed, 6);
  EXPECT_EQ(done.expired_at, unix_at(10) + 86400);
  EXPECT_EQ(file_lines(done.output_file_id).size(), 24u);
  std::vector<json> err = file_lines(done.error_file_id);
  ASSERT_EQ(err.size(), 6u);
  EXPECT_EQ(err[0]["custom_id"], "req-24");
  EXPECT_EQ(err[0]["error"]["code"], "batch_expired");
}

TEST_F(BatchTest, ResumesAfterRestartWithoutRunningAnsweredLinesAgain) {
  std::string batch_id;
  {
    FakeExecutor first;
    BatchOptions o = options();
    o.capacity_available = [&] { return first.calls.load() < 3; };  // then "busy" until the restart
    start(first, o);
    batch_id = create(upload(lines(8))).id;
    const auto deadline = steady_clock::now() + seconds(5);
    while (service_->get(batch_id, "sk-a")->request_counts.completed < 3 && steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(2));
    }
    std::this_thread::sleep_for(milliseconds(20));
    EXPECT_EQ(first.calls.load(), 3);
    EXPECT_EQ(service_->get(batch_id, "sk-a")->status, "in_progress");
    service_.reset();  // the server goes away
  }
  files_.reset();
  ledger_.reset();
  open_store();

  FakeExecutor second;
  start(second, options());
  BatchObject done = wait_for(batch_id, "completed");
  EXPECT_EQ(second.calls.load(), 5);
  EXPECT_EQ(std::set<std::string>(second.seen.begin(), second.seen.end()),
            (std::set<std::string>{"hello 3", "hello 4", "hello 5", "hello 6", "hello 7"}));
  std::vector<json> out = file_lines(done.output_file_id);
  ASSERT_EQ(out.size(), 8u);
  std::set<std::string> custom_ids;
  for (const json& o : out) custom_ids.insert(o["custom_id"]);
  EXPECT_EQ(custom_ids.size(), 8u);  // every request exactly once
  EXPECT_EQ(done.request_counts.completed, 8);
}

TEST_F(BatchTest, WaitsForCapacity) {
  FakeExecutor ex;
  std::atomic<bool> free{false};
  BatchOptions o = options();
  o.capacity_available = [&] { return free.load(); };
  start(ex, o);
  BatchObject b = create(upload(lines(2)));
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_EQ(ex.calls.load(), 0);
  free = true;
  wait_for(b.id, "completed");
  EXPECT_EQ(ex.calls.load(), 2);
}

TEST_F(BatchTest, ConcurrencyRunsSeveralLinesAtOnce) {
  FakeExecutor ex;
  std::atomic<int> running{0}, most{0};
  ex.during = [&] {
    int now = ++running;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(milliseconds(10));
    --running;
  };
  BatchOptions o = options();
  o.concurrency = 3;
  start(ex, o);
  BatchObject done = wait_for(create(upload(lines(9))).id, "completed");
  EXPECT_EQ(done.request_counts.completed, 9);
  EXPECT_GE(most.load(), 2);
  EXPECT_LE(most.load(), 3);
  EXPECT_EQ(file_lines(done.output_file_id).size(), 9u);
}

ModelPrice off_peak_price() {
  ModelPrice p;
  p.model = "*";
  p.rates = {0.27, 0.07, 1.10};
  p.windows.push_back({"off-peak", 16 * 60 + 30, 30, 0.5});
  return p;
}

TEST_F(BatchTest, WaitsForTheOffPeakWindowWhenTheDeadlineAllows) {
  FakeExecutor ex;
  std::atomic<int64_t> clock{unix_at(10)};
  BatchOptions o = options();
  o.now_unix = [&] { return clock.load(); };
  o.price = off_peak_price();
  o.seconds_per_line = 60;
  start(ex, o);
  BatchObject b = create(upload(lines(3)));
  std::this_thread::sleep_for(milliseconds(40));
  EXPECT_EQ(ex.calls.load(), 0);
  EXPECT_EQ(service_->get(b.id, "sk-a")->status, "in_progress");
  clock = unix_at(16, 31);
  wait_for(b.id, "completed");
  EXPECT_EQ(ex.calls.load(), 3);
}

TEST(BatchPlan, NoPriceWindowsOrEstimateRunsNow) {
  const int64_t now = unix_at(10);
  EXPECT_TRUE(plan_batch_run(nullptr, now, now + 86400, 60).run_now);
  ModelPrice flat;
  EXPECT_TRUE(plan_batch_run(&flat, now, now + 86400, 60).run_now);
  ModelPrice p = off_peak_price();
  EXPECT_TRUE(plan_batch_run(&p, now, now + 86400, 0).run_now);  // unknown duration
}

TEST(BatchPlan, WaitsForOffPeakWhenItStartsEarlyEnough) {
  ModelPrice p = off_peak_price();
  const int64_t now = unix_at(10);
  BatchPlan plan = plan_batch_run(&p, now, now + 86400, 3600);
  EXPECT_FALSE(plan.run_now);
  EXPECT_EQ(plan.wait_until_unix, unix_at(16, 30));
  EXPECT_DOUBLE_EQ(plan.multiplier, 0.5);

  // Already off-peak: run.
  BatchPlan inside = plan_batch_run(&p, unix_at(17), unix_at(17) + 86400, 3600);
  EXPECT_TRUE(inside.run_now);
  EXPECT_DOUBLE_EQ(inside.multiplier, 0.5);
  // Just after midnight, still in the window that wrapped.
  EXPECT_TRUE(plan_batch_run(&p, unix_at(0, 10), unix_at(0, 10) + 86400, 60).run_now);
}

TEST(BatchPlan, RunsNowWhenWaitingWouldMissTheDeadline) {
  ModelPrice p = off_peak_price();
  const int64_t now = unix_at(10);
  // Deadline 15:00, before the window.
  EXPECT_TRUE(plan_batch_run(&p, now, unix_at(15), 60).run_now);
  // Deadline 18:00: 16:30 + 2 * 1h + 10 min = 18:40 is too late.
  EXPECT_TRUE(plan_batch_run(&p, now, unix_at(18), 3600).run_now);
  // Deadline 19:00: 16:30 + 2h10 = 18:40 fits.
  EXPECT_FALSE(plan_batch_run(&p, now, unix_at(19), 3600).run_now);
  // A 20-hour job cannot wait at all.
  EXPECT_TRUE(plan_batch_run(&p, now, now + 86400, 20 * 3600).run_now);
}

TEST(BatchPlan, PicksTheCheapestWindowThenTheEarliest) {
  ModelPrice p;
  p.windows.push_back({"cheap", 22 * 60, 2 * 60, 0.5});   // 22:00 - 02:00
  p.windows.push_back({"good", 14 * 60, 16 * 60, 0.75});  // 14:00 - 16:00
  const int64_t now = unix_at(10);
  BatchPlan far = plan_batch_run(&p, now, now + 86400, 600);
  EXPECT_FALSE(far.run_now);
  EXPECT_EQ(far.wait_until_unix, unix_at(22));
  EXPECT_DOUBLE_EQ(far.multiplier, 0.5);
  // The deadline rules out 22:00 but leaves 14:00.
  BatchPlan near = plan_batch_run(&p, now, unix_at(18), 600);
  EXPECT_FALSE(near.run_now);
  EXPECT_EQ(near.wait_until_unix, unix_at(14));
  EXPECT_DOUBLE_EQ(near.multiplier, 0.75);
}

TEST(BatchPlan, LeavesAPeakSurchargeWindowForTheBaseRate) {
  ModelPrice p;
  p.windows.push_back({"peak", 8 * 60, 12 * 60, 1.5});
  BatchPlan plan = plan_batch_run(&p, unix_at(9), unix_at(9) + 86400, 600);
  EXPECT_FALSE(plan.run_now);
  EXPECT_EQ(plan.wait_until_unix, unix_at(12));
  EXPECT_DOUBLE_EQ(plan.multiplier, 1.0);
  EXPECT_TRUE(plan_batch_run(&p, unix_at(13), unix_at(13) + 86400, 600).run_now);
}

}  // namespace
}  // namespace engram::server
