#pragma once
// Which queued jobs start on which free slots, when jobs want several (train.gpus: N ranks, one
// slot each, on this machine). A pure function, so the policy is tested without processes.
//
// Policy: strict queue order with reservation. Jobs are taken in claim order (priority, then age);
// each starts on the lowest-numbered free slots if enough are free. The first job that does not
// fit stops the walk: it keeps its place, no job behind it starts, and the slots that free up
// accumulate for it. No backfill: workers give no run-time estimate, so any job started in its
// place could delay it, and a stream of 1-GPU jobs could keep one GPU busy forever. A wide job
// therefore waits at most for the jobs ahead of it; the price is slots left idle meanwhile.
// A job wider than the whole machine could never start: it is reported, not waited for.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ratio::daemon {

struct WaitingJob {
  int64_t job_id = 0;
  int gpus = 1;  // slots it needs
};

struct SlotGrant {
  int64_t job_id = 0;
  std::vector<size_t> slots;  // indices into the slot list, ascending
};

struct Allocation {
  std::vector<SlotGrant> start;      // in queue order
  std::vector<int64_t> never_fits;   // wider than the machine
};

// busy[i]: slot i runs a job. queue: waiting jobs in claim order.
Allocation allocate_slots(const std::vector<bool>& busy, const std::vector<WaitingJob>& queue);

}  // namespace ratio::daemon
