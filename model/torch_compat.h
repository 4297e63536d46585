#pragma once
// The one place that knows which LibTorch it is compiled against. Debian ships 1.13 (CPU);
// the GPU machines have PyTorch 2.x's LibTorch. Everything version-dependent goes through here.

#include <optional>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

namespace ratio::compat {

constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;

// at::_fused_adamw_ (one kernel for the whole AdamW update) exists from 2.0; 1.13 has only _fused_adam_.
constexpr bool kHasFusedAdamW = kTorch2;

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

// Autocast keeps a low-precision copy of every weight; in C++ (autocast never exited) that copy
// survives in-place optimizer updates. Call after EVERY optimizer step, or training uses stale weights.
inline void clear_autocast_cache() { at::autocast::clear_cache(); }

}  // namespace ratio::compat
