#pragma once
// A thin RAII layer over the SQLite C API: a connection, prepared statements with typed binds and
// reads, and a transaction guard that rolls back unless committed. Every error throws DbError with
// SQLite's message and the SQL that failed, so callers never check return codes.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

struct sqlite3;
struct sqlite3_stmt;

namespace ratio::db {

class DbError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Statement;

class Connection {
 public:
  enum class Mode { kReadWrite, kReadOnly };

  // Opens (read-write creates) the file, sets WAL, a busy timeout and foreign keys.
  Connection(const std::string& path, Mode mode);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one or more statements without results (schema, pragmas).
  void exec(const std::string& sql);
  Statement prepare(const std::string& sql);
  int64_t last_insert_id() const;
  int changes() const;  // rows changed by the last INSERT/UPDATE/DELETE
  const std::string& path() const { return path_; }
  sqlite3* handle() { return db_; }

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

// A prepared statement. Bind with 1-based indices, step() until it returns false, read columns
// with 0-based indices. reset() makes it reusable with new binds.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql);
  ~Statement();
  Statement(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  Statement& operator=(Statement&&) = delete;

  Statement& bind(int index, int64_t value);
  Statement& bind(int index, int value) { return bind(index, static_cast<int64_t>(value)); }
  Statement& bind(int index, double value);
  Statement& bind(int index, const std::string& value);
  Statement& bind(int index, const char* value) { return bind(index, std::string(value)); }
  Statement& bind_null(int index);
  template <typename T>
  Statement& bind(int index, const std::optional<T>& value) {
    return value ? bind(index, *value) : bind_null(index);
  }

  bool step();     // true while a row is available
  void run();      // step once, for statements without results
  void reset();    // clear binds and rewind

  bool is_null(int col) const;
  int64_t get_int(int col) const;
  double get_double(int col) const;
  std::string get_text(int col) const;
  std::optional<int64_t> get_opt_int(int col) const;
  std::optional<double> get_opt_double(int col) const;

 private:
  sqlite3_stmt* stmt_ = nullptr;
  sqlite3* db_ = nullptr;
};

// BEGIN IMMEDIATE on construction (takes the write lock up front, so no deadlock upgrading a read),
// ROLLBACK in the destructor unless commit() ran.
// BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when destroyed uncommitted. Inside another transaction
// it is a savepoint: the outer one decides, so two store writes can be made one atomic change.
class Transaction {
 public:
  explicit Transaction(Connection& conn);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Connection& conn_;
  bool nested_ = false;
  bool done_ = false;
};

}  // namespace ratio::db
