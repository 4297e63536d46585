#pragma once
// Band-limited reciprocal attention on the CUDA kernels of model/kernels/ra_band.cu (issue 11), as
// one autograd operation. The far part (keys more than `window` positions back) is ordinary causal
// attention and runs in ATen's cuDNN attention kernel, which also returns its log-sum-exp;
// the band's scores S + alpha·Sᵀ, the merge of the two softmaxes and every gradient (q, k, v, alpha)
// are ours. No T×T tensor exists, forward or backward. tests/model/fused_ra_test.cpp compares it
// with the materialised path on CUDA.
//
// Private to model/ (model/attention.cpp takes it where `supports_ra_band` says it can).

#include <torch/torch.h>

namespace ratio::model::fused {

// True where ra_band_attention can take these tensors: built with the kernels, on CUDA, bf16, head
// widths (Dk, Dv) the kernels are built for ((64, 64) and MLA's (128, 64)), 1 ≤ window ≤ 64 and
// window < T − 1 (else the band is the whole range), last dimensions contiguous and 16-byte aligned.
bool supports_ra_band(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window);

// Causal attention with RA's scores: S'[i, j] = scale·(q_i·k_j + alpha·q_j·k_i) for 0 ≤ i − j ≤ window,
// scale·q_i·k_j for j < i − window. q [B, H, T, Dk]; k [B, H, T, Dk] or [B, 1, T, Dk] (one key for
// every head, MLA); v [B, H, T, Dv]; alpha [1] fp32 (gets a gradient when it requires one).
// Returns [B, H, T, Dv] bf16, stored as [B, T, H, Dv] so merging the heads is free.
torch::Tensor ra_band_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& alpha, int64_t window, double scale);

}  // namespace ratio::model::fused
