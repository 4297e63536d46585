#pragma once
// Processes: workers spawned in their own process group with stdout and stderr appended to the
// attempt's log (so a worker outlives a daemon killed with -9 and its log stays whole), short
// commands run to completion with their output captured (sbatch, squeue, ...), and signals to a
// whole group (a worker's data loaders die with it).

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ratio::daemon {

// posix_spawn of argv[0] with extra environment variables, in its own process group, stdin from
// /dev/null, stdout and stderr appended to output_path, every other descriptor of the daemon
// closed. Throws std::runtime_error naming the executable or the file.
pid_t spawn_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                    const std::string& output_path);

struct ExitStatus {
  bool signaled = false;
  int code = 0;  // exit code, or the signal number when signaled
};
// Blocks until the child exits.
ExitStatus wait_exit(pid_t pid);
// The child's exit status when it has exited, without blocking.
std::optional<ExitStatus> try_wait(pid_t pid);

struct CommandResult {
  ExitStatus exit;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs argv (looked up in PATH) to completion. Throws std::runtime_error when it cannot start.
CommandResult run_command(const std::vector<std::string>& argv);

// Sends sig to the process group led by pid (ignores a group that no longer exists).
void signal_group(pid_t pid, int sig);

// True when pid is alive and its command line contains `marker` (the attempt token), so a pid
// reused by an unrelated process after a restart is never mistaken for our worker.
bool process_alive_with(pid_t pid, const std::string& marker);

}  // namespace ratio::daemon
