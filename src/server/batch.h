// The batch API, following OpenAI's: JSONL files uploaded with
// purpose=batch, batches that run every line of such a file against an
// endpoint within a 24h completion window, and output and error files in
// OpenAI's line format keyed by custom_id. Files live in a directory; file
// and batch records live in the ledger's SQLite database, so a restart
// resumes unfinished batches (lines already answered are not run again).
//
// Batch work runs only when interactive load leaves capacity, prefers the
// cheapest price window (off-peak) while the deadline allows, and is billed
// at the batch multiplier (the executor records usage with batch = true).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/ledger.h"
#include "server/pricing.h"
#include "util/status.h"

namespace engram::server {

struct FileObject {
  std::string id;            // "file-..."
  std::string filename;
  std::string purpose;       // "batch" | "batch_output"
  int64_t bytes = 0;
  int64_t created_at = 0;
  std::string owner_key;     // "" without authentication
  nlohmann::json to_json() const;  // OpenAI's file object
};

class FileStore {
 public:
  // dir is created if missing; records go to the ledger's database.
  static Expected<std::unique_ptr<FileStore>> open(Ledger& ledger, const std::string& dir);
  // Validates purpose ("batch": every line must be a JSON object with
  // custom_id, method, url, body; the error names the line) and stores it.
  Expected<FileObject> put(const std::string& filename, const std::string& purpose, const std::string& content,
                           const std::string& owner_key);
  Expected<FileObject> get(const std::string& id, const std::string& owner_key) const;
  Expected<std::string> content(const std::string& id, const std::string& owner_key) const;
  Status remove(const std::string& id, const std::string& owner_key);

 private:
  FileStore(Ledger& ledger, std::string dir) : ledger_(ledger), dir_(std::move(dir)) {}
  Ledger& ledger_;
  std::string dir_;
};

struct RequestCounts {
  int64_t total = 0, completed = 0, failed = 0;
};

struct BatchObject {
  std::string id;                  // "batch_..."
  std::string endpoint;            // "/v1/chat/completions" | "/v1/completions"
  std::string input_file_id;
  std::string completion_window = "24h";
  // validating | failed | in_progress | finalizing | completed | expired | cancelling | cancelled
  std::string status = "validating";
  std::string output_file_id, error_file_id;  // "" until written
  int64_t created_at = 0, in_progress_at = 0, expires_at = 0, finalizing_at = 0, completed_at = 0,
          failed_at = 0, expired_at = 0, cancelling_at = 0, cancelled_at = 0;  // 0: null
  RequestCounts request_counts;
  nlohmann::json metadata;         // null or an object
  nlohmann::json errors;           // null or {"object":"list","data":[...]}
  std::string owner_key;
  nlohmann::json to_json() const;  // OpenAI's batch object
};

// One line of a batch, as handed to the executor.
struct BatchLineRequest {
  std::string endpoint;        // "/v1/chat/completions" | "/v1/completions"
  nlohmann::json body;         // the line's request body
  std::string owner_key;       // the batch owner's API key ("" without authentication)
  // "batch_...:N", N the line's number in the input file: the same for
  // every run of the line. A line run again
  // after a crash (answered and billed, but killed before its answer was
  // stored) is billed under the same id, which the ledger records once.
  std::string line_id;
};

// Runs one line of a batch. Returns the HTTP status and the response body,
// exactly what the endpoint would have answered (usage billed at the batch
// multiplier, under the line's id). Blocks until the request is done.
using BatchExecutor = std::function<std::pair<int, nlohmann::json>(const BatchLineRequest& line)>;

struct BatchOptions {
  // True when interactive load leaves room for a batch request now.
  std::function<bool()> capacity_available = [] { return true; };
  // The price table, to prefer its cheapest window while the deadline allows.
  std::optional<ModelPrice> price;
  // Lines in flight at once (each blocks one executor call).
  int concurrency = 1;
  // The clock, in seconds since the epoch (UTC): tests inject one to cross
  // expiry and price windows without waiting.
  std::function<int64_t()> now_unix;  // empty: the system clock
  // How often an idle worker looks again (capacity, price windows, the clock).
  std::chrono::milliseconds poll_interval{50};
  // Seconds one line takes, to judge whether waiting for a cheaper window
  // still meets the deadline; <= 0: measured from the lines run so far
  // (until the first line has run, nothing is known and work starts now).
  double seconds_per_line = 0;
};

// Run a batch's remaining work now, or wait for a cheaper price window?
struct BatchPlan {
  bool run_now = true;
  int64_t wait_until_unix = 0;  // when not run_now: the start of the cheaper period
  double multiplier = 1;        // the window multiplier the work will get
};
// Waits for the earliest moment of the cheapest window multiplier that
// starts before the deadline leaves too little time: the work must be able
// to finish by expires_at even if it takes twice `estimated_seconds` plus
// 10 minutes. No price, no windows, or estimated_seconds <= 0 (unknown):
// now. A pure function, so the decision can be tested alone.
BatchPlan plan_batch_run(const ModelPrice* price, int64_t now_unix, int64_t expires_at_unix,
                         double estimated_seconds);

// The error messages of FileStore::get/content/remove and BatchService::get/
// cancel for an id that does not exist (or belongs to another key) begin
// with "No such " (the HTTP layer answers 404).
inline bool is_not_found_error(const std::string& message) { return message.rfind("No such ", 0) == 0; }

class BatchService {
 public:
  BatchService(Ledger& ledger, FileStore& files, BatchExecutor executor, BatchOptions options);
  ~BatchService();  // stops the worker

  Status start();   // resumes unfinished batches from the database, starts the worker
  void stop();

  // Errors name the field: unknown input file, wrong purpose, endpoint not
  // supported, completion_window other than "24h".
  Expected<BatchObject> create(const std::string& owner_key, const std::string& input_file_id,
                               const std::string& endpoint, const std::string& completion_window,
                               const nlohmann::json& metadata);
  Expected<BatchObject> get(const std::string& id, const std::string& owner_key) const;
  // Newest first; `after` is a batch id (pagination), limit 1..100.
  Expected<std::vector<BatchObject>> list(const std::string& owner_key, const std::string& after, int limit) const;
  Expected<BatchObject> cancel(const std::string& id, const std::string& owner_key);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram::server
