#include "daemon/slots.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace ratio::daemon {

namespace {

int count_nvidia_smi_gpus() {
  FILE* pipe = popen("nvidia-smi -L 2>/dev/null", "r");
  if (!pipe) return 0;
  int gpus = 0;
  char line[512];
  while (fgets(line, sizeof line, pipe)) {
    if (std::string(line).rfind("GPU ", 0) == 0) ++gpus;  // "GPU 0: NVIDIA H100 (UUID: ...)"
  }
  pclose(pipe);
  return gpus;
}

int parse_count(const std::string& text, const std::string& spec) {
  try {
    size_t used = 0;
    int n = std::stoi(text, &used);
    if (used == text.size() && n >= 0) return n;
  } catch (const std::exception&) {
    // reported below
  }
  throw std::invalid_argument("--slots '" + spec + "': '" + text + "' is not a non-negative integer");
}

}  // namespace

int count_gpus() {
  int gpus = count_nvidia_smi_gpus();
  if (gpus > 0) return gpus;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec)) {
    (void)entry;
    ++gpus;
  }
  return gpus;
}

namespace {

std::vector<Slot> parse_slot_list(const std::string& spec) {
  std::vector<Slot> slots;
  if (spec == "auto") {
    int gpus = count_gpus();
    for (int i = 0; i < gpus; ++i) slots.push_back({"gpu:" + std::to_string(i), std::to_string(i)});
    if (slots.empty()) slots.push_back({"cpu:0", ""});
    return slots;
  }
  if (spec.rfind("cpu:", 0) == 0) {
    int n = parse_count(spec.substr(4), spec);
    if (n == 0) throw std::invalid_argument("--slots '" + spec + "': need at least one CPU slot");
    for (int i = 0; i < n; ++i) slots.push_back({"cpu:" + std::to_string(i), ""});
    return slots;
  }
  if (spec.rfind("gpu:", 0) == 0) {
    std::stringstream list(spec.substr(4));
    std::string index;
    while (std::getline(list, index, ',')) {
      int gpu = parse_count(index, spec);
      slots.push_back({"gpu:" + std::to_string(gpu), std::to_string(gpu)});
    }
    if (slots.empty()) throw std::invalid_argument("--slots '" + spec + "': list GPU indices, e.g. gpu:0,1");
    return slots;
  }
  throw std::invalid_argument("--slots '" + spec + "': expected auto, gpu:0,1 or cpu:N");
}

}  // namespace

Slot combine_slots(const std::vector<Slot>& slots) {
  Slot out = slots.front();
  for (size_t i = 1; i < slots.size(); ++i) {
    out.name += "," + slots[i].name.substr(slots[i].name.find(':') + 1);
    if (!slots[i].cuda_devices.empty()) out.cuda_devices += "," + slots[i].cuda_devices;
  }
  return out;
}

std::vector<std::string> combined_slot_names(const std::string& name) {
  const std::string kind = name.substr(0, name.find(':') + 1);  // "gpu:"
  std::vector<std::string> names;
  size_t start = kind.size();
  for (size_t comma; (comma = name.find(',', start)) != std::string::npos; start = comma + 1)
    names.push_back(kind + name.substr(start, comma - start));
  names.push_back(kind + name.substr(start));
  return names;
}

std::vector<Slot> parse_slots(const std::string& spec) {
  std::vector<Slot> slots = parse_slot_list(spec);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (Slot& slot : slots) slot.threads = std::max(1, cores / static_cast<int>(slots.size()));
  return slots;
}

}  // namespace ratio::daemon
