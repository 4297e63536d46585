#include "db/store.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "db/schema.h"

namespace ratio::db {

namespace {

// Columns of the job summary, in the order read_job_summary() reads them.
const char* kJobColumns =
    "id, matrix_id, step, name, status, attempts, iter, max_iters, final_val_loss, best_val_loss, reason, "
    "config_hash, updated_at, reused_from, "
    // The latest attempt's SLURM job (NULL for local attempts), by the attempts(job_id, n) index.
    "(SELECT json_array(slurm_job_id, slurm_state, slurm_reason) FROM attempts "
    " WHERE job_id = jobs.id AND n = jobs.attempts AND slurm_job_id IS NOT NULL)";

const char* kJobStatuses[] = {"queued", "running", "succeeded", "failed", "cancelled"};

// A rerun is a new attempt of the same job with a fresh failure budget. It resumes from the job's
// checkpoint, except after a success: rerunning a finished job means training it again.
// (UPDATE reads the old row, so `status` in the CASE is the status before the rerun.)
const char* kRequeueForRerun =
    "UPDATE jobs SET status = 'queued', resume = CASE WHEN status = 'succeeded' THEN 0 ELSE 1 END, failures = 0, "
    "reason = 'rerun requested', reused_from = NULL, updated_at = ? WHERE id = ?";

// {"job_id", "state", "reason"} of an attempt's SLURM job, from [id, state, reason]; null when local.
json slurm_json(const json& triple) {
  if (!triple.is_array() || triple.size() != 3 || triple[0].is_null()) return nullptr;
  return {{"job_id", triple[0]}, {"state", triple[1]}, {"reason", triple[2]}};
}

json opt_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
json opt_json(const std::optional<int64_t>& v) { return v ? json(*v) : json(nullptr); }

std::optional<double> number_or_null(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// Picks at most max_points of the series, evenly spaced by index, first and last always kept.
json downsample(const std::vector<std::pair<int64_t, double>>& points, int max_points) {
  json out = json::array();
  size_t n = points.size();
  if (n == 0) return out;
  if (max_points <= 1) {
    out.push_back({points.back().first, points.back().second});
    return out;
  }
  if (n <= static_cast<size_t>(max_points)) {
    for (const auto& [iter, value] : points) out.push_back({iter, value});
    return out;
  }
  for (int i = 0; i < max_points; ++i) {
    size_t index = static_cast<size_t>(i) * (n - 1) / static_cast<size_t>(max_points - 1);
    out.push_back({points[index].first, points[index].second});
  }
  return out;
}

}  // namespace

double now_seconds() {
  using namespace std::chrono;
  return duration_cast<duration<double>>(system_clock::now().time_since_epoch()).count();
}

Store::Store(const std::string& path, bool read_only)
    : conn_(path, read_only ? Connection::Mode::kReadOnly : Connection::Mode::kReadWrite) {
  if (!read_only) migrate(conn_);
}

// ---- writes -------------------------------------------------------------------------------------

CreatedMatrix Store::create_matrix(const NewMatrix& m) {
  if (m.idempotency_key) {
    Statement st = conn_.prepare("SELECT id FROM matrices WHERE idempotency_key = ?");
    st.bind(1, *m.idempotency_key);
    if (st.step()) return {st.get_int(0), true};
  }
  double now = now_seconds();
  Transaction tx(conn_);
  conn_.prepare("INSERT INTO matrices(name, source, expanded, warnings, idempotency_key, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)")
      .bind(1, m.name)
      .bind(2, m.source)
      .bind(3, m.expanded.dump())
      .bind(4, m.warnings.dump())
      .bind(5, m.idempotency_key)
      .bind(6, now)
      .run();
  int64_t matrix_id = conn_.last_insert_id();
  insert_jobs(matrix_id, m.jobs, m.priority, m.max_attempts, m.force, now);
  refresh_matrix_finished(matrix_id);
  tx.commit();
  return {matrix_id, false};
}

std::vector<int64_t> Store::insert_jobs(int64_t matrix_id, const std::vector<NewJob>& jobs, int priority,
                                        int max_attempts, bool force, double now) {
  // Only original runs are reuse sources, so reused_from always points at the job that trained.
  Statement find_cached = conn_.prepare(
      "SELECT id, iter, final_val_loss, best_val_loss FROM jobs "
      "WHERE config_hash = ? AND status = 'succeeded' AND reused_from IS NULL ORDER BY id DESC LIMIT 1");
  Statement insert_job = conn_.prepare(
      "INSERT INTO jobs(matrix_id, step, name, spec, config_hash, params, priority, status, iter, max_iters, "
      "final_val_loss, best_val_loss, reason, reused_from, created_at, updated_at, max_attempts) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  std::vector<int64_t> ids;
  for (const NewJob& job : jobs) {
    std::optional<int64_t> reused_from;
    int64_t iter = 0;
    std::optional<double> final_loss, best_loss;
    if (!force) {
      find_cached.bind(1, job.config_hash);
      if (find_cached.step()) {
        reused_from = find_cached.get_int(0);
        iter = find_cached.get_int(1);
        final_loss = find_cached.get_opt_double(2);
        best_loss = find_cached.get_opt_double(3);
      }
      find_cached.reset();
    }
    insert_job.bind(1, matrix_id)
        .bind(2, job.step)
        .bind(3, job.name)
        .bind(4, job.spec.dump())
        .bind(5, job.config_hash)
        .bind(6, job.params.dump())
        .bind(7, priority)
        .bind(8, reused_from ? "succeeded" : "queued")
        .bind(9, iter)
        .bind(10, job.max_iters)
        .bind(11, final_loss)
        .bind(12, best_loss)
        .bind(13, reused_from ? "reused the result of job " + std::to_string(*reused_from) : "")
        .bind(14, reused_from)
        .bind(15, now)
        .bind(16, now)
        .bind(17, max_attempts);
    insert_job.run();
    ids.push_back(conn_.last_insert_id());
  }
  return ids;
}

std::vector<int64_t> Store::add_jobs(int64_t matrix_id, const std::vector<NewJob>& jobs) {
  Transaction tx(conn_);
  // New jobs run like the matrix's first: same priority and attempt budget.
  Statement first = conn_.prepare("SELECT priority, max_attempts FROM jobs WHERE matrix_id = ? ORDER BY id LIMIT 1");
  first.bind(1, matrix_id);
  if (!first.step()) return {};
  const int priority = static_cast<int>(first.get_int(0)), max_attempts = static_cast<int>(first.get_int(1));
  std::vector<int64_t> ids = insert_jobs(matrix_id, jobs, priority, max_attempts, /*force=*/false, now_seconds());
  refresh_matrix_finished(matrix_id);
  tx.commit();
  return ids;
}

std::vector<QueuedJob> Store::queued_jobs(int limit) {
  Statement q = conn_.prepare(
      "SELECT id, COALESCE(json_extract(spec, '$.train.gpus'), 1) FROM jobs WHERE status = 'queued' "
      "ORDER BY priority DESC, id LIMIT ?");
  q.bind(1, limit);
  std::vector<QueuedJob> out;
  while (q.step()) out.push_back({q.get_int(0), static_cast<int>(q.get_int(1))});
  return out;
}

std::optional<ClaimedAttempt> Store::claim_next_job(const std::string& slot, const std::string& token,
                                                    const std::string& jobs_dir, std::optional<int64_t> only) {
  Transaction tx(conn_);
  Statement next = conn_.prepare(
      "SELECT id, spec, attempts, resume, matrix_id FROM jobs WHERE status = 'queued' AND (?1 IS NULL OR id = ?1) "
      "ORDER BY priority DESC, id LIMIT 1");
  if (only)
    next.bind(1, *only);
  else
    next.bind_null(1);
  if (!next.step()) return std::nullopt;
  ClaimedAttempt claim;
  claim.job_id = next.get_int(0);
  claim.spec = json::parse(next.get_text(1));
  claim.n = static_cast<int>(next.get_int(2)) + 1;
  claim.resume = next.get_int(3) != 0;
  int64_t matrix_id = next.get_int(4);
  claim.log_path = jobs_dir + "/" + std::to_string(claim.job_id) + "/attempt-" + std::to_string(claim.n) + ".log";
  double now = now_seconds();
  conn_.prepare("INSERT INTO attempts(job_id, n, status, slot, token, started_at, log_path) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?)")
      .bind(1, claim.job_id)
      .bind(2, claim.n)
      .bind(3, slot)
      .bind(4, token)
      .bind(5, now)
      .bind(6, claim.log_path)
      .run();
  claim.attempt_id = conn_.last_insert_id();
  conn_.prepare("UPDATE jobs SET status = 'running', attempts = ?, reason = '', updated_at = ? WHERE id = ?")
      .bind(1, claim.n)
      .bind(2, now)
      .bind(3, claim.job_id)
      .run();
  refresh_matrix_finished(matrix_id);
  tx.commit();
  return claim;
}

void Store::set_attempt_pid(int64_t attempt_id, int64_t pid) {
  conn_.prepare("UPDATE attempts SET pid = ? WHERE id = ?").bind(1, pid).bind(2, attempt_id).run();
}

void Store::set_attempt_slurm_job(int64_t attempt_id, const std::string& slurm_job_id) {
  conn_.prepare("UPDATE attempts SET slurm_job_id = ? WHERE id = ?").bind(1, slurm_job_id).bind(2, attempt_id).run();
}

bool Store::set_attempt_slurm_state(int64_t attempt_id, const std::string& state, const std::string& reason) {
  conn_.prepare("UPDATE attempts SET slurm_state = ?1, slurm_reason = ?2 WHERE id = ?3 "
                "AND (slurm_state != ?1 OR slurm_reason != ?2)")
      .bind(1, state)
      .bind(2, reason)
      .bind(3, attempt_id)
      .run();
  return conn_.changes() > 0;
}

bool Store::end_attempt(int64_t attempt_id, const AttemptEnd& end) {
  Transaction tx(conn_);
  Statement att = conn_.prepare(
      "SELECT a.job_id, a.n, a.status, a.reason, j.matrix_id, j.max_attempts, j.failures FROM attempts a JOIN jobs j ON j.id = a.job_id "
      "WHERE a.id = ?");
  att.bind(1, attempt_id);
  if (!att.step() || att.get_text(2) != "running") return false;
  int64_t job_id = att.get_int(0);
  int n = static_cast<int>(att.get_int(1));
  std::string worker_reason = att.get_text(3);  // from the worker's `failed` event, if any
  int64_t matrix_id = att.get_int(4);
  int max_attempts = static_cast<int>(att.get_int(5));

  std::string status = end.status;
  std::string reason = end.reason;
  if (!worker_reason.empty()) reason += (reason.empty() ? "" : ": ") + worker_reason;
  if (status == "succeeded") {
    Statement result = conn_.prepare("SELECT 1 FROM results WHERE attempt_id = ?");
    result.bind(1, attempt_id);
    if (!result.step()) {
      status = "failed";
      reason = "the worker exited 0 without a `finished` event (no result recorded)";
    }
  }
  double now = now_seconds();
  conn_.prepare("UPDATE attempts SET status = ?, reason = ?, exit_code = ?, ended_at = ? WHERE id = ?")
      .bind(1, status)
      .bind(2, reason)
      .bind(3, end.exit_code)
      .bind(4, now)
      .bind(5, attempt_id)
      .run();

  // Only failures of the job itself use up its attempts; the daemon's own interruptions
  // (shutdown, restart) do not.
  int failures = static_cast<int>(att.get_int(6));
  bool counts = status != "succeeded" && status != "cancelled" && end.retry == Retry::kIfAttemptsLeft;
  if (counts) ++failures;
  bool retry = end.retry == Retry::kAlways || (counts && failures < max_attempts);
  std::string job_status;
  std::string job_reason = reason;
  if (status == "succeeded") {
    job_status = "succeeded";
  } else if (status == "cancelled") {
    job_status = "cancelled";
  } else if (retry) {
    job_status = "queued";
    job_reason = "attempt " + std::to_string(n) + " " + status + " (" + reason + "); retrying from the checkpoint";
  } else {
    job_status = "failed";
    if (counts) job_reason += " (gave up after " + std::to_string(failures) + " failed attempts)";
  }
  conn_.prepare("UPDATE jobs SET status = ?, reason = ?, resume = ?, failures = ?, updated_at = ? WHERE id = ?")
      .bind(1, job_status)
      .bind(2, job_reason)
      .bind(3, job_status == "queued" ? 1 : 0)
      .bind(4, failures)
      .bind(5, now)
      .bind(6, job_id)
      .run();
  refresh_matrix_finished(matrix_id);
  tx.commit();
  return true;
}

void Store::upsert_metric(MetricWriters& w, int64_t job_id, const std::string& name, int64_t iter, double value,
                          int attempt_n) {
  w.point.bind(1, job_id).bind(2, name).bind(3, iter).bind(4, value).bind(5, attempt_n);
  w.point.run();
  w.last.bind(1, job_id).bind(2, name).bind(3, iter).bind(4, value);
  w.last.run();
}

IngestOutcome Store::ingest(int64_t attempt_id, const json& events) {
  IngestOutcome out;
  Transaction tx(conn_);
  Statement att = conn_.prepare("SELECT job_id, n, status FROM attempts WHERE id = ?");
  att.bind(1, attempt_id);
  if (!att.step()) throw DbError("ingest: unknown attempt " + std::to_string(attempt_id));
  out.job_id = att.get_int(0);
  int n = static_cast<int>(att.get_int(1));
  out.stale = att.get_text(2) != "running";

  Statement insert_event = conn_.prepare(
      "INSERT OR IGNORE INTO events(attempt_id, seq, type, body, applied, received_at) VALUES (?, ?, ?, ?, ?, ?)");
  // Idempotent by (job, name, iter): a resumed attempt's re-reported iterations replace the old.
  MetricWriters metric{
      conn_.prepare("INSERT INTO metrics(job_id, name, iter, value, attempt_n) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(job_id, name, iter) DO UPDATE SET value = excluded.value, attempt_n = excluded.attempt_n"),
      // The series' last point: a later iteration replaces it, and so does a new value for the same one.
      conn_.prepare("INSERT INTO last_metrics(job_id, name, iter, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(job_id, name) DO UPDATE SET iter = excluded.iter, value = excluded.value "
                    "WHERE excluded.iter >= last_metrics.iter")};
  auto put = [&](const std::string& name, int64_t iter, const json& value) {
    if (!value.is_number()) return;  // NaN/Inf arrive as null: nothing to plot
    upsert_metric(metric, out.job_id, name, iter, value.get<double>(), n);
    out.metric_names.insert(name);
  };
  auto put_all = [&](const std::string& prefix, int64_t iter, const json& values) {
    if (values.is_object()) {
      for (auto it = values.begin(); it != values.end(); ++it) put(prefix + it.key(), iter, it.value());
    } else if (values.is_array()) {
      for (size_t i = 0; i < values.size(); ++i) put(prefix + std::to_string(i), iter, values[i]);
    }
  };

  std::optional<int64_t> summary_iter;
  std::optional<double> best_val;
  double now = now_seconds();
  for (const json& e : events) {
    if (!e.is_object() || !e.contains("seq") || !e["seq"].is_number_integer() || !e.contains("type") ||
        !e["type"].is_string()) {
      throw std::invalid_argument("every event needs an integer `seq` and a string `type` (docs/job-spec.md); got " +
                                  e.dump().substr(0, 200));
    }
    std::string type = e["type"].get<std::string>();
    insert_event.bind(1, attempt_id)
        .bind(2, e["seq"].get<int64_t>())
        .bind(3, type)
        .bind(4, e.dump())
        .bind(5, out.stale ? 0 : 1)
        .bind(6, now);
    insert_event.run();
    if (conn_.changes() == 0) continue;  // already delivered by the other channel
    ++out.accepted;
    if (out.stale) continue;

    int64_t iter = e.value("iter", int64_t{-1});
    if (type == "started") {
      conn_.prepare("UPDATE attempts SET build_id = ?, start_iter = ? WHERE id = ?")
          .bind(1, e.value("build_id", std::string()))
          .bind(2, iter)
          .bind(3, attempt_id)
          .run();
      summary_iter = iter;
    } else if (type == "metric") {
      for (const char* name : {"train_loss", "lr", "tokens_per_s", "grad_norm"}) {
        if (e.contains(name)) put(name, iter, e[name]);
      }
      summary_iter = iter;
    } else if (type == "eval") {
      if (e.contains("val_loss")) {
        put("val_loss", iter, e["val_loss"]);
        if (auto v = number_or_null(e, "val_loss")) best_val = best_val ? std::min(*best_val, *v) : *v;
      }
      if (e.contains("entropy")) put_all("entropy/", iter, e["entropy"]);
      if (e.contains("reciprocity")) put_all("reciprocity/", iter, e["reciprocity"]);
      summary_iter = iter;
    } else if (type == "alphas" && e.contains("values")) {
      put_all("alpha/", iter, e["values"]);
    } else if (type == "grad_norms" && e.contains("values")) {
      put_all("grad/", iter, e["values"]);
    } else if (type == "finished" && e.contains("result")) {
      const json& result = e["result"];
      conn_.prepare("INSERT OR REPLACE INTO results(job_id, attempt_id, result, created_at) VALUES (?, ?, ?, ?)")
          .bind(1, out.job_id)
          .bind(2, attempt_id)
          .bind(3, result.dump())
          .bind(4, now)
          .run();
      conn_.prepare("UPDATE jobs SET final_val_loss = ?, best_val_loss = ?, iter = COALESCE(?, iter) WHERE id = ?")
          .bind(1, number_or_null(result, "final_val_loss"))
          .bind(2, number_or_null(result, "best_val_loss"))
          .bind(3, result.contains("iters") && result["iters"].is_number_integer()
                       ? std::optional<int64_t>(result["iters"].get<int64_t>())
                       : std::nullopt)
          .bind(4, out.job_id)
          .run();
    } else if (type == "failed") {
      conn_.prepare("UPDATE attempts SET reason = ? WHERE id = ?")
          .bind(1, e.value("reason", std::string("failed")))
          .bind(2, attempt_id)
          .run();
    }
    if (iter >= 0 && (type == "metric" || type == "eval")) out.last_iter = std::max(out.last_iter, iter);
  }

  if (summary_iter || best_val) {
    conn_.prepare(
             "UPDATE jobs SET iter = COALESCE(?1, iter), "
             "best_val_loss = CASE WHEN ?2 IS NULL THEN best_val_loss "
             "  WHEN best_val_loss IS NULL OR ?2 < best_val_loss THEN ?2 ELSE best_val_loss END, "
             "updated_at = ?3 WHERE id = ?4")
        .bind(1, summary_iter)
        .bind(2, best_val)
        .bind(3, now)
        .bind(4, out.job_id)
        .run();
  }
  tx.commit();
  return out;
}

std::vector<int64_t> Store::rerun_matrix(int64_t matrix_id, const std::set<std::string>& statuses) {
  std::vector<int64_t> ids;
  Transaction tx(conn_);
  Statement st = conn_.prepare("SELECT id, status FROM jobs WHERE matrix_id = ? ORDER BY id");
  st.bind(1, matrix_id);
  while (st.step()) {
    std::string status = st.get_text(1);
    if (status != "running" && status != "queued" && statuses.count(status)) ids.push_back(st.get_int(0));
  }
  Statement requeue = conn_.prepare(kRequeueForRerun);
  double now = now_seconds();
  for (int64_t id : ids) {
    requeue.bind(1, now).bind(2, id);
    requeue.run();
  }
  refresh_matrix_finished(matrix_id);
  tx.commit();
  return ids;
}

bool Store::rerun_job(int64_t job_id) {
  Transaction tx(conn_);
  Statement st = conn_.prepare("SELECT status, matrix_id FROM jobs WHERE id = ?");
  st.bind(1, job_id);
  if (!st.step() || st.get_text(0) == "running") return false;
  int64_t matrix_id = st.get_int(1);
  conn_.prepare(kRequeueForRerun)
      .bind(1, now_seconds())
      .bind(2, job_id)
      .run();
  refresh_matrix_finished(matrix_id);
  tx.commit();
  return true;
}

std::string Store::cancel_queued_job(int64_t job_id) {
  Transaction tx(conn_);
  Statement st = conn_.prepare("SELECT status, matrix_id FROM jobs WHERE id = ?");
  st.bind(1, job_id);
  if (!st.step()) return "";
  std::string status = st.get_text(0);
  int64_t matrix_id = st.get_int(1);
  if (status == "queued") {
    conn_.prepare("UPDATE jobs SET status = 'cancelled', reason = 'cancelled before it started', updated_at = ? "
                  "WHERE id = ?")
        .bind(1, now_seconds())
        .bind(2, job_id)
        .run();
    status = "cancelled";
    refresh_matrix_finished(matrix_id);
  }
  tx.commit();
  return status;
}

void Store::refresh_matrix_finished(int64_t matrix_id) {
  conn_.prepare(
           "UPDATE matrices SET finished_at = CASE "
           "WHEN EXISTS(SELECT 1 FROM jobs WHERE matrix_id = ?1 AND status IN ('queued', 'running')) THEN NULL "
           "ELSE COALESCE(finished_at, ?2) END WHERE id = ?1")
      .bind(1, matrix_id)
      .bind(2, now_seconds())
      .run();
}

// ---- reads --------------------------------------------------------------------------------------

std::optional<int64_t> Store::attempt_by_token(const std::string& token) {
  Statement st = conn_.prepare("SELECT id FROM attempts WHERE token = ?");
  st.bind(1, token);
  if (!st.step()) return std::nullopt;
  return st.get_int(0);
}

namespace {
const char* kRunningColumns = "job_id, id, n, pid, token, slot, COALESCE(slurm_job_id, ''), log_path";
RunningAttempt read_running(Statement& st) {
  return {st.get_int(0),  st.get_int(1),  static_cast<int>(st.get_int(2)), st.get_opt_int(3),
          st.get_text(4), st.get_text(5), st.get_text(6),                  st.get_text(7)};
}
}  // namespace

std::vector<RunningAttempt> Store::running_attempts() {
  std::vector<RunningAttempt> out;
  Statement st = conn_.prepare(std::string("SELECT ") + kRunningColumns + " FROM attempts WHERE status = 'running'");
  while (st.step()) out.push_back(read_running(st));
  return out;
}

std::optional<RunningAttempt> Store::running_attempt_of_job(int64_t job_id) {
  Statement st = conn_.prepare(std::string("SELECT ") + kRunningColumns +
                               " FROM attempts WHERE status = 'running' AND job_id = ?");
  st.bind(1, job_id);
  if (!st.step()) return std::nullopt;
  return read_running(st);
}

std::optional<int64_t> Store::reported_exit_code(int64_t attempt_id) {
  Statement st = conn_.prepare(
      "SELECT 0 FROM results WHERE attempt_id = ?1 UNION ALL "
      "SELECT json_extract(body, '$.exit_code') FROM events WHERE attempt_id = ?1 AND type = 'failed' LIMIT 1");
  st.bind(1, attempt_id);
  if (!st.step() || st.is_null(0)) return std::nullopt;
  return st.get_int(0);
}

json Store::read_job_summary(Statement& st) {
  return {{"id", st.get_int(0)},
          {"matrix_id", st.get_int(1)},
          {"step", st.get_text(2)},
          {"name", st.get_text(3)},
          {"status", st.get_text(4)},
          {"attempts", st.get_int(5)},
          {"iter", st.get_int(6)},
          {"max_iters", st.get_int(7)},
          {"final_val_loss", opt_json(st.get_opt_double(8))},
          {"best_val_loss", opt_json(st.get_opt_double(9))},
          {"reason", st.get_text(10)},
          {"config_hash", st.get_text(11)},
          {"updated_at", st.get_double(12)},
          {"reused_from", opt_json(st.get_opt_int(13))},
          {"slurm", slurm_json(st.is_null(14) ? json(nullptr) : json::parse(st.get_text(14)))}};
}

std::optional<json> Store::job_summary(int64_t job_id) {
  Statement st = conn_.prepare(std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?");
  st.bind(1, job_id);
  if (!st.step()) return std::nullopt;
  return read_job_summary(st);
}

json Store::list_jobs(std::optional<int64_t> matrix_id, const std::string& status, int64_t after_id,
                      std::optional<int64_t> limit) {
  // With a matrix, `matrix_id = ?1` alone lets SQLite walk that matrix's index entries; folded into
  // `(?1 IS NULL OR ...)` it scanned every job's row (spec included) to list one matrix.
  const std::string matrix_filter = matrix_id ? "matrix_id = ?1" : "?1 IS NULL";
  Statement st = conn_.prepare(std::string("SELECT ") + kJobColumns + " FROM jobs WHERE " + matrix_filter +
                               " AND (?2 = '' OR status = ?2) AND id > ?3 ORDER BY id LIMIT ?4");
  st.bind(1, matrix_id).bind(2, status).bind(3, after_id).bind(4, limit.value_or(-1));  // LIMIT -1: all
  json jobs = json::array();
  while (st.step()) jobs.push_back(read_job_summary(st));
  return jobs;
}

std::optional<json> Store::job_detail(int64_t job_id) {
  auto summary = job_summary(job_id);
  if (!summary) return std::nullopt;
  json job = *summary;
  Statement st = conn_.prepare(
      "SELECT j.spec, j.params, r.result FROM jobs j LEFT JOIN results r ON r.job_id = COALESCE(j.reused_from, j.id) "
      "WHERE j.id = ?");
  st.bind(1, job_id);
  st.step();
  job["spec"] = json::parse(st.get_text(0));
  job["params"] = json::parse(st.get_text(1));
  job["result"] = st.is_null(2) ? json(nullptr) : json::parse(st.get_text(2));

  json attempts = json::array();
  Statement at = conn_.prepare(
      "SELECT n, status, reason, exit_code, pid, slot, build_id, started_at, ended_at, log_path, start_iter, "
      "json_array(slurm_job_id, slurm_state, slurm_reason) FROM attempts WHERE job_id = ? ORDER BY n");
  at.bind(1, job_id);
  while (at.step()) {
    attempts.push_back({{"n", at.get_int(0)},
                        {"status", at.get_text(1)},
                        {"reason", at.get_text(2)},
                        {"exit_code", opt_json(at.get_opt_int(3))},
                        {"pid", opt_json(at.get_opt_int(4))},
                        {"slot", at.get_text(5)},
                        {"build_id", at.get_text(6)},
                        {"started_at", at.get_double(7)},
                        {"ended_at", opt_json(at.get_opt_double(8))},
                        {"log_path", at.get_text(9)},
                        {"start_iter", opt_json(at.get_opt_int(10))},
                        {"slurm", slurm_json(json::parse(at.get_text(11)))}});
  }
  return json{{"job", job}, {"attempts", attempts}};
}

std::optional<std::string> Store::log_path(int64_t job_id, std::optional<int64_t> n) {
  Statement st = conn_.prepare(
      "SELECT log_path FROM attempts WHERE job_id = ?1 AND (?2 IS NULL OR n = ?2) ORDER BY n DESC LIMIT 1");
  st.bind(1, job_id).bind(2, n);
  if (!st.step()) return std::nullopt;
  return st.get_text(0);
}

json Store::list_matrices(int64_t after_id, std::optional<int64_t> limit) {
  return matrices_page(after_id, limit.value_or(-1));
}

std::optional<json> Store::matrix_summary(int64_t matrix_id) {
  json found = matrices_page(matrix_id - 1, 1);
  if (found.empty() || found[0]["id"] != matrix_id) return std::nullopt;
  return found[0];
}

std::optional<std::string> Store::matrix_name(int64_t matrix_id) {
  Statement st = conn_.prepare("SELECT name FROM matrices WHERE id = ?");
  st.bind(1, matrix_id);
  if (!st.step()) return std::nullopt;
  return st.get_text(0);
}

json Store::matrices_page(int64_t after_id, int64_t limit) {
  json out = json::array();
  Statement st = conn_.prepare(
      "SELECT id, name, created_at, finished_at FROM matrices WHERE id > ? ORDER BY id LIMIT ?");  // LIMIT -1: all
  st.bind(1, after_id).bind(2, limit);
  while (st.step()) {
    out.push_back({{"id", st.get_int(0)},
                   {"name", st.get_text(1)},
                   {"created_at", st.get_double(2)},
                   {"finished_at", opt_json(st.get_opt_double(3))}});
  }
  if (out.empty()) return out;
  // Counts and build ids of just this page's matrices, in two grouped queries over the id range
  // (the counts from the jobs_states index alone, never the jobs' rows).
  const int64_t first = out.front()["id"].get<int64_t>(), last = out.back()["id"].get<int64_t>();
  std::map<int64_t, json> counts;
  Statement c = conn_.prepare(
      "SELECT matrix_id, status, COUNT(*) FROM jobs WHERE matrix_id BETWEEN ? AND ? GROUP BY matrix_id, status");
  c.bind(1, first).bind(2, last);
  while (c.step()) counts[c.get_int(0)][c.get_text(1)] = c.get_int(2);
  std::map<int64_t, json> builds;
  Statement b = conn_.prepare(
      "SELECT DISTINCT j.matrix_id, a.build_id FROM jobs j JOIN attempts a ON a.job_id = j.id "
      "WHERE j.matrix_id BETWEEN ? AND ? AND a.build_id != '' ORDER BY a.build_id");
  b.bind(1, first).bind(2, last);
  while (b.step()) builds[b.get_int(0)].push_back(b.get_text(1));
  for (json& matrix : out) {
    const int64_t id = matrix["id"].get<int64_t>();
    json matrix_counts = json::object();
    int64_t total = 0;
    for (const char* status : kJobStatuses) {
      int64_t count = counts[id].value(status, int64_t{0});
      matrix_counts[status] = count;
      total += count;
    }
    matrix["counts"] = matrix_counts;
    matrix["total"] = total;
    matrix["build_ids"] = builds.count(id) ? builds[id] : json::array();
  }
  return out;
}

std::optional<json> Store::matrix_detail(int64_t matrix_id) {
  auto summary = matrix_summary(matrix_id);
  if (!summary) return std::nullopt;
  json matrix = *summary;
  Statement st = conn_.prepare("SELECT source, expanded, warnings FROM matrices WHERE id = ?");
  st.bind(1, matrix_id);
  st.step();
  matrix["yaml"] = st.get_text(0);
  matrix["expanded"] = json::parse(st.get_text(1));
  matrix["warnings"] = json::parse(st.get_text(2));
  return json{{"matrix", matrix}, {"jobs", list_jobs(matrix_id, "")}};
}

std::optional<json> Store::matrix_expanded(int64_t matrix_id) {
  Statement st = conn_.prepare("SELECT expanded FROM matrices WHERE id = ?");
  st.bind(1, matrix_id);
  if (!st.step()) return std::nullopt;
  return json::parse(st.get_text(0));
}

std::optional<int64_t> Store::matrix_of_job(int64_t job_id) {
  Statement st = conn_.prepare("SELECT matrix_id FROM jobs WHERE id = ?");
  st.bind(1, job_id);
  if (!st.step()) return std::nullopt;
  return st.get_int(0);
}

json Store::matrix_job_specs(int64_t matrix_id) {
  json jobs = json::array();
  Statement st = conn_.prepare("SELECT id, spec, params FROM jobs WHERE matrix_id = ? ORDER BY id");
  st.bind(1, matrix_id);
  while (st.step()) {
    jobs.push_back({{"id", st.get_int(0)}, {"spec", json::parse(st.get_text(1))}, {"params", json::parse(st.get_text(2))}});
  }
  return jobs;
}

std::vector<JobState> Store::matrix_job_states(int64_t matrix_id) {
  // The result's numbers come out of SQLite's JSON functions: parsing 1,000 result texts into
  // nlohmann objects cost more than the query. A value that is not a number reads as NULL.
  auto number = [](const char* key) {
    return std::string("CASE WHEN json_type(r.result, '$.") + key + "') IN ('integer', 'real') THEN json_extract(r.result, '$." +
           key + "') END";
  };
  Statement st = conn_.prepare(
      "SELECT j.id, j.status, j.reason, " + number("final_val_loss") + ", " + number("best_val_loss") + ", " +
      number("tokens_per_s") + " FROM jobs j LEFT JOIN results r ON r.job_id = COALESCE(j.reused_from, j.id) "
      "WHERE j.matrix_id = ? ORDER BY j.id");
  st.bind(1, matrix_id);
  std::vector<JobState> jobs;
  while (st.step()) {
    jobs.push_back({st.get_int(0), st.get_text(1), st.get_text(2), st.get_opt_double(3), st.get_opt_double(4),
                    st.get_opt_double(5)});
  }
  return jobs;
}

std::map<int64_t, std::map<std::string, double>> Store::matrix_last_values(int64_t matrix_id, const std::string& prefix) {
  // A name range instead of substr(), so the primary key (job_id, name) narrows the scan; "prefix"
  // up to "prefix" with its last character incremented ("alpha/" .. "alpha0").
  std::string end = prefix;
  end.back() = static_cast<char>(end.back() + 1);
  Statement st = conn_.prepare(
      "SELECT j.id, l.name, l.value FROM jobs j JOIN last_metrics l ON l.job_id = COALESCE(j.reused_from, j.id) "
      "WHERE j.matrix_id = ? AND l.name >= ? AND l.name < ?");
  st.bind(1, matrix_id).bind(2, prefix).bind(3, end);
  std::map<int64_t, std::map<std::string, double>> out;
  while (st.step()) out[st.get_int(0)][st.get_text(1).substr(prefix.size())] = st.get_double(2);
  return out;
}

json Store::metrics(int64_t job_id, const std::vector<std::string>& names, int max_points, int64_t after) {
  // A reused job shows the curves of the run whose result it reuses.
  Statement source = conn_.prepare("SELECT COALESCE(reused_from, id) FROM jobs WHERE id = ?");
  source.bind(1, job_id);
  int64_t series_job = source.step() ? source.get_int(0) : job_id;

  json all_names = json::array();
  Statement list = conn_.prepare("SELECT DISTINCT name FROM metrics WHERE job_id = ? ORDER BY name");
  list.bind(1, series_job);
  while (list.step()) all_names.push_back(list.get_text(0));

  std::vector<std::string> wanted = names;
  if (wanted.empty()) wanted = all_names.get<std::vector<std::string>>();
  json series = json::object();
  Statement st = conn_.prepare("SELECT iter, value FROM metrics WHERE job_id = ? AND name = ? AND iter > ? ORDER BY iter");
  for (const std::string& name : wanted) {
    std::vector<std::pair<int64_t, double>> points;
    st.bind(1, series_job).bind(2, name).bind(3, after);
    while (st.step()) points.emplace_back(st.get_int(0), st.get_double(1));
    st.reset();
    series[name] = downsample(points, max_points);
  }
  return {{"series", series}, {"names", all_names}};
}

json Store::job_counts_by_status() {
  json out = json::object();
  for (const char* status : kJobStatuses) out[status] = 0;
  Statement st = conn_.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status");
  while (st.step()) out[st.get_text(0)] = st.get_int(1);
  return out;
}

json Store::attempt_counts_by_status() {
  json out = json::object();
  Statement st = conn_.prepare("SELECT status, COUNT(*) FROM attempts GROUP BY status");
  while (st.step()) out[st.get_text(0)] = st.get_int(1);
  return out;
}

int64_t Store::event_count(bool applied) {
  Statement st = conn_.prepare("SELECT COUNT(*) FROM events WHERE applied = ?");
  st.bind(1, applied ? 1 : 0);
  st.step();
  return st.get_int(0);
}

}  // namespace ratio::db
