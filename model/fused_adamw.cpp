// LibTorch side of model/kernels/adamw.cu (model/fused_adamw.h).
#include "model/fused_adamw.h"

#ifdef RATIO_WITH_CUDA_KERNELS
#include "model/fused_launch.h"
#include "model/kernels/kernels.h"
#endif

namespace ratio::model::fused {

#ifdef RATIO_WITH_CUDA_KERNELS

bool supports_spam_adamw(const std::vector<torch::Tensor>& params) {
  if (params.empty() || !params.front().is_cuda()) return false;
  for (const auto& p : params) {
    if (p.scalar_type() != torch::kFloat32 || !p.is_contiguous() || p.device() != params.front().device()) return false;
  }
  return true;
}

namespace {

float* f32(const torch::Tensor& t) { return t.data_ptr<float>(); }

kernels::SpamAdamWConfig kernel_config(const SpamAdamWOptions& o) {
  return {static_cast<float>(o.beta1),      static_cast<float>(o.beta2),  static_cast<float>(o.eps),
          static_cast<float>(o.weight_decay), static_cast<float>(o.grad_clip), o.spam,
          static_cast<float>(o.spam_theta), static_cast<float>(o.spike_z), o.min_spike_history};
}

void check_operand(const torch::Tensor& t, const torch::Tensor& param, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device() == param.device() &&
                  t.numel() == param.numel(),
              "spam_adamw_step: ", what, " must be a contiguous fp32 tensor like its parameter");
}

}  // namespace

void spam_adamw_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                     const std::vector<torch::Tensor>& m, const std::vector<torch::Tensor>& v,
                     const std::vector<bool>& decayed, const torch::Tensor& scalars, const SpamAdamWOptions& options) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && m.size() == n && v.size() == n && decayed.size() == n,
              "spam_adamw_step: params, grads, m, v and decayed differ in length");
  TORCH_CHECK(supports_spam_adamw(params), "spam_adamw_step: parameters must be contiguous fp32 on one CUDA device");
  TORCH_CHECK(scalars.scalar_type() == torch::kFloat32 && scalars.numel() == kernels::kScalarCount &&
                  scalars.device() == params.front().device() && scalars.is_contiguous(),
              "spam_adamw_step: scalars must be fp32 [", int(kernels::kScalarCount), "] on the parameters' device");
  std::vector<kernels::AdamWTensorList> lists((n + kernels::kAdamWTensorsPerList - 1) / kernels::kAdamWTensorsPerList);
  for (size_t i = 0; i < n; ++i) {
    check_operand(grads[i], params[i], "a gradient");
    check_operand(m[i], params[i], "a first moment");
    check_operand(v[i], params[i], "a second moment");
    auto& list = lists[i / kernels::kAdamWTensorsPerList];
    list.tensors[list.count++] = {f32(params[i]), grads[i].data_ptr<float>(), f32(m[i]), f32(v[i]), params[i].numel(),
                                  decayed[i]};
  }
  const int64_t n_lists = static_cast<int64_t>(lists.size());
  auto partial = at::empty({kernels::adamw_partial_floats(n_lists)}, scalars.options());
  check_launch(kernels::spam_adamw_step(lists.data(), n_lists, f32(partial), f32(scalars), kernel_config(options),
                                       current_stream()),
               "spam_adamw_step");
}

#else  // built without the CUDA kernels

bool supports_spam_adamw(const std::vector<torch::Tensor>&) { return false; }

void spam_adamw_step(const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                     const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&, const std::vector<bool>&,
                     const torch::Tensor&, const SpamAdamWOptions&) {
  TORCH_CHECK(false, "fused::spam_adamw_step: this build has no CUDA kernels");
}

#endif

}  // namespace ratio::model::fused
