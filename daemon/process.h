#pragma once
// Worker processes: spawn in a new process group with stdout/stderr on pipes, copy both to the
// attempt's log while handing complete stdout lines to a callback, wait for the exit status, and
// signal the whole group (a worker's data loaders die with it).

#include <sys/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace ratio::daemon {

struct Spawned {
  pid_t pid = -1;
  int stdout_fd = -1;  // read ends, owned by the caller
  int stderr_fd = -1;
};

// posix_spawn of argv[0] with extra environment variables, in its own process group, with every
// other descriptor of the daemon closed. Throws std::runtime_error naming the executable.
Spawned spawn_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env);

// Copies both pipes to log_fd until both reach end of file, calling on_stdout_lines with each
// batch of complete stdout lines (one read's worth). Closes the pipe descriptors.
void pump_output(int stdout_fd, int stderr_fd, int log_fd,
                 const std::function<void(const std::vector<std::string>&)>& on_stdout_lines);

struct ExitStatus {
  bool signaled = false;
  int code = 0;  // exit code, or the signal number when signaled
};
ExitStatus wait_exit(pid_t pid);

// Sends sig to the process group led by pid (ignores a group that no longer exists).
void signal_group(pid_t pid, int sig);

// True when pid is alive and its command line contains `marker` (the attempt token), so a pid
// reused by an unrelated process after a restart is never mistaken for our worker.
bool process_alive_with(pid_t pid, const std::string& marker);

}  // namespace ratio::daemon
