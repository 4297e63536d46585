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

constexpr int kHalfWarp = kWarpSize / 2;
constexpr int kDkPerLane = kRaSparseMaxDk / kHalfWarp;  // 8: one 16-byte load of a bf16 row

static_assert(kDkPerLane == 8, "a lane's share of a row is one 16-byte vector");

// Σ over the 16 lanes of each half-warp (each half gets its own sum).
__device__ inline float half_warp_sum(float v) {
#pragma unroll
  for (int offset = kHalfWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// mine·row[d0 .. d0 + 7], row bf16 and 16-byte aligned.
__device__ inline float dot8(const float (&mine)[kDkPerLane], const bf16* row) {
  float x[kDkPerLane];
  load_vec<kDkPerLane>(row, x);
  float acc = 0.f;
#pragma unroll
  for (int e = 0; e < kDkPerLane; ++e) acc = fmaf(mine[e], x[e], acc);
  return acc;
}

// grid (T, B), one warp per head: warp h owns row (b, h, i). The row's entries are taken two at a
// time, a half-warp each: its 16 lanes read the entry's k_j (and, in the band, q_j) together, 8
// elements a lane, and sum their dot products by shuffles. (A lane per entry, each reading its own
// rows, was bound by L1: ncu had every load instruction touching 32 rows.)
__global__ void ra_sparse_backward_kernel(RaSparseArgs a) {
  const int i = blockIdx.x, b = blockIdx.y, h = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int H = a.H, T = a.T, Dk = a.dk, K = a.K;
  const int hk = a.heads_k == 1 ? 0 : h;
  const bf16* q_head = static_cast<const bf16*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const bf16* k_head = static_cast<const bf16*>(a.k.data) + b * a.k.sb + hk * a.k.sh;
  const int half = lane / kHalfWarp, d0 = kDkPerLane * (lane % kHalfWarp);  // this lane's columns d0 .. d0 + 7
  const bool has_columns = d0 < Dk;
  float q_i[kDkPerLane] = {}, k_i[kDkPerLane] = {};
  if (has_columns) {
    load_vec<kDkPerLane>(q_head + int64_t(i) * a.q.st + d0, q_i);
    load_vec<kDkPerLane>(k_head + int64_t(i) * a.k.st + d0, k_i);
  }
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
  float shift = 0.f, dalpha = 0.f;  // summed in each half's lane 0
  for (int e0 = 0; e0 < 2 * K; e0 += 2) {  // warp-uniform: every lane reaches every shuffle
    const int e = e0 + half;               // this half's entry (2K is even)
    const int j = __shfl_sync(kFullMask, key, e);
    const float c = __shfl_sync(kFullMask, total, e);
    const bool leads = __shfl_sync(kFullMask, leader, e);
    const bool band = leads && a.alpha != nullptr && (a.window == 0 || i - j <= a.window);
    float qk = leads && has_columns ? dot8(q_i, k_head + int64_t(j) * a.k.st + d0) : 0.f;  // q_i·k_j
    float kq = band && has_columns ? dot8(k_i, q_head + int64_t(j) * a.q.st + d0) : 0.f;   // q_j·k_i
    qk = half_warp_sum(qk);
    kq = half_warp_sum(kq);
    if (leads && lane % kHalfWarp == 0) {
      const float g = __expf(a.scale * (qk + alpha * kq) - lse) * c;  // G_ij = P_ij·c
      shift += g;
      if (band) dalpha += a.scale * g * kq;
      m[int64_t(i) * a.m_si + j] = __float2bfloat16(j == i && band ? (1.f + alpha) * g : g);
      if (band && j < i) m[int64_t(j) * a.m_si + i] = __float2bfloat16(alpha * g);
    }
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
