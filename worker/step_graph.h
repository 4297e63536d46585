#pragma once
// The whole training step as one CUDA graph (train.cuda_graph): the worker captures forward,
// backward, clipping, SPAM and AdamW once, then replays them each iteration, so the host launches one
// graph instead of ~1,500 kernels and autograd's bookkeeping runs once. What a replay reads must sit
// at fixed addresses: the token batches are copied into static buffers, the learning rate and the
// optimizer's counters are device scalars (worker/optimizer.h), and whatever the step allocates lives
// in the graph's private memory pool from then on.
//
// Built only with a CUDA LibTorch (RATIO_WITH_CUDA_KERNELS); elsewhere available() is false.

#include <functional>
#include <memory>
#include <string>

namespace ratio::worker {

class StepGraph {
 public:
  StepGraph();
  ~StepGraph();

  // True where this build can capture graphs (a CUDA LibTorch).
  static bool available();

  // Makes the calling thread's current CUDA stream a side stream of device 0 until the object dies:
  // capture cannot run on the default stream, and the eager warm-up steps must run where the
  // capture will (cuBLAS keeps a workspace per stream).
  void use_side_stream();

  // Records `step` into the graph without running it. Returns an empty string on success, else why
  // the capture failed (an op that synchronises with the host, say); the graph is then discarded,
  // nothing has run, and the caller may go on eagerly.
  std::string capture(const std::function<void()>& step);
  bool captured() const;
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ratio::worker
