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
#include <vector>

namespace ratio::worker {

class StepGraph {
 public:
  StepGraph();
  ~StepGraph();

  // True where this build can capture graphs (a CUDA LibTorch).
  static bool available();

  // Makes the calling thread's current CUDA stream a side stream of `device` until the object dies:
  // capture cannot run on the default stream, and the eager warm-up steps must run where the
  // capture will (cuBLAS keeps a workspace per stream). Each rank of a data-parallel job passes its
  // own GPU.
  void use_side_stream(int device);

  // Records the step's parts, in order, each into its own graph, without running them. The graphs
  // share one memory pool: a part may read what an earlier one left (the gradients), so they must
  // replay in this order, with whatever runs eagerly between them (a data-parallel job's
  // all-reduce: worker/distributed.h says why it stays out of the graphs). Returns an empty string
  // on success, else why a capture failed (an op that synchronises with the host, say); every
  // graph is then discarded, nothing has run, and the caller may go on eagerly.
  std::string capture(const std::vector<std::function<void()>>& parts);
  bool captured() const;
  void replay(size_t part);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ratio::worker
