#pragma once
// The SPAM-AdamW step of model/kernels/adamw.cu over LibTorch tensors, for the worker's optimizer
// (worker/optimizer.h), which keeps the _foreach version of the same arithmetic as its reference and
// for the CPU. Built with the kernels only where CMake found CUDA and a CUDA LibTorch.

#include <vector>

#include <torch/torch.h>

#include "model/kernels/adamw_scalars.h"

namespace ratio::model::fused {

struct SpamAdamWOptions {
  double beta1, beta2, eps, weight_decay;
  double grad_clip;  // ≤ 0: off
  bool spam;
  double spam_theta, spike_z;
  int min_spike_history;
};

// True where the kernel can step these parameters: built with it, every tensor fp32, contiguous and
// on the same CUDA device.
bool supports_spam_adamw(const std::vector<torch::Tensor>& params);

// One step in place on params, m and v (grads are read, not changed). decayed[i]: params[i] takes
// weight decay. scalars: fp32 [kScalarCount] on the parameters' device (model/kernels/adamw_scalars.h),
// kScalarLr set by the caller. Every value the step needs is on the device: capturable in a CUDA graph.
void spam_adamw_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                     const std::vector<torch::Tensor>& m, const std::vector<torch::Tensor>& v,
                     const std::vector<bool>& decayed, const torch::Tensor& scalars, const SpamAdamWOptions& options);

}  // namespace ratio::model::fused
