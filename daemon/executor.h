#pragma once
// The executor seam: where attempts run. The scheduler decides what runs and when, reads every
// attempt's events from its log (and POST /api/report) and judges liveness; an executor only starts
// a worker command, signals it, says what became of it, and finds again what a previous daemon
// started. `local` runs workers as child processes on this machine's slots; `slurm` submits each
// attempt as one SLURM job. Nothing outside main.cpp knows which one runs.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/gpu_allocation.h"
#include "daemon/process.h"
#include "db/store.h"

namespace ratio::daemon {

// One attempt to start: `argv` is the worker's command line without the slot-specific flags the
// executor adds; stdout and stderr are appended to log_path.
struct Launch {
  int64_t job_id = 0;
  int n = 0;  // attempt number
  std::string slot;
  int gpus = 1;  // train.gpus: the worker starts this many ranks, one GPU each
  std::string token;
  std::string job_dir;
  std::string log_path;
  std::vector<std::string> argv;
};

// Where an attempt runs, stored with it so that a restarted daemon finds it again.
struct Handle {
  std::optional<int64_t> pid;  // local: the worker's process (group) id
  std::string slurm_job_id;    // slurm: the job id sbatch returned
};

enum class Phase { kQueued, kRunning, kEnded };

struct Observation {
  Phase phase = Phase::kRunning;
  std::string state;   // the executor's own word (SLURM's PENDING, RUNNING, ...); "" for local
  std::string reason;  // why it waits (SLURM's reason: Resources, Priority, ...)
  // kEnded: how it ended. nullopt when the outcome is unknown (an adopted worker that is gone, a
  // SLURM job SLURM no longer knows): the scheduler decides from what the attempt reported.
  std::optional<db::AttemptEnd> end;
};

// Which queued jobs start now, and where.
struct Placement {
  int64_t job_id = 0;
  std::string slot;  // "gpu:0", "gpu:0,1" for a 2-GPU job, "slurm"
};
struct Placements {
  std::vector<Placement> start;                        // in queue order
  std::vector<std::pair<int64_t, std::string>> never;  // jobs that can never start here, and why
};

// The executor would not take the attempt (sbatch refused it): the job fails with this message,
// never retried, since the same submission would be refused again.
struct Refused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// How a worker's exit status ends its attempt and whether the job retries (docs/job-spec.md, exit
// codes). Shared by the executors: a SLURM job's ExitCode is the worker's.
db::AttemptEnd retry_policy(const ExitStatus& exit);

class Executor {
 public:
  virtual ~Executor() = default;

  // The places attempts run in, for /api/health: local slots, or "slurm".
  virtual std::vector<std::string> slot_names() const = 0;
  // At most how many queued jobs could start now, given the slots of the attempts running (0: none),
  // so the scheduler reads no more of the queue than place() can use.
  virtual int room(const std::vector<std::string>& busy) const = 0;
  // Which of the queued jobs (claim order, each with the GPUs it needs) start now, given the slots
  // of the attempts running.
  virtual Placements place(const std::vector<std::string>& busy, const std::vector<WaitingJob>& queue) const = 0;

  // Starts the worker. Throws Refused (a clear refusal) or std::runtime_error (could not start).
  virtual Handle start(const Launch& launch) = 0;
  // SIGTERM: the worker checkpoints and exits (exit 6); SIGKILL: it ends now.
  virtual void signal(const Handle& handle, int sig) = 0;
  // News of the live attempts (by attempt id); an attempt without an entry has not changed. Called
  // every scheduler tick; the executor decides how often it really asks (SLURM must not be polled hard).
  virtual std::map<int64_t, Observation> poll(const std::map<int64_t, Handle>& live) = 0;
  // At start-up, for an attempt a previous daemon left running: its handle when it still runs or
  // waits (poll() follows it from now on), nullopt when it is gone.
  virtual std::optional<Handle> reattach(const db::RunningAttempt& attempt) = 0;
  // True when attempts run on while ratiod is down (SLURM jobs): a shutdown leaves them running and
  // the next daemon re-attaches. False: a shutdown interrupts them (they checkpoint).
  virtual bool keeps_running_on_shutdown() const = 0;
};

}  // namespace ratio::daemon
