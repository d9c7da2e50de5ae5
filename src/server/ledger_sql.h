// A small RAII wrapper over SQLite prepared statements, shared by the
// ledger and the batch store (internal to src/server). Errors are values
// whose message names the database file and what was being done.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <sqlite3.h>

#include "util/status.h"

namespace engram::server::sql {

class Statement {
 public:
  // `file` names the database in errors.
  Statement(sqlite3* db, const std::string& file, const char* text) : db_(db), file_(file) {
    rc_ = sqlite3_prepare_v2(db, text, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Parameters are 1-based, as in SQLite.
  Statement& bind(int i, int64_t v) { return check(sqlite3_bind_int64(stmt_, i, v)); }
  Statement& bind(int i, int v) { return bind(i, static_cast<int64_t>(v)); }
  Statement& bind(int i, bool v) { return bind(i, static_cast<int64_t>(v ? 1 : 0)); }
  Statement& bind(int i, double v) { return check(sqlite3_bind_double(stmt_, i, v)); }
  Statement& bind(int i, const std::string& v) {
    return check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  Statement& bind(int i, const char* v) { return bind(i, std::string(v)); }
  Statement& bind(int i, std::optional<double> v) { return v ? bind(i, *v) : bind_null(i); }
  Statement& bind_null(int i) { return check(sqlite3_bind_null(stmt_, i)); }

  // Steps once: true when a row is ready, false when done.
  Expected<bool> step(const char* what) {
    if (rc_ != SQLITE_OK) return failure(what);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    rc_ = rc;
    return failure(what);
  }
  // Runs a statement that returns no rows.
  Status run(const char* what) {
    auto r = step(what);
    return r ? Status::ok() : Status(r.error());
  }

  int64_t int64(int col) const { return sqlite3_column_int64(stmt_, col); }
  double real(int col) const { return sqlite3_column_double(stmt_, col); }
  bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string text(int col) const {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }
  std::optional<double> optional_real(int col) const {
    return is_null(col) ? std::nullopt : std::optional<double>(real(col));
  }

 private:
  Statement& check(int rc) {
    if (rc_ == SQLITE_OK && rc != SQLITE_OK) rc_ = rc;
    return *this;
  }
  Error failure(const char* what) const {
    return make_error(file_, ": ", what, ": ", sqlite3_errmsg(db_), " (", sqlite3_errstr(rc_), ")");
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::string file_;
  int rc_ = SQLITE_OK;
};

// Runs SQL without parameters or results (schema, BEGIN, COMMIT).
inline Status exec(sqlite3* db, const std::string& file, const char* text, const char* what) {
  char* message = nullptr;
  const int rc = sqlite3_exec(db, text, nullptr, nullptr, &message);
  if (rc == SQLITE_OK) return Status::ok();
  std::string m = message ? message : sqlite3_errstr(rc);
  sqlite3_free(message);
  return make_error(file, ": ", what, ": ", m);
}

}  // namespace engram::server::sql
