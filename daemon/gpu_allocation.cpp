#include "daemon/gpu_allocation.h"

namespace ratio::daemon {

Allocation allocate_slots(const std::vector<bool>& busy, const std::vector<WaitingJob>& queue) {
  Allocation out;
  std::vector<size_t> free_slots;
  for (size_t i = 0; i < busy.size(); ++i)
    if (!busy[i]) free_slots.push_back(i);
  size_t next_free = 0;  // free slots before this one are granted
  for (const WaitingJob& job : queue) {
    if (job.gpus > static_cast<int>(busy.size())) {
      out.never_fits.push_back(job.job_id);
      continue;
    }
    if (job.gpus > static_cast<int>(free_slots.size() - next_free)) break;  // it waits, and so does everyone behind it
    SlotGrant grant{job.job_id, {}};
    for (int k = 0; k < job.gpus; ++k) grant.slots.push_back(free_slots[next_free++]);
    out.start.push_back(std::move(grant));
  }
  return out;
}

}  // namespace ratio::daemon
