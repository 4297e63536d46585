// AdamW with SPAM's clipping in one pass over the parameters, every scalar read from the device
// (kernels.h). Replaces the optimizer's _foreach_norm, global clipping, SPAM's clip against the second
// moment (four passes over the gradients) and ATen's fused AdamW: one read of the gradient sums its
// squares, one more reads gradient, moments and parameter and writes them back. No host value
// enters a launch, so the step can be captured in a CUDA graph. Reference: worker/optimizer.cpp's
// _foreach path, compared in tests/model/fused_ops_test.cpp.
#include <algorithm>
#include <cmath>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 4;

int resident_blocks() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return std::max(sms, 1) * kBlocksPerSm;
}

// Deterministic block sum: warp shuffles, then the warps' sums in order. Every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums is reused by the next call
  return total;
}

// Each block takes float4 groups block, block + grid, ... of every tensor in the list (a scalar tail
// for sizes that are not a multiple of 4 or addresses that are not 16-byte aligned) and writes the
// sum of squares of what it saw to partial[blockIdx.x].
__global__ void grad_sum_squares_kernel(AdamWTensorList list, float* __restrict__ partial) {
  float acc = 0.f;
  for (int t = 0; t < list.count; ++t) {
    const float* g = list.tensors[t].grad;
    const int64_t n = list.tensors[t].n;
    const int64_t n4 = aligned16(g) ? n / 4 : 0;
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n4; i += int64_t(gridDim.x) * kThreads) {
      const float4 v = reinterpret_cast<const float4*>(g)[i];
      acc += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    for (int64_t i = n4 * 4 + int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
      acc += g[i] * g[i];
  }
  const float total = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// One block: the global norm from the partial sums (in a fixed order), then SPAM's spike test and
// Welford update, the clipping coefficient, the step count and the bias corrections.
__global__ void spam_adamw_scalars_kernel(const float* __restrict__ partial, int64_t n_partial,
                                          float* __restrict__ s, SpamAdamWConfig config) {
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n_partial; i += kThreads) acc += partial[i];
  const float norm = sqrtf(block_sum(acc));
  if (threadIdx.x != 0) return;
  s[kScalarNorm] = norm;
  float m_factor = 1.f, v_factor = 1.f;
  if (config.spam) {
    const float seen = s[kScalarNormsSeen];
    if (seen >= float(config.min_spike_history)) {
      const float std = sqrtf(s[kScalarNormM2] / (seen - 1.f));
      if ((norm - s[kScalarNormMean]) / (std + 1e-12f) > config.spike_z) {  // a spike: soft moment reset
        m_factor = 0.5f;
        v_factor = 0.9f;
        s[kScalarSpikes] += 1.f;
      }
    }
    const float delta = norm - s[kScalarNormMean];  // Welford, spikes included
    s[kScalarNormsSeen] = seen + 1.f;
    s[kScalarNormMean] += delta / (seen + 1.f);
    s[kScalarNormM2] += delta * (norm - s[kScalarNormMean]);
  }
  s[kScalarClipCoef] = config.grad_clip > 0 ? fminf(config.grad_clip / (norm + 1e-6f), 1.f) : 1.f;
  s[kScalarMomentDecay1] = m_factor * config.beta1;
  s[kScalarMomentDecay2] = v_factor * config.beta2;
  const float step = s[kScalarStep] + 1.f;
  s[kScalarStep] = step;
  const float lr = s[kScalarLr];
  s[kScalarStepSize] = lr / (1.f - powf(config.beta1, step));
  s[kScalarBiasCorrection2Sqrt] = sqrtf(1.f - powf(config.beta2, step));
  s[kScalarWeightDecayFactor] = 1.f - lr * config.weight_decay;
}

struct UpdateScalars {
  float clip, decay1, decay2, step_size, bc2_sqrt, wd_factor;
};

__device__ inline void update_one(float& p, float g, float& m, float& v, const UpdateScalars& s,
                                  const SpamAdamWConfig& config, bool decayed) {
  g *= s.clip;
  if (config.spam && v > 0.f) {  // SPAM: |g| ≤ sqrt(θ·v), v before this step; v = 0 has seen no gradient yet
    const float bound = sqrtf(config.spam_theta * v);
    g = fminf(fmaxf(g, -bound), bound);
  }
  m = s.decay1 * m + (1.f - config.beta1) * g;
  v = s.decay2 * v + (1.f - config.beta2) * g * g;
  if (decayed) p *= s.wd_factor;
  p -= s.step_size * m / (sqrtf(v) / s.bc2_sqrt + config.eps);
}

__global__ void spam_adamw_update_kernel(AdamWTensorList list, const float* __restrict__ scalars,
                                         SpamAdamWConfig config) {
  const UpdateScalars s{scalars[kScalarClipCoef],  scalars[kScalarMomentDecay1],        scalars[kScalarMomentDecay2],
                        scalars[kScalarStepSize], scalars[kScalarBiasCorrection2Sqrt], scalars[kScalarWeightDecayFactor]};
  for (int t = 0; t < list.count; ++t) {
    const AdamWTensor& x = list.tensors[t];
    const bool vec = aligned16(x.param) && aligned16(x.grad) && aligned16(x.m) && aligned16(x.v);
    const int64_t n4 = vec ? x.n / 4 : 0;
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n4; i += int64_t(gridDim.x) * kThreads) {
      float4 p = reinterpret_cast<float4*>(x.param)[i], m = reinterpret_cast<float4*>(x.m)[i],
             v = reinterpret_cast<float4*>(x.v)[i];
      const float4 g = reinterpret_cast<const float4*>(x.grad)[i];
      update_one(p.x, g.x, m.x, v.x, s, config, x.decayed);
      update_one(p.y, g.y, m.y, v.y, s, config, x.decayed);
      update_one(p.z, g.z, m.z, v.z, s, config, x.decayed);
      update_one(p.w, g.w, m.w, v.w, s, config, x.decayed);
      reinterpret_cast<float4*>(x.param)[i] = p;
      reinterpret_cast<float4*>(x.m)[i] = m;
      reinterpret_cast<float4*>(x.v)[i] = v;
    }
    for (int64_t i = n4 * 4 + int64_t(blockIdx.x) * kThreads + threadIdx.x; i < x.n; i += int64_t(gridDim.x) * kThreads)
      update_one(x.param[i], x.grad[i], x.m[i], x.v[i], s, config, x.decayed);
  }
}

}  // namespace

int64_t adamw_partial_floats(int64_t lists) { return lists * resident_blocks(); }

cudaError_t spam_adamw_step(const AdamWTensorList* lists, int64_t n_lists, float* partial, float* scalars,
                            const SpamAdamWConfig& config, cudaStream_t stream) {
  const int blocks = resident_blocks();
  for (int64_t l = 0; l < n_lists; ++l) {
    grad_sum_squares_kernel<<<blocks, kThreads, 0, stream>>>(lists[l], partial + l * blocks);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  spam_adamw_scalars_kernel<<<1, kThreads, 0, stream>>>(partial, n_lists * blocks, scalars, config);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  for (int64_t l = 0; l < n_lists; ++l) {
    spam_adamw_update_kernel<<<blocks, kThreads, 0, stream>>>(lists[l], scalars, config);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace ratio::kernels
