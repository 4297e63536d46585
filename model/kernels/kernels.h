#pragma once
// Fused CUDA kernels for the dense GPT-2 step (issue 10), one file per kernel family beside this
// header: layernorm.cu, classifier.cu, gelu.cu, matmul.cu, adamw.cu, cast.cu, embedding.cu,
// prefix_mean.cu (mechanism 1's causal mean), and ra_band.cu, ra_topk.cu, ra_sparse.cu for reciprocal
// attention and mix_rows.cu for mechanism 2's sparse Ā·H (issue 11). Plain CUDA C++ without LibTorch:
// model/fused.cpp wraps each launch in an autograd function (model/fused_adamw.cpp the optimizer's
// step) and the tests hold the reference op it replaces. Compiled only when CMake finds CUDA and a
// CUDA LibTorch (RATIO_WITH_CUDA_KERNELS); the CPU build never sees this file.
//
// Element types: activations are fp32 or bf16 (`DType`), statistics and parameters fp32.
// Every launch is asynchronous on `stream` and returns the launch's cudaError_t.

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "model/kernels/adamw_scalars.h"

namespace ratio::kernels {

enum class DType { kFloat32, kBFloat16 };

// ---- layernorm.cu ---------------------------------------------------------------------------------

// Residual add + LayerNorm over the last dimension, one warp per row:
//   sum = x + addend (when addend is given; else sum = x, and `sum_out` is not written)
//   y = (sum − mean) · rstd · weight + bias,   rstd = 1/sqrt(var + eps)
// x, sum_out: [N, C] fp32; addend: [N, C] `addend_type`; y: [N, C] `y_type`; weight, bias: [C] fp32;
// mean, rstd: [N] fp32 (saved for the backward).
cudaError_t add_layernorm_forward(const float* x, const void* addend, DType addend_type, float* sum_out, void* y,
                                  DType y_type, float* mean, float* rstd, const float* weight, const float* bias,
                                  int64_t N, int64_t C, float eps, cudaStream_t stream);

// Its backward. dy: [N, C] `dy_type` (gradient of y); dsum: [N, C] fp32 gradient that reached `sum`
// from its other uses (the residual stream), or null. sum: [N, C] fp32 the forward's sum (or x).
//   dx = dsum + rstd · (g − mean(g) − x̂ · mean(g·x̂)),   g = dy·weight, x̂ = (sum − mean)·rstd
// dx: [N, C] fp32; daddend: [N, C] bf16 copy of dx, or null (an fp32 addend shares dx).
// dweight = Σ_rows dy·x̂, dbias = Σ_rows dy: [C] fp32, overwritten. Deterministic: each block sums
// its rows into `partial` (layernorm_backward_partial_floats(N, C) floats), then one pass over blocks.
// The grid is as many blocks as are resident at once (one wave), each warp looping over rows.
cudaError_t add_layernorm_backward(const void* dy, DType dy_type, const float* dsum, const float* sum,
                                   const float* mean, const float* rstd, const float* weight, float* dx,
                                   void* daddend_bf16, float* dweight, float* dbias, float* partial, int64_t N,
                                   int64_t C, cudaStream_t stream);
int64_t layernorm_backward_partial_floats(int64_t N, int64_t C);
// Widest C the layernorm kernels take (their per-warp shared-memory accumulators).
constexpr int64_t kLayerNormMaxC = 4096;

// ---- classifier.cu --------------------------------------------------------------------------------

// Cross-entropy from bf16 logits in place, one block per row (llm.c's fused classifier):
//   lse = log Σ_j exp(logits[i, j]),  losses[i] = lse − logits[i, targets[i]]   (0 where target = −1)
// With write_grad, logits[i] is overwritten by its gradient scaled by *grad_scale (a device scalar:
// 1/number of counted targets), (softmax(logits[i]) − onehot(target)) · scale, zero on ignored rows.
// logits: [N, V] bf16, rows `ld` elements apart; targets: [N] int64; losses: [N] fp32.
cudaError_t cross_entropy_forward_backward(void* logits, int64_t ld, const int64_t* targets, float* losses,
                                           const float* grad_scale, bool write_grad, int64_t N, int64_t V,
                                           cudaStream_t stream);

// ---- cast.cu --------------------------------------------------------------------------------------

// fp32 → bf16 copies of up to kCastTensorsPerList tensors in one launch: dst[i] = bf16(src[i]).
// src: [n] fp32; dst: [n] bf16; contiguous. The list travels by value as the launch's argument.
struct CastTensor {
  const float* src;
  void* dst;
  int64_t n;
};
constexpr int kCastTensorsPerList = 48;
struct CastList {
  CastTensor tensors[kCastTensorsPerList];
  int64_t first_block[kCastTensorsPerList];  // filled by cast_to_bf16
  int count;
};
cudaError_t cast_to_bf16(CastList list, cudaStream_t stream);

// ---- embedding.cu ---------------------------------------------------------------------------------

// A token embedding's backward added into an existing gradient, deterministic and without atomics:
//   grad[ids[n]] += dout[n] for every n, each id's rows added in increasing n.
// sorted_ids: [N] the ids sorted ascending by a stable sort; order: [N] each one's position n in
// ids (the sort's indices). dout: [N, C] fp32; grad: [V, C] fp32; partial: scratch of
// embedding_backward_partial_floats(N, C) floats. All contiguous. Ids outside [0, V) are skipped
// (the forward's lookup rejects them first).
cudaError_t embedding_backward_add(const int64_t* sorted_ids, const int64_t* order, const float* dout, float* grad,
                                   float* partial, int64_t N, int64_t C, int64_t V, cudaStream_t stream);
int64_t embedding_backward_partial_floats(int64_t N, int64_t C);

// ---- gelu.cu: bias gradients --------------------------------------------------------------------

// Backward of h = gelu_tanh(pre) fused with the bias gradient of the linear that produced pre:
//   dpre = dh · gelu_tanh'(pre),   dbias[m] = Σ_rows dpre[:, m]
// dh, pre, dpre: [N, M] bf16; dbias: [M] fp32, overwritten. Deterministic: row blocks write partial
// column sums to `partial` (gelu_backward_partial_floats(N, M) floats), then one pass sums them in order.
cudaError_t gelu_backward_bias_grad(const void* dh, const void* pre, void* dpre, float* dbias, float* partial,
                                    int64_t N, int64_t M, cudaStream_t stream);
int64_t gelu_backward_partial_floats(int64_t N, int64_t M);

// The bias gradient of a linear alone: dbias[m] = Σ_rows dy[:, m]. dy: [N, M] bf16; dbias: [M] fp32,
// overwritten; partial: gelu_backward_partial_floats(N, M) floats. Deterministic, as above.
cudaError_t bias_grad(const void* dy, float* dbias, float* partial, int64_t N, int64_t M, cudaStream_t stream);

// ---- matmul.cu: matmuls with cuBLASLt epilogues ---------------------------------------------------

// What a cuBLASLt matmul did. kUnsupported: cuBLASLt takes no such matmul (a documented shape rule,
// or its heuristic found no algorithm); nothing was launched and the caller runs its ATen composite.
// kFailed: `error` names the function, the cuBLASLt or CUDA call and its status.
struct MatmulStatus {
  enum Code { kLaunched, kUnsupported, kFailed };
  Code code;
  std::string error;
};

// Scratch for cuBLASLt's split-K algorithms, from the caller (so that nothing here allocates, inside
// a CUDA graph capture or out): this many bytes, like ATen's cuBLASLt workspace on Hopper.
constexpr size_t kMatmulWorkspaceBytes = size_t(32) << 20;

// c_fc's forward as one matmul, bias and GELU (tanh form) in cuBLASLt's GELU_AUX_BIAS epilogue:
//   pre = x·wᵀ + bias,   h = gelu_tanh(pre)
// x: [N, C] bf16; w: [M, C] bf16; bias: [M] bf16 (cuBLASLt's bias has the output's type);
// h, pre: [N, M] bf16 (pre is the epilogue's aux output, for gelu_backward_bias_grad).
// All contiguous. The handle is created on the first call, which must precede any graph capture.
MatmulStatus linear_gelu_forward(const void* x, const void* w, const void* bias, void* h, void* pre, int64_t N,
                                 int64_t M, int64_t C, void* workspace, cudaStream_t stream);
// Whether the epilogue takes width M: cuBLASLt wants the aux output's leading dimension (M) to be a
// multiple of 8. linear_gelu_forward returns kUnsupported for other widths.
bool linear_gelu_epilogue_takes(int64_t M);

// A linear's weight gradient written in fp32 by the matmul (bf16 in, fp32 accumulation and out):
//   dweight = dyᵀ·x, or dweight += dyᵀ·x with `accumulate` (the classifier's row chunks)
// dy: [N, M] bf16; x: [N, C] bf16; dweight: [M, C] fp32. All contiguous.
MatmulStatus weight_grad_fp32(const void* dy, const void* x, float* dweight, int64_t N, int64_t M, int64_t C,
                              void* workspace, cudaStream_t stream, bool accumulate = false);

// ---- adamw.cu -------------------------------------------------------------------------------------

// One parameter tensor for the optimizer: param, grad, m, v: [n] fp32, contiguous.
struct AdamWTensor {
  float* param;
  const float* grad;
  float* m;
  float* v;
  int64_t n;
  bool decayed;  // decoupled weight decay applies (matrices, not biases, norms or mixing weights)
};
// Tensors travel by value as launch arguments (under the 4 KiB that every CUDA version takes), so a
// step is a few launches over lists of this many tensors.
constexpr int kAdamWTensorsPerList = 32;
struct AdamWTensorList {
  AdamWTensor tensors[kAdamWTensorsPerList];
  int count;
};

struct SpamAdamWConfig {
  float beta1, beta2, eps, weight_decay;
  float grad_clip;           // ≤ 0: no global clipping
  bool spam;                 // spike detection and the clip against the second moment
  float spam_theta, spike_z;
  int min_spike_history;     // norms needed before a step can count as a spike
};

// The optimizer's device scalars: model/kernels/adamw_scalars.h.


// One step over n_lists lists of tensors, all reading the same scalars:
//   norm = ‖grads‖₂ (before clipping); spike test and Welford update of the norm statistics when spam;
//   per element: g = grad · min(grad_clip / norm, 1); with spam, g clipped to ±sqrt(θ·v) where v > 0;
//   m = b1·f_m·m + (1 − b1)·g,  v = b2·f_v·v + (1 − b2)·g²   (f = SPAM's soft reset on a spike, else 1);
//   param ·= 1 − lr·wd (decayed tensors);  param −= lr/(1 − b1^t) · m / (sqrt(v)/sqrt(1 − b2^t) + eps).
// partial: adamw_partial_floats(n_lists) floats of scratch. Deterministic (fixed summation order).
cudaError_t spam_adamw_step(const AdamWTensorList* lists, int64_t n_lists, float* partial, float* scalars,
                            const SpamAdamWConfig& config, cudaStream_t stream);
int64_t adamw_partial_floats(int64_t n_lists);

// ---- ra_band.cu: band-limited reciprocal attention (issue 11) -----------------------------------

// RA's scores inside the band: S'[i, j] = scale·(q_i·k_j + alpha·q_j·k_i) for 0 ≤ i − j ≤ window;
// outside it (j < i − window) the plain scale·q_i·k_j. The far part is ordinary causal attention of
// the queries i ≥ window + 1 over the keys j ≤ T − window − 2 (a flash kernel computes it, with its
// log-sum-exp); these kernels add the band and merge the two softmaxes exactly, so no T×T tensor
// exists. A block takes 64 query rows and the 128 key positions before and at them, so window ≤ 64.
//
// Tensors are [B, heads, T, D] bf16 with the last dimension contiguous and the other strides given
// (in elements); k may have one head for all (MLA's shared latent key: head stride 0).
struct RaStrided {
  const void* data;
  int64_t sb, sh, st;  // batch, head and time strides in elements
};
struct RaStridedOut {
  void* data;
  int64_t sb, sh, st;
};

struct RaBandShape {
  int B, H, T;
  int window;          // 1..kRaMaxWindow
  float scale;         // the score scale (1/sqrt(Dk))
  const float* alpha;  // device scalar: RA's mixing weight
};
constexpr int kRaMaxWindow = 64;
// Head widths the kernels are built for (Dk, Dv): the standard head (64, 64) and MLA's latent
// keys with 64-wide value heads (128, 64).
bool ra_band_supports(int64_t dk, int64_t dv);

// Forward. out_far [B, H, T_far, Dv] and lse_far [B, H, ≥T_far] (fp32, strides given) are the far
// part's output and log-sum-exp (natural log, scaled scores) for query rows window + 1 ..
// (T_far = T − window − 1 ≥ 1). Writes out [B, H, T, Dv] (strided) and lse [B, H, T] fp32 contiguous,
// the merged log-sum-exp the backward needs.
struct RaBandForwardArgs {
  RaBandShape shape;
  int dk, dv;
  RaStrided q, k, v, out_far;
  const float* lse_far;
  int64_t lse_far_sb, lse_far_sh, lse_far_st;
  RaStridedOut out;
  float* lse;
};
cudaError_t ra_band_forward(const RaBandForwardArgs& args, cudaStream_t stream);

// Backward of the band (the far part's backward is the flash kernel's, fed the merged output and
// log-sum-exp). Per 64-row block it recomputes S', P = exp(S' − lse) and dS = P·(dP − D),
// D_i = dO_i·O_i (+ d_shift[b, h, i] where given: RA-CT's and mechanism 2's sparse terms of dP,
// tests/model/ra_sparse_grad_test.cpp), and writes bf16 [B, H, T_pad, D] partial gradients (each an fp32 sum rounded
// once), T_pad = T rounded up to 64:
//   own_*:  rows of the block's own positions (every row written by exactly one block);
//   prev_*: the key-side contributions to the 64 positions before the block (rows of the block
//           before it; the last block's rows get none).
// dalpha_partial: one float per block, summed by the caller (fixed order). With one key head for every
// query head (k's head stride 0: MLA) a block takes its rows of every head and sums their key
// gradients, so own_k and prev_k are [B, 1, T_pad, DK] and there are B·ceil(T/64) blocks; otherwise
// B·H·ceil(T/64) (ra_band_blocks with H = k's heads).
struct RaBandBackwardArgs {
  RaBandShape shape;
  int dk, dv;
  RaStrided q, k, v, out, dout;
  const float* lse;      // [B, H, T]
  const float* d_shift;  // [B, H, T] fp32 added to each row's D, or null
  void *own_q, *own_k, *own_v, *prev_q, *prev_k, *prev_v;  // bf16
  float* dalpha_partial;
};
cudaError_t ra_band_backward(const RaBandBackwardArgs& args, cudaStream_t stream);
int64_t ra_band_blocks(int64_t B, int64_t H, int64_t T);  // blocks of a launch = dalpha_partial floats
int64_t ra_band_padded_t(int64_t T);

// One input's gradient: out[b, g, t] = Σ_{h in g} own[b, h, t] + prev[b, h, t] (where the block after
// t's exists) + Σ_{h in g} far[b, h, t − far_offset] (where 0 ≤ t − far_offset < T_far). heads_out is H
// (one output per head) or 1 (every head summed: MLA's shared key). own, prev: [B, partial_heads,
// T_pad, D] bf16; far: [B, far_heads, T_far, D] bf16 strided; out: [B, heads_out, T, D] bf16 strided.
// With heads_out 1, partial_heads and far_heads may each be H (per-head gradients, summed here) or 1
// (already summed); otherwise both are H. D a multiple of 8.
struct RaBandCombineArgs {
  int B, partial_heads, far_heads, heads_out, T, D;
  const void *own, *prev;  // bf16
  RaStrided far;
  int64_t t_far, far_offset;
  RaStridedOut out;
};
cudaError_t ra_band_combine(const RaBandCombineArgs& args, cudaStream_t stream);

// ---- ra_topk.cu: top-K statistics of attention rows ----------------------------------------------------

// For each query row i (batch b), the K largest attention weights of each head's row and of the heads'
// mean, with their key positions, recomputing P = exp(S' − lse) key by key (RA's reciprocal term inside
// the band when alpha is given; causal). Outputs sorted largest first; a row with fewer than K visible
// keys ends with value 0 and key −1. RA-CT's top-K statistic is the sum of a head's values; mechanism
// 2 keeps the mean's keys.
constexpr int kRaTopkMaxHeads = 16;
constexpr int kRaTopkMaxK = 16;
bool ra_topk_supports(int64_t dk);  // key widths the kernel is built for: 64 and 128
struct RaTopkArgs {
  int B, H, heads_k, T, dk;  // heads_k: 1 (MLA's shared key) or H
  int window;                // the RA band (0: every visible key); unused without alpha
  int K;                     // 1..kRaTopkMaxK
  float scale;
  const float* alpha;        // device scalar, or null: no reciprocal term
  RaStrided q, k;            // [B, H, T, dk] and [B, heads_k, T, dk] bf16
  const float* lse;          // [B, H, T] fp32, contiguous: the rows' log-sum-exp
  float* head_val;           // [B, H, T, K], or null: no heads' lists (then head_key unused)
  int32_t* head_key;         // [B, H, T, K]
  float* mean_val;           // [B, T, K]
  int32_t* mean_key;         // [B, T, K]
};
cudaError_t ra_topk_stats(const RaTopkArgs& args, cudaStream_t stream);

// ---- ra_sparse.cu: the sparse part of the top-K statistics' backward ---------------------------------

// Given the gradients of ra_topk.cu's values, per row (b, h, i) and entry j of its lists (the head's
// keys with c = d_head_val, the heads' mean's keys with c = d_mean_val / H, summed where a key is in
// both), with P_hij recomputed from q, k and lse as ra_topk.cu does and G = P·c:
//   d_shift[b, h, i] = Σ_j G_hij, the shift of the row's D in the dense backward (ra_band.cu's d_shift);
//   m[b, h, i, j] = G_hij, plus m[b, h, j, i] = alpha·G_hij inside the band (j < i; the diagonal gets
//   (1 + alpha)·G): dq += scale·M·K and dk += scale·Mᵀ·Q then finish the sparse part;
//   dalpha_row[b, h, i] = scale·Σ_{j in band} G_hij·q_j·k_i.
// m: bf16, zeroed by the caller, j contiguous and the other strides given (elements), so the caller
// picks the layout its matmuls want. Deterministic: every output element has one writer.
constexpr int kRaSparseMaxHeads = 16;
constexpr int kRaSparseMaxDk = 128;
struct RaSparseArgs {
  int B, H, heads_k, T, dk;  // heads_k: 1 (MLA's shared key) or H
  int window;                // the RA band (0: every visible key); unused without alpha
  int K;                     // entries of each list, 1..16
  float scale;
  const float* alpha;        // device scalar, or null: no reciprocal term
  RaStrided q, k;            // [B, H, T, dk] and [B, heads_k, T, dk] bf16; dk a multiple of 8, rows 16-byte aligned
  const float* lse;          // [B, H, T] fp32
  const int32_t* head_key;   // [B, H, T, K]
  const float* d_head_val;   // [B, H, T, K], or null: no head entries
  const int32_t* mean_key;   // [B, T, K]
  const float* d_mean_val;   // [B, T, K], or null: no mean entries
  float* d_shift;            // [B, H, T]
  float* dalpha_row;         // [B, H, T]
  void* m;                   // bf16 [B, H, T, T] with strides m_sb, m_sh, m_si (and 1 for j)
  int64_t m_sb, m_sh, m_si;
};
cudaError_t ra_sparse_backward(const RaSparseArgs& args, cudaStream_t stream);

// The far part's output as cuDNN's backward must see it for the rows' D = dO·O to come out shifted by
// d_shift (model/fused_ra.cpp's shifted_output says why): rows first_row .. first_row + rows − 1 of
// shifted = O + shift/|dO|²·dO (O where dO is zero), fp32 arithmetic, bf16 out. One warp a row.
struct RaShiftOutputArgs {
  int B, H, T, first_row, rows, Dv;
  RaStrided dout, out;   // bf16 [B, H, T, Dv], each row contiguous
  const float* shift;    // [B, H, T] fp32, contiguous
  RaStridedOut shifted;  // bf16 [B, H, T, Dv]
};
cudaError_t ra_shift_output(const RaShiftOutputArgs& args, cudaStream_t stream);

// ---- prefix_mean.cu: mechanism 1's causal prefix mean -----------------------------------------------

// The running mean over time of mechanism 1's gate projection, and its backward (a reverse scan),
// accumulated in fp32 whatever the element types:
//   forward:  out[b, t, g] = (Σ_{s ≤ t} z[b, s, g]) / (t + 1)
//   backward: dz[b, s, g] = Σ_{t ≥ s} dout[b, t, g] / (t + 1)
// z, out, dout, dz: [B, T, G] contiguous, each of its own `*_type`. One block per batch row and 16
// columns (8 where G is not a multiple of 8) scans T in tiles of 1024 rows with a carry between them.
cudaError_t prefix_mean_forward(const void* z, DType z_type, void* out, DType out_type, int64_t B, int64_t T,
                                int64_t G, cudaStream_t stream);
cudaError_t prefix_mean_backward(const void* dout, DType dout_type, void* dz, DType dz_type, int64_t B, int64_t T,
                                 int64_t G, cudaStream_t stream);

// ---- mix_rows.cu: mechanism 2's Ā·H with K entries a row ----------------------------------------------

// Ā holds K (key, value) pairs a row: forward out[b, i, :] = Σ_e values[b, i, e]·h[b, keys[b, i, e], :]
// (fp32 sums, bf16 out); mix_rows_value_grad: d_values[b, i, e] = dout[b, i, :]·h[b, keys[b, i, e], :].
// A key −1 is an empty entry (it adds nothing; its gradient is 0). M a multiple of 8, h's rows 16-byte
// aligned. Deterministic: every output element has one writer, its sum in a fixed order.
constexpr int kMixRowsMaxK = 32;
struct MixRowsArgs {
  int B, T, K, M;
  const int32_t* keys;  // [B, T, K], each < h's rows
  const float* values;  // [B, T, K] (forward)
  const void* h;        // bf16 [B, Tk, M], rows h_st elements apart, batches h_sb
  int64_t h_sb, h_st;
  void* out;            // bf16 [B, T, M] contiguous (forward)
  const void* dout;     // bf16 [B, T, M] contiguous (value grad)
  float* d_values;      // [B, T, K] (value grad)
};
cudaError_t mix_rows_forward(const MixRowsArgs& args, cudaStream_t stream);
cudaError_t mix_rows_value_grad(const MixRowsArgs& args, cudaStream_t stream);

}  // namespace ratio::kernels
