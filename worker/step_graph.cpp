#include "worker/step_graph.h"

#include <stdexcept>

#ifdef RATIO_WITH_CUDA_KERNELS
#include <optional>

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
  std::unique_ptr<at::cuda::CUDAGraph> graph;
};

bool StepGraph::available() { return true; }

void StepGraph::use_side_stream() {
  impl_->stream_guard.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, /*device=*/0));
}

std::string StepGraph::capture(const std::function<void()>& step) {
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  // Work queued before the capture (the batch copies) must not become part of it; the eager steps'
  // cached blocks go back to the driver, or they and the graph's pool would both hold the activations.
  c10::cuda::device_synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();
  try {
    graph->capture_begin();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  std::string failure;
  try {
    step();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  try {
    graph->capture_end();  // also ends a capture that the step invalidated, and reports it
  } catch (const c10::Error& e) {
    if (failure.empty()) failure = e.what_without_backtrace();
  }
  if (!failure.empty()) return failure;
  impl_->graph = std::move(graph);
  return "";
}

bool StepGraph::captured() const { return impl_->graph != nullptr; }

void StepGraph::replay() { impl_->graph->replay(); }

#else  // a CPU LibTorch: no graphs

struct StepGraph::Impl {};

bool StepGraph::available() { return false; }
void StepGraph::use_side_stream() { throw std::logic_error("StepGraph: this build has no CUDA"); }
std::string StepGraph::capture(const std::function<void()>&) { return "this build has no CUDA"; }
bool StepGraph::captured() const { return false; }
void StepGraph::replay() { throw std::logic_error("StepGraph: this build has no CUDA"); }

#endif

StepGraph::StepGraph() : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;

}  // namespace ratio::worker
