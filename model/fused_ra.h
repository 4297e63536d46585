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

// ra_band_attention and, from the same log-sum-exp, its weights' top K (topk_weights below), with the
// values differentiable: RA-CT's `topk` statistic and mechanism 2's `topk` weights without a T×T
// tensor, forward or backward. The values' gradients enter dP at their keys only, so the backward is
// the band's and the far part's with each row's D shifted, plus a sparse correction
// (model/kernels/ra_sparse.cu; tests/model/ra_sparse_grad_test.cpp derives it). The same inputs as
// ra_band_attention and 1 ≤ K ≤ 16, H ≤ 16. Keys are not differentiable. Without `heads` only the
// mean's lists are computed (head_val and head_key are [B, H, T, 0]).
struct RaBandStats {
  torch::Tensor out;                 // [B, H, T, Dv] bf16, as ra_band_attention's
  torch::Tensor head_val, head_key;  // [B, H, T, K] fp32, int32: each head's K largest weights
  torch::Tensor mean_val, mean_key;  // [B, T, K] fp32, int32: the heads' mean's K largest
};
RaBandStats ra_band_attention_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& alpha, int64_t window, double scale, int64_t K,
                                    bool heads = true);
constexpr int64_t kMaxStatsK = 16;
constexpr int64_t kMaxStatsHeads = 16;

// The same statistics for plain causal attention (no RA): cuDNN's attention over the whole range, its
// weights' top K from its log-sum-exp, and the same sparse backward (RA-CT's and mechanism 2's `topk`
// in the study's steps without RA: 4, 10, 13, 14, 17). Returns the struct above, out as cuDNN lays it out.
// supports_causal_stats: bf16 on CUDA, key width 64 or 128 (MLA's shared key too), H ≤ 16, q and k
// laid out as for the band op, v's rows contiguous.
bool supports_causal_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
RaBandStats causal_attention_stats(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   double scale, int64_t K, bool heads = true);

// Plain causal attention and one statistic of each row's weights P_ij, differentiable, without the T×T
// weights (RA-CT's `entropy`, the study's step 18, and `rms`, with the `output` gate and without RA or
// mechanism 2). From cuDNN's attention alone; model/fused_ra.cpp derives both backwards:
//   entropy H_i = −Σ_j P_ij·log P_ij = lse_i − Σ_j P_ij·S_ij, with Σ_j P_ij·k_j from the keys as extra
//           value columns;
//   rms     sqrt(Σ_j P_ij² / (i + 1)), with Σ_j P_ij² = exp(lse2_i − 2·lse_i) and lse2 the log-sum-exp of
//           the scores doubled (a second attention at twice the scale, of which only lse2 is used).
// supports_causal_statistic: bf16 on CUDA, key width 64 or 128 with one key per head or MLA's one shared
// key, values at most 128 wide (entropy: values and keys together at most 256), widths multiples of 8,
// last dimensions contiguous.
enum class RowStatistic { entropy, rms };
struct CausalStatistic {
  torch::Tensor out;   // [B, H, T, Dv] bf16, stored as [B, T, H, Dv]
  torch::Tensor stat;  // [B, H, T] fp32
};
bool supports_causal_statistic(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               RowStatistic statistic);
CausalStatistic causal_attention_statistic(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           double scale, RowStatistic statistic);

// The K largest attention weights of each row (model/kernels/ra_topk.cu), recomputed from q, k and the
// rows' log-sum-exp instead of stored: per (b, h, i) for RA-CT's `topk` statistic, and per (b, i) of
// the heads' mean for mechanism 2's `topk` sparsification. The weights are those of ra_band_attention's
// scores (alpha defined: the reciprocal term inside the band, window 0 meaning every visible key) or of
// plain causal attention (alpha undefined). q [B, H, T, Dk] and k [B, H|1, T, Dk] bf16 (Dk 64 or 128,
// H ≤ 16, K ≤ 16); lse [B, H, T] fp32. Values sorted largest first; a row with fewer than K
// visible keys ends with value 0 and key −1. Without `heads`, only the mean's lists (head_val and
// head_key [B, H, T, 0]). Not differentiable. Built with the kernels only.
struct TopkWeights {
  torch::Tensor head_val, head_key;  // [B, H, T, K] fp32, int32
  torch::Tensor mean_val, mean_key;  // [B, T, K] fp32, int32
};
TopkWeights topk_weights(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& lse,
                         const torch::Tensor& alpha, int64_t window, double scale, int64_t K, bool heads = true);

}  // namespace ratio::model::fused
