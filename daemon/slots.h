#pragma once
// Execution slots: one job runs per slot. A GPU slot pins its worker with CUDA_VISIBLE_DEVICES;
// CPU slots hide every GPU from the worker.

#include <string>
#include <vector>

namespace ratio::daemon {

struct Slot {
  std::string name;          // "gpu:0", "cpu:1"
  std::string cuda_devices;  // value of CUDA_VISIBLE_DEVICES for the worker ("" hides GPUs)
  int threads = 1;           // at most this many CPU threads for its worker: the cores shared by all slots
};

// "auto": one slot per GPU found by `nvidia-smi -L` (or /proc/driver/nvidia/gpus), else one CPU
// slot (a CPU worker uses every core). "gpu:0,2": those GPUs. "cpu:N": N CPU slots. Each slot's
// worker is capped at cores / slots threads: workers that each took every core ran many times
// slower side by side.
// Throws std::invalid_argument for a malformed spec.
std::vector<Slot> parse_slots(const std::string& spec);

// The slots of one job on several (train.gpus > 1) as one: name "gpu:0,1" (what the attempt
// records and the API shows), CUDA_VISIBLE_DEVICES "0,1" (rank r takes the r-th), and each rank's
// thread cap. `slots` is non-empty and of one kind.
Slot combine_slots(const std::vector<Slot>& slots);
// Its inverse on names: "gpu:0,1" -> {"gpu:0", "gpu:1"}; a single slot's name -> {that name}.
std::vector<std::string> combined_slot_names(const std::string& name);

// Number of NVIDIA GPUs visible on this machine (0 when none or no driver).
int count_gpus();

}  // namespace ratio::daemon
