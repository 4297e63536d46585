#include "worker/step_graph.h"

#include <stdexcept>

#ifdef RATIO_WITH_CUDA_KERNELS
#include <optional>
#include <utility>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#endif

namespace ratio::worker {

#ifdef RATIO_WITH_CUDA_KERNELS

struct StepGraph::Impl {
  std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
  std::vector<std::unique_ptr<at::cuda::CUDAGraph>> parts;
};

bool StepGraph::available() { return true; }

void StepGraph::use_side_stream(int device) {
  impl_->stream_guard.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, static_cast<c10::DeviceIndex>(device)));
}

namespace {

// A graph's memory pool id (MempoolId_t, whose namespace moved between LibTorch versions).
using PoolId = decltype(std::declval<at::cuda::CUDAGraph&>().pool());

// One part into `graph`, in `pool` (a new pool where pool is {0, 0}); "" or why it failed.
std::string capture_part(at::cuda::CUDAGraph& graph, PoolId pool, const std::function<void()>& part) {
  try {
    graph.capture_begin(pool);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  std::string failure;
  try {
    part();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  try {
    graph.capture_end();  // also ends a capture that the part invalidated, and reports it
  } catch (const c10::Error& e) {
    if (failure.empty()) failure = e.what_without_backtrace();
  }
  return failure;
}

}  // namespace

std::string StepGraph::capture(const std::vector<std::function<void()>>& parts) {
  // Work queued before the capture (the batch copies) must not become part of it; the eager steps'
  // cached blocks go back to the driver, or they and the graph's pool would both hold the activations.
  c10::cuda::device_synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();
  std::vector<std::unique_ptr<at::cuda::CUDAGraph>> graphs;
  for (const auto& part : parts) {
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    const PoolId pool = graphs.empty() ? PoolId{0, 0} : graphs.front()->pool();
    const std::string failure = capture_part(*graph, pool, part);
    if (!failure.empty()) return failure;
    graphs.push_back(std::move(graph));
  }
  impl_->parts = std::move(graphs);
  return "";
}

bool StepGraph::captured() const { return !impl_->parts.empty(); }

void StepGraph::replay(size_t part) { impl_->parts.at(part)->replay(); }

#else  // a CPU LibTorch: no graphs

struct StepGraph::Impl {};

bool StepGraph::available() { return false; }
void StepGraph::use_side_stream(int) { throw std::logic_error("StepGraph: this build has no CUDA"); }
std::string StepGraph::capture(const std::vector<std::function<void()>>&) { return "this build has no CUDA"; }
bool StepGraph::captured() const { return false; }
void StepGraph::replay(size_t) { throw std::logic_error("StepGraph: this build has no CUDA"); }

#endif

StepGraph::StepGraph() : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;

}  // namespace ratio::worker
