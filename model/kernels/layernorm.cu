// Residual add + LayerNorm, forward and backward (kernels.h). Replaces, per GPT-2 block, the
// composite `x + y` (fp32 + bf16 → fp32), layer_norm in fp32 (autocast's rule) and the cast of its
// output to bf16 that the next linear makes; and, in the backward, layer_norm's backward, the cast
// of its gradient, the residual gradient's add and its cast back to bf16. Reference op:
// tests/model/fused_ops_test.cpp. Modelled on llm.c's layernorm_forward / fused_residual_forward /
// layernorm_backward: one warp per row, statistics in fp32, weight gradients summed per block.
#include <algorithm>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kForwardWarps = 8;      // rows per forward block
constexpr int kMaxBackwardWarps = 8;  // rows in flight per backward block (each warp owns 2·C floats of smem)
constexpr int kMaxBlocksPerSm = 8;    // what an SM holds of 256-thread blocks; bounds the partial sums

// One warp per row. Pass 1 forms sum = x + addend (written out) and its mean; pass 2 the variance
// about that mean (two-pass: no cancellation); pass 3 writes y. Passes 2 and 3 re-read the row,
// which the first pass has just brought into L1/L2.
template <typename TA, typename TY, int VEC>
__global__ void add_layernorm_forward_kernel(const float* __restrict__ x, const TA* __restrict__ addend,
                                             float* __restrict__ sum_out, TY* __restrict__ y,
                                             float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                             const float* __restrict__ weight, const float* __restrict__ bias,
                                             int64_t N, int C, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const float* x_row = x + row * C;
  const float* src = x_row;  // the row to normalise: x, or the sum once written
  if (addend != nullptr) src = sum_out + row * C;

  float total = 0.f;
  for (int c = lane * VEC; c < C; c += kWarpSize * VEC) {
    float v[VEC];
    load_vec<VEC>(x_row + c, v);
    if (addend != nullptr) {
      float a[VEC];
      load_vec<VEC>(addend + row * C + c, a);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] += a[i];
      store_vec<VEC>(sum_out + row * C + c, v);  // each lane re-reads only what it wrote
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) total += v[i];
  }
  const float mean = warp_sum(total) / C;

  float squares = 0.f;
  for (int c = lane * VEC; c < C; c += kWarpSize * VEC) {
    float v[VEC];
    load_vec<VEC>(src + c, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) squares += (v[i] - mean) * (v[i] - mean);
  }
  const float rstd = rsqrtf(warp_sum(squares) / C + eps);

  for (int c = lane * VEC; c < C; c += kWarpSize * VEC) {
    float v[VEC], w[VEC], b[VEC];
    load_vec<VEC>(src + c, v);
    load_vec<VEC>(weight + c, w);
    load_vec<VEC>(bias + c, b);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = (v[i] - mean) * rstd * w[i] + b[i];
    store_vec<VEC>(y + row * C + c, v);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// Columns rounded up to whole chunks of a warp's VEC-wide lanes: the per-warp stride of the backward's
// shared sums.
__host__ __device__ constexpr int padded_columns(int C, int vec) {
  return (C + kWarpSize * vec - 1) / (kWarpSize * vec) * (kWarpSize * vec);
}

// Where column `col`'s running sum sits in a warp's shared row. Lane l owns the VEC columns starting at
// (chunk·32 + l)·VEC; stored in column order, the 32 lanes' i-th columns would be VEC floats apart
// (an 8-way bank conflict on every update at VEC = 8). Chunk by chunk the layout is [VEC][32 lanes],
// so those 32 floats are consecutive.
template <int VEC>
__device__ inline int swizzled(int col) {
  constexpr int kChunk = kWarpSize * VEC;
  const int in_chunk = col % kChunk;
  return col - in_chunk + (in_chunk % VEC) * kWarpSize + in_chunk / VEC;
}

// One warp per row, rows strided over the grid. Each warp keeps its own dweight/dbias sums for the
// columns its lanes own in shared memory ([warps][2][padded C], laid out by `swizzled`; no atomics:
// the order of every sum is fixed), and the block writes their sum to partial[block][2C]. With
// CHUNKS > 0 the row fits in CHUNKS·32·VEC columns and its dy and sum stay in registers between the
// two passes (a second read from memory missed L2 at GPT-2's size and cost a third of the kernel);
// CHUNKS = 0 re-reads them.
template <typename TD, int VEC, int CHUNKS>
__global__ void add_layernorm_backward_kernel(const TD* __restrict__ dy, const float* __restrict__ dsum,
                                              const float* __restrict__ sum, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, const float* __restrict__ weight,
                                              float* __restrict__ dx, __nv_bfloat16* __restrict__ daddend,
                                              float* __restrict__ partial, int64_t N, int C) {
  extern __shared__ float shared[];
  constexpr int kCached = CHUNKS > 0 ? CHUNKS : 1;
  const int warps = blockDim.x / kWarpSize, warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int padded = padded_columns(C, VEC);
  float* dweight_acc = shared + warp * 2 * padded;
  float* dbias_acc = dweight_acc + padded;
  for (int j = lane; j < 2 * padded; j += kWarpSize) dweight_acc[j] = 0.f;

  for (int64_t row = int64_t(blockIdx.x) * warps + warp; row < N; row += int64_t(gridDim.x) * warps) {
    const float row_mean = mean[row], row_rstd = rstd[row];
    const TD* dy_row = dy + row * C;
    const float* sum_row = sum + row * C;
    float dy_cache[kCached][VEC], sum_cache[kCached][VEC];
    // Pass 1: g = dy·w; the row's mean(g) and mean(g·x̂); this warp's dweight and dbias.
    float g_total = 0.f, gx_total = 0.f;
    auto accumulate = [&](int c, const float (&d)[VEC], const float (&s)[VEC]) {
      float w[VEC];
      load_vec<VEC>(weight + c, w);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = (s[i] - row_mean) * row_rstd;
        g_total += d[i] * w[i];
        gx_total += d[i] * w[i] * xhat;
        dweight_acc[swizzled<VEC>(c + i)] += d[i] * xhat;
        dbias_acc[swizzled<VEC>(c + i)] += d[i];
      }
    };
    if constexpr (CHUNKS > 0) {
#pragma unroll
      for (int k = 0; k < CHUNKS; ++k) {
        const int c = (k * kWarpSize + lane) * VEC;
        if (c < C) {
          load_vec<VEC>(dy_row + c, dy_cache[k]);
          load_vec<VEC>(sum_row + c, sum_cache[k]);
          accumulate(c, dy_cache[k], sum_cache[k]);
        }
      }
    } else {
      for (int c = lane * VEC; c < C; c += kWarpSize * VEC) {
        load_vec<VEC>(dy_row + c, dy_cache[0]);
        load_vec<VEC>(sum_row + c, sum_cache[0]);
        accumulate(c, dy_cache[0], sum_cache[0]);
      }
    }
    const float g_mean = warp_sum(g_total) / C, gx_mean = warp_sum(gx_total) / C;

    // Pass 2: dx = dsum + rstd·(g − mean(g) − x̂·mean(g·x̂)).
    auto write_dx = [&](int c, const float (&d)[VEC], const float (&s)[VEC]) {
      float w[VEC], out[VEC];
      load_vec<VEC>(weight + c, w);
      if (dsum != nullptr) {
        load_vec<VEC>(dsum + row * C + c, out);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = (s[i] - row_mean) * row_rstd;
        out[i] += row_rstd * (d[i] * w[i] - g_mean - xhat * gx_mean);
      }
      store_vec<VEC>(dx + row * C + c, out);
      if (daddend != nullptr) store_vec<VEC>(daddend + row * C + c, out);
    };
    if constexpr (CHUNKS > 0) {
#pragma unroll
      for (int k = 0; k < CHUNKS; ++k) {
        const int c = (k * kWarpSize + lane) * VEC;
        if (c < C) write_dx(c, dy_cache[k], sum_cache[k]);
      }
    } else {
      for (int c = lane * VEC; c < C; c += kWarpSize * VEC) {
        load_vec<VEC>(dy_row + c, dy_cache[0]);
        load_vec<VEC>(sum_row + c, sum_cache[0]);
        write_dx(c, dy_cache[0], sum_cache[0]);
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
    const int slot = (c < C ? 0 : padded) + swizzled<VEC>(c < C ? c : c - C);
    float block_total = 0.f;
    for (int w = 0; w < warps; ++w) block_total += shared[w * 2 * padded + slot];
    partial[int64_t(blockIdx.x) * 2 * C + c] = block_total;
  }
}

// dweight[c] = Σ_blocks partial[b][c], dbias[c] = Σ_blocks partial[b][C + c]: one warp per column,
// lanes striding over blocks, then a fixed shuffle tree (the same order every run).
__global__ void sum_partials_kernel(const float* __restrict__ partial, int blocks, int C, float* __restrict__ dweight,
                                    float* __restrict__ dbias) {
  const int column = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (column >= 2 * C) return;
  float total = 0.f;
  for (int b = lane; b < blocks; b += kWarpSize) total += partial[int64_t(b) * 2 * C + column];
  total = warp_sum(total);
  if (lane != 0) return;
  if (column < C) {
    dweight[column] = total;
  } else {
    dbias[column - C] = total;
  }
}

int multiprocessors() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return std::max(sms, 1);
}

int backward_warps(int64_t C) {
  // 2·C floats per warp (C padded for 8-wide lanes, the larger of the kernels' paddings); stay within the
  // 48 KiB a block gets without opting in (8 warps at C = 768).
  const int64_t per_warp = 2 * int64_t(padded_columns(int(C), 8)) * int64_t(sizeof(float));
  return int(std::max<int64_t>(1, std::min<int64_t>(kMaxBackwardWarps, (48 * 1024) / per_warp)));
}

// As many blocks as are resident at once (a memory-bound kernel wants every warp slot filled, and a
// second wave would leave most SMs idle at its end), never more than there are rows for.
int backward_blocks(int64_t N, int64_t C, int blocks_per_sm) {
  const int64_t needed = (N + backward_warps(C) - 1) / backward_warps(C);
  const int64_t resident = int64_t(multiprocessors()) * std::clamp(blocks_per_sm, 1, kMaxBlocksPerSm);
  return int(std::max<int64_t>(1, std::min(needed, resident)));
}

template <typename TA, typename TY>
cudaError_t launch_forward(const float* x, const TA* addend, float* sum_out, TY* y, float* mean, float* rstd,
                           const float* weight, const float* bias, int64_t N, int C, float eps, cudaStream_t stream) {
  const dim3 block(kForwardWarps * kWarpSize), grid(unsigned((N + kForwardWarps - 1) / kForwardWarps));
  const bool vec8 = C % 8 == 0 && aligned16(x) && aligned16(addend) && aligned16(sum_out) && aligned16(y) &&
                    aligned16(weight) && aligned16(bias);
  if (vec8) {
    add_layernorm_forward_kernel<TA, TY, 8><<<grid, block, 0, stream>>>(x, addend, sum_out, y, mean, rstd, weight, bias, N, C, eps);
  } else {
    add_layernorm_forward_kernel<TA, TY, 1><<<grid, block, 0, stream>>>(x, addend, sum_out, y, mean, rstd, weight, bias, N, C, eps);
  }
  return cudaGetLastError();
}

template <typename TA>
cudaError_t dispatch_forward_output(const float* x, const TA* addend, float* sum_out, void* y, DType y_type, float* mean,
                                    float* rstd, const float* weight, const float* bias, int64_t N, int C, float eps,
                                    cudaStream_t stream) {
  if (y_type == DType::kBFloat16)
    return launch_forward(x, addend, sum_out, static_cast<__nv_bfloat16*>(y), mean, rstd, weight, bias, N, C, eps, stream);
  return launch_forward(x, addend, sum_out, static_cast<float*>(y), mean, rstd, weight, bias, N, C, eps, stream);
}

// The register-cached kernel when the row fits in at most 4 chunks of 32·8 columns (C ≤ 1024; GPT-2
// 124M has 3), else the one that re-reads.
template <typename TD>
auto backward_kernel_for(bool vec8, int C) {
  if (!vec8) return add_layernorm_backward_kernel<TD, 1, 0>;
  switch ((C + kWarpSize * 8 - 1) / (kWarpSize * 8)) {
    case 1: return add_layernorm_backward_kernel<TD, 8, 1>;
    case 2: return add_layernorm_backward_kernel<TD, 8, 2>;
    case 3: return add_layernorm_backward_kernel<TD, 8, 3>;
    case 4: return add_layernorm_backward_kernel<TD, 8, 4>;
    default: return add_layernorm_backward_kernel<TD, 8, 0>;
  }
}

template <typename TD>
cudaError_t launch_backward(const TD* dy, const float* dsum, const float* sum, const float* mean, const float* rstd,
                            const float* weight, float* dx, __nv_bfloat16* daddend, float* dweight, float* dbias,
                            float* partial, int64_t N, int C, cudaStream_t stream) {
  const int warps = backward_warps(C);
  const bool vec8 = C % 8 == 0 && aligned16(dy) && aligned16(dsum) && aligned16(sum) && aligned16(weight) &&
                    aligned16(dx) && aligned16(daddend);
  const size_t shared_bytes = size_t(warps) * 2 * padded_columns(C, vec8 ? 8 : 1) * sizeof(float);
  auto kernel = backward_kernel_for<TD>(vec8, C);
  int blocks_per_sm = 1;
  if (cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, warps * kWarpSize,
                                                                      shared_bytes);
      err != cudaSuccess) {
    return err;
  }
  const int blocks = backward_blocks(N, C, blocks_per_sm);
  kernel<<<blocks, warps * kWarpSize, shared_bytes, stream>>>(dy, dsum, sum, mean, rstd, weight, dx, daddend, partial,
                                                               N, C);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  const int columns_per_block = 8;  // one warp each
  sum_partials_kernel<<<(2 * C + columns_per_block - 1) / columns_per_block, columns_per_block * kWarpSize, 0, stream>>>(
      partial, blocks, C, dweight, dbias);
  return cudaGetLastError();
}

}  // namespace

cudaError_t add_layernorm_forward(const float* x, const void* addend, DType addend_type, float* sum_out, void* y,
                                  DType y_type, float* mean, float* rstd, const float* weight, const float* bias,
                                  int64_t N, int64_t C, float eps, cudaStream_t stream) {
  if (C < 1 || C > kLayerNormMaxC) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  if (addend != nullptr && addend_type == DType::kBFloat16)
    return dispatch_forward_output(x, static_cast<const __nv_bfloat16*>(addend), sum_out, y, y_type, mean, rstd, weight,
                                   bias, N, int(C), eps, stream);
  return dispatch_forward_output(x, static_cast<const float*>(addend), sum_out, y, y_type, mean, rstd, weight, bias, N,
                                 int(C), eps, stream);
}

cudaError_t add_layernorm_backward(const void* dy, DType dy_type, const float* dsum, const float* sum,
                                   const float* mean, const float* rstd, const float* weight, float* dx,
                                   void* daddend_bf16, float* dweight, float* dbias, float* partial, int64_t N,
                                   int64_t C, cudaStream_t stream) {
  if (C < 1 || C > kLayerNormMaxC) return cudaErrorInvalidValue;
  if (N == 0) {
    // No rows: the weight gradients are zero.
    if (cudaError_t err = cudaMemsetAsync(dweight, 0, C * sizeof(float), stream); err != cudaSuccess) return err;
    return cudaMemsetAsync(dbias, 0, C * sizeof(float), stream);
  }
  auto* daddend = static_cast<__nv_bfloat16*>(daddend_bf16);
  if (dy_type == DType::kBFloat16)
    return launch_backward(static_cast<const __nv_bfloat16*>(dy), dsum, sum, mean, rstd, weight, dx, daddend, dweight,
                           dbias, partial, N, int(C), stream);
  return launch_backward(static_cast<const float*>(dy), dsum, sum, mean, rstd, weight, dx, daddend, dweight, dbias,
                         partial, N, int(C), stream);
}

int64_t layernorm_backward_partial_floats(int64_t N, int64_t C) {
  return int64_t(backward_blocks(N, C, kMaxBlocksPerSm)) * 2 * C;  // the most blocks a launch can have
}

}  // namespace ratio::kernels
