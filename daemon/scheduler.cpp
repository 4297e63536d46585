#include "daemon/scheduler.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <spdlog/spdlog.h>

#include "daemon/seeding.h"

namespace ratio::daemon {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kTickSeconds = 0.5;
const db::AttemptEnd kShutdownEnd = {"interrupted", "the daemon shut down", std::nullopt, db::Retry::kAlways};

// 128 random bits as hex: the attempt's bearer token for POST /api/report.
std::string new_token() {
  std::random_device rd;
  char hex[33];
  for (int i = 0; i < 4; ++i) snprintf(hex + 8 * i, 9, "%08x", rd());
  return hex;
}

// A stdout line that is a worker event (docs/job-spec.md); anything else is plain log output.
std::optional<json> parse_event(const std::string& line) {
  if (line.empty() || line[0] != '{') return std::nullopt;
  json e = json::parse(line, nullptr, false);
  if (e.is_discarded() || !e.is_object()) return std::nullopt;
  if (!e.contains("type") || !e["type"].is_string() || !e.contains("seq") || !e["seq"].is_number_integer()) {
    return std::nullopt;
  }
  return e;
}

void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

}  // namespace

db::AttemptEnd retry_policy(const ExitStatus& exit) {
  using db::Retry;
  if (exit.signaled) {
    return {"lost", "killed by signal " + std::to_string(exit.code) + " (" + strsignal(exit.code) + ")",
            std::nullopt, Retry::kIfAttemptsLeft};
  }
  switch (exit.code) {
    case 0: return {"succeeded", "", 0, Retry::kNever};
    case 1: return {"failed", "crashed (exit 1)", 1, Retry::kIfAttemptsLeft};
    case 2: return {"failed", "invalid spec or arguments (exit 2)", 2, Retry::kNever};
    case 3: return {"failed", "data error (exit 3)", 3, Retry::kNever};
    case 4: return {"failed", "diverged (exit 4)", 4, Retry::kNever};
    case 5: return {"failed", "out of memory (exit 5)", 5, Retry::kNever};
    case 6: return {"interrupted", "interrupted (exit 6)", 6, Retry::kIfAttemptsLeft};
    default:
      return {"failed", "unexpected exit code " + std::to_string(exit.code), exit.code, Retry::kIfAttemptsLeft};
  }
}

Scheduler::Scheduler(SchedulerConfig config, WriteQueue& writer, EventBus& bus)
    : config_(std::move(config)), writer_(writer), bus_(bus) {}

Scheduler::~Scheduler() {
  if (thread_.joinable()) shutdown();
}

void Scheduler::recover() {
  auto running = writer_.run([](db::Store& s) { return s.running_attempts(); });
  for (const db::RunningAttempt& a : running) {
    pid_t pid = a.pid ? static_cast<pid_t>(*a.pid) : -1;
    if (process_alive_with(pid, a.token)) {
      // A worker that survived its daemon: stop it so the requeued job never runs twice.
      spdlog::warn("attempt {} of job {}: worker pid {} survived the previous daemon; stopping it", a.attempt_id,
                   a.job_id, pid);
      signal_group(pid, SIGTERM);
      for (double waited = 0; waited < config_.grace_s && process_alive_with(pid, a.token); waited += 0.1) sleep_s(0.1);
      if (process_alive_with(pid, a.token)) signal_group(pid, SIGKILL);
      for (int i = 0; i < 50 && process_alive_with(pid, a.token); ++i) sleep_s(0.1);
    }
    end_attempt(a.attempt_id, a.job_id,
                {"lost", "the daemon restarted while this attempt ran", std::nullopt, db::Retry::kAlways});
  }
  if (!running.empty()) spdlog::info("recovered {} attempt(s) of a previous daemon; their jobs are requeued", running.size());
}

void Scheduler::start() { thread_ = std::thread([this] { loop(); }); }

void Scheduler::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [slot, live] : by_slot_) stop_live(*live, kShutdownEnd, SIGTERM);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return attempt_threads_ == 0; });
}

void Scheduler::set_draining(bool drain) {
  draining_ = drain;
  wake();
}

void Scheduler::wake() { cv_.notify_all(); }

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::duration<double>(kTickSeconds));
      if (stopping_ && by_slot_.empty()) return;
    }
    try {
      if (!draining_) dispatch();
      check_liveness();
    } catch (const std::exception& e) {
      spdlog::error("scheduler: {}", e.what());
    }
    if (config_.on_pass) config_.on_pass();
  }
}

void Scheduler::dispatch() {
  for (const Slot& slot : config_.slots) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ || by_slot_.count(slot.name)) continue;
    }
    std::string token = new_token();
    std::string jobs_dir = config_.workdir + "/jobs";
    auto claim = writer_.run([&](db::Store& s) { return s.claim_next_job(slot.name, token, jobs_dir); });
    if (!claim) return;  // queue empty
    launch(slot, *claim, token);
  }
}

void Scheduler::launch(const Slot& slot, const db::ClaimedAttempt& claim, const std::string& token) {
  fs::path dir = fs::path(config_.workdir) / "jobs" / std::to_string(claim.job_id);
  int log_fd = -1;
  Spawned spawned;
  try {
    fs::create_directories(dir);
    fs::path job_file = dir / "job.json";
    std::ofstream(job_file) << claim.spec.dump(2) << "\n";
    log_fd = open(claim.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) throw std::runtime_error("cannot open log " + claim.log_path + ": " + strerror(errno));
    std::vector<std::string> argv = {config_.worker_path, "run",   "--job",  job_file.string(),
                                     "--workdir",         dir.string(), "--report", config_.report_url,
                                     "--token",           token};
    if (!config_.data_dir.empty()) argv.insert(argv.end(), {"--data-dir", config_.data_dir});
    if (claim.resume) argv.push_back("--resume");
    // Four beats per lease: a live process never loses its lease to one late beat.
    argv.insert(argv.end(), {"--heartbeat-s", std::to_string(std::max(0.5, config_.lease_s / 4))});
    argv.insert(argv.end(), {"--max-threads", std::to_string(slot.threads)});
    spawned = spawn_process(argv, {{"CUDA_VISIBLE_DEVICES", slot.cuda_devices}});
  } catch (const std::exception& e) {
    if (log_fd >= 0) close(log_fd);
    spdlog::error("job {}: {}", claim.job_id, e.what());
    end_attempt(claim.attempt_id, claim.job_id,
                {"failed", std::string("the daemon could not start the worker: ") + e.what(), std::nullopt,
                 db::Retry::kNever});
    return;
  }
  writer_.run([&](db::Store& s) {
    s.set_attempt_pid(claim.attempt_id, spawned.pid);
    return 0;
  });
  spdlog::info("job {} attempt {} started on {} (pid {}{})", claim.job_id, claim.n, slot.name, spawned.pid,
               claim.resume ? ", resuming" : "");

  auto live = std::make_shared<Live>();
  live->job_id = claim.job_id;
  live->attempt_id = claim.attempt_id;
  live->slot = slot.name;
  live->pid = spawned.pid;
  live->last_event_at = live->progress_at = db::now_seconds();
  {
    std::lock_guard<std::mutex> lock(mu_);
    by_slot_[slot.name] = live;
    ++attempt_threads_;
    // Shutdown began while this worker was starting: it checkpoints and goes back to the queue too.
    if (stopping_) stop_live(*live, kShutdownEnd, SIGTERM);
  }
  publish_job(claim.job_id);
  std::thread([this, live, spawned, log_fd] { run_attempt(live, spawned, log_fd); }).detach();
}

void Scheduler::run_attempt(std::shared_ptr<Live> live, Spawned spawned, int log_fd) {
  pump_output(spawned.stdout_fd, spawned.stderr_fd, log_fd, [&](const std::vector<std::string>& lines) {
    json events = json::array();
    for (const std::string& line : lines) {
      if (auto e = parse_event(line)) events.push_back(std::move(*e));
    }
    if (events.empty()) return;
    try {
      ingest(live->attempt_id, events);
    } catch (const std::exception& e) {
      spdlog::error("job {}: ingesting stdout events: {}", live->job_id, e.what());
    }
  });
  ExitStatus exit = wait_exit(spawned.pid);
  close(log_fd);

  db::AttemptEnd end = retry_policy(exit);
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The daemon's own reason wins (cancel, watchdog, shutdown), unless the worker finished anyway.
    if (live->override_end && !(end.status == "succeeded")) {
      db::AttemptEnd why = *live->override_end;
      why.exit_code = exit.signaled ? std::nullopt : std::optional<int64_t>(exit.code);
      end = why;
    }
  }
  end_attempt(live->attempt_id, live->job_id, end);
  spdlog::info("job {}: attempt ended {} {}", live->job_id, end.status, end.reason);
  {
    std::lock_guard<std::mutex> lock(mu_);
    by_slot_.erase(live->slot);
    --attempt_threads_;
  }
  cv_.notify_all();
}

void Scheduler::end_attempt(int64_t attempt_id, int64_t job_id, const db::AttemptEnd& end) {
  const std::vector<int64_t> added = writer_.run([&](db::Store& s) {
    // One change: a `decide` matrix is never seen finished between its last seed and the next.
    db::Transaction tx(s.connection());
    s.end_attempt(attempt_id, end);
    const auto matrix_id = s.matrix_of_job(job_id);
    std::vector<int64_t> ids = matrix_id ? add_decided_seeds(s, *matrix_id) : std::vector<int64_t>{};
    tx.commit();
    return ids;
  });
  publish_job(job_id);
  if (!added.empty()) requeued(added);
}

void Scheduler::publish_job(int64_t job_id) {
  auto [job, matrix] = writer_.run([&](db::Store& s) {
    auto summary = s.job_summary(job_id);
    std::optional<json> matrix_summary;
    if (summary) matrix_summary = s.matrix_summary((*summary)["matrix_id"].get<int64_t>());
    return std::make_pair(summary, matrix_summary);
  });
  if (job) bus_.publish("job", *job);
  if (matrix) bus_.publish("matrix", *matrix);
}

db::IngestOutcome Scheduler::ingest(int64_t attempt_id, const json& events) {
  auto [outcome, summary] = writer_.run([&](db::Store& s) {
    db::IngestOutcome out = s.ingest(attempt_id, events);
    return std::make_pair(out, out.accepted > 0 && !out.stale ? s.job_summary(out.job_id) : std::nullopt);
  });
  if (outcome.stale) return outcome;
  double now = db::now_seconds();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [slot, live] : by_slot_) {
      if (live->attempt_id != attempt_id) continue;
      live->last_event_at = now;
      if (outcome.last_iter > live->progress_iter) {
        live->progress_iter = outcome.last_iter;
        live->progress_at = now;
      }
    }
  }
  if (!outcome.metric_names.empty()) {
    bus_.publish("metric", {{"job", outcome.job_id}, {"iter", outcome.last_iter}, {"names", outcome.metric_names}});
  }
  if (summary) bus_.publish("job", *summary);
  return outcome;
}

void Scheduler::stop_live(Live& live, const db::AttemptEnd& end, int sig) {
  if (!live.override_end) live.override_end = end;
  signal_group(live.pid, sig);
  if (sig == SIGTERM && live.term_sent_at == 0) live.term_sent_at = db::now_seconds();
}

void Scheduler::check_liveness() {
  double now = db::now_seconds();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [slot, live] : by_slot_) {
    if (live->term_sent_at > 0 && now - live->term_sent_at > config_.grace_s) {
      spdlog::warn("job {}: no exit {}s after SIGTERM; sending SIGKILL", live->job_id, config_.grace_s);
      signal_group(live->pid, SIGKILL);
      continue;
    }
    if (live->override_end) continue;  // already being stopped
    if (now - live->last_event_at > config_.lease_s) {
      stop_live(*live,
                {"lost", "no event for " + std::to_string(static_cast<int>(now - live->last_event_at)) +
                             " s (heartbeat lease " + std::to_string(static_cast<int>(config_.lease_s)) + " s)",
                 std::nullopt, db::Retry::kIfAttemptsLeft},
                SIGKILL);
    } else if (now - live->progress_at > config_.stall_s) {
      stop_live(*live,
                {"lost", "no progress past iteration " + std::to_string(live->progress_iter) + " for " +
                             std::to_string(static_cast<int>(now - live->progress_at)) + " s (watchdog)",
                 std::nullopt, db::Retry::kIfAttemptsLeft},
                SIGKILL);
    }
  }
}

bool Scheduler::stop_if_live(int64_t job_id, const db::AttemptEnd& end) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [slot, live] : by_slot_) {
    if (live->job_id != job_id) continue;
    stop_live(*live, end, SIGTERM);
    return true;
  }
  return false;
}

void Scheduler::requeued(const std::vector<int64_t>& job_ids) {
  for (int64_t job_id : job_ids) publish_job(job_id);
  wake();
}

std::string Scheduler::cancel(int64_t job_id) {
  const db::AttemptEnd cancelled = {"cancelled", "cancelled by request", std::nullopt, db::Retry::kNever};
  if (stop_if_live(job_id, cancelled)) return "running";
  std::string status = writer_.run([&](db::Store& s) { return s.cancel_queued_job(job_id); });
  if (status == "cancelled") publish_job(job_id);
  // Running without a live process: the dispatcher claimed it a moment ago and is starting the
  // worker. Wait for it to appear (launch registers it within milliseconds) and stop it.
  for (int i = 0; status == "running" && i < 40 && !stop_if_live(job_id, cancelled); ++i) sleep_s(0.05);
  return status;
}

json Scheduler::slots_json() {
  json out = json::array();
  std::lock_guard<std::mutex> lock(mu_);
  for (const Slot& slot : config_.slots) {
    auto it = by_slot_.find(slot.name);
    out.push_back({{"name", slot.name}, {"job", it == by_slot_.end() ? json(nullptr) : json(it->second->job_id)}});
  }
  return out;
}

}  // namespace ratio::daemon
