#include "daemon/local_executor.h"

#include <algorithm>

#include "daemon/process.h"

namespace ratio::daemon {

std::vector<std::string> LocalExecutor::slot_names() const {
  std::vector<std::string> names;
  for (const Slot& slot : slots_) names.push_back(slot.name);
  return names;
}

std::optional<std::string> LocalExecutor::free_slot(const std::vector<std::string>& busy) const {
  for (const Slot& slot : slots_) {
    if (std::find(busy.begin(), busy.end(), slot.name) == busy.end()) return slot.name;
  }
  return std::nullopt;
}

Handle LocalExecutor::start(const Launch& launch) {
  auto slot = std::find_if(slots_.begin(), slots_.end(), [&](const Slot& s) { return s.name == launch.slot; });
  if (slot == slots_.end()) throw std::runtime_error("no slot named " + launch.slot);
  std::vector<std::string> argv = launch.argv;
  argv.insert(argv.end(), {"--max-threads", std::to_string(slot->threads)});
  pid_t pid = spawn_process(argv, {{"CUDA_VISIBLE_DEVICES", slot->cuda_devices}}, launch.log_path);
  return {pid, ""};
}

void LocalExecutor::signal(const Handle& handle, int sig) {
  if (handle.pid) signal_group(static_cast<pid_t>(*handle.pid), sig);
}

std::map<int64_t, Observation> LocalExecutor::poll(const std::map<int64_t, Handle>& live) {
  std::map<int64_t, Observation> news;
  for (const auto& [attempt_id, handle] : live) {
    if (!handle.pid) continue;
    pid_t pid = static_cast<pid_t>(*handle.pid);
    auto adopted = adopted_.find(pid);
    if (adopted != adopted_.end()) {
      if (process_alive_with(pid, adopted->second)) {
        news[attempt_id] = {Phase::kRunning, "", "", std::nullopt};
      } else {
        adopted_.erase(adopted);
        news[attempt_id] = {Phase::kEnded, "", "", std::nullopt};  // its exit status went to the old daemon
      }
    } else if (auto exit = try_wait(pid)) {
      news[attempt_id] = {Phase::kEnded, "", "", retry_policy(*exit)};
    } else {
      news[attempt_id] = {Phase::kRunning, "", "", std::nullopt};
    }
  }
  return news;
}

std::optional<Handle> LocalExecutor::reattach(const db::RunningAttempt& attempt) {
  if (!attempt.pid) return std::nullopt;  // the daemon died between spawning and recording it
  pid_t pid = static_cast<pid_t>(*attempt.pid);
  if (!process_alive_with(pid, attempt.token)) return std::nullopt;
  adopted_[pid] = attempt.token;
  return Handle{attempt.pid, ""};
}

}  // namespace ratio::daemon
