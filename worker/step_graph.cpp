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

void StepGraph::use_side_stream(int device) {
  impl_->stream_guard.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, static_cast<c10::DeviceIndex>(device)));
}

std::string StepGraph::capture(const std::function<void()>& step) {
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  // Work queued before the capture (the batch copies) must not become part of it; the eager steps'
  // cached blocks go back to the driver, or they and the graph's pool would both hold the activations.
  c10::cuda::device_synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();
  // The default capture mode, global, the strictest: an unsafe call (one that may synchronise)
  // from any thread fails the capture, autograd's device thread included, where the backward and
  // a data-parallel job's gradient hooks, which launch the all-reduces, run. NCCL supports it with
  // one GPU per process. ProcessGroupNCCL's watchdog thread polls its events in thread-local mode
  // (PyTorch 2.7 on, pytorch#148594; its test_nccl_watchdog_cudagraph), so its polling of the
  // warm-up's all-reduces cannot invalidate the capture.
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

void StepGraph::discard() { impl_->graph.reset(); }

#else  // a CPU LibTorch: no graphs

struct StepGraph::Impl {};

bool StepGraph::available() { return false; }
void StepGraph::use_side_stream(int) { throw std::logic_error("StepGraph: this build has no CUDA"); }
std::string StepGraph::capture(const std::function<void()>&) { return "this build has no CUDA"; }
bool StepGraph::captured() const { return false; }
void StepGraph::replay() { throw std::logic_error("StepGraph: this build has no CUDA"); }
void StepGraph::discard() {}

#endif

StepGraph::StepGraph() : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;

}  // namespace ratio::worker
