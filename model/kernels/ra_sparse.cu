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

// mine·row over Dk elements: `mine` fp32 in shared memory, `row` bf16 in global memory, 16-byte aligned.
__device__ inline float dot_row(const float* mine, const bf16* row, int Dk) {
  float acc = 0.f;
  for (int d0 = 0; d0 < Dk; d0 += 8) {
    float x[8], y[8];
    load_vec<8>(row + d0, x);
    load_vec<8>(mine + d0, y);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(x[e], y[e], acc);
  }
  return acc;
}

// grid (T, B), one warp per head: warp h owns row (b, h, i) and lane e < 2K its entry e, computing
// that entry's dot products alone against q_i and k_i staged in shared memory. (A warp-wide dot per
// entry, reduced across the lanes, took four times the instructions.)
__global__ void __launch_bounds__(kRaSparseMaxHeads * kWarpSize) ra_sparse_backward_kernel(RaSparseArgs a) {
  __shared__ __align__(16) float s_rows[kRaSparseMaxHeads][2][kRaSparseMaxDk];  // q_i and k_i per warp
  const int i = blockIdx.x, b = blockIdx.y, h = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int H = a.H, T = a.T, Dk = a.dk, K = a.K;
  const int hk = a.heads_k == 1 ? 0 : h;
  const bf16* q_head = static_cast<const bf16*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const bf16* k_head = static_cast<const bf16*>(a.k.data) + b * a.k.sb + hk * a.k.sh;
  float* q_i = s_rows[h][0];
  float* k_i = s_rows[h][1];
  for (int d = lane; d < Dk; d += kWarpSize) {
    q_i[d] = __bfloat162float(q_head[int64_t(i) * a.q.st + d]);
    k_i[d] = __bfloat162float(k_head[int64_t(i) * a.k.st + d]);
  }
  __syncwarp();
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

  float shift = 0.f, dalpha = 0.f;
  if (leader) {
    const int j = key;
    const float alpha = a.alpha != nullptr ? *a.alpha : 0.f;
    const bool band = a.alpha != nullptr && (a.window == 0 || i - j <= a.window);
    const float qk = dot_row(q_i, k_head + int64_t(j) * a.k.st, Dk);                 // q_i·k_j
    const float kq = band ? dot_row(k_i, q_head + int64_t(j) * a.q.st, Dk) : 0.f;   // q_j·k_i
    const float g = __expf(a.scale * (qk + alpha * kq) - a.lse[row]) * total;       // G_ij = P_ij·c
    shift = g;
    if (band) dalpha = a.scale * g * kq;
    bf16* m = static_cast<bf16*>(a.m) + b * a.m_sb + h * a.m_sh;
    m[int64_t(i) * a.m_si + j] = __float2bfloat16(j == i && band ? (1.f + alpha) * g : g);
    if (band && j < i) m[int64_t(j) * a.m_si + i] = __float2bfloat16(alpha * g);
  }
  shift = warp_sum(shift);
  dalpha = warp_sum(dalpha);
  if (lane == 0) {
    a.d_shift[row] = shift;
    a.dalpha_row[row] = dalpha;
  }
}

// grid (ceil(rows·H·B / 8)), 8 warps: warp w takes row (b, h, first_row + t) of the far part.
__global__ void ra_shift_output_kernel(RaShiftOutputArgs a) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (w >= int64_t(a.B) * a.H * a.rows) return;
  const int t = a.first_row + int(w % a.rows), h = int(w / a.rows % a.H), b = int(w / a.rows / a.H);
  const bf16* dout = static_cast<const bf16*>(a.dout.data) + b * a.dout.sb + h * a.dout.sh + t * a.dout.st;
  const bf16* out = static_cast<const bf16*>(a.out.data) + b * a.out.sb + h * a.out.sh + t * a.out.st;
  bf16* shifted = static_cast<bf16*>(a.shifted.data) + b * a.shifted.sb + h * a.shifted.sh + t * a.shifted.st;
  float norm2 = 0.f;
  for (int d = lane; d < a.Dv; d += kWarpSize) {
    const float g = __bfloat162float(dout[d]);
    norm2 += g * g;
  }
  norm2 = warp_sum(norm2);
  const float factor = norm2 > 0.f ? a.shift[(int64_t(b) * a.H + h) * a.T + t] / norm2 : 0.f;
  for (int d = lane; d < a.Dv; d += kWarpSize)
    shifted[d] = __float2bfloat16(__bfloat162float(out[d]) + factor * __bfloat162float(dout[d]));
}

}  // namespace

cudaError_t ra_shift_output(const RaShiftOutputArgs& args, cudaStream_t stream) {
  if (args.B < 0 || args.H < 1 || args.rows < 0 || args.Dv < 1 || args.first_row < 0 ||
      args.first_row + args.rows > args.T)
    return cudaErrorInvalidValue;
  const int64_t warps = int64_t(args.B) * args.H * args.rows;
  if (warps == 0) return cudaSuccess;
  constexpr int kBlockWarps = 8;
  ra_shift_output_kernel<<<unsigned((warps + kBlockWarps - 1) / kBlockWarps), kBlockWarps * kWarpSize, 0, stream>>>(
      args);
  return cudaGetLastError();
}

cudaError_t ra_sparse_backward(const RaSparseArgs& args, cudaStream_t stream) {
  if (args.H < 1 || args.H > kRaSparseMaxHeads || (args.heads_k != 1 && args.heads_k != args.H) || args.dk < 1 ||
      args.dk > kRaSparseMaxDk || args.dk % 8 != 0 || args.K < 1 || 2 * args.K > kWarpSize || args.window < 0)
    return cudaErrorInvalidValue;
  if (args.B == 0 || args.T == 0) return cudaSuccess;
  ra_sparse_backward_kernel<<<dim3(args.T, args.B), args.H * kWarpSize, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace ratio::kernels
