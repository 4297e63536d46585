#pragma once
// The one place that knows which LibTorch it is compiled against. Debian ships 1.13 (CPU);
// the GPU machines have PyTorch 2.x's LibTorch. Everything version-dependent goes through here.

#include <optional>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define RATIO_HAS_DEVICE_ALLOCATOR_STATS 1  // c10::getDeviceAllocator(...)->getDeviceStats(), from 2.9
#include <c10/core/CachingDeviceAllocator.h>
#endif

namespace ratio::compat {

constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;

// at::_fused_adamw_ (one kernel for the whole AdamW update) exists from 2.0; 1.13 has only _fused_adam_.
constexpr bool kHasFusedAdamW = kTorch2;

// One AdamW step over lists of fp32 tensors on one CUDA device, in a single fused kernel (2.x):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
//   p ← p − lr/(1 − β1^t) · m / (sqrt(v/(1 − β2^t)) + eps),   t read from `step` (fp32 [] on the device).
// Only callable when kHasFusedAdamW; the same update written with _foreach ops is SpamAdamW's fallback.
inline void fused_adamw_(std::vector<torch::Tensor>& params, std::vector<torch::Tensor>& grads,
                         std::vector<torch::Tensor>& m, std::vector<torch::Tensor>& v, const torch::Tensor& step,
                         double lr, double beta1, double beta2, double weight_decay, double eps) {
#if TORCH_VERSION_MAJOR >= 2
  const std::vector<torch::Tensor> steps(params.size(), step);  // the kernel only reads them
  at::_fused_adamw_(params, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
                    /*amsgrad=*/false, /*maximize=*/false);
#else
  (void)params, (void)grads, (void)m, (void)v, (void)step, (void)lr, (void)beta1, (void)beta2, (void)weight_decay,
      (void)eps;
  TORCH_CHECK(false, "fused AdamW needs LibTorch 2.x");
#endif
}

// tensors[i] *= factor for every i, `factor` a device scalar (no host sync). One launch on 2.x.
inline void foreach_mul_(std::vector<torch::Tensor>& tensors, const torch::Tensor& factor) {
#if TORCH_VERSION_MAJOR >= 2
  at::_foreach_mul_(tensors, factor);
#else
  for (auto& t : tensors) t.mul_(factor);
#endif
}

// Peak bytes the CUDA caching allocator has handed out on `device` since the process started, or
// nothing where this LibTorch does not expose the allocator's statistics.
inline std::optional<int64_t> cuda_peak_allocated_bytes(int device) {
#ifdef RATIO_HAS_DEVICE_ALLOCATOR_STATS
  const auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
  return stats.allocated_bytes[0].peak;  // [0]: StatType::AGGREGATE, both pools
#else
  (void)device;
  return std::nullopt;
#endif
}

// Causal (or masked) attention: softmax(q·kᵀ·scale + mask)·v.
//   q [B, H, Tq, Dk], k [B, H, Tk, Dk], v [B, H, Tk, Dv]; returns [B, H, Tq, Dv].
// `scale` defaults to 1/sqrt(Dk). `mask` is boolean (true = may attend), broadcastable to
// [B, H, Tq, Tk]; with is_causal the mask must be undefined and Tq == Tk.
// 2.x calls the fused kernel (flash / cuDNN / memory-efficient, never a T×T tensor on GPU);
// 1.13 has no public SDPA with a scale, so it falls back to matmul + mask + softmax in fp32.
inline torch::Tensor sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          bool is_causal, std::optional<double> scale = std::nullopt,
                          const torch::Tensor& mask = {}, double dropout_p = 0.0) {
#if TORCH_VERSION_MAJOR >= 2
  std::optional<torch::Tensor> attn_mask;
  if (mask.defined()) attn_mask = mask;
  return at::scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale);
#else
  const double s = scale ? *scale : 1.0 / std::sqrt(double(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)).to(torch::kFloat32) * s;  // [B, H, Tq, Tk]
  if (is_causal) {
    auto causal = torch::ones({q.size(-2), k.size(-2)}, q.options().dtype(torch::kBool)).tril();
    scores = scores.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity());
  }
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  auto weights = torch::softmax(scores, -1).to(v.scalar_type());
  if (dropout_p > 0) weights = torch::dropout(weights, dropout_p, /*train=*/true);
  return torch::matmul(weights, v);
#endif
}

// Autocast for CUDA (bf16 or fp16). Call once before training; it stays on for the process.
inline void set_cuda_autocast(bool enabled, torch::ScalarType dtype = torch::kBFloat16) {
#if TORCH_VERSION_MAJOR >= 2
  at::autocast::set_autocast_enabled(at::kCUDA, enabled);
  at::autocast::set_autocast_dtype(at::kCUDA, dtype);
#else
  at::autocast::set_enabled(enabled);
  at::autocast::set_autocast_gpu_dtype(dtype);
#endif
}

inline bool cuda_autocast_enabled() {
#if TORCH_VERSION_MAJOR >= 2
  return at::autocast::is_autocast_enabled(at::kCUDA);
#else
  return at::autocast::is_enabled();
#endif
}

// a·b in fp32, kept out of CUDA autocast, which would run it in bf16 and round every result to 8
// significant bits. bf16 operands multiply exactly in fp32 (and in TF32), so this is their exact
// product with fp32 sums, the precision of the fused kernels' scores.
inline torch::Tensor matmul_fp32(const torch::Tensor& a, const torch::Tensor& b) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  return torch::matmul(a.to(torch::kFloat32), b.to(torch::kFloat32));
}

// Autocast keeps a low-precision copy of every weight; in C++ (autocast never exited) that copy
// survives in-place optimizer updates. Call after EVERY optimizer step, or training uses stale weights.
inline void clear_autocast_cache() { at::autocast::clear_cache(); }

}  // namespace ratio::compat
