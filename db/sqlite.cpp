#include "db/sqlite.h"

#include <sqlite3.h>

namespace ratio::db {

namespace {

// How long a connection waits for another's lock before SQLITE_BUSY. Readers never block the
// writer in WAL mode; this covers checkpoints and a second process opening the same file.
constexpr int kBusyTimeoutMs = 10000;

[[noreturn]] void fail(sqlite3* db, const std::string& what) {
  throw DbError(what + ": " + (db ? sqlite3_errmsg(db) : "out of memory"));
}

}  // namespace

Connection::Connection(const std::string& path, Mode mode) : path_(path) {
  int flags = mode == Mode::kReadOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  flags |= SQLITE_OPEN_NOMUTEX;  // each connection is used by one thread at a time
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw DbError("cannot open database '" + path + "': " + msg +
                  " (check that the directory exists and is writable)");
  }
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  if (mode == Mode::kReadWrite) {
    // WAL: readers see the last commit while the writer works. synchronous=NORMAL in WAL mode
    // keeps every committed transaction across a process kill (kill -9); only an OS crash or
    // power loss could lose the last few, which is acceptable for training metrics.
    exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
  }
  exec("PRAGMA foreign_keys=ON;");
}

Connection::~Connection() { sqlite3_close_v2(db_); }

void Connection::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    throw DbError("SQL failed: " + msg + " in: " + sql.substr(0, 200));
  }
}

Statement Connection::prepare(const std::string& sql) { return Statement(db_, sql); }

int64_t Connection::last_insert_id() const { return sqlite3_last_insert_rowid(db_); }

int Connection::changes() const { return sqlite3_changes(db_); }

Statement::Statement(sqlite3* db, const std::string& sql) : db_(db) {
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr) != SQLITE_OK) {
    fail(db, "cannot prepare SQL '" + sql.substr(0, 200) + "'");
  }
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement::Statement(Statement&& other) noexcept : stmt_(other.stmt_), db_(other.db_) {
  other.stmt_ = nullptr;
}

Statement& Statement::bind(int index, int64_t value) {
  if (sqlite3_bind_int64(stmt_, index, value) != SQLITE_OK) fail(db_, "bind");
  return *this;
}

Statement& Statement::bind(int index, double value) {
  if (sqlite3_bind_double(stmt_, index, value) != SQLITE_OK) fail(db_, "bind");
  return *this;
}

Statement& Statement::bind(int index, const std::string& value) {
  if (sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT) !=
      SQLITE_OK) {
    fail(db_, "bind");
  }
  return *this;
}

Statement& Statement::bind_null(int index) {
  if (sqlite3_bind_null(stmt_, index) != SQLITE_OK) fail(db_, "bind");
  return *this;
}

bool Statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(db_, std::string("SQL step failed in '") + sqlite3_sql(stmt_) + "'");
}

void Statement::run() {
  step();
  reset();
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

bool Statement::is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }

int64_t Statement::get_int(int col) const { return sqlite3_column_int64(stmt_, col); }

double Statement::get_double(int col) const { return sqlite3_column_double(stmt_, col); }

std::string Statement::get_text(int col) const {
  const unsigned char* text = sqlite3_column_text(stmt_, col);
  return text ? std::string(reinterpret_cast<const char*>(text), sqlite3_column_bytes(stmt_, col)) : "";
}

std::optional<int64_t> Statement::get_opt_int(int col) const {
  if (is_null(col)) return std::nullopt;
  return get_int(col);
}

std::optional<double> Statement::get_opt_double(int col) const {
  if (is_null(col)) return std::nullopt;
  return get_double(col);
}

Transaction::Transaction(Connection& conn) : conn_(conn), nested_(sqlite3_get_autocommit(conn.handle()) == 0) {
  conn_.exec(nested_ ? "SAVEPOINT nested" : "BEGIN IMMEDIATE");
}

Transaction::~Transaction() {
  if (done_) return;
  try {
    conn_.exec(nested_ ? "ROLLBACK TO nested; RELEASE nested" : "ROLLBACK");
  } catch (const DbError&) {
    // Already rolled back by SQLite after an error; nothing left to undo.
  }
}

void Transaction::commit() {
  conn_.exec(nested_ ? "RELEASE nested" : "COMMIT");
  done_ = true;
}

}  // namespace ratio::db
