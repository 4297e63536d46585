#pragma once
// The scheduler: dispatches queued jobs (by priority) to free slots as ratio-worker processes,
// ingests their stdout events, watches liveness, and ends each attempt by its termination reason.
//
// Liveness, per attempt: (1) the process exit status; (2) a heartbeat lease: any event, from stdout
// or POST /api/report, renews it (the worker beats every lease_s / 4 with --heartbeat-s), and an
// attempt silent for lease_s is killed and marked lost; (3) a no-progress watchdog: a process that
// keeps beating but whose metric/eval iteration has not advanced for stall_s is hung: killed, lost.
// Retries follow docs/job-spec.md's exit codes (retry_policy below).

#include <sys/types.h>

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
#include "daemon/process.h"
#include "daemon/slots.h"
#include "daemon/store_access.h"
#include "db/store.h"

namespace ratio::daemon {

struct SchedulerConfig {
  std::vector<Slot> slots;
  std::string workdir;      // jobs live in workdir/jobs/<job id>
  std::string data_dir;     // --data-dir for workers ("" = the worker's default)
  std::string worker_path;
  std::string report_url;   // http://127.0.0.1:<port>/api/report
  double lease_s = 600;
  double stall_s = 3600;
  double grace_s = 30;
  // Called by the scheduler thread after each pass (dispatch + liveness, every half second): feeds
  // systemd's watchdog, so a scheduler stuck in a pass gets ratiod restarted. Empty = nothing.
  std::function<void()> on_pass;
};

// How an exit status ends the attempt and whether the job retries (docs/job-spec.md, exit codes).
db::AttemptEnd retry_policy(const ExitStatus& exit);

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, WriteQueue& writer, EventBus& bus);
  ~Scheduler();

  // At startup, before start(): attempts the database still calls running belong to a previous
  // daemon. A surviving worker is stopped (so a job never has two live attempts), every such
  // attempt is marked lost and its job requeued to resume from its checkpoint.
  void recover();
  void start();  // the dispatch thread
  // Graceful shutdown: stop dispatching, SIGTERM every worker (they checkpoint and exit 6), wait up
  // to grace_s, SIGKILL the rest; their jobs are requeued for the next daemon.
  void shutdown();

  void set_draining(bool drain);
  bool draining() const { return draining_; }

  // Cancels a job: queued -> cancelled now; running -> SIGTERM, SIGKILL after grace_s.
  // Returns the job's status afterwards, empty when unknown.
  std::string cancel(int64_t job_id);

  // Ingests events for an attempt (from stdout or POST /api/report), renews its lease and
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
    pid_t pid = -1;
    double last_event_at = 0;    // lease renewal
    int64_t progress_iter = -1;  // watchdog
    double progress_at = 0;
    double term_sent_at = 0;     // when SIGTERM went out (0 = not yet); SIGKILL follows after grace_s
    std::optional<db::AttemptEnd> override_end;  // set when the daemon ends it (cancel, watchdog, shutdown)
  };

  void loop();
  void dispatch();
  void check_liveness();
  void launch(const Slot& slot, const db::ClaimedAttempt& claim, const std::string& token);
  void run_attempt(std::shared_ptr<Live> live, Spawned spawned, int log_fd);
  void end_attempt(int64_t attempt_id, int64_t job_id, const db::AttemptEnd& end);
  void stop_live(Live& live, const db::AttemptEnd& end, int sig);  // with mu_ held
  bool stop_if_live(int64_t job_id, const db::AttemptEnd& end);  // SIGTERM to the job's worker, if one runs
  void publish_job(int64_t job_id);

  SchedulerConfig config_;
  WriteQueue& writer_;
  EventBus& bus_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Live>> by_slot_;  // busy slots
  int attempt_threads_ = 0;  // detached run_attempt threads still running
  bool stopping_ = false;
  std::atomic<bool> draining_{false};
  std::thread thread_;
};

}  // namespace ratio::daemon
