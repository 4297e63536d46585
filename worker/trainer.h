#pragma once
// `ratio-worker run`: trains one job end to end (docs/job-spec.md). No LibTorch in this header,
// so the command-line front end compiles without it.

#include <string>

namespace ratio::worker {

// docs/job-spec.md §Exit codes.
enum ExitCode : int {
  kExitDone = 0,
  kExitCrashed = 1,
  kExitInvalid = 2,
  kExitDataError = 3,
  kExitDiverged = 4,
  kExitOutOfMemory = 5,
  kExitInterrupted = 6,
};

struct RunOptions {
  std::string job_path;
  std::string workdir;
  std::string data_dir;    // empty: default_data_dir()
  std::string report_url;  // empty: stdout only
  std::string token;
  bool resume = false;
  double heartbeat_s = 0;  // > 0: a `heartbeat` event this often, whatever training is doing
  int max_threads = 0;     // > 0: at most this many CPU threads (LibTorch's own default when lower)
  // Data parallel (train.gpus > 1, worker/ranks.h): the worker the daemon starts is rank 0 and starts
  // the others with --rank and --rendezvous (the ranks' c10d FileStore, which rank 0 names).
  int rank = 0;
  std::string rendezvous;
};

// Runs the job; every outcome ends with events on stdout (and --report), a one-line reason on
// stderr for failures, and the exit code it returns. Installs SIGTERM/SIGINT handlers.
// Ranks > 0 report nothing (rank 0 speaks for the job) and keep no checkpoint.
//
// Test hooks, read only from the environment, never from a job spec:
//   RATIO_DEBUG_NAN_AT_ITER=N multiplies the loss of iteration N by NaN (the divergence path, exit 4);
//   RATIO_DEBUG_HANG_AT_ITER=N makes a run started without --resume stop before iteration N and wait
//   for a signal while its heartbeat goes on (a hang, for ratiod's watchdog).
int run_job(const RunOptions& options);

}  // namespace ratio::worker
