// Bias gradients of the linears (kernels.h): GELU (tanh form) backward fused with the bias gradient of
// the MLP's c_fc, and the plain column sum for c_attn and the c_projs. The first replaces ATen's
// gelu_backward and the column sum that linear's backward runs for its bias: one read of dh and pre
// and one write of dpre instead of those plus a second full read of dpre; the second replaces ATen's
// reduction (about 3x slower on GPT-2's [16384, 768] and [16384, 2304]). Reference ops:
// tests/model/fused_ops_test.cpp. c_fc's forward is matmul.cu's GELU epilogue; the other linears'
// forwards stay ATen's (cuBLASLt's bias epilogue).
#include <algorithm>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kColumnThreads = 32;  // threadIdx.x: one VEC-wide column group each
constexpr int kRowThreads = 8;      // threadIdx.y: rows interleaved within a block
constexpr int kBlocksPerSm = 8;     // 256-thread blocks resident per SM: one wave fills the GPU

// The hardware's tanh (one MUFU instruction, relative error below 2^-10.9): the derivative is rounded
// to bf16 (2^-8) right after, and the accurate tanhf made the kernel compute-bound.
__device__ inline float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// gelu_tanh'(x), the formula of ATen's GeluBackward for approximate = "tanh".
__device__ inline float gelu_tanh_derivative(float x) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2/pi)
  constexpr float kKappa = 0.044715f;
  const float inner = kBeta * (x + kKappa * x * x * x);
  const float t = fast_tanh(inner);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kBeta * (1.f + 3.f * kKappa * x * x);
}

// Block (32, 8) covers 32·VEC columns; its 8 row lanes walk rows blockIdx.y·8 + ty, strided by the
// grid. Column sums stay in registers, then the 8 row lanes are summed in order into partial[blockIdx.y].
// GELU: dpre = dh·gelu'(pre) is written and summed; else dh itself is summed (pre, dpre unused).
template <int VEC, bool GELU>
__global__ void bias_grad_kernel(const __nv_bfloat16* __restrict__ dh, const __nv_bfloat16* __restrict__ pre,
                                 __nv_bfloat16* __restrict__ dpre, float* __restrict__ partial, int64_t N, int M) {
  __shared__ float column_sums[kRowThreads][kColumnThreads * VEC];
  const int col = (blockIdx.x * kColumnThreads + threadIdx.x) * VEC;
  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  if (col < M) {
    for (int64_t row = int64_t(blockIdx.y) * kRowThreads + threadIdx.y; row < N; row += int64_t(gridDim.y) * kRowThreads) {
      float d[VEC];
      load_vec<VEC>(dh + row * M + col, d);
      if constexpr (GELU) {
        float x[VEC];
        load_vec<VEC>(pre + row * M + col, x);
#pragma unroll
        for (int i = 0; i < VEC; ++i) d[i] *= gelu_tanh_derivative(x[i]);
        store_vec<VEC>(dpre + row * M + col, d);
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += d[i];
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) column_sums[threadIdx.y][threadIdx.x * VEC + i] = acc[i];
  __syncthreads();
  if (threadIdx.y != 0 || col >= M) return;
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    float total = 0.f;
    for (int r = 0; r < kRowThreads; ++r) total += column_sums[r][threadIdx.x * VEC + i];
    partial[int64_t(blockIdx.y) * M + col + i] = total;
  }
}

// The second pass: dbias[m] = Σ_g partial[g, m]. A block takes kColumnThreads columns (coalesced
// reads) and kRowThreads interleaved slices of the groups, then adds the slices in order: a GPT-2
// width of 768 has 352 groups, which one thread per column summed alone in ~10 µs on 3 blocks.
__global__ void sum_row_groups_kernel(const float* __restrict__ partial, int groups, int M, float* __restrict__ dbias) {
  __shared__ float slice_sums[kRowThreads][kColumnThreads];
  const int m = blockIdx.x * kColumnThreads + threadIdx.x;
  float total = 0.f;
  if (m < M)
    for (int g = threadIdx.y; g < groups; g += kRowThreads) total += partial[int64_t(g) * M + m];
  slice_sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y != 0 || m >= M) return;
  total = 0.f;
  for (int r = 0; r < kRowThreads; ++r) total += slice_sums[r][threadIdx.x];
  dbias[m] = total;
}

int column_blocks(int64_t M, int vec) { return int((M + kColumnThreads * vec - 1) / (kColumnThreads * vec)); }

// Row groups (gridDim.y) so that one wave of blocks fills every SM; never more than there are rows for.
int row_groups(int64_t N, int64_t M, int vec) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t wanted = (int64_t(std::max(sms, 1)) * kBlocksPerSm + column_blocks(M, vec) - 1) / column_blocks(M, vec);
  return int(std::clamp<int64_t>(wanted, 1, (N + kRowThreads - 1) / kRowThreads));
}

template <bool GELU>
cudaError_t launch_bias_grad(const void* dh, const void* pre, void* dpre, float* dbias, float* partial, int64_t N,
                             int64_t M, cudaStream_t stream) {
  if (M < 1 || M > (int64_t(1) << 30)) return cudaErrorInvalidValue;
  if (N == 0) return cudaMemsetAsync(dbias, 0, M * sizeof(float), stream);
  const auto* dh_bf16 = static_cast<const __nv_bfloat16*>(dh);
  const auto* pre_bf16 = static_cast<const __nv_bfloat16*>(pre);
  auto* dpre_bf16 = static_cast<__nv_bfloat16*>(dpre);
  const bool vec8 = M % 8 == 0 && aligned16(dh) && aligned16(pre) && aligned16(dpre);
  const int vec = vec8 ? 8 : 1;
  const int groups = row_groups(N, M, vec);
  const dim3 block(kColumnThreads, kRowThreads), grid(column_blocks(M, vec), groups);
  if (vec8) {
    bias_grad_kernel<8, GELU><<<grid, block, 0, stream>>>(dh_bf16, pre_bf16, dpre_bf16, partial, N, int(M));
  } else {
    bias_grad_kernel<1, GELU><<<grid, block, 0, stream>>>(dh_bf16, pre_bf16, dpre_bf16, partial, N, int(M));
  }
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  sum_row_groups_kernel<<<int((M + kColumnThreads - 1) / kColumnThreads), dim3(kColumnThreads, kRowThreads), 0, stream>>>(
      partial, groups, int(M), dbias);
  return cudaGetLastError();
}

}  // namespace

cudaError_t gelu_backward_bias_grad(const void* dh, const void* pre, void* dpre, float* dbias, float* partial,
                                    int64_t N, int64_t M, cudaStream_t stream) {
  return launch_bias_grad<true>(dh, pre, dpre, dbias, partial, N, M, stream);
}

cudaError_t bias_grad(const void* dy, float* dbias, float* partial, int64_t N, int64_t M, cudaStream_t stream) {
  return launch_bias_grad<false>(dy, nullptr, nullptr, dbias, partial, N, M, stream);
}

int64_t gelu_backward_partial_floats(int64_t N, int64_t M) {
  return int64_t(std::max(row_groups(N, M, 8), row_groups(N, M, 1))) * M;
}

}  // namespace ratio::kernels
