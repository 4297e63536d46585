#pragma once
// The SLURM executor: each attempt is one `sbatch --parsable --no-requeue` job named
// ratio-<job>-<attempt>, its output appended to the attempt log, its worker reporting to ratiod over
// HTTP with the attempt token. State comes from one batched `squeue` per poll for every live attempt,
// then `scontrol show job` for those that left the queue (no accounting storage is assumed).
// docs/slurm.md has the set-up; ../shared/spec/slurm.md what other launchers learned.

#include <map>
#include <string>
#include <vector>

#include "daemon/executor.h"

namespace ratio::daemon {

struct SlurmConfig {
  std::string partition;              // --partition ("" = the cluster's default)
  std::string gres = "gpu:1";         // --gres ("" = none)
  std::string time;                   // --time ("" = the partition's default)
  std::vector<std::string> extra;     // more sbatch arguments, verbatim
  double poll_s = 2;                  // at most one squeue per this many seconds
};

// How a SLURM end state (scontrol's JobState and ExitCode "code:signal") ends the attempt.
db::AttemptEnd slurm_end(const std::string& state, const std::string& exit_code, const std::string& reason);

// "ratio-<job>-<attempt>": how a restarted daemon finds an attempt whose job id it never stored.
std::string slurm_job_name(int64_t job_id, int n);

// A shell word: 'text' with embedded quotes escaped.
std::string shell_quote(const std::string& text);

class SlurmExecutor : public Executor {
 public:
  explicit SlurmExecutor(SlurmConfig config) : config_(std::move(config)) {}

  // The cluster's nodes as sinfo lists them: name and address. Throws when SLURM cannot be reached.
  static std::vector<std::pair<std::string, std::string>> nodes();

  std::vector<std::string> slot_names() const override { return {"slurm"}; }
  // SLURM queues what it cannot run yet: every queued job is submitted, kSubmitBatch a pass, and
  // SLURM schedules them (a job of train.gpus N asks for N GPUs).
  static constexpr int kSubmitBatch = 256;
  int room(const std::vector<std::string>&) const override { return kSubmitBatch; }
  Placements place(const std::vector<std::string>& busy, const std::vector<WaitingJob>& queue) const override;
  Handle start(const Launch& launch) override;
  void signal(const Handle& handle, int sig) override;
  std::map<int64_t, Observation> poll(const std::map<int64_t, Handle>& live) override;
  std::optional<Handle> reattach(const db::RunningAttempt& attempt) override;
  bool keeps_running_on_shutdown() const override { return true; }

 private:
  // squeue's view of the given jobs: id -> {state, reason}; jobs that left the queue are absent.
  // nullopt when squeue failed (slurmctld unreachable): no news this time.
  std::optional<std::map<std::string, std::pair<std::string, std::string>>> squeue(const std::vector<std::string>& ids);
  // scontrol's end state of a job, nullopt when SLURM no longer knows it.
  std::optional<Observation> ended(const std::string& id);

  SlurmConfig config_;
  double last_poll_ = 0;
  std::map<std::string, std::string> last_state_;  // SLURM job id -> state seen last (pending jobs are cancelled outright)
};

}  // namespace ratio::daemon
