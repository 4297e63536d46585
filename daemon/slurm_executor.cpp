#include "daemon/slurm_executor.h"

#include <signal.h>

#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "daemon/process.h"

namespace ratio::daemon {

namespace {

// --slurm-gres for a job of `gpus` ranks: the GPU count of a "gpu[:type]:K" request becomes `gpus`
// (the worker starts its ranks itself, one GPU each); any other request is passed as it is.
std::string gres_for(const std::string& gres, int gpus) {
  if (gpus <= 1 || gres.rfind("gpu", 0) != 0) return gres;
  const size_t colon = gres.rfind(':');
  const bool counted = colon != std::string::npos && colon + 1 < gres.size() &&
                       gres.find_first_not_of("0123456789", colon + 1) == std::string::npos;
  return (counted ? gres.substr(0, colon) : gres) + ":" + std::to_string(gpus);
}

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r')) text.pop_back();
  return text;
}

std::string join(const std::vector<std::string>& parts, char sep) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : std::string(1, sep)) + p;
  return out;
}

// "Key=value" of `scontrol show job -o`'s one line ("" when absent).
std::string field(const std::string& line, const std::string& key) {
  std::istringstream words(line);
  for (std::string word; words >> word;) {
    if (word.rfind(key + "=", 0) == 0) return word.substr(key.size() + 1);
  }
  return "";
}

// Waiting in the queue (no worker yet) versus started; anything else has ended.
bool is_queued(const std::string& state) { return state == "PENDING" || state == "REQUEUED" || state == "RESV_DEL_HOLD"; }
bool is_started(const std::string& state) {
  return state == "RUNNING" || state == "CONFIGURING" || state == "COMPLETING" || state == "SUSPENDED" ||
         state == "STOPPED" || state == "SIGNALING" || state == "STAGE_OUT" || state == "RESIZING";
}

}  // namespace

std::string slurm_job_name(int64_t job_id, int n) { return "ratio-" + std::to_string(job_id) + "-" + std::to_string(n); }

std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

db::AttemptEnd slurm_end(const std::string& state, const std::string& exit_code, const std::string& reason) {
  using db::Retry;
  const std::string why = reason.empty() || reason == "None" ? "" : " (" + reason + ")";
  // ExitCode is "code:signal" of the batch script, which exec'ed the worker.
  int code = 0, sig = 0;
  if (sscanf(exit_code.c_str(), "%d:%d", &code, &sig) != 2) code = sig = 0;
  if (state == "COMPLETED" || state == "FAILED") return retry_policy(sig ? ExitStatus{true, sig} : ExitStatus{false, code});
  if (state == "OUT_OF_MEMORY") return {"failed", "out of memory (SLURM OUT_OF_MEMORY)" + why, std::nullopt, Retry::kNever};
  // Not the job's fault: preemption never uses up an attempt.
  if (state == "PREEMPTED") return {"interrupted", "preempted by SLURM" + why, std::nullopt, Retry::kAlways};
  // The worker checkpointed on the TERM that --signal=B:TERM@120 sent; a limit too short for any
  // progress still stops after the job's attempts.
  if (state == "TIMEOUT") return {"interrupted", "SLURM time limit reached" + why, std::nullopt, Retry::kIfAttemptsLeft};
  if (state == "NODE_FAIL") return {"lost", "SLURM node failure" + why, std::nullopt, Retry::kIfAttemptsLeft};
  if (state == "CANCELLED") {
    return {"lost", "cancelled in SLURM outside ratiod (scancel)" + why, std::nullopt, Retry::kIfAttemptsLeft};
  }
  return {"lost", "SLURM ended the job " + state + why, std::nullopt, Retry::kIfAttemptsLeft};
}

std::vector<std::pair<std::string, std::string>> SlurmExecutor::nodes() {
  CommandResult r = run_command({"sinfo", "-h", "-N", "-o", "%N %o"});
  if (r.exit.signaled || r.exit.code != 0) {
    throw std::runtime_error("cannot reach SLURM (sinfo: " + trim(r.err + r.out) +
                             "); is slurmctld running and SLURM_CONF right?");
  }
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream lines(r.out);
  for (std::string name, addr; lines >> name >> addr;) out.emplace_back(name, addr);
  return out;
}

Placements SlurmExecutor::place(const std::vector<std::string>&, const std::vector<WaitingJob>& queue) const {
  Placements out;
  for (const WaitingJob& job : queue) out.start.push_back({job.job_id, "slurm"});
  return out;
}

Handle SlurmExecutor::start(const Launch& launch) {
  // The batch script execs the worker, so SLURM's signals and exit code are the worker's own.
  const std::string script = launch.job_dir + "/attempt-" + std::to_string(launch.n) + ".sbatch";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\n# ratiod: attempt " << launch.n << " of job " << launch.job_id << "\nexec";
    for (const std::string& arg : launch.argv) out << " " << shell_quote(arg);
    out << " --max-threads \"${SLURM_CPUS_ON_NODE:-1}\"\n";
    if (!out) throw std::runtime_error("cannot write " + script);
  }
  std::vector<std::string> argv = {"sbatch", "--parsable", "--no-requeue",
                                   "--job-name=" + slurm_job_name(launch.job_id, launch.n),
                                   "--output=" + launch.log_path, "--open-mode=append", "--chdir=" + launch.job_dir,
                                   // TERM to the batch shell (the worker) 120 s before the limit: it checkpoints.
                                   "--signal=B:TERM@120"};
  if (!config_.partition.empty()) argv.push_back("--partition=" + config_.partition);
  if (!config_.gres.empty()) argv.push_back("--gres=" + gres_for(config_.gres, launch.gpus));
  if (!config_.time.empty()) argv.push_back("--time=" + config_.time);
  argv.insert(argv.end(), config_.extra.begin(), config_.extra.end());
  argv.push_back(script);
  CommandResult r = run_command(argv);
  std::string id = trim(r.out);
  id = id.substr(0, id.find(';'));  // "id;cluster" on federated clusters
  if (r.exit.signaled || r.exit.code != 0 || id.empty()) {
    throw Refused("sbatch refused the job: " + trim(r.err.empty() ? r.out : r.err));
  }
  last_state_[id] = "PENDING";
  return {std::nullopt, id};
}

void SlurmExecutor::signal(const Handle& handle, int sig) {
  if (handle.slurm_job_id.empty()) return;
  std::vector<std::string> argv = {"scancel"};
  // A job still waiting has no worker to checkpoint: it is simply taken out of the queue.
  bool waiting = is_queued(last_state_[handle.slurm_job_id]);
  if (sig == SIGTERM && !waiting) argv.insert(argv.end(), {"--full", "--signal=TERM"});
  argv.push_back(handle.slurm_job_id);
  CommandResult r = run_command(argv);
  if (r.exit.signaled || r.exit.code != 0) spdlog::warn("scancel {}: {}", handle.slurm_job_id, trim(r.err));
}

std::optional<std::map<std::string, std::pair<std::string, std::string>>> SlurmExecutor::squeue(
    const std::vector<std::string>& ids) {
  CommandResult r = run_command({"squeue", "-h", "-o", "%i|%T|%r", "-j", join(ids, ',')});
  std::map<std::string, std::pair<std::string, std::string>> out;
  if (r.exit.signaled || r.exit.code != 0) {
    // Every id unknown to slurmctld: an empty queue, not an error.
    if (r.err.find("Invalid job id") != std::string::npos) return out;
    spdlog::warn("squeue: {}", trim(r.err));
    return std::nullopt;
  }
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    size_t a = line.find('|'), b = line.find('|', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    out[line.substr(0, a)] = {line.substr(a + 1, b - a - 1), line.substr(b + 1)};
  }
  return out;
}

std::optional<Observation> SlurmExecutor::ended(const std::string& id) {
  CommandResult r = run_command({"scontrol", "show", "job", "-o", id});
  if (r.exit.signaled || r.exit.code != 0) {
    if (r.err.find("Invalid job id") != std::string::npos) return Observation{Phase::kEnded, "", "", std::nullopt};
    spdlog::warn("scontrol show job {}: {}", id, trim(r.err));
    return std::nullopt;
  }
  const std::string state = field(r.out, "JobState"), reason = field(r.out, "Reason");
  if (is_queued(state)) return Observation{Phase::kQueued, state, reason, std::nullopt};
  if (is_started(state)) return Observation{Phase::kRunning, state, "", std::nullopt};
  return Observation{Phase::kEnded, state, reason, slurm_end(state, field(r.out, "ExitCode"), reason)};
}

std::map<int64_t, Observation> SlurmExecutor::poll(const std::map<int64_t, Handle>& live) {
  std::map<int64_t, Observation> news;
  double now = db::now_seconds();
  if (live.empty() || now - last_poll_ < config_.poll_s) return news;
  last_poll_ = now;
  std::vector<std::string> ids;
  for (const auto& [attempt_id, handle] : live) {
    if (!handle.slurm_job_id.empty()) ids.push_back(handle.slurm_job_id);
  }
  auto queue = squeue(ids);
  if (!queue) return news;
  for (const auto& [attempt_id, handle] : live) {
    const std::string& id = handle.slurm_job_id;
    if (id.empty()) continue;
    auto it = queue->find(id);
    std::optional<Observation> seen;
    if (it != queue->end() && is_queued(it->second.first)) {
      seen = Observation{Phase::kQueued, it->second.first, it->second.second, std::nullopt};
    } else if (it != queue->end() && is_started(it->second.first)) {
      seen = Observation{Phase::kRunning, it->second.first, "", std::nullopt};
    } else {
      seen = ended(id);  // left the queue: scontrol still has its end state (for MinJobAge)
    }
    if (!seen) continue;
    last_state_[id] = seen->state;
    if (seen->phase == Phase::kEnded) last_state_.erase(id);
    news[attempt_id] = *seen;
  }
  return news;
}

std::optional<Handle> SlurmExecutor::reattach(const db::RunningAttempt& attempt) {
  if (!attempt.slurm_job_id.empty()) return Handle{std::nullopt, attempt.slurm_job_id};
  // The previous daemon died between sbatch and storing the id: find the job by its name.
  CommandResult r = run_command({"squeue", "-h", "-o", "%i", "--name=" + slurm_job_name(attempt.job_id, attempt.n)});
  std::string id = trim(r.out);
  if (r.exit.signaled || r.exit.code != 0 || id.empty()) return std::nullopt;
  return Handle{std::nullopt, id.substr(0, id.find('\n'))};
}

}  // namespace ratio::daemon
