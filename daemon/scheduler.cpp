#include "daemon/scheduler.h"

#include <signal.h>

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

// A log line that is a worker event (docs/job-spec.md); anything else is plain log output.
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

Scheduler::Scheduler(SchedulerConfig config, Executor& executor, WriteQueue& writer, EventBus& bus)
    : config_(std::move(config)), executor_(executor), writer_(writer), bus_(bus) {}

Scheduler::~Scheduler() {
  if (thread_.joinable()) shutdown();
}

void Scheduler::recover() {
  auto running = writer_.run([](db::Store& s) { return s.running_attempts(); });
  int reattached = 0;
  for (const db::RunningAttempt& a : running) {
    auto live = std::make_shared<Live>();
    live->job_id = a.job_id;
    live->attempt_id = a.attempt_id;
    live->slot = a.slot;
    live->log_path = a.log_path;
    if (auto handle = executor_.reattach(a)) {
      // Its worker runs on (or waits in SLURM): follow it; the log is read again from the start,
      // and events already stored are stored once.
      spdlog::info("attempt {} of job {}: re-attached to its running worker", a.attempt_id, a.job_id);
      live->handle = *handle;
      follow(live);
      ++reattached;
      continue;
    }
    // Gone: what it wrote to its log while no daemon listened may hold its result.
    read_log(*live);
    end_attempt(a.attempt_id, a.job_id,
                outcome_from_reports(a.attempt_id, "the daemon restarted while this attempt ran and its worker is gone"));
  }
  if (!running.empty()) {
    spdlog::info("recovered {} attempt(s) of a previous daemon: {} re-attached, {} ended", running.size(), reattached,
                 running.size() - reattached);
  }
}

void Scheduler::start() { thread_ = std::thread([this] { loop(); }); }

void Scheduler::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (!executor_.keeps_running_on_shutdown()) {
      for (auto& [id, live] : live_) stop_live(*live, kShutdownEnd, SIGTERM);
    }
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
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
      // Attempts that outlive the daemon are left to the next one; local ones are waited for.
      if (stopping_ && (live_.empty() || executor_.keeps_running_on_shutdown())) return;
    }
    try {
      if (!draining_) dispatch();
      send_signals();
      observe();
      check_liveness();
      send_signals();
    } catch (const std::exception& e) {
      spdlog::error("scheduler: {}", e.what());
    }
    if (config_.on_pass) config_.on_pass();
  }
}

// Queued jobs to the executor's places (locally daemon/gpu_allocation.h's policy: a job of train.gpus
// N takes N slots). Only as much of the queue as the executor has room for is read.
void Scheduler::dispatch() {
  std::vector<std::string> busy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    for (const auto& [id, live] : live_) busy.push_back(live->slot);
  }
  const int room = executor_.room(busy);
  if (room == 0) return;
  const auto queued = writer_.run([&](db::Store& s) { return s.queued_jobs(room); });
  if (queued.empty()) return;
  std::vector<WaitingJob> waiting;
  for (const db::QueuedJob& q : queued) waiting.push_back({q.job_id, q.gpus});
  const Placements plan = executor_.place(busy, waiting);
  const std::string jobs_dir = config_.workdir + "/jobs";
  for (const Placement& place : plan.start) {
    const std::string token = new_token();
    auto claim = writer_.run([&](db::Store& s) { return s.claim_next_job(place.slot, token, jobs_dir, place.job_id); });
    if (claim) launch(place.slot, *claim, token);  // else cancelled a moment ago
  }
  for (const auto& [job_id, why] : plan.never) {
    auto claim = writer_.run([&](db::Store& s) { return s.claim_next_job("none", new_token(), jobs_dir, job_id); });
    if (claim) end_attempt(claim->attempt_id, job_id, {"failed", why, std::nullopt, db::Retry::kNever});
  }
}

void Scheduler::launch(const std::string& slot, const db::ClaimedAttempt& claim, const std::string& token) {
  fs::path dir = fs::path(config_.workdir) / "jobs" / std::to_string(claim.job_id);
  Launch launch{claim.job_id, claim.n, slot, claim.spec.at("train").value("gpus", 1), token, dir.string(), claim.log_path, {}};
  launch.argv = {config_.worker_path, "run",   "--job",  (dir / "job.json").string(),
                 "--workdir",         dir.string(), "--report", config_.report_url,
                 "--token",           token};
  if (!config_.data_dir.empty()) launch.argv.insert(launch.argv.end(), {"--data-dir", config_.data_dir});
  if (claim.resume) launch.argv.push_back("--resume");
  // Four beats per lease: a live worker never loses its lease to one late beat.
  launch.argv.insert(launch.argv.end(), {"--heartbeat-s", std::to_string(std::max(0.5, config_.lease_s / 4))});
  Handle handle;
  try {
    fs::create_directories(dir);
    std::ofstream(dir / "job.json") << claim.spec.dump(2) << "\n";
    handle = executor_.start(launch);
  } catch (const Refused& e) {
    spdlog::error("job {}: {}", claim.job_id, e.what());
    end_attempt(claim.attempt_id, claim.job_id, {"failed", e.what(), std::nullopt, db::Retry::kNever});
    return;
  } catch (const std::exception& e) {
    spdlog::error("job {}: {}", claim.job_id, e.what());
    end_attempt(claim.attempt_id, claim.job_id,
                {"failed", std::string("the daemon could not start the worker: ") + e.what(), std::nullopt,
                 db::Retry::kNever});
    return;
  }
  writer_.run([&](db::Store& s) {
    if (handle.pid) s.set_attempt_pid(claim.attempt_id, *handle.pid);
    if (!handle.slurm_job_id.empty()) s.set_attempt_slurm_job(claim.attempt_id, handle.slurm_job_id);
    return 0;
  });
  spdlog::info("job {} attempt {} started on {} ({}{})", claim.job_id, claim.n, slot,
               handle.pid ? "pid " + std::to_string(*handle.pid) : "SLURM job " + handle.slurm_job_id,
               claim.resume ? ", resuming" : "");
  auto live = std::make_shared<Live>();
  live->job_id = claim.job_id;
  live->attempt_id = claim.attempt_id;
  live->slot = slot;
  live->log_path = claim.log_path;
  live->handle = handle;
  follow(live);
  publish_job(claim.job_id);
}

void Scheduler::follow(const std::shared_ptr<Live>& live) {
  live->last_event_at = live->progress_at = db::now_seconds();
  std::lock_guard<std::mutex> lock(mu_);
  live_[live->attempt_id] = live;
  // Shutdown began while this worker was starting: it checkpoints and goes back to the queue too.
  if (stopping_ && !executor_.keeps_running_on_shutdown()) stop_live(*live, kShutdownEnd, SIGTERM);
}

void Scheduler::observe() {
  std::map<int64_t, Handle> handles;
  std::vector<std::shared_ptr<Live>> lives;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, live] : live_) {
      handles[id] = live->handle;
      lives.push_back(live);
    }
  }
  std::map<int64_t, Observation> news = executor_.poll(handles);
  for (const std::shared_ptr<Live>& live : lives) {
    auto it = news.find(live->attempt_id);
    if (it == news.end()) {
      read_log(*live);
      continue;
    }
    const Observation& seen = it->second;
    if (seen.phase == Phase::kEnded) {
      finish(live, seen);
      continue;
    }
    bool changed = false;
    if (!live->handle.slurm_job_id.empty() && seen.state != live->state) {
      changed = writer_.run([&](db::Store& s) { return s.set_attempt_slurm_state(live->attempt_id, seen.state, seen.reason); });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      live->state = seen.state;
      if (seen.phase == Phase::kRunning && !live->started) {
        live->started = true;  // the lease and the watchdog start now, not at submission
        live->last_event_at = live->progress_at = db::now_seconds();
      }
    }
    if (changed) publish_job(live->job_id);
    read_log(*live);
  }
}

void Scheduler::read_log(Live& live) {
  std::ifstream in(live.log_path, std::ios::binary);
  if (!in) return;  // not created yet (a SLURM job that has not started)
  in.seekg(live.log_offset);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t end = text.rfind('\n');
  if (end == std::string::npos) return;  // no complete line yet
  json events = json::array();
  size_t start = 0;
  for (size_t newline; start <= end && (newline = text.find('\n', start)) != std::string::npos; start = newline + 1) {
    if (auto e = parse_event(text.substr(start, newline - start))) events.push_back(std::move(*e));
  }
  live.log_offset += static_cast<int64_t>(end + 1);
  if (events.empty()) return;
  try {
    ingest(live.attempt_id, events);
  } catch (const std::exception& e) {
    spdlog::error("job {}: ingesting events of {}: {}", live.job_id, live.log_path, e.what());
  }
}

db::AttemptEnd Scheduler::outcome_from_reports(int64_t attempt_id, const std::string& why_unknown) {
  auto code = writer_.run([&](db::Store& s) { return s.reported_exit_code(attempt_id); });
  if (code) return retry_policy({false, static_cast<int>(*code)});
  return {"lost", why_unknown, std::nullopt, db::Retry::kIfAttemptsLeft};
}

void Scheduler::finish(const std::shared_ptr<Live>& live, const Observation& seen) {
  read_log(*live);  // its last lines: a `finished` event decides success
  if (!live->handle.slurm_job_id.empty() && !seen.state.empty()) {  // SLURM's end state, kept with the attempt
    writer_.run([&](db::Store& s) { return s.set_attempt_slurm_state(live->attempt_id, seen.state, seen.reason); });
  }
  db::AttemptEnd end = seen.end ? *seen.end
                           : outcome_from_reports(live->attempt_id,
                                                  "the worker is gone and reported no outcome (its exit status was "
                                                  "not seen: adopted after a restart, or SLURM no longer knows the job)");
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The daemon's own reason wins (cancel, watchdog, shutdown), unless the worker finished anyway.
    if (live->override_end && end.status != "succeeded") {
      db::AttemptEnd why = *live->override_end;
      why.exit_code = end.exit_code;
      end = why;
    }
    live_.erase(live->attempt_id);
  }
  end_attempt(live->attempt_id, live->job_id, end);
  spdlog::info("job {}: attempt ended {} {}", live->job_id, end.status, end.reason);
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
    auto it = live_.find(attempt_id);
    if (it != live_.end()) {
      Live& live = *it->second;
      live.last_event_at = now;
      if (outcome.last_iter > live.progress_iter) {
        live.progress_iter = outcome.last_iter;
        live.progress_at = now;
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
  if (sig == SIGKILL || live.signal_due != SIGKILL) live.signal_due = sig;
}

void Scheduler::send_signals() {
  std::vector<std::pair<Handle, int>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, live] : live_) {
      if (!live->signal_due) continue;
      if (live->signal_due == SIGTERM) {
        if (live->term_sent_at > 0) {  // asked once already: the grace period runs
          live->signal_due = 0;
          continue;
        }
        live->term_sent_at = db::now_seconds();
      }
      due.emplace_back(live->handle, live->signal_due);
      live->signal_due = 0;
    }
  }
  for (const auto& [handle, sig] : due) executor_.signal(handle, sig);
}

void Scheduler::check_liveness() {
  double now = db::now_seconds();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, live] : live_) {
    if (live->term_sent_at > 0 && now - live->term_sent_at > config_.grace_s) {
      spdlog::warn("job {}: no exit {}s after SIGTERM; sending SIGKILL", live->job_id, config_.grace_s);
      live->signal_due = SIGKILL;
      live->term_sent_at = now;  // again after another grace period if even that does not end it
      continue;
    }
    if (live->override_end || !live->started) continue;  // being stopped, or waiting in SLURM's queue
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(live_.begin(), live_.end(), [&](const auto& entry) { return entry.second->job_id == job_id; });
    if (it == live_.end()) return false;
    stop_live(*it->second, end, SIGTERM);
  }
  wake();  // the loop thread sends it
  return true;
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
  for (const std::string& slot : executor_.slot_names()) {
    size_t before = out.size();
    for (const auto& [id, live] : live_) {
      if (live->slot == slot) out.push_back({{"name", slot}, {"job", live->job_id}});
    }
    if (out.size() == before) out.push_back({{"name", slot}, {"job", nullptr}});
  }
  return out;
}

}  // namespace ratio::daemon
