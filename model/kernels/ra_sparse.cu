// The sparse part of the top-K statistics' backward (kernels.h, "ra_sparse.cu"; issue 11). RA-CT's
// `topk` statistic and mechanism 2's `topk` weights read attention weights at K keys per row, so
// their gradient reaches each row's dP at those keys only: dP_hij += c for the entries below. With
// the softmax's Jacobian, dS = P·(dP − D), D_i = Σ_j P_ij·dP_ij, that splits into
//   - the dense flash backward with D shifted by shift_hi = Σ_entries P_hij·c (written here), and
//   - G_hij = P_hij·c at the entries: the sparse part of dS' (tests/model/ra_sparse_grad_test.cpp).
// G reaches q, k and alpha through S'_ij = scale·(q_i·k_j + alpha·[band]·q_j·k_i). This kernel writes
// G into a dense, zeroed bf16 matrix M = G + alpha·(G∘band)ᵀ, so two batched matmuls finish the job:
// dq += scale·M·K and dk += scale·Mᵀ·Q; and alpha's share, scale·Σ_band G_ij·q_j·k_i, per row.
// Entries of a row: its head's top-K keys, c = d_head_val (RA-CT), and the heads' mean's top-K keys,
// c = d_mean_val / H (mechanism 2); a key in both lists gets the sum. Every position of M is written
// by one thread at most: (i, j ≤ i) by row i's warp, (j, i > j) by row i's warp as the transposed
// entry, and the diagonal holds both. P is recomputed as ra_topk.cu does, from q, k and the lse.

#include <cstdint>

#include <cuda_bf16.h>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

using bf16 = __nv_bfloat16;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kDkPerLane = kRaSparseMaxDk / kWarpSize;

// This lane's elements d = lane + 32·e of a bf16 row (zero past Dk).
__device__ inline void load_lane_elements(const bf16* row, int Dk, int lane, float (&v)[kDkPerLane]) {
#pragma unroll
  for (int e = 0; e < kDkPerLane; ++e) {
    const int d = lane + kWarpSize * e;
    v[e] = d < Dk ? __bfloat162float(row[d]) : 0.f;
  }
}

__device__ inline float warp_dot(const float (&mine)[kDkPerLane], const bf16* row, int Dk, int lane) {
  float acc = 0.f;
#pragma unroll
  for (int e = 0; e < kDkPerLane; ++e) {
    const int d = lane + kWarpSize * e;
    if (d < Dk) acc += mine[e] * __bfloat162float(row[d]);
  }
  return warp_sum(acc);
}

// grid (T, B), one warp per head: warp h owns row (b, h, i).
__global__ void ra_sparse_backward_kernel(RaSparseArgs a) {
  const int i = blockIdx.x, b = blockIdx.y, h = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int H = a.H, T = a.T, Dk = a.dk, K = a.K;
  const int hk = a.heads_k == 1 ? 0 : h;
  const bf16* q_head = static_cast<const bf16*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const bf16* k_head = static_cast<const bf16*>(a.k.data) + b * a.k.sb + hk * a.k.sh;
  float q_i[kDkPerLane], k_i[kDkPerLane];
  load_lane_elements(q_head + int64_t(i) * a.q.st, Dk, lane, q_i);
  load_lane_elements(k_head + int64_t(i) * a.k.st, Dk, lane, k_i);
  const int64_t row = (int64_t(b) * H + h) * T + i;

  // Lanes 0..K−1: the head's list; lanes K..2K−1: the mean's. Key −1: no entry.
  int key = -1;
  float coef = 0.f;
  if (lane < K && a.d_head_val != nullptr) {
    key = a.head_key[row * K + lane];
    coef = a.d_head_val[row * K + lane];
  } else if (lane >= K && lane < 2 * K && a.d_mean_val != nullptr) {
    const int64_t at = (int64_t(b) * T + i) * K + lane - K;
    key = a.mean_key[at];
    coef = a.d_mean_val[at] / H;
  }
  // A key's total coefficient, held by the lowest lane that has it.
  float total = 0.f;
  bool leader = key >= 0;
  for (int other = 0; other < 2 * K; ++other) {
    const int other_key = __shfl_sync(kFullMask, key, other);
    const float other_coef = __shfl_sync(kFullMask, coef, other);
    if (other_key == key) {
      total += other_coef;
      if (other < lane) leader = false;
    }
  }

  const float alpha = a.alpha != nullptr ? *a.alpha : 0.f;
  const float lse = a.lse[row];
  bf16* m = static_cast<bf16*>(a.m) + b * a.m_sb + h * a.m_sh;
  float shift = 0.f, dalpha = 0.f;
  for (int e = 0; e < 2 * K; ++e) {  // warp-uniform: every lane takes every entry
    const int j = __shfl_sync(kFullMask, key, e);
    const float c = __shfl_sync(kFullMask, total, e);
    if (!__shfl_sync(kFullMask, leader, e)) continue;
    const bool band = a.alpha != nullptr && (a.window == 0 || i - j <= a.window);
    const float qk = warp_dot(q_i, k_head + int64_t(j) * a.k.st, Dk, lane);                 // q_i·k_j
    const float kq = band ? warp_dot(k_i, q_head + int64_t(j) * a.q.st, Dk, lane) : 0.f;   // q_j·k_i
    const float g = __expf(a.scale * (qk + alpha * kq) - lse) * c;                         // G_ij = P_ij·c
    shift += g;
    if (band) dalpha += a.scale * g * kq;
    if (lane == 0) {
      m[int64_t(i) * a.m_si + j] = __float2bfloat16(j == i && band ? (1.f + alpha) * g : g);
      if (band && j < i) m[int64_t(j) * a.m_si + i] = __float2bfloat16(alpha * g);
    }
  }
  if (lane == 0) {
    a.d_shift[row] = shift;
    a.dalpha_row[row] = dalpha;
  }
}

}  // namespace

cudaError_t ra_sparse_backward(const RaSparseArgs& args, cudaStream_t stream) {
  if (args.H < 1 || args.H > kRaSparseMaxHeads || (args.heads_k != 1 && args.heads_k != args.H) || args.dk < 1 ||
      args.dk > kRaSparseMaxDk || args.K < 1 || 2 * args.K > kWarpSize || args.window < 0)
    return cudaErrorInvalidValue;
  if (args.B == 0 || args.T == 0) return cudaSuccess;
  ra_sparse_backward_kernel<<<dim3(args.T, args.B), args.H * kWarpSize, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace ratio::kernels
