#include "db/schema.h"

namespace ratio::db {

namespace {

// Version 1: matrices -> jobs -> attempts; per-job metric series, results and the raw event log.
// jobs carries the summary the tables and dashboards list, maintained on ingest, so listing
// never scans metric series.
const char* kV1 = R"SQL(
CREATE TABLE matrices(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  source TEXT NOT NULL,               -- the submitted YAML or JSON, verbatim
  expanded TEXT NOT NULL,             -- the resolved matrix JSON from matrix/
  warnings TEXT NOT NULL DEFAULT '[]',
  idempotency_key TEXT UNIQUE,
  created_at REAL NOT NULL,
  finished_at REAL                    -- set when no job is queued or running
);
CREATE TABLE jobs(
  id INTEGER PRIMARY KEY,
  matrix_id INTEGER NOT NULL REFERENCES matrices(id),
  step TEXT NOT NULL,
  name TEXT NOT NULL,
  spec TEXT NOT NULL,                 -- the job spec JSON given to ratio-worker
  config_hash TEXT NOT NULL,
  params TEXT NOT NULL,               -- ParamCounts JSON from the formula
  priority INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL,               -- queued | running | succeeded | failed | cancelled
  iter INTEGER NOT NULL DEFAULT 0,
  max_iters INTEGER NOT NULL,
  final_val_loss REAL,
  best_val_loss REAL,
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL,      -- retryable failures are retried up to this many attempts
  failures INTEGER NOT NULL DEFAULT 0,  -- attempts that failed retryably since submission or the last rerun
  reason TEXT NOT NULL DEFAULT '',
  resume INTEGER NOT NULL DEFAULT 0,  -- the next attempt continues from the job's checkpoint
  reused_from INTEGER REFERENCES jobs(id),
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
);
CREATE INDEX jobs_by_queue ON jobs(status, priority DESC, id);
CREATE INDEX jobs_by_matrix ON jobs(matrix_id);
CREATE INDEX jobs_by_hash ON jobs(config_hash, status);
CREATE TABLE attempts(
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  n INTEGER NOT NULL,                 -- 1, 2, ... per job
  status TEXT NOT NULL,               -- running | succeeded | failed | lost | interrupted | cancelled
  reason TEXT NOT NULL DEFAULT '',
  exit_code INTEGER,
  pid INTEGER,
  slot TEXT NOT NULL,
  token TEXT NOT NULL UNIQUE,
  build_id TEXT NOT NULL DEFAULT '',
  start_iter INTEGER,
  started_at REAL NOT NULL,
  ended_at REAL,
  log_path TEXT NOT NULL,
  UNIQUE(job_id, n)
);
CREATE TABLE metrics(
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  name TEXT NOT NULL,
  iter INTEGER NOT NULL,
  value REAL NOT NULL,
  attempt_n INTEGER NOT NULL,         -- which attempt wrote the current value
  PRIMARY KEY(job_id, name, iter)
) WITHOUT ROWID;
CREATE TABLE results(
  job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
  attempt_id INTEGER NOT NULL REFERENCES attempts(id),
  result TEXT NOT NULL,               -- the worker's `finished` result JSON
  created_at REAL NOT NULL
);
CREATE TABLE events(
  id INTEGER PRIMARY KEY,
  attempt_id INTEGER NOT NULL REFERENCES attempts(id),
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  body TEXT NOT NULL,
  applied INTEGER NOT NULL,           -- 0: arrived after the attempt ended (recorded, not applied)
  received_at REAL NOT NULL,
  UNIQUE(attempt_id, seq)             -- stdout and HTTP deliver each event; the first one wins
);
)SQL";

// Version 2, for GET /api/matrices/{id}/results at 1,000 jobs: the last value of every metric series
// per job, kept on ingest, so the final alphas and gradient norms of a matrix come from one indexed
// query instead of a scan of each job's series; filled from metrics on upgrade.
const char* kV2 = R"SQL(
CREATE TABLE last_metrics(
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  name TEXT NOT NULL,
  iter INTEGER NOT NULL,              -- the highest iteration of the series
  value REAL NOT NULL,
  PRIMARY KEY(job_id, name)
) WITHOUT ROWID;
INSERT INTO last_metrics(job_id, name, iter, value)
  SELECT job_id, name, MAX(iter), value FROM metrics GROUP BY job_id, name;  -- value: of the MAX(iter) row
-- Covers what the results table reads of each job, so it never loads the rows' spec JSON (KBs each).
-- Ingest's frequent UPDATEs (iter, losses) leave it alone: none of its columns change.
CREATE INDEX jobs_states ON jobs(matrix_id, id, status, reused_from, reason);
)SQL";

// Version 3, for the SLURM executor: the SLURM job id of an attempt (a restarted daemon re-attaches
// by it) and SLURM's state and reason as last polled (PENDING + Resources: queued in SLURM).
const char* kV3 = R"SQL(
ALTER TABLE attempts ADD COLUMN slurm_job_id TEXT;
ALTER TABLE attempts ADD COLUMN slurm_state TEXT NOT NULL DEFAULT '';
ALTER TABLE attempts ADD COLUMN slurm_reason TEXT NOT NULL DEFAULT '';
)SQL";

}  // namespace

const std::vector<Migration>& migrations() {
  static const std::vector<Migration> list = {{1, kV1}, {2, kV2}, {3, kV3}};
  return list;
}

int schema_version(Connection& conn) {
  conn.exec("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)");
  Statement st = conn.prepare("SELECT MAX(version) FROM schema_version");
  st.step();
  return st.is_null(0) ? 0 : static_cast<int>(st.get_int(0));
}

void migrate(Connection& conn, const std::vector<Migration>& list) {
  int current = schema_version(conn);
  int latest = list.empty() ? 0 : list.back().version;
  if (current > latest) {
    throw DbError("database '" + conn.path() + "' has schema version " + std::to_string(current) +
                  " but this ratiod knows only up to " + std::to_string(latest) +
                  "; run the newer ratiod that wrote it");
  }
  for (const Migration& m : list) {
    if (m.version <= current) continue;
    Transaction tx(conn);
    conn.exec(m.sql);
    conn.prepare("INSERT INTO schema_version(version) VALUES (?)").bind(1, m.version).run();
    tx.commit();
  }
}

}  // namespace ratio::db
