#pragma once
// AdamW with SPAM (../shared/spec/mechanisms.md §SPAM), written over plain tensors so that every
// piece of state is a named tensor the checkpoint can save, and magnitude pruning with masks.
//
// One step, given gradients already accumulated:
//   1. norm = global L2 norm of the gradients (pre-clip, reported as grad_norm);
//   2. spike: z = (norm − mean)/std against every earlier norm of this run (Welford, kept on the
//      device: no host sync); when z > spike_z the moments are softly reset, m ×0.5, v ×0.9
//      (applied in step 5, folded into the moments' decay);
//   3. global clipping to grad_clip;
//   4. SPAM clipping: each entry with |g| > sqrt(θ·v) is clipped to that bound, v being the second
//      moment before this step (entries with v = 0, which have never seen a gradient, are left alone);
//   5. the AdamW update (decoupled weight decay on tensors with dim >= 2), bias correction counted
//      from the last periodic reset.
// Three ways to run the same arithmetic: with `kernel` on CUDA, model/kernels/adamw.cu does all five
// in one pass with every scalar on the device (capturable in a CUDA graph: the learning rate comes
// from set_lr, the counters live on the device); otherwise _foreach ops do 1–4 and, on CUDA with
// LibTorch 2.x, PyTorch's fused AdamW kernel does 5 (the reference the kernel is tested against).
// Periodic resets (reset()) zero m, v and the step count; the lr warm-up after them is the
// schedule's (worker/schedule.h).

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "matrix/job_spec.h"

namespace ratio::worker {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

class SpamAdamW {
 public:
  // kernel: use model/kernels/adamw.cu where it can run these parameters (see uses_kernel()).
  SpamAdamW(NamedTensors params, const TrainConfig& train, bool kernel = false);

  // Runs steps 1–5 with learning rate `lr`; returns the pre-clip global gradient norm (a device scalar).
  torch::Tensor step(double lr) {
    set_lr(lr);
    return step();
  }
  // The two halves of step(lr), for a CUDA graph: set_lr before each replay, step() captured once.
  // The returned norm is the same device tensor on every step of the kernel path.
  void set_lr(double lr);
  torch::Tensor step();
  bool uses_kernel() const { return kernel_; }
  void reset();  // SPAM's periodic reset
  void zero_grad();  // drops the gradients (set to none)

  // Count of spikes seen so far (a device scalar, for logging).
  const torch::Tensor& spikes() const { return spikes_; }
  // Everything a resume needs, by name (moments, norm history, step counters).
  NamedTensors state() const;
  // Host syncs on the kernel path, whose counters live on the device.
  int64_t steps_since_reset() const;
  int64_t norms_seen() const;
  void set_counters(int64_t steps_since_reset, int64_t norms_seen);

 private:
  struct MomentFactors {  // device scalars: 0.5 and 0.9 on a spike, else 1; undefined before enough history
    torch::Tensor m, v;
  };
  torch::Tensor global_norm() const;
  MomentFactors spike_factors(const torch::Tensor& norm);
  void clip_to_second_moment();
  void adamw_update(double lr, const MomentFactors& spike);
  void fused_adamw_update(double lr);
  void kernel_step();

  NamedTensors params_;
  std::vector<torch::Tensor> tensors_;               // params_'s tensors, as one list for the foreach ops
  std::vector<size_t> decayed_index_, plain_index_;  // positions in params_ with (dim >= 2) and without weight decay
  std::vector<bool> decayed_;                        // per tensor: takes weight decay
  bool kernel_ = false;                              // model/kernels/adamw.cu does the whole step
  bool fused_ = false;                               // else ATen's fused AdamW, one kernel per group (CUDA, LibTorch 2.x)
  double lr_ = 0;
  std::vector<torch::Tensor> grads_, m_, v_;     // m_, v_ in fp32, like the parameters
  TrainConfig train_;
  int64_t steps_since_reset_ = 0;  // the _foreach path's counters (the kernel's are in scalars_)
  int64_t norms_seen_ = 0;
  // fp32 [kScalarCount] on the device (model/kernels/adamw_scalars.h); the named scalars below are views.
  torch::Tensor scalars_;
  torch::Tensor step_, norm_mean_, norm_m2_, spikes_, norm_;
};

// Gradual magnitude pruning of Linear weights (dim 2, not the embeddings). Each tensor keeps the
// fraction (1 − sparsity) of its largest-magnitude entries; masks are re-applied after every step.
class MagnitudePruner {
 public:
  explicit MagnitudePruner(const NamedTensors& params);
  void update_masks(double sparsity);  // recompute masks at this sparsity and apply them
  void apply();                        // re-zero pruned weights (after each optimizer step)
  int64_t pruned() const;              // weights currently masked to zero (host sync)
  NamedTensors state() const;          // masks by name, for checkpoints

 private:
  NamedTensors weights_;
  std::vector<torch::Tensor> masks_;  // same shape as the weight; 1 keeps, 0 prunes
};

}  // namespace ratio::worker
