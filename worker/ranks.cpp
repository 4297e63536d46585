#include "worker/ranks.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "worker/trainer.h"

namespace ratio::worker {

namespace {

// fork + exec of argv with the rank's process set up between them (async-signal-safe calls only:
// rank 0 has threads). SIGTERM/SIGINT are ignored: the daemon signals the whole process group, and
// a stop is rank 0's decision alone (it checkpoints, then ends the others), so ranks never stop at
// different iterations.
pid_t start_rank(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("cannot start a rank: fork: ") + std::strerror(errno));
  if (pid > 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(kExitCrashed);  // rank 0 died before the line above
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGTERM, &ignore, nullptr);
  sigaction(SIGINT, &ignore, nullptr);
  dup2(STDERR_FILENO, STDOUT_FILENO);
  execv(args[0], args.data());
  _exit(127);
}

RankFailure describe(int rank, int status) {
  const std::string who = "rank " + std::to_string(rank);
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return {kExitCrashed, who + " died: killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")"};
  }
  const int code = WEXITSTATUS(status);
  // Its own code where it names a cause the retry policy knows (bad spec, data, out of memory).
  const bool known = code == kExitInvalid || code == kExitDataError || code == kExitOutOfMemory;
  return {known ? code : kExitCrashed,
          who + " exited with code " + std::to_string(code) + " (its reason is in the log above)"};
}

}  // namespace

RankProcesses::RankProcesses(int world, const std::function<std::vector<std::string>(int rank)>& argv_of,
                             std::function<void(const RankFailure&)> on_failure)
    : on_failure_(std::move(on_failure)) {
  try {
    for (int rank = 1; rank < world; ++rank) pids_.push_back(start_rank(argv_of(rank)));
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    kill_running();
    throw;
  }
  watcher_ = std::thread([this] { watch(); });
}

RankProcesses::~RankProcesses() { stop_watching(); }

void RankProcesses::stop_watching() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  std::lock_guard<std::mutex> lock(mu_);
  kill_running();
}

void RankProcesses::kill_running() {
  for (pid_t& pid : pids_) {
    if (pid < 0) continue;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
}

// Polls the ranks (waitpid on each, 20 times a second) until rank 0 ends or one fails.
void RankProcesses::watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_ && !failure_) {
    for (size_t i = 0; i < pids_.size() && !failure_; ++i) {
      int status = 0;
      if (pids_[i] < 0 || waitpid(pids_[i], &status, WNOHANG) != pids_[i]) continue;
      pids_[i] = -1;
      if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) failure_ = describe(static_cast<int>(i) + 1, status);
    }
    if (failure_) {
      kill_running();
      cv_.notify_all();
      const RankFailure failure = *failure_;
      lock.unlock();
      on_failure_(failure);
      return;
    }
    cv_.notify_all();  // join() waits for reaped ranks
    cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

std::optional<RankFailure> RankProcesses::failure(double wait_s) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::duration<double>(wait_s), [this] { return failure_.has_value(); });
  return failure_;
}

bool RankProcesses::join(double wait_s) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::duration<double>(wait_s), [this] {
    for (pid_t pid : pids_)
      if (pid >= 0) return false;
    return true;
  });
}

}  // namespace ratio::worker
