#pragma once
// The scheduler: dispatches queued jobs (by priority) to its executor (daemon/executor.h: local
// slots or a SLURM cluster), ingests every attempt's events from its log and POST /api/report,
// watches liveness, and ends each attempt by its termination reason. One thread does all of it, so
// the executor is only ever called from that thread.
//
// Liveness, per started attempt: (1) what the executor says (the process exited, the SLURM job
// ended); (2) a heartbeat lease: any event, from the log or POST /api/report, renews it (the worker
// beats every lease_s / 4 with --heartbeat-s), and an attempt silent for lease_s is killed and
// marked lost; (3) a no-progress watchdog: a worker that keeps beating but whose metric/eval
// iteration has not advanced for stall_s is hung: killed, lost. An attempt waiting in SLURM's queue
// has not started: no lease runs. Retries follow docs/job-spec.md's exit codes (retry_policy).

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/event_bus.h"
#include "daemon/executor.h"
#include "daemon/store_access.h"
#include "db/store.h"

namespace ratio::daemon {

struct SchedulerConfig {
  std::string workdir;      // jobs live in workdir/jobs/<job id>
  std::string data_dir;     // --data-dir for workers ("" = the worker's default)
  std::string worker_path;
  std::string report_url;   // where workers POST their events: http://<host>:<port>/api/report
  double lease_s = 600;
  double stall_s = 3600;
  double grace_s = 30;
  // Called by the scheduler thread after each pass (dispatch + liveness, every half second): feeds
  // systemd's watchdog, so a scheduler stuck in a pass gets ratiod restarted. Empty = nothing.
  std::function<void()> on_pass;
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, Executor& executor, WriteQueue& writer, EventBus& bus);
  ~Scheduler();

  // At startup, before start(): attempts the database still calls running belong to a previous
  // daemon. One the executor still runs (a local worker that survived a kill -9, a SLURM job) is
  // re-attached and followed on, so a job never has two live attempts; the others end by what they
  // reported (a result, a `failed` event) or as lost, their jobs requeued to resume.
  void recover();
  void start();  // the dispatch thread
  // Graceful shutdown: stop dispatching; local workers get SIGTERM (they checkpoint and exit 6),
  // SIGKILL after grace_s, and their jobs are requeued for the next daemon; SLURM jobs run on and the
  // next daemon re-attaches.
  void shutdown();

  void set_draining(bool drain);
  bool draining() const { return draining_; }

  // Cancels a job: queued -> cancelled now; running -> SIGTERM, SIGKILL after grace_s (through the
  // executor: a job still waiting in SLURM's queue is simply removed).
  // Returns the job's status afterwards, empty when unknown.
  std::string cancel(int64_t job_id);

  // Ingests events for an attempt (from its log or POST /api/report), renews its lease and
  // publishes live events. Returns the store's outcome (stale = attempt no longer current).
  db::IngestOutcome ingest(int64_t attempt_id, const nlohmann::json& events);

  // After a rerun: publishes each requeued job and its reopened matrix (finished_at back to null),
  // so live views see the requeue even while nothing can start, then wakes the dispatcher.
  void requeued(const std::vector<int64_t>& job_ids);

  // [{"name", "job"}] for /api/health.
  nlohmann::json slots_json();
  void wake();

 private:
  struct Live {
    int64_t job_id = 0;
    int64_t attempt_id = 0;
    std::string slot;
    std::string log_path;
    Handle handle;
    bool started = false;       // the executor said it runs (a SLURM job may wait in the queue first)
    std::string state;          // the executor's word for it, as stored (SLURM's PENDING, RUNNING)
    int64_t log_offset = 0;     // the log is read for events up to here
    double last_event_at = 0;   // lease renewal
    int64_t progress_iter = -1;  // watchdog
    double progress_at = 0;
    int signal_due = 0;          // a signal the loop thread sends next (SIGTERM, SIGKILL)
    double term_sent_at = 0;     // when SIGTERM went out (0 = not yet); SIGKILL follows after grace_s
    std::optional<db::AttemptEnd> override_end;  // set when the daemon ends it (cancel, watchdog, shutdown)
  };

  void loop();
  void dispatch();
  void launch(const std::string& slot, const db::ClaimedAttempt& claim, const std::string& token);
  void follow(const std::shared_ptr<Live>& live);  // registers a live attempt
  void observe();        // the executor's news, and new log lines
  void read_log(Live& live);  // ingests the events among the log's new complete lines
  void finish(const std::shared_ptr<Live>& live, const Observation& seen);  // it ended: store how
  db::AttemptEnd outcome_from_reports(int64_t attempt_id, const std::string& why_unknown);
  void check_liveness();
  void send_signals();
  void end_attempt(int64_t attempt_id, int64_t job_id, const db::AttemptEnd& end);
  void stop_live(Live& live, const db::AttemptEnd& end, int sig);  // with mu_ held
  bool stop_if_live(int64_t job_id, const db::AttemptEnd& end);  // SIGTERM to the job's worker, if one runs
  void publish_job(int64_t job_id);

  SchedulerConfig config_;
  Executor& executor_;  // called from the scheduler's thread only (and recover(), before it starts)
  WriteQueue& writer_;
  EventBus& bus_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, std::shared_ptr<Live>> live_;  // by attempt id
  bool stopping_ = false;
  std::atomic<bool> draining_{false};
  std::thread thread_;
};

}  // namespace ratio::daemon
