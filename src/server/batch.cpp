// The batch API: files on disk with their records in the ledger's database,
// and batches whose lines are stored in the database at creation, answered
// one by one by worker threads, and written out in OpenAI's output and error
// line formats when the batch ends. A line's answer is committed before the
// next line starts, so a restart runs only the lines without an answer.
#include "server/batch.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "server/ledger_sql.h"
#include "util/clock.h"

namespace engram::server {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr int64_t kCompletionWindowSeconds = 24 * 3600;
constexpr size_t kMaxLines = 50000;      // OpenAI's limit per batch
constexpr size_t kMaxReportedErrors = 100;

json null_if_zero(int64_t v) { return v == 0 ? json(nullptr) : json(v); }
json null_if_empty(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// ---- Files on disk ----

// Writes `content` to path atomically and durably: a temporary file,
// fsync, rename, fsync of the directory.
Status write_file_durably(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return make_error(tmp.string(), ": cannot create: ", std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return make_error(tmp.string(), ": cannot write: ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return make_error(tmp.string(), ": cannot sync: ", std::strerror(err));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    ::unlink(tmp.c_str());
    return make_error(path.string(), ": cannot rename into place: ", ec.message());
  }
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
  return Status::ok();
}

// ---- Input lines ----

// {"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}
struct InputLine {
  int64_t line = 0;  // 1-based line number in the file
  std::string custom_id;
  std::string body;  // JSON text
};

json line_error(const std::string& code, int64_t line, const std::string& param, const std::string& message) {
  return json{{"code", code}, {"message", "line " + std::to_string(line) + ": " + message},
              {"param", param.empty() ? json(nullptr) : json(param)}, {"line", line}};
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

// Splits JSONL into lines with their numbers, skipping blank lines.
std::vector<std::pair<int64_t, std::string>> split_lines(const std::string& content) {
  std::vector<std::pair<int64_t, std::string>> lines;
  std::istringstream in(content);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!blank(line)) lines.emplace_back(number, line);
  }
  return lines;
}

// The structural checks that need no endpoint: a JSON object with a string
// custom_id, a string method, a string url and an object body. Returns an
// error object (see line_error) or null.
json check_line_shape(int64_t number, const std::string& text, json& parsed) {
  try {
    parsed = json::parse(text);
  } catch (const json::parse_error& e) {
    return line_error("invalid_json_line", number, "", std::string("not valid JSON: ") + e.what());
  }
  if (!parsed.is_object()) return line_error("invalid_json_line", number, "", "expected a JSON object");
  for (const char* field : {"custom_id", "method", "url"}) {
    auto it = parsed.find(field);
    if (it == parsed.end()) return line_error("missing_required_parameter", number, field, std::string(field) + ": missing");
    if (!it->is_string()) return line_error("invalid_type", number, field, std::string(field) + ": expected a string");
  }
  auto body = parsed.find("body");
  if (body == parsed.end()) return line_error("missing_required_parameter", number, "body", "body: missing");
  if (!body->is_object()) return line_error("invalid_type", number, "body", "body: expected a JSON object");
  if (parsed["custom_id"].get<std::string>().empty()) {
    return line_error("invalid_value", number, "custom_id", "custom_id: must not be empty");
  }
  return nullptr;
}

// Every check for a batch against `endpoint`; fills `lines` or `errors`.
void parse_batch_input(const std::string& content, const std::string& endpoint, std::vector<InputLine>& lines,
                       json& errors) {
  errors = json::array();
  std::map<std::string, int64_t> seen;  // custom_id -> line
  auto add = [&](json e) {
    if (errors.size() < kMaxReportedErrors) errors.push_back(std::move(e));
  };
  const auto raw = split_lines(content);
  if (raw.empty()) {
    add(json{{"code", "empty_file"}, {"message", "the input file has no requests"}, {"param", "input_file_id"},
             {"line", nullptr}});
    return;
  }
  if (raw.size() > kMaxLines) {
    add(json{{"code", "too_many_requests"},
             {"message", "the input file has " + std::to_string(raw.size()) + " requests; at most " +
                             std::to_string(kMaxLines) + " are allowed"},
             {"param", "input_file_id"}, {"line", nullptr}});
    return;
  }
  for (const auto& [number, text] : raw) {
    json parsed;
    json e = check_line_shape(number, text, parsed);
    if (!e.is_null()) {
      add(std::move(e));
      continue;
    }
    const std::string custom_id = parsed["custom_id"].get<std::string>();
    const std::string method = parsed["method"].get<std::string>();
    const std::string url = parsed["url"].get<std::string>();
    if (method != "POST") {
      add(line_error("invalid_method", number, "method", "method: '" + method + "', only POST is supported"));
    } else if (url != endpoint) {
      add(line_error("invalid_url", number, "url", "url: '" + url + "' is not the batch's endpoint '" + endpoint + "'"));
    } else if (auto [it, inserted] = seen.emplace(custom_id, number); !inserted) {
      add(line_error("duplicate_custom_id", number, "custom_id",
                     "custom_id '" + custom_id + "' is also used on line " + std::to_string(it->second)));
    } else {
      lines.push_back(InputLine{number, custom_id, parsed["body"].dump()});
    }
  }
}

// ---- Output lines (OpenAI's format) ----

json answered_line(const std::string& custom_id, int status_code, const json& body) {
  return json{{"id", random_id("batch_req_", 24)},
              {"custom_id", custom_id},
              {"response", {{"status_code", status_code}, {"request_id", random_id("req_", 24)}, {"body", body}}},
              {"error", nullptr}};
}

json unanswered_line(const std::string& custom_id, const std::string& code, const std::string& message) {
  return json{{"id", random_id("batch_req_", 24)},
              {"custom_id", custom_id},
              {"response", nullptr},
              {"error", {{"code", code}, {"message", message}}}};
}

bool success(int status_code) { return status_code >= 200 && status_code < 300; }

// ---- Batch records ----

BatchObject batch_from_json(const json& j, const std::string& owner_key) {
  auto str = [&](const char* k) { return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string(); };
  auto num = [&](const char* k) { return j.contains(k) && j[k].is_number_integer() ? j[k].get<int64_t>() : int64_t{0}; };
  BatchObject b;
  b.id = str("id");
  b.endpoint = str("endpoint");
  b.input_file_id = str("input_file_id");
  b.completion_window = str("completion_window");
  b.status = str("status");
  b.output_file_id = str("output_file_id");
  b.error_file_id = str("error_file_id");
  b.created_at = num("created_at");
  b.in_progress_at = num("in_progress_at");
  b.expires_at = num("expires_at");
  b.finalizing_at = num("finalizing_at");
  b.completed_at = num("completed_at");
  b.failed_at = num("failed_at");
  b.expired_at = num("expired_at");
  b.cancelling_at = num("cancelling_at");
  b.cancelled_at = num("cancelled_at");
  if (j.contains("request_counts") && j["request_counts"].is_object()) {
    const json& c = j["request_counts"];
    b.request_counts.total = c.value("total", int64_t{0});
    b.request_counts.completed = c.value("completed", int64_t{0});
    b.request_counts.failed = c.value("failed", int64_t{0});
  }
  b.metadata = j.value("metadata", json(nullptr));
  b.errors = j.value("errors", json(nullptr));
  b.owner_key = owner_key;
  return b;
}

Expected<std::optional<BatchObject>> load_batch(sqlite3* db, const std::string& file, const std::string& id) {
  sql::Statement st(db, file, "SELECT object, owner_key FROM batches WHERE id = ?");
  st.bind(1, id);
  auto row = st.step("read a batch");
  if (!row) return row.error();
  if (!*row) return std::optional<BatchObject>();
  json j;
  try {
    j = json::parse(st.text(0));
  } catch (const json::parse_error&) {
    return make_error(file, ": batch ", id, ": the stored record is not valid JSON");
  }
  return std::optional<BatchObject>(batch_from_json(j, st.text(1)));
}

Status save_batch(sqlite3* db, const std::string& file, const BatchObject& b) {
  sql::Statement st(db, file, "UPDATE batches SET status = ?, object = ? WHERE id = ?");
  st.bind(1, b.status).bind(2, b.to_json().dump()).bind(3, b.id);
  return st.run("update a batch");
}

// request_counts from the lines' answers: completed = 2xx answers; failed =
// other answers and lines marked expired or cancelled.
Status recount(sqlite3* db, const std::string& file, BatchObject& b) {
  sql::Statement st(db, file,
                    "SELECT coalesce(sum(result IS NOT NULL AND coalesce(status_code, 0) BETWEEN 200 AND 299), 0), "
                    "coalesce(sum(result IS NOT NULL), 0) FROM batch_lines WHERE batch_id = ?");
  st.bind(1, b.id);
  auto row = st.step("count a batch's answers");
  if (!row) return row.error();
  b.request_counts.completed = st.int64(0);
  b.request_counts.failed = st.int64(1) - st.int64(0);
  return Status::ok();
}

Error no_such_batch(const std::string& id) { return make_error("No such Batch object: ", id); }

Status check_metadata(const json& metadata) {
  if (metadata.is_null()) return Status::ok();
  if (!metadata.is_object()) return make_error("metadata: expected an object or null");
  if (metadata.size() > 16) return make_error("metadata: at most 16 keys");
  for (auto it = metadata.begin(); it != metadata.end(); ++it) {
    if (it.key().size() > 64) return make_error("metadata: key '", it.key().substr(0, 64), "...' is over 64 characters");
    if (!it->is_string()) return make_error("metadata.", it.key(), ": expected a string");
    if (it->get<std::string>().size() > 512) return make_error("metadata.", it.key(), ": over 512 characters");
  }
  return Status::ok();
}

}  // namespace

// ---------------------------------------------------------------- plan

BatchPlan plan_batch_run(const ModelPrice* price, int64_t now_unix, int64_t expires_at_unix,
                         double estimated_seconds) {
  BatchPlan plan;
  if (!price || price->windows.empty()) return plan;
  auto multiplier_at = [&](int64_t t) {
    const PriceWindow* w = window_at(*price, std::chrono::system_clock::time_point(std::chrono::seconds(t)));
    return w ? w->multiplier : 1.0;
  };
  plan.multiplier = multiplier_at(now_unix);
  if (!(estimated_seconds > 0)) return plan;  // unknown: run now
  // Conservative: the work may take twice the estimate, plus 10 minutes.
  const double latest_start = static_cast<double>(expires_at_unix) - (2 * estimated_seconds + 600);
  if (latest_start <= static_cast<double>(now_unix)) return plan;

  // The multiplier changes only where a window starts or ends: try those
  // moments from today until the latest start.
  int64_t best_t = now_unix;
  double best_m = plan.multiplier;
  const int64_t day0 = (now_unix >= 0 ? now_unix / 86400 : -((-now_unix + 86399) / 86400)) * 86400;
  for (int64_t day = day0; static_cast<double>(day) <= latest_start; day += 86400) {
    for (const PriceWindow& w : price->windows) {
      for (int minute : {w.start_minute, w.end_minute}) {
        const int64_t t = day + int64_t{minute} * 60;
        if (t <= now_unix || static_cast<double>(t) > latest_start) continue;
        const double m = multiplier_at(t);
        if (m < best_m - 1e-12 || (std::fabs(m - best_m) <= 1e-12 && best_t != now_unix && t < best_t)) {
          best_t = t;
          best_m = m;
        }
      }
    }
  }
  if (best_t != now_unix) {
    plan.run_now = false;
    plan.wait_until_unix = best_t;
    plan.multiplier = best_m;
  }
  return plan;
}

// ---------------------------------------------------------------- objects

json FileObject::to_json() const {
  return json{{"id", id},
              {"object", "file"},
              {"bytes", bytes},
              {"created_at", created_at},
              {"filename", filename},
              {"purpose", purpose},
              {"status", "processed"},
              {"status_details", nullptr}};
}

json BatchObject::to_json() const {
  json counts{{"total", request_counts.total},
              {"completed", request_counts.completed},
              {"failed", request_counts.failed}};
  return json{{"id", id},
              {"object", "batch"},
              {"endpoint", endpoint},
              {"errors", errors.is_object() ? errors : json(nullptr)},
              {"input_file_id", input_file_id},
              {"completion_window", completion_window},
              {"status", status},
              {"output_file_id", null_if_empty(output_file_id)},
              {"error_file_id", null_if_empty(error_file_id)},
              {"created_at", created_at},
              {"in_progress_at", null_if_zero(in_progress_at)},
              {"expires_at", null_if_zero(expires_at)},
              {"finalizing_at", null_if_zero(finalizing_at)},
              {"completed_at", null_if_zero(completed_at)},
              {"failed_at", null_if_zero(failed_at)},
              {"expired_at", null_if_zero(expired_at)},
              {"cancelling_at", null_if_zero(cancelling_at)},
              {"cancelled_at", null_if_zero(cancelled_at)},
              {"request_counts", counts},
              {"metadata", metadata.is_object() ? metadata : json(nullptr)}};
}

// ---------------------------------------------------------------- FileStore

Expected<std::unique_ptr<FileStore>> FileStore::open(Ledger& ledger, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) {
    return make_error(dir, ": cannot create the files directory: ", ec ? ec.message() : "not a directory");
  }
  return std::unique_ptr<FileStore>(new FileStore(ledger, dir));
}

Expected<FileObject> FileStore::put(const std::string& filename, const std::string& purpose,
                                    const std::string& content, const std::string& owner_key) {
  if (purpose == "batch") {
    const auto lines = split_lines(content);
    if (lines.empty()) return make_error(filename, ": the file has no requests (expected JSONL, one request a line)");
    for (const auto& [number, text] : lines) {
      json parsed;
      json e = check_line_shape(number, text, parsed);
      if (!e.is_null()) return make_error(filename, ": ", e["message"].get<std::string>());
    }
  } else if (purpose != "batch_output") {
    return make_error("purpose: '", purpose, "' is not supported (use 'batch')");
  }

  FileObject f;
  f.id = random_id("file-", 24);
  f.filename = filename;
  f.purpose = purpose;
  f.bytes = static_cast<int64_t>(content.size());
  f.created_at = unix_now_seconds();
  f.owner_key = owner_key;
  ENGRAM_RETURN_IF_ERROR(write_file_durably(fs::path(dir_) / f.id, content));
  Status st = ledger_.transaction([&](sqlite3* db) -> Status {
    sql::Statement ins(db, ledger_.path(),
                       "INSERT INTO files(id, filename, purpose, bytes, created_at, owner_key) VALUES(?, ?, ?, ?, ?, ?)");
    ins.bind(1, f.id).bind(2, f.filename).bind(3, f.purpose).bind(4, f.bytes).bind(5, f.created_at).bind(6, owner_key);
    return ins.run("store a file record");
  });
  if (!st) {
    std::error_code ec;
    fs::remove(fs::path(dir_) / f.id, ec);
    return Error{st.message()};
  }
  return f;
}

Expected<FileObject> FileStore::get(const std::string& id, const std::string& owner_key) const {
  std::optional<FileObject> found;
  Status st = ledger_.read([&](sqlite3* db) -> Status {
    sql::Statement q(db, ledger_.path(),
                     "SELECT filename, purpose, bytes, created_at, owner_key FROM files WHERE id = ?");
    q.bind(1, id);
    auto row = q.step("read a file record");
    if (!row) return row.error();
    if (*row && q.text(4) == owner_key) {
      found = FileObject{id, q.text(0), q.text(1), q.int64(2), q.int64(3), q.text(4)};
    }
    return Status::ok();
  });
  if (!st) return Error{st.message()};
  if (!found) return make_error("No such File object: ", id);
  return *found;
}

Expected<std::string> FileStore::content(const std::string& id, const std::string& owner_key) const {
  auto f = get(id, owner_key);
  if (!f) return f.error();
  const fs::path path = fs::path(dir_) / id;
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path.string(), ": the content of ", id, " is missing");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return make_error(path.string(), ": cannot read");
  return ss.str();
}

Status FileStore::remove(const std::string& id, const std::string& owner_key) {
  auto f = get(id, owner_key);
  if (!f) return f.error();
  ENGRAM_RETURN_IF_ERROR(ledger_.transaction([&](sqlite3* db) -> Status {
    sql::Statement del(db, ledger_.path(), "DELETE FROM files WHERE id = ?");
    del.bind(1, id);
    return del.run("delete a file record");
  }));
  std::error_code ec;
  fs::remove(fs::path(dir_) / id, ec);
  return Status::ok();
}

// ---------------------------------------------------------------- BatchService

struct BatchService::Impl {
  Ledger& ledger;
  FileStore& files;
  BatchExecutor executor;
  BatchOptions options;

  // A batch the workers still have to run or finish.
  struct Active {
    std::string id, endpoint, owner_key;
    int64_t expires_at = 0;
    std::deque<int64_t> pending;  // line numbers without an answer, not in flight
    int in_flight = 0;
    bool cancel = false;
    bool finalizing = false;      // a worker is writing its output
  };
  struct Job {
    enum Kind { WAIT, RUN, FINALIZE } kind = WAIT;
    std::string batch_id, endpoint, owner_key;
    int64_t line = 0;
  };

  // Guards everything below. Lock order: this mutex, then the ledger's
  // (only start() holds both); ledger bodies never take this one.
  std::mutex mutex;
  std::condition_variable wake;
  std::vector<Active> active;     // oldest batch first
  std::vector<std::thread> workers;
  bool stopping = false;
  double measured_seconds_per_line = 0;  // moving average of executor calls; 0: none yet

  Impl(Ledger& l, FileStore& f, BatchExecutor e, BatchOptions o)
      : ledger(l), files(f), executor(std::move(e)), options(std::move(o)) {
    if (!options.now_unix) options.now_unix = unix_now_seconds;
    if (!options.capacity_available) options.capacity_available = [] { return true; };
    if (options.concurrency < 1) options.concurrency = 1;
    if (options.poll_interval.count() < 1) options.poll_interval = std::chrono::milliseconds(1);
  }

  int64_t now() const { return options.now_unix(); }
  const std::string& file() const { return ledger.path(); }

  // The seconds the rest of a batch will take, or 0 when unknown.
  double estimate(const Active& b) const {
    const double per_line = options.seconds_per_line > 0 ? options.seconds_per_line : measured_seconds_per_line;
    if (per_line <= 0) return 0;
    return per_line * static_cast<double>(b.pending.size() + static_cast<size_t>(b.in_flight)) /
           options.concurrency;
  }

  // Under `mutex`: what a worker does next.
  Job next_job(bool capacity) {
    const int64_t t = now();
    const ModelPrice* price = options.price ? &*options.price : nullptr;
    for (Active& b : active) {
      if (b.finalizing) continue;
      const bool stop_running = b.cancel || t >= b.expires_at;
      if (stop_running || b.pending.empty()) {
        if (b.in_flight == 0) {
          b.finalizing = true;
          return Job{Job::FINALIZE, b.id, b.endpoint, b.owner_key, 0};
        }
        continue;  // lines in flight finish first
      }
      if (!capacity) continue;
      if (!plan_batch_run(price, t, b.expires_at, estimate(b)).run_now) continue;  // a cheaper window is coming
      Job job{Job::RUN, b.id, b.endpoint, b.owner_key, b.pending.front()};
      b.pending.pop_front();
      b.in_flight += 1;
      return job;
    }
    return Job{};
  }

  void worker() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      lock.unlock();
      const bool capacity = options.capacity_available();
      lock.lock();
      if (stopping) break;
      Job job = next_job(capacity);
      if (job.kind == Job::WAIT) {
        // Nothing to do at all: sleep until create() or stop(). Otherwise look
        // again soon (capacity, a price window, the clock may change).
        if (active.empty()) wake.wait(lock, [&] { return stopping || !active.empty(); });
        else wake.wait_for(lock, options.poll_interval);
        continue;
      }
      lock.unlock();
      if (job.kind == Job::RUN) run_line(job);
      else finalize(job);
      lock.lock();
    }
  }

  Active* find_active(const std::string& id) {
    for (Active& b : active) {
      if (b.id == id) return &b;
    }
    return nullptr;
  }

  void run_line(const Job& job) {
    std::string custom_id;
    json body;
    Status read = ledger.read([&](sqlite3* db) -> Status {
      sql::Statement q(db, file(), "SELECT custom_id, body FROM batch_lines WHERE batch_id = ? AND line = ?");
      q.bind(1, job.batch_id).bind(2, job.line);
      auto row = q.step("read a batch line");
      if (!row) return row.error();
      if (!*row) return make_error(file(), ": batch ", job.batch_id, " has no line ", std::to_string(job.line));
      custom_id = q.text(0);
      try {
        body = json::parse(q.text(1));
      } catch (const json::parse_error&) {
        return make_error(file(), ": batch ", job.batch_id, " line ", std::to_string(job.line), ": stored body is not JSON");
      }
      return Status::ok();
    });

    int status_code = 500;
    json response;
    const auto started = std::chrono::steady_clock::now();
    if (!read) {
      response = json{{"error", {{"message", read.message()}, {"type", "server_error"}, {"param", nullptr},
                                 {"code", nullptr}}}};
    } else {
      try {
        const BatchLineRequest request{job.endpoint, std::move(body), job.owner_key,
                                       job.batch_id + ":" + std::to_string(job.line)};
        std::tie(status_code, response) = executor(request);
      } catch (const std::exception& e) {
        status_code = 500;
        response = json{{"error", {{"message", std::string("the batch request failed: ") + e.what()},
                                   {"type", "server_error"}, {"param", nullptr}, {"code", nullptr}}}};
      }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    // A line that failed while the service was stopping (the engine shutting
    // down under it) is left unanswered, so a restart runs it again.
    bool keep = true;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (stopping && !success(status_code)) keep = false;
    }
    Status saved = Status::ok();
    if (keep) {
      const json line = answered_line(custom_id, status_code, response);
      saved = ledger.transaction([&](sqlite3* db) -> Status {
        sql::Statement upd(db, file(),
                           "UPDATE batch_lines SET result = ?, status_code = ? "
                           "WHERE batch_id = ? AND line = ? AND result IS NULL");
        upd.bind(1, line.dump()).bind(2, status_code).bind(3, job.batch_id).bind(4, job.line);
        ENGRAM_RETURN_IF_ERROR(upd.run("store a batch answer"));
        auto b = load_batch(db, file(), job.batch_id);
        if (!b) return b.error();
        if (!*b) return Status::ok();
        ENGRAM_RETURN_IF_ERROR(recount(db, file(), **b));
        return save_batch(db, file(), **b);
      });
      if (!saved) std::fprintf(stderr, "engram: batch %s: %s\n", job.batch_id.c_str(), saved.message().c_str());
    }

    std::lock_guard<std::mutex> lock(mutex);
    measured_seconds_per_line =
        measured_seconds_per_line <= 0 ? seconds : 0.8 * measured_seconds_per_line + 0.2 * seconds;
    if (Active* b = find_active(job.batch_id)) {
      b->in_flight -= 1;
      if (!keep || !saved) b->pending.push_front(job.line);  // run it again later
    }
    wake.notify_all();
  }

  // Marks the unanswered lines of a cancelled or expired batch, writes the
  // output and error files and sets the final status.
  void finalize(const Job& job) {
    Status st = finalize_batch(job.batch_id);
    std::lock_guard<std::mutex> lock(mutex);
    if (st) {
      active.erase(std::remove_if(active.begin(), active.end(), [&](const Active& b) { return b.id == job.batch_id; }),
                   active.end());
    } else {
      std::fprintf(stderr, "engram: batch %s: cannot finish: %s\n", job.batch_id.c_str(), st.message().c_str());
      if (Active* b = find_active(job.batch_id)) b->finalizing = false;  // try again on the next round
    }
    wake.notify_all();
  }

  Status finalize_batch(const std::string& id) {
    std::string final_status;
    BatchObject batch;
    // 1. Decide the outcome; mark lines that will not run.
    ENGRAM_RETURN_IF_ERROR(ledger.transaction([&](sqlite3* db) -> Status {
      auto loaded = load_batch(db, file(), id);
      if (!loaded) return loaded.error();
      if (!*loaded) return make_error(file(), ": batch ", id, " disappeared");
      batch = std::move(**loaded);
      const int64_t t = now();
      sql::Statement open_lines(db, file(), "SELECT line, custom_id FROM batch_lines WHERE batch_id = ? AND result IS NULL");
      open_lines.bind(1, id);
      std::vector<std::pair<int64_t, std::string>> unanswered;
      for (;;) {
        auto row = open_lines.step("read unanswered lines");
        if (!row) return row.error();
        if (!*row) break;
        unanswered.emplace_back(open_lines.int64(0), open_lines.text(1));
      }
      std::string code, message;
      if (batch.status == "cancelling") {
        final_status = "cancelled";
        code = "batch_cancelled";
        message = "This request was not executed because the batch was cancelled.";
      } else if (!unanswered.empty() && t >= batch.expires_at) {
        final_status = "expired";
        code = "batch_expired";
        message = "This request could not be executed before the completion window expired.";
      } else {
        final_status = "completed";
        batch.status = "finalizing";
        if (batch.finalizing_at == 0) batch.finalizing_at = t;
      }
      for (const auto& [line, custom_id] : unanswered) {
        if (code.empty()) break;  // completed with lines left cannot happen; leave them
        sql::Statement upd(db, file(), "UPDATE batch_lines SET result = ? WHERE batch_id = ? AND line = ?");
        upd.bind(1, unanswered_line(custom_id, code, message).dump()).bind(2, id).bind(3, line);
        ENGRAM_RETURN_IF_ERROR(upd.run("mark an unanswered line"));
      }
      ENGRAM_RETURN_IF_ERROR(recount(db, file(), batch));
      return save_batch(db, file(), batch);
    }));

    // 2. The output (2xx answers) and error (the rest) files, in input order.
    std::string output, errors;
    ENGRAM_RETURN_IF_ERROR(ledger.read([&](sqlite3* db) -> Status {
      sql::Statement q(db, file(),
                       "SELECT result, coalesce(status_code, 0) FROM batch_lines "
                       "WHERE batch_id = ? AND result IS NOT NULL ORDER BY line");
      q.bind(1, id);
      for (;;) {
        auto row = q.step("read batch answers");
        if (!row) return row.error();
        if (!*row) break;
        (success(static_cast<int>(q.int64(1))) ? output : errors) += q.text(0) + "\n";
      }
      return Status::ok();
    }));
    std::string output_id, error_id;
    if (!output.empty()) {
      auto f = files.put(id + "_output.jsonl", "batch_output", output, batch.owner_key);
      if (!f) return f.error();
      output_id = f->id;
    }
    if (!errors.empty()) {
      auto f = files.put(id + "_error.jsonl", "batch_output", errors, batch.owner_key);
      if (!f) return f.error();
      error_id = f->id;
    }

    // 3. The final status.
    return ledger.transaction([&](sqlite3* db) -> Status {
      auto loaded = load_batch(db, file(), id);
      if (!loaded) return loaded.error();
      if (!*loaded) return make_error(file(), ": batch ", id, " disappeared");
      BatchObject b = std::move(**loaded);
      const int64_t t = now();
      b.status = final_status;
      b.output_file_id = output_id;
      b.error_file_id = error_id;
      if (final_status == "completed") b.completed_at = t;
      if (final_status == "cancelled") b.cancelled_at = t;
      if (final_status == "expired") b.expired_at = t;
      ENGRAM_RETURN_IF_ERROR(recount(db, file(), b));
      return save_batch(db, file(), b);
    });
  }

  // Rebuilds `active` from the database (under `mutex`).
  Status load_active() {
    active.clear();
    std::vector<BatchObject> unfinished;
    ENGRAM_RETURN_IF_ERROR(ledger.read([&](sqlite3* db) -> Status {
      sql::Statement q(db, file(),
                       "SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', "
                       "'cancelling') ORDER BY seq");
      std::vector<std::string> ids;
      for (;;) {
        auto row = q.step("list unfinished batches");
        if (!row) return row.error();
        if (!*row) break;
        ids.push_back(q.text(0));
      }
      for (const std::string& id : ids) {
        auto b = load_batch(db, file(), id);
        if (!b) return b.error();
        if (!*b) continue;
        Active a;
        a.id = id;
        a.endpoint = (*b)->endpoint;
        a.owner_key = (*b)->owner_key;
        a.expires_at = (*b)->expires_at;
        a.cancel = (*b)->status == "cancelling";
        sql::Statement lines(db, file(), "SELECT line FROM batch_lines WHERE batch_id = ? AND result IS NULL ORDER BY line");
        lines.bind(1, id);
        for (;;) {
          auto row = lines.step("list unanswered lines");
          if (!row) return row.error();
          if (!*row) break;
          a.pending.push_back(lines.int64(0));
        }
        active.push_back(std::move(a));
      }
      return Status::ok();
    }));
    return Status::ok();
  }
};

BatchService::BatchService(Ledger& ledger, FileStore& files, BatchExecutor executor, BatchOptions options)
    : impl_(std::make_unique<Impl>(ledger, files, std::move(executor), std::move(options))) {}

BatchService::~BatchService() { stop(); }

Status BatchService::start() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (!impl_->workers.empty()) return make_error("the batch service is already running");
  impl_->stopping = false;
  ENGRAM_RETURN_IF_ERROR(impl_->load_active());
  for (int i = 0; i < impl_->options.concurrency; ++i) impl_->workers.emplace_back([this] { impl_->worker(); });
  return Status::ok();
}

void BatchService::stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  for (std::thread& t : impl_->workers) t.join();  // lines in flight finish first
  impl_->workers.clear();
}

Expected<BatchObject> BatchService::create(const std::string& owner_key, const std::string& input_file_id,
                                           const std::string& endpoint, const std::string& completion_window,
                                           const nlohmann::json& metadata) {
  if (completion_window != "24h") {
    return make_error("completion_window: '", completion_window, "' is not supported (only '24h')");
  }
  if (endpoint != "/v1/chat/completions" && endpoint != "/v1/completions") {
    return make_error("endpoint: '", endpoint, "' is not supported (use /v1/chat/completions or /v1/completions)");
  }
  ENGRAM_RETURN_IF_ERROR(check_metadata(metadata));
  auto file = impl_->files.get(input_file_id, owner_key);
  if (!file) return make_error("input_file_id: ", file.error().message);
  if (file->purpose != "batch") {
    return make_error("input_file_id: file ", input_file_id, " has purpose '", file->purpose, "', not 'batch'");
  }
  auto content = impl_->files.content(input_file_id, owner_key);
  if (!content) return make_error("input_file_id: ", content.error().message);

  std::vector<InputLine> lines;
  json errors;
  parse_batch_input(*content, endpoint, lines, errors);

  BatchObject b;
  b.id = random_id("batch_", 24);
  b.endpoint = endpoint;
  b.input_file_id = input_file_id;
  b.completion_window = completion_window;
  b.created_at = impl_->now();
  b.metadata = metadata.is_object() ? metadata : json(nullptr);
  b.owner_key = owner_key;
  if (!errors.empty()) {
    // OpenAI's behaviour: the batch exists, failed, with the reasons.
    b.status = "failed";
    b.failed_at = b.created_at;
    b.errors = json{{"object", "list"}, {"data", errors}};
    lines.clear();
  } else {
    b.status = "in_progress";
    b.in_progress_at = b.created_at;
    b.expires_at = b.created_at + kCompletionWindowSeconds;
    b.request_counts.total = static_cast<int64_t>(lines.size());
  }

  ENGRAM_RETURN_IF_ERROR(impl_->ledger.transaction([&](sqlite3* db) -> Status {
    const std::string& f = impl_->file();
    sql::Statement ins(db, f, "INSERT INTO batches(id, owner_key, status, created_at, object) VALUES(?, ?, ?, ?, ?)");
    ins.bind(1, b.id).bind(2, owner_key).bind(3, b.status).bind(4, b.created_at).bind(5, b.to_json().dump());
    ENGRAM_RETURN_IF_ERROR(ins.run("store a batch"));
    for (const InputLine& l : lines) {
      sql::Statement line(db, f, "INSERT INTO batch_lines(batch_id, line, custom_id, body) VALUES(?, ?, ?, ?)");
      line.bind(1, b.id).bind(2, l.line).bind(3, l.custom_id).bind(4, l.body);
      ENGRAM_RETURN_IF_ERROR(line.run("store a batch line"));
    }
    return Status::ok();
  }));

  if (b.status == "in_progress") {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    Impl::Active a;
    a.id = b.id;
    a.endpoint = endpoint;
    a.owner_key = owner_key;
    a.expires_at = b.expires_at;
    for (const InputLine& l : lines) a.pending.push_back(l.line);
    impl_->active.push_back(std::move(a));
    impl_->wake.notify_all();
  }
  return b;
}

Expected<BatchObject> BatchService::get(const std::string& id, const std::string& owner_key) const {
  std::optional<BatchObject> found;
  ENGRAM_RETURN_IF_ERROR(impl_->ledger.read([&](sqlite3* db) -> Status {
    auto b = load_batch(db, impl_->file(), id);
    if (!b) return b.error();
    if (*b && (*b)->owner_key == owner_key) found = std::move(**b);
    return Status::ok();
  }));
  if (!found) return no_such_batch(id);
  return std::move(*found);
}

Expected<std::vector<BatchObject>> BatchService::list(const std::string& owner_key, const std::string& after,
                                                      int limit) const {
  if (limit < 1 || limit > 100) return make_error("limit: must be between 1 and 100");
  std::vector<BatchObject> out;
  ENGRAM_RETURN_IF_ERROR(impl_->ledger.read([&](sqlite3* db) -> Status {
    const std::string& f = impl_->file();
    int64_t after_seq = 0;
    if (!after.empty()) {
      sql::Statement q(db, f, "SELECT seq FROM batches WHERE id = ? AND owner_key = ?");
      q.bind(1, after).bind(2, owner_key);
      auto row = q.step("find a batch");
      if (!row) return row.error();
      if (!*row) return make_error("after: no batch '", after, "'");
      after_seq = q.int64(0);
    }
    sql::Statement q(db, f,
                     "SELECT object, owner_key FROM batches WHERE owner_key = ? AND (?2 = 0 OR seq < ?2) "
                     "ORDER BY seq DESC LIMIT ?3");
    q.bind(1, owner_key).bind(2, after_seq).bind(3, limit);
    for (;;) {
      auto row = q.step("list batches");
      if (!row) return row.error();
      if (!*row) break;
      try {
        out.push_back(batch_from_json(json::parse(q.text(0)), q.text(1)));
      } catch (const json::parse_error&) {
        return make_error(f, ": a stored batch record is not valid JSON");
      }
    }
    return Status::ok();
  }));
  return out;
}

Expected<BatchObject> BatchService::cancel(const std::string& id, const std::string& owner_key) {
  std::optional<BatchObject> found;
  std::string refusal;
  ENGRAM_RETURN_IF_ERROR(impl_->ledger.transaction([&](sqlite3* db) -> Status {
    auto b = load_batch(db, impl_->file(), id);
    if (!b) return b.error();
    if (!*b || (*b)->owner_key != owner_key) return Status::ok();
    BatchObject& batch = **b;
    if (batch.status == "in_progress" || batch.status == "validating") {
      batch.status = "cancelling";
      batch.cancelling_at = impl_->now();
      ENGRAM_RETURN_IF_ERROR(save_batch(db, impl_->file(), batch));
    } else if (batch.status != "cancelling" && batch.status != "cancelled") {
      refusal = "Cannot cancel a batch with status '" + batch.status + "'.";
    }
    found = std::move(batch);
    return Status::ok();
  }));
  if (!found) return no_such_batch(id);
  if (!refusal.empty()) return make_error(refusal);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (Impl::Active* a = impl_->find_active(id)) a->cancel = true;
  impl_->wake.notify_all();
  return std::move(*found);
}

}  // namespace engram::server
