// Top-K statistics of attention rows without storing them (kernels.h, "ra_topk.cu"): RA-CT's K largest
// weights of each head's row and mechanism 2's K largest head-averaged weights, with their key
// positions, which is all the backward of `topk` modes needs to know (issue 11). Given the row's
// log-sum-exp (the band kernel's merged one), a weight is P = exp(S' − lse) with S' recomputed:
//   S'[i, j] = scale·(q_i·k_j + alpha·q_j·k_i)   for 0 ≤ i − j ≤ window (window 0: every j ≤ i),
//   S'[i, j] = scale·q_i·k_j                      for the other j ≤ i (and without alpha: all of them).
// One warp per query row and all its heads: lane ℓ takes key j0 + ℓ of each 32-key chunk and computes
// every head's P for it; each of the H + 1 lists (the heads', then the heads' mean) keeps its K best
// entries in lanes 0..K−1, sorted, lane r holding rank r. A chunk's candidates enter a list only if
// they beat its K-th entry, best first (one warp arg-max per insertion).
// Correctness first: the dot products run on CUDA cores in fp32 (H·Dk FMAs per key and lane).

#include <cstdint>

#include <cuda_bf16.h>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

using bf16 = __nv_bfloat16;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kEmpty = -1.f;  // below every weight: an unfilled list entry, or a key that is not visible

// Inserts this lane's candidate (value, key) into the list held in `top_val`/`top_key` (lane r: rank r
// of K), for as long as some lane's candidate beats the K-th entry. Every lane of the warp calls it.
__device__ void merge_into_list(float& top_val, int& top_key, float candidate, int candidate_key, int K, int lane) {
  float kth = __shfl_sync(kFullMask, top_val, K - 1);
  while (__ballot_sync(kFullMask, candidate > kth) != 0) {
    // The best candidate; ties go to the lower lane (the earlier key of the chunk).
    float best = candidate > kth ? candidate : kEmpty;
    int best_lane = lane;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(kFullMask, best, offset);
      const int other_lane = __shfl_xor_sync(kFullMask, best_lane, offset);
      if (other > best || (other == best && other_lane < best_lane)) {
        best = other;
        best_lane = other_lane;
      }
    }
    const int best_key = __shfl_sync(kFullMask, candidate_key, best_lane);
    // Entries at least as large keep their ranks (lanes 0..position−1); the rest move down one.
    const int position = __popc(__ballot_sync(kFullMask, lane < K && top_val >= best));
    const float moved_val = __shfl_up_sync(kFullMask, top_val, 1);
    const int moved_key = __shfl_up_sync(kFullMask, top_key, 1);
    if (lane < K && lane > position) {
      top_val = moved_val;
      top_key = moved_key;
    }
    if (lane == position) {
      top_val = best;
      top_key = best_key;
    }
    if (lane == best_lane) candidate = kEmpty;
    kth = __shfl_sync(kFullMask, top_val, K - 1);
  }
}

// The dot product of a row in shared memory (fp32; every lane reads the same element, a broadcast)
// and each lane's own bf16 row in global memory. Dk a multiple of 8, the global row 16-byte aligned.
__device__ inline float dot_row(const float* shared_row, const bf16* global_row, int Dk) {
  float acc = 0.f;
  for (int d = 0; d < Dk; d += 8) {
    float g[8];
    load_vec<8>(global_row + d, g);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += shared_row[d + e] * g[e];
  }
  return acc;
}

// grid (T, B), one warp a block. Shared: q_i of every head and k_i of every key head, fp32.
__global__ void ra_topk_stats_kernel(RaTopkArgs args) {
  extern __shared__ float shared[];
  const int i = blockIdx.x, b = blockIdx.y, lane = threadIdx.x;
  const int H = args.H, Hk = args.heads_k, Dk = args.dk, T = args.T, K = args.K;
  float* q_i = shared;             // [H][Dk]
  float* k_i = shared + H * Dk;    // [Hk][Dk]
  const bf16* q_base = static_cast<const bf16*>(args.q.data) + b * args.q.sb;
  const bf16* k_base = static_cast<const bf16*>(args.k.data) + b * args.k.sb;
  for (int e = lane; e < H * Dk; e += kWarpSize)
    q_i[e] = __bfloat162float(q_base[(e / Dk) * args.q.sh + int64_t(i) * args.q.st + e % Dk]);
  for (int e = lane; e < Hk * Dk; e += kWarpSize)
    k_i[e] = __bfloat162float(k_base[(e / Dk) * args.k.sh + int64_t(i) * args.k.st + e % Dk]);
  __syncwarp();

  const float alpha = args.alpha != nullptr ? *args.alpha : 0.f;
  float lse[kRaTopkMaxHeads];
#pragma unroll
  for (int h = 0; h < kRaTopkMaxHeads; ++h)
    lse[h] = h < H ? args.lse[(int64_t(b) * H + h) * T + i] : 0.f;

  // Lists 0..H−1: the heads' rows; list H: the heads' mean. Lane r holds rank r of each (r < K).
  float top_val[kRaTopkMaxHeads + 1];
  int top_key[kRaTopkMaxHeads + 1];
#pragma unroll
  for (int l = 0; l <= kRaTopkMaxHeads; ++l) {
    top_val[l] = kEmpty;
    top_key[l] = -1;
  }

  for (int j0 = 0; j0 <= i; j0 += kWarpSize) {
    const int j = j0 + lane;
    const bool visible = j <= i;
    const bool reciprocal = visible && args.alpha != nullptr && (args.window == 0 || i - j <= args.window);
    float p[kRaTopkMaxHeads];
    float mean = 0.f;
#pragma unroll
    for (int h = 0; h < kRaTopkMaxHeads; ++h) {
      p[h] = kEmpty;
      if (h >= H || !visible) continue;
      const int hk = Hk == 1 ? 0 : h;
      float s = dot_row(q_i + h * Dk, k_base + hk * args.k.sh + int64_t(j) * args.k.st, Dk);
      if (reciprocal)  // S[j, i] = q_j·k_i: the key at the query's position against the key's query
        s += alpha * dot_row(k_i + hk * Dk, q_base + h * args.q.sh + int64_t(j) * args.q.st, Dk);
      p[h] = __expf(s * args.scale - lse[h]);
      mean += p[h];
    }
    mean = visible ? mean / H : kEmpty;
#pragma unroll
    for (int h = 0; h < kRaTopkMaxHeads; ++h)
      if (h < H) merge_into_list(top_val[h], top_key[h], p[h], j, K, lane);
    // List H is the mean's. H is known at run time only, and register arrays want constant indices:
    // the unrolled walk finds it.
#pragma unroll
    for (int l = 0; l <= kRaTopkMaxHeads; ++l)
      if (l == H) merge_into_list(top_val[l], top_key[l], mean, j, K, lane);
  }

  if (lane >= K) return;
#pragma unroll
  for (int l = 0; l <= kRaTopkMaxHeads; ++l) {
    if (l > H) continue;
    const bool filled = top_val[l] > kEmpty;  // rows with fewer than K visible keys keep empty entries
    const float value = filled ? top_val[l] : 0.f;
    const int key = filled ? top_key[l] : -1;
    if (l < H) {
      const int64_t at = ((int64_t(b) * H + l) * T + i) * K + lane;
      args.head_val[at] = value;
      args.head_key[at] = key;
    } else {
      const int64_t at = (int64_t(b) * T + i) * K + lane;
      args.mean_val[at] = value;
      args.mean_key[at] = key;
    }
  }
}

}  // namespace

cudaError_t ra_topk_stats(const RaTopkArgs& args, cudaStream_t stream) {
  if (args.H < 1 || args.H > kRaTopkMaxHeads || (args.heads_k != 1 && args.heads_k != args.H) || args.dk < 8 ||
      args.dk % 8 != 0 || args.dk > kRaTopkMaxDk || args.K < 1 || args.K > kWarpSize || args.window < 0)
    return cudaErrorInvalidValue;
  if (args.B == 0 || args.T == 0) return cudaSuccess;
  const size_t shared_bytes = size_t(args.H + args.heads_k) * args.dk * sizeof(float);
  ra_topk_stats_kernel<<<dim3(args.T, args.B), kWarpSize, shared_bytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace ratio::kernels
