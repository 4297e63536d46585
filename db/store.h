#pragma once
// The daemon's data: matrices, jobs (with their summary row), attempts, metrics, results, events.
// A Store wraps one connection. The daemon owns exactly one writable Store (on its writer thread)
// and any number of read-only Stores for API reads; every multi-row change is one transaction,
// so a kill -9 at any moment leaves either all of it or none.
//
// Reads return JSON in the shapes of docs/api.md (job summary, attempt, matrix summary), since
// that is what every reader needs.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "db/sqlite.h"

namespace ratio::db {

using nlohmann::json;

double now_seconds();  // unix time, fractional

// One job of a submitted matrix, as matrix/ resolved it.
struct NewJob {
  std::string step;
  std::string name;
  json spec;  // full job spec (docs/job-spec.md)
  std::string config_hash;
  json params;  // ParamCounts
  int64_t max_iters = 0;
};

struct NewMatrix {
  std::string name;
  std::string source;  // submitted text
  json expanded;       // resolved matrix JSON
  json warnings = json::array();
  std::optional<std::string> idempotency_key;
  int priority = 0;
  int max_attempts = 3;
  bool force = false;  // true: never reuse an earlier identical config's result
  std::vector<NewJob> jobs;
};

struct CreatedMatrix {
  int64_t id = 0;
  bool existed = false;  // the idempotency key matched an earlier submission
};

// What the scheduler needs to start one attempt of a job.
struct ClaimedAttempt {
  int64_t job_id = 0;
  int64_t attempt_id = 0;
  int n = 0;  // attempt number, 1-based
  json spec;
  bool resume = false;
  std::string log_path;
};

struct RunningAttempt {
  int64_t job_id = 0;
  int64_t attempt_id = 0;
  int n = 0;
  std::optional<int64_t> pid;
  std::string token;
  std::string slot;
  std::string slurm_job_id;  // "" unless the SLURM executor runs it
  std::string log_path;
};

// How an attempt ended and what happens to its job next.
enum class Retry {
  kNever,         // the job fails (or succeeds) with this attempt
  kIfAttemptsLeft,  // counts as a failure; requeue (resuming) while failures < the job's max_attempts
  kAlways,        // requeue, not counted: the daemon itself interrupted it (shutdown, restart)
};

struct AttemptEnd {
  std::string status;  // succeeded | failed | lost | interrupted | cancelled
  std::string reason;
  std::optional<int64_t> exit_code;
  Retry retry = Retry::kNever;
};

struct IngestOutcome {
  int accepted = 0;       // events new to the store
  bool stale = false;     // the attempt is no longer running: recorded, not applied
  int64_t job_id = 0;
  int64_t last_iter = -1;  // highest iteration among applied metric/eval events, -1 if none
  std::set<std::string> metric_names;  // names written by this batch
};

// A job as the results table sees it (Store::matrix_job_states).
struct JobState {
  int64_t id = 0;
  std::string status;
  std::string reason;
  std::optional<double> final_val_loss;  // from the `finished` result
  std::optional<double> best_val_loss;
  std::optional<double> tokens_per_s;
};

struct QueuedJob {
  int64_t job_id = 0;
  int gpus = 1;
};

class Store {
 public:
  // Opens the file; a writable Store creates it and applies migrations.
  Store(const std::string& path, bool read_only);

  Connection& connection() { return conn_; }

  // ---- writes (the daemon's writer thread only) -----------------------------------------------
  // Stores the matrix and its jobs atomically. A job whose config_hash matches a succeeded job is
  // created already succeeded with reused_from set (unless force).
  CreatedMatrix create_matrix(const NewMatrix& m);

  // Adds jobs to an existing matrix (ratiod's `decide` seeds), with the priority and attempt budget of
  // its first job, reusing identical succeeded configs like create_matrix; reopens the matrix.
  // Returns the new ids (none when the matrix is unknown).
  std::vector<int64_t> add_jobs(int64_t matrix_id, const std::vector<NewJob>& jobs);

  // Takes the highest-priority queued job (or job `only`, if still queued), creates its next
  // attempt (status running) and marks the job running. log_dir/<job id>/attempt-<n>.log becomes
  // the attempt's log path. `slot` names what the attempt holds ("gpu:0", "gpu:0,1").
  std::optional<ClaimedAttempt> claim_next_job(const std::string& slot, const std::string& token,
                                               const std::string& jobs_dir, std::optional<int64_t> only = std::nullopt);
  // Where the attempt runs, as its executor reported it: a local pid, a SLURM job id.
  void set_attempt_pid(int64_t attempt_id, int64_t pid);
  void set_attempt_slurm_job(int64_t attempt_id, const std::string& slurm_job_id);
  // SLURM's state and reason as last polled. Returns false when they did not change.
  bool set_attempt_slurm_state(int64_t attempt_id, const std::string& state, const std::string& reason);
  // The first `limit` queued jobs in claim order with their train.gpus (1 where the spec predates it).
  std::vector<QueuedJob> queued_jobs(int limit);

  // Ends an attempt (if still running) and moves its job on: succeeded, requeued or failed.
  // Returns false when the attempt had already ended.
  bool end_attempt(int64_t attempt_id, const AttemptEnd& end);

  // Applies a batch of worker events for one attempt. Each (attempt, seq) is stored once, so the
  // same event arriving on stdout and over HTTP counts once.
  IngestOutcome ingest(int64_t attempt_id, const json& events);

  // Requeues jobs (new attempts, resuming none: a rerun starts over) whose status is in the set.
  // Running jobs are never requeued. Returns the ids.
  std::vector<int64_t> rerun_matrix(int64_t matrix_id, const std::set<std::string>& statuses);
  // Requeues one job that is not running. Returns false when it is running or unknown.
  bool rerun_job(int64_t job_id);
  // Queued -> cancelled at once. Returns the job's status afterwards (empty when unknown).
  std::string cancel_queued_job(int64_t job_id);

  // ---- reads ----------------------------------------------------------------------------------
  std::optional<int64_t> attempt_by_token(const std::string& token);
  std::vector<RunningAttempt> running_attempts();
  // The exit code the attempt reported itself: 0 when it recorded a result, the `failed` event's
  // exit_code, nullopt when it reported neither (for attempts whose exit status nobody saw).
  std::optional<int64_t> reported_exit_code(int64_t attempt_id);
  std::optional<RunningAttempt> running_attempt_of_job(int64_t job_id);

  std::optional<json> job_summary(int64_t job_id);
  // Jobs by id; with a limit, at most `limit` of them with id > after_id (a keyset page: stable while
  // jobs are added). Empty status / no matrix: all.
  json list_jobs(std::optional<int64_t> matrix_id, const std::string& status, int64_t after_id = 0,
                 std::optional<int64_t> limit = std::nullopt);
  std::optional<json> job_detail(int64_t job_id);  // {"job": ..., "attempts": [...]}
  // Log file of attempt n of the job, or of its latest attempt when n is not given.
  std::optional<std::string> log_path(int64_t job_id, std::optional<int64_t> n);

  // Matrices by id; with a limit, at most `limit` of them with id > after_id (a keyset page, as list_jobs).
  json list_matrices(int64_t after_id = 0, std::optional<int64_t> limit = std::nullopt);
  std::optional<json> matrix_summary(int64_t matrix_id);
  std::optional<std::string> matrix_name(int64_t matrix_id);
  std::optional<json> matrix_detail(int64_t matrix_id);  // {"matrix": ..., "jobs": [...]}
  std::optional<int64_t> matrix_of_job(int64_t job_id);
  std::optional<json> matrix_expanded(int64_t matrix_id);  // the resolved matrix JSON stored at submit

  // For the results table, in three parts so the daemon can cache what never changes:
  // [{"id", "spec", "params"}] of every job of a matrix (fixed at submission);
  json matrix_job_specs(int64_t matrix_id);
  // the state of every job, in id order, with the numbers of its `finished` result (or of the
  // result it reuses);
  std::vector<JobState> matrix_job_states(int64_t matrix_id);
  // and {job id: {name without prefix: last value}} of the series whose name starts with prefix
  // ("alpha/", "grad/"), a reused job showing its source's. Read from last_metrics (kept on ingest).
  std::map<int64_t, std::map<std::string, double>> matrix_last_values(int64_t matrix_id, const std::string& prefix);

  // {"series": {name: [[iter, value], ...]}, "names": [...]}, each series with iter > after,
  // evenly downsampled to at most max_points (first and last kept).
  json metrics(int64_t job_id, const std::vector<std::string>& names, int max_points, int64_t after);

  // Counts for /api/health and /metrics.
  json job_counts_by_status();
  json attempt_counts_by_status();
  int64_t event_count(bool applied);

 private:
  json read_job_summary(Statement& st);
  std::vector<int64_t> insert_jobs(int64_t matrix_id, const std::vector<NewJob>& jobs, int priority, int max_attempts,
                                   bool force, double now);
  json matrices_page(int64_t after_id, int64_t limit);  // limit -1: all
  void refresh_matrix_finished(int64_t matrix_id);
  struct MetricWriters {
    Statement point;  // metrics: the series
    Statement last;   // last_metrics: its last point
  };
  void upsert_metric(MetricWriters& w, int64_t job_id, const std::string& name, int64_t iter, double value,
                     int attempt_n);

  Connection conn_;
};

}  // namespace ratio::db
