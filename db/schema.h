#pragma once
// The database schema as an ordered list of forward migrations. A database records the number of
// migrations applied in schema_version; opening it applies the missing ones, each in a transaction.
// Never edit a released migration: append a new one.

#include <string>
#include <vector>

#include "db/sqlite.h"

namespace ratio::db {

struct Migration {
  int version;      // 1, 2, 3, ... in order
  std::string sql;  // DDL run inside one transaction
};

const std::vector<Migration>& migrations();

// Current version of an open database (0 for a new file).
int schema_version(Connection& conn);

// Applies every migration newer than the database's version. Throws DbError when the database
// is newer than this binary (it was written by a later ratiod: upgrade instead of downgrading).
void migrate(Connection& conn, const std::vector<Migration>& list = migrations());

}  // namespace ratio::db
