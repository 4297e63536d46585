// Mechanism 2's Ā·H when Ā keeps K entries a row (kernels.h, "mix_rows.cu"; issue 11): each token's
// mixed hidden state is a weighted sum of the K hidden rows it attends to most, gathered, instead of a
// dense [B, T, Tk]·[B, Tk, M] matmul over a matrix that is zero but for K entries a row. The weights'
// gradient is a dot product per entry, dout_i·h_j, also gathered. (H's gradient, Āᵀ·dout, stays a
// dense matmul in model/fused.cpp: gathering it would mean summing rows in an order set by the keys.)
// Reference op: the scattered dense Ā times H, tests/model/fused_ops_test.cpp.

#include <cstdint>

#include <cuda_bf16.h>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kVec = 8;  // bf16 elements a thread moves at once (16 bytes)
constexpr int kForwardThreads = 256;

// grid (T, B), 256 threads: block (b, i) writes out[b, i, :] = Σ_e values[b, i, e]·h[b, keys[b, i, e], :],
// each thread 8 columns at a time, the entries in list order (fp32 sums).
__global__ void mix_rows_forward_kernel(MixRowsArgs a) {
  __shared__ int s_key[kMixRowsMaxK];
  __shared__ float s_value[kMixRowsMaxK];
  const int i = blockIdx.x, b = blockIdx.y;
  const int64_t row = int64_t(b) * a.T + i;
  if (threadIdx.x < a.K) {
    s_key[threadIdx.x] = a.keys[row * a.K + threadIdx.x];
    s_value[threadIdx.x] = a.values[row * a.K + threadIdx.x];
  }
  __syncthreads();
  const bf16* h = static_cast<const bf16*>(a.h) + b * a.h_sb;
  bf16* out = static_cast<bf16*>(a.out) + row * a.M;
  for (int col = threadIdx.x * kVec; col < a.M; col += blockDim.x * kVec) {
    float acc[kVec] = {};
    for (int e = 0; e < a.K; ++e) {
      const int j = s_key[e];
      if (j < 0) continue;  // an empty entry
      float x[kVec];
      load_vec<kVec>(h + int64_t(j) * a.h_st + col, x);
#pragma unroll
      for (int c = 0; c < kVec; ++c) acc[c] = fmaf(s_value[e], x[c], acc[c]);
    }
    store_vec<kVec>(out + col, acc);
  }
}

// grid (T, B), one warp per entry: d_values[b, i, e] = dout[b, i, :]·h[b, keys[b, i, e], :] (0 for an
// empty entry), 8 columns a lane at a time, summed across the warp.
__global__ void mix_rows_value_grad_kernel(MixRowsArgs a) {
  const int i = blockIdx.x, b = blockIdx.y, e = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(b) * a.T + i;
  const int j = a.keys[row * a.K + e];
  float acc = 0.f;
  if (j >= 0) {
    const bf16* h_row = static_cast<const bf16*>(a.h) + b * a.h_sb + int64_t(j) * a.h_st;
    const bf16* dout_row = static_cast<const bf16*>(a.dout) + row * a.M;
    for (int col = lane * kVec; col < a.M; col += kWarpSize * kVec) {
      float x[kVec], g[kVec];
      load_vec<kVec>(h_row + col, x);
      load_vec<kVec>(dout_row + col, g);
#pragma unroll
      for (int c = 0; c < kVec; ++c) acc = fmaf(x[c], g[c], acc);
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) a.d_values[row * a.K + e] = acc;
}

bool valid(const MixRowsArgs& a) {
  return a.B >= 0 && a.T >= 0 && a.K >= 1 && a.K <= kMixRowsMaxK && a.M % kVec == 0 && a.h_st % kVec == 0 &&
         a.h_sb % kVec == 0 && aligned16(a.h);
}

}  // namespace

cudaError_t mix_rows_forward(const MixRowsArgs& args, cudaStream_t stream) {
  if (!valid(args) || !aligned16(args.out)) return cudaErrorInvalidValue;
  if (args.B == 0 || args.T == 0) return cudaSuccess;
  mix_rows_forward_kernel<<<dim3(args.T, args.B), kForwardThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t mix_rows_value_grad(const MixRowsArgs& args, cudaStream_t stream) {
  if (!valid(args) || !aligned16(args.dout)) return cudaErrorInvalidValue;
  if (args.B == 0 || args.T == 0) return cudaSuccess;
  mix_rows_value_grad_kernel<<<dim3(args.T, args.B), args.K * kWarpSize, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace ratio::kernels
