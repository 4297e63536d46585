#pragma once
// Data-parallel training over LibTorch's c10d (NCCL on CUDA, Gloo on CPU): the one file that uses
// c10d, whose C++ API moves between LibTorch versions (1.13 here, 2.x on the GPU machines).
//
// Every rank holds the whole model and takes its share of the grad_accum micro-batches of each
// global batch (worker/trainer.cpp). During the backward of a rank's last micro-batch, a hook on
// every parameter copies its accumulated gradient into a flat bucket (~25 MB, parameters in reverse
// order: the order the backward produces them); a full bucket is summed across ranks at once,
// asynchronously, while the backward goes on. all_reduce_buckets() waits for the buckets and
// scatter_gradients() writes the sums back as the gradients: every rank then runs the same
// optimizer step on the same numbers.
//
// A step replayed from CUDA graphs (worker/step_graph.h) keeps the collectives out of them: the
// hooks' copies into the buckets are captured with the forward and backward, the all-reduces run
// eagerly between two replays (all_reduce_buckets), and the copies back are captured with the
// optimizer. The all-reduces then no longer overlap the backward (~500 MB fp32 over NVLink, a
// millisecond or two in a step of ~130 ms), but every rank issues the same collectives in the
// same order whether it replays or runs eagerly, so a rank whose capture failed can go on eagerly
// beside one that replays. (With the all-reduces captured too, the first replayed step hung on
// 2 H200s: docs/performance.md.)
//
// Why our own buckets and not c10d::Reducer (what PyTorch's DDP uses): Reducer's C++ constructor
// has changed its arguments between versions (bucket indices, comm hooks, param-to-name maps) and
// is not meant to be called from C++; hooks + allreduce + Work::wait are the stable surface.

#include <chrono>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "worker/optimizer.h"

namespace ratio::worker {

// Bytes of gradient per bucket: PyTorch DDP's default, big enough for full-bandwidth collectives,
// small enough for the first ones to start early in the backward.
constexpr int64_t kBucketBytes = 25 << 20;

class DataParallel {
 public:
  // Joins rank `rank` of `world` through the file at `rendezvous` (the same path for every rank;
  // a FileStore: one machine). NCCL when `device` is CUDA, Gloo on CPU. A collective that waits
  // longer than `timeout` (a peer gone) throws. Throws std::runtime_error where this build has
  // no backend for the device.
  DataParallel(const std::string& rendezvous, int rank, int world, const torch::Device& device,
               std::chrono::milliseconds timeout);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int world() const;

  // Registers the gradient hooks on `params` (all fp32 on one device) and allocates the buckets.
  void attach(const NamedTensors& params, int64_t bucket_bytes = kBucketBytes);
  // Whether the next backward sums gradients across ranks: true only for a rank's last micro-batch
  // of the step (earlier ones accumulate locally, like DDP's no_sync).
  void sync_next_backward(bool sync);
  // Whether a full bucket's all-reduce starts from the hook (eager steps: it overlaps the rest of
  // the backward) or waits for all_reduce_buckets (while a graph is captured). Default true.
  void launch_from_hooks(bool launch);
  // The synced backward's three ends, in this order. gather_gradients copies the gradients no hook
  // saw (parameters this graph did not use) into the buckets; all_reduce_buckets sums each bucket
  // across the ranks (launching those not launched yet; every one after a replay) and makes the
  // current stream wait for them, not the host; scatter_gradients stores the sums as the gradients.
  void gather_gradients();
  void all_reduce_buckets();
  void scatter_gradients();
  // t ← the sum of t over the ranks, in place; returns when done (small tensors: losses).
  void all_reduce_sum(torch::Tensor& t);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ratio::worker
