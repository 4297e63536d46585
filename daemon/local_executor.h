#pragma once
// The local executor: one ratio-worker child process per slot of this machine (daemon/slots.h).
// A worker a previous daemon started (ratiod was killed with -9) is adopted: followed by its pid
// and attempt token until it exits.

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "daemon/executor.h"
#include "daemon/slots.h"

namespace ratio::daemon {

class LocalExecutor : public Executor {
 public:
  explicit LocalExecutor(std::vector<Slot> slots) : slots_(std::move(slots)) {}

  std::vector<std::string> slot_names() const override;
  int room(const std::vector<std::string>& busy) const override;  // its free slots
  // By daemon/gpu_allocation.h's policy: a job of train.gpus N takes N slots ("gpu:0,1").
  Placements place(const std::vector<std::string>& busy, const std::vector<WaitingJob>& queue) const override;
  Handle start(const Launch& launch) override;
  void signal(const Handle& handle, int sig) override;
  std::map<int64_t, Observation> poll(const std::map<int64_t, Handle>& live) override;
  std::optional<Handle> reattach(const db::RunningAttempt& attempt) override;
  bool keeps_running_on_shutdown() const override { return false; }

 private:
  std::vector<bool> taken(const std::vector<std::string>& busy) const;

  std::vector<Slot> slots_;
  // Workers of a previous daemon are not our children (no exit status to wait for): followed by
  // their token, which is on their command line.
  std::map<pid_t, std::string> adopted_;
};

}  // namespace ratio::daemon
