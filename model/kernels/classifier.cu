// Cross-entropy and its gradient from bf16 logits in one pass per row (kernels.h), llm.c's fused
// classifier; rows up to 56K logits are read from memory once. Replaces the composite the model ran under autocast: the bf16 logits cast to fp32
// [N, V], log_softmax (another fp32 [N, V] kept for the backward), nll_loss, and in the backward
// nll_loss_backward, log_softmax_backward and the cast back to bf16: five full passes over fp32
// [N, V] became one read and one write of bf16 [N, V]. Reference op: tests/model/fused_ops_test.cpp.
#include <cmath>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kThreads = 512;

// Running (max, Σ exp(v − max)) pairs, merged without overflow.
struct SoftmaxState {
  float max;
  float sum;
};

__device__ inline SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

__device__ inline SoftmaxState block_merge(SoftmaxState s) {
  __shared__ SoftmaxState per_warp[kThreads / kWarpSize];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    SoftmaxState other{__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = merge(s, other);
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) per_warp[warp] = s;
  __syncthreads();
  SoftmaxState total{-INFINITY, 0.f};
  for (int w = 0; w < int(blockDim.x / kWarpSize); ++w) total = merge(total, per_warp[w]);  // same order in every thread
  return total;
}

// (max, Σ exp(v − max)) of VEC logits.
template <int VEC>
__device__ inline SoftmaxState chunk_state(const float (&v)[VEC]) {
  float chunk_max = v[0];
#pragma unroll
  for (int i = 1; i < VEC; ++i) chunk_max = fmaxf(chunk_max, v[i]);
  float chunk_sum = 0.f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) chunk_sum += __expf(v[i] - chunk_max);
  return {chunk_max, chunk_sum};
}

// The row's loss: 0 where the target is −1 (ignored); NaN for an id outside [−1, V), a data bug the
// trainer's finite-loss check then reports.
__device__ inline float row_loss(int64_t target, bool counted, float lse, float target_logit) {
  return target == -1 ? 0.f : counted ? lse - target_logit : NAN;
}

// v, the logits at columns j .. j + VEC − 1, becomes their gradient (softmax − onehot(target))·scale.
template <int VEC>
__device__ inline void logits_to_gradient(float (&v)[VEC], int64_t j, int64_t target, float lse, float scale) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const float onehot = (j + i == target) ? 1.f : 0.f;
    v[i] = (__expf(v[i] - lse) - onehot) * scale;
  }
}

// One block per row. Pass 1: the row's max and Σ exp, online. Pass 2 (write_grad): overwrite the
// row with its gradient; each thread rewrites only the elements it read, after every thread has
// read the target's logit (block_merge's barrier).
template <int VEC>
__global__ void cross_entropy_kernel(__nv_bfloat16* __restrict__ logits, int64_t ld, const int64_t* __restrict__ targets,
                                     float* __restrict__ losses, const float* __restrict__ grad_scale, bool write_grad,
                                     int64_t V) {
  const int64_t row = blockIdx.x;
  __nv_bfloat16* row_logits = logits + row * ld;
  const int64_t target = targets[row];
  const bool counted = target >= 0 && target < V;
  const float target_logit = counted ? __bfloat162float(row_logits[target]) : 0.f;

  SoftmaxState state{-INFINITY, 0.f};
  for (int64_t j = int64_t(threadIdx.x) * VEC; j < V; j += int64_t(blockDim.x) * VEC) {
    float v[VEC];
    load_vec<VEC>(row_logits + j, v);
    state = merge(state, chunk_state<VEC>(v));
  }
  state = block_merge(state);
  const float lse = state.max + logf(state.sum);
  if (threadIdx.x == 0) losses[row] = row_loss(target, counted, lse, target_logit);
  if (!write_grad) return;

  const float scale = counted ? *grad_scale : 0.f;
  for (int64_t j = int64_t(threadIdx.x) * VEC; j < V; j += int64_t(blockDim.x) * VEC) {
    float v[VEC];
    load_vec<VEC>(row_logits + j, v);
    logits_to_gradient<VEC>(v, j, target, lse, scale);
    store_vec<VEC>(row_logits + j, v);
  }
}

// Rows whose bf16 logits fit in 112 KB are kept in shared memory between the two passes, so the
// gradient pass writes without reading the row from memory again (GPT-2's 50304 logits are 100 KB:
// the two-pass kernel read each twice, mostly from DRAM, since the L2 cannot hold the rows in
// flight). Two such blocks fit an SM of H100/H200 (228 KB), one working while the other waits.
// kThreads threads: 1024-thread blocks measured 1.50 ms for GPT-2's two chunks against 1.12 ms (H200).
constexpr int64_t kResidentMaxV = 56 * 1024;
// cross_entropy_kernel<8> with the row read once: each thread keeps the vectors it read in shared
// memory and rewrites exactly those, so the row needs no barrier beyond block_merge's.
__global__ void __launch_bounds__(kThreads) cross_entropy_resident_kernel(
    __nv_bfloat16* __restrict__ logits, int64_t ld, const int64_t* __restrict__ targets, float* __restrict__ losses,
    const float* __restrict__ grad_scale, bool write_grad, int64_t V) {
  extern __shared__ uint4 row_cache[];  // [V / 8] vectors of 8 logits
  const int64_t row = blockIdx.x;
  __nv_bfloat16* row_logits = logits + row * ld;
  const int64_t target = targets[row];
  const bool counted = target >= 0 && target < V;
  const float target_logit = counted ? __bfloat162float(row_logits[target]) : 0.f;
  const int vectors = int(V / 8);

  SoftmaxState state{-INFINITY, 0.f};
#pragma unroll 4
  for (int c = threadIdx.x; c < vectors; c += kThreads) {
    const uint4 raw = reinterpret_cast<const uint4*>(row_logits)[c];
    row_cache[c] = raw;
    float v[8];
    load_vec<8>(reinterpret_cast<const __nv_bfloat16*>(&raw), v);
    state = merge(state, chunk_state<8>(v));
  }
  state = block_merge(state);
  const float lse = state.max + logf(state.sum);
  if (threadIdx.x == 0) losses[row] = row_loss(target, counted, lse, target_logit);
  if (!write_grad) return;

  const float scale = counted ? *grad_scale : 0.f;
#pragma unroll 4
  for (int c = threadIdx.x; c < vectors; c += kThreads) {
    const uint4 raw = row_cache[c];
    float v[8];
    load_vec<8>(reinterpret_cast<const __nv_bfloat16*>(&raw), v);
    logits_to_gradient<8>(v, int64_t(c) * 8, target, lse, scale);
    store_vec<8>(row_logits + int64_t(c) * 8, v);
  }
}

}  // namespace

cudaError_t cross_entropy_forward_backward(void* logits, int64_t ld, const int64_t* targets, float* losses,
                                           const float* grad_scale, bool write_grad, int64_t N, int64_t V,
                                           cudaStream_t stream) {
  if (V < 1 || ld < V) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  auto* data = static_cast<__nv_bfloat16*>(logits);
  const bool vec8 = V % 8 == 0 && ld % 8 == 0 && aligned16(data);
  if (vec8 && V <= kResidentMaxV) {
    const size_t cache_bytes = size_t(V) * sizeof(__nv_bfloat16);
    const cudaError_t set = cudaFuncSetAttribute(cross_entropy_resident_kernel,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(cache_bytes));
    if (set != cudaSuccess) return set;
    cross_entropy_resident_kernel<<<unsigned(N), kThreads, cache_bytes, stream>>>(data, ld, targets, losses, grad_scale,
                                                                                  write_grad, V);
  } else if (vec8) {
    cross_entropy_kernel<8><<<unsigned(N), kThreads, 0, stream>>>(data, ld, targets, losses, grad_scale, write_grad, V);
  } else {
    cross_entropy_kernel<1><<<unsigned(N), kThreads, 0, stream>>>(data, ld, targets, losses, grad_scale, write_grad, V);
  }
  return cudaGetLastError();
}

}  // namespace ratio::kernels
