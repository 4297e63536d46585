#pragma once
// The processes of a data-parallel job (train.gpus = N > 1) on one machine. The worker the daemon
// starts is rank 0: it starts ranks 1..N-1 as children (the same binary, with --rank), watches them
// and is the only one that reports. Why the worker and not the daemon spawns them: the daemon keeps
// seeing one process per attempt (one pid, one process group to signal, one stdout of events, one
// exit status), and the ranks' lifetimes are tied to rank 0's by construction. No LibTorch here.
//
// A rank that dies (signal, crash, out of memory) ends the whole attempt: the watcher kills the
// other ranks and reports "rank R died: ..." through on_failure. Children get SIGKILL when rank 0
// dies (PR_SET_PDEATHSIG), so no rank outlives the attempt, even after a SIGKILL of rank 0 alone.

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace ratio::worker {

struct RankFailure {
  int exit_code;       // the worker exit code the attempt ends with (docs/job-spec.md §Exit codes)
  std::string reason;  // "rank 1 died: killed by signal 9 (Killed)"
};

class RankProcesses {
 public:
  // Starts `argv_of(rank)` for rank = 1..world-1, its stdout on this process's stderr (a rank's
  // events are rank 0's to report). on_failure runs on the watcher thread, once, after the other
  // ranks were killed. Throws std::runtime_error when a process cannot be started.
  RankProcesses(int world, const std::function<std::vector<std::string>(int rank)>& argv_of,
                std::function<void(const RankFailure&)> on_failure);
  // Kills the ranks still running (rank 0 ends: they have nothing left to do) and reaps them.
  ~RankProcesses();
  RankProcesses(const RankProcesses&) = delete;
  RankProcesses& operator=(const RankProcesses&) = delete;

  // The failure of a rank, waiting at most wait_s for one (rank 0's own error, such as a collective
  // that lost its peer, often comes a moment before the watcher sees the dead process).
  std::optional<RankFailure> failure(double wait_s);
  // Waits at most wait_s for every rank to exit by itself (after the last collective); true if they did.
  bool join(double wait_s);
  // Stops the watcher (no on_failure after this returns) and kills the ranks still running.
  void stop_watching();

 private:
  void watch();
  void kill_running();  // with mu_ held

  std::vector<pid_t> pids_;  // index rank - 1; -1 once reaped
  std::function<void(const RankFailure&)> on_failure_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<RankFailure> failure_;
  bool stopping_ = false;
  std::thread watcher_;
};

}  // namespace ratio::worker
