#pragma once
// Shared pieces of the fused-kernel tests (fused_ops_test.cpp, fused_ra_test.cpp): whether the
// kernels can run here, a relative error, and the whole model fused vs ATen's path.

#include <algorithm>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/model/support.h"

namespace ratio::model::testing {

inline bool have_kernels() { return torch::cuda::is_available() && fused_kernels_built(); }

// ‖a − b‖ / ‖b‖ in fp64.
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().to(torch::kCPU, torch::kFloat64), b64 = b.detach().to(torch::kCPU, torch::kFloat64);
  EXPECT_TRUE(a64.isfinite().all().item<bool>()) << "non-finite values";
  return (a64 - b64).norm().item<double>() / std::max(b64.norm().item<double>(), 1e-30);
}

// One forward and backward of the same model, fused and not: same loss (to `tol`) and every gradient
// (to `grad_tol`; by default 5e-2 in bf16, 1e-4 in fp32). A mixing scalar's gradient is one sum over
// every activation, with cancellation, so bf16 rounding moves it by several percent between the
// paths (mechanism 1's gate_alpha: 14 % with the gate as four bf16 passes over y, 5 % with it folded
// into one multiplier): in bf16 scalars get three times the tolerance; the fp32 run holds them to it.
inline void expect_model_paths_agree(const ModelConfig& config, torch::Device device, bool bf16, double tol,
                                     double grad_tol = 0.0) {
  if (grad_tol == 0.0) grad_tol = bf16 ? 5e-2 : 1e-4;
  torch::manual_seed(3);
  GPT model(config);
  model->to(device);
  const auto ids = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto idx = torch::randint(config.vocab_size, {2, config.block_size}, ids);
  auto targets = torch::randint(config.vocab_size, {2, config.block_size}, ids);
  auto run = [&](bool fused) {
    model->set_fused_kernels(fused);
    model->zero_grad();
    AutocastGuard autocast(bf16);
    auto out = model->forward(idx, targets);
    out.loss.backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : model->parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    return std::make_pair(out.loss.detach(), grads);
  };
  auto [loss_ref, grads_ref] = run(false);
  auto [loss, grads] = run(true);
  EXPECT_LT(rel_err(loss, loss_ref), tol);
  const auto names = model->named_parameters().keys();
  for (size_t i = 0; i < grads.size(); ++i) {
    ASSERT_EQ(grads[i].defined(), grads_ref[i].defined()) << names[i];
    if (!grads[i].defined()) continue;
    // Gradients of order 1e-9 (a mixing scalar at init) are rounding; compare where there is signal.
    if (grads_ref[i].abs().max().item<double>() < 1e-6) continue;
    const double tol_i = bf16 && grads[i].numel() == 1 ? 3 * grad_tol : grad_tol;
    EXPECT_LT(rel_err(grads[i], grads_ref[i]), tol_i)
        << names[i] << ": fused " << grads[i].flatten().narrow(0, 0, std::min<int64_t>(4, grads[i].numel())).cpu()
        << " reference " << grads_ref[i].flatten().narrow(0, 0, std::min<int64_t>(4, grads[i].numel())).cpu();
  }
}

}  // namespace ratio::model::testing
