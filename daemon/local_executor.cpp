#include "daemon/local_executor.h"

#include <algorithm>

#include "daemon/process.h"

namespace ratio::daemon {

std::vector<std::string> LocalExecutor::slot_names() const {
  std::vector<std::string> names;
  for (const Slot& slot : slots_) names.push_back(slot.name);
  return names;
}

// taken[i]: slot i is held by a running attempt (a multi-GPU attempt holds "gpu:0,1").
std::vector<bool> LocalExecutor::taken(const std::vector<std::string>& busy) const {
  std::vector<bool> out(slots_.size(), false);
  for (const std::string& held : busy)
    for (const std::string& name : combined_slot_names(held))
      for (size_t i = 0; i < slots_.size(); ++i) out[i] = out[i] || slots_[i].name == name;
  return out;
}

int LocalExecutor::room(const std::vector<std::string>& busy) const {
  const std::vector<bool> held = taken(busy);
  return static_cast<int>(std::count(held.begin(), held.end(), false));
}

Placements LocalExecutor::place(const std::vector<std::string>& busy, const std::vector<WaitingJob>& queue) const {
  const Allocation allocation = allocate_slots(taken(busy), queue);
  Placements out;
  for (const SlotGrant& grant : allocation.start) {
    std::vector<Slot> slots;
    for (size_t i : grant.slots) slots.push_back(slots_[i]);
    out.start.push_back({grant.job_id, combine_slots(slots).name});
  }
  for (const int64_t job_id : allocation.never_fits) {
    const auto wanted = std::find_if(queue.begin(), queue.end(), [&](const WaitingJob& j) { return j.job_id == job_id; });
    out.never.emplace_back(job_id, "train.gpus is " + std::to_string(wanted->gpus) + " but this daemon has " +
                                       std::to_string(slots_.size()) + " slots (--slots); lower train.gpus or add GPUs");
  }
  return out;
}

Handle LocalExecutor::start(const Launch& launch) {
  std::vector<Slot> slots;
  for (const std::string& name : combined_slot_names(launch.slot)) {
    auto slot = std::find_if(slots_.begin(), slots_.end(), [&](const Slot& s) { return s.name == name; });
    if (slot == slots_.end()) throw std::runtime_error("no slot named " + name);
    slots.push_back(*slot);
  }
  const Slot slot = combine_slots(slots);
  std::vector<std::string> argv = launch.argv;
  argv.insert(argv.end(), {"--max-threads", std::to_string(slot.threads)});
  pid_t pid = spawn_process(argv, {{"CUDA_VISIBLE_DEVICES", slot.cuda_devices}}, launch.log_path);
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
