#pragma once
// Fused CUDA kernels for the dense GPT-2 step (issue 10), one file per kernel family beside this
// header: layernorm.cu, classifier.cu, gelu.cu, matmul.cu, adamw.cu. Plain CUDA C++ without LibTorch:
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
//   dweight = dyᵀ·x
// dy: [N, M] bf16; x: [N, C] bf16; dweight: [M, C] fp32, overwritten. All contiguous.
MatmulStatus weight_grad_fp32(const void* dy, const void* x, float* dweight, int64_t N, int64_t M, int64_t C,
                              void* workspace, cudaStream_t stream);

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

}  // namespace ratio::kernels
