// Top-K statistics of attention rows without storing them (kernels.h, "ra_topk.cu"): RA-CT's K largest
// weights of each head's row and mechanism 2's K largest head-averaged weights, with their key
// positions, which is all the backward of `topk` modes needs to know (issue 11). Given the row's
// log-sum-exp (the band kernel's merged one), a weight is P = exp(S' − lse) with S' recomputed:
//   S'[i, j] = scale·(q_i·k_j + alpha·q_j·k_i)   for 0 ≤ i − j ≤ window (window 0: every j ≤ i),
//   S'[i, j] = scale·q_i·k_j                      for the other j ≤ i (and without alpha: all of them).
// A block takes 16 query rows of one batch row and every head, and walks the visible keys in tiles of
// 32: small enough that two blocks share an SM at MLA's width (the kernel is latency-bound; with
// 64-key tiles one block of six warps left the schedulers idle two cycles in three). Per tile the
// score products run on tensor cores (WMMA, bf16 in, fp32 accumulate, as ra_band.cu computes them):
// each head's 16×32 tile (under MLA a warp takes a head's whole tile, each query fragment loaded once),
// and inside the band the reciprocal products K_rows·Q_tileᵀ, head by head. The scale is applied with
// the exponent. Then thread (r, h) turns its row of the tile into weights and keeps its list's K best
// in registers, sorted (ties keep the earlier key), in lists of 8 or 16 entries (the least that holds
// K); the heads' mean of each weight follows, its row shared out among all the block's threads for
// that row (H or more parts, one list each, merged at the end; ties between them keep the lower
// part's). Without head_val only the mean's lists are kept (mechanism 2 without RA-CT).
// A thread first marks the columns that beat its list's current K-th value and offers only those,
// afterwards: a warp then runs as many insertions as its busiest thread has candidates, where offering
// column by column ran one whenever any of its 32 threads had one (nearly always, early in a row).

#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include "model/kernels/kernels.h"
#include "model/kernels/ra_rows.cuh"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int kRows = 16;               // query rows per block (one WMMA tile high)
constexpr int kKeys = 32;               // keys per tile
constexpr int kColTiles = kKeys / 16;   // 16-wide column tiles of a score tile
constexpr int kLdScore = kKeys + 4;     // fp32 score rows (float4 reads of a warp's 32 rows: no bank conflict)
constexpr int kMaxThreads = kRows * kRaTopkMaxHeads;
constexpr float kEmpty = -1.f;          // below every weight: an unfilled list entry

using ra_wmma::FragC;

// A sorted list of the best (value, key) pairs seen, in registers: KCAP entries (8 or 16, the least
// that holds K), of which the first K count.
template <int KCAP>
struct TopList {
  float val[KCAP];
  int key[KCAP];
  float kth;  // the K-th value: a candidate must beat it

  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int e = 0; e < KCAP; ++e) {
      val[e] = kEmpty;
      key[e] = -1;
    }
    kth = kEmpty;
  }

  // Strictly better candidates only, so an equal value already listed (an earlier key) stays ahead.
  __device__ __forceinline__ void offer(float v, int j, int K) {
    if (!(v > kth)) return;
#pragma unroll
    for (int e = 0; e < KCAP; ++e) {
      if (v > val[e]) {
        const float tv = val[e];
        const int tk = key[e];
        val[e] = v;
        key[e] = j;
        v = tv;
        j = tk;
      }
    }
    // The list is sorted, so its K-th value is the least of the first K. (Picking val[K − 1] directly
    // compiles to an indexed load, which puts the list in local memory.)
    kth = val[0];
#pragma unroll
    for (int e = 1; e < KCAP; ++e) kth = e < K ? fminf(kth, val[e]) : kth;
  }

  // Entries 0..K−1 as they are (unfilled ones too), for another list to offer.
  __device__ __forceinline__ void store(float* out_val, int* out_key, int K) const {
#pragma unroll
    for (int e = 0; e < KCAP; ++e) {
      if (e < K) {
        out_val[e] = val[e];
        out_key[e] = key[e];
      }
    }
  }

  // Entries 0..K−1 to out_val/out_key; unfilled ones as value 0, key −1.
  __device__ __forceinline__ void write(float* out_val, int32_t* out_key, int K) const {
#pragma unroll
    for (int e = 0; e < KCAP; ++e) {
      const bool filled = val[e] > kEmpty;
      if (e < K) {
        out_val[e] = filled ? val[e] : 0.f;
        out_key[e] = filled ? key[e] : -1;
      }
    }
  }
};

// Offers vals[c] (key j_first + c) for each set bit c of `candidates`, in column order.
template <int KCAP>
__device__ __forceinline__ void offer_marked(TopList<KCAP>& list, const float* vals, int j_first,
                                             uint32_t candidates, int K) {
  while (candidates != 0) {
    const int c = __ffs(candidates) - 1;
    candidates &= candidates - 1;
    list.offer(vals[c], j_first + c, K);
  }
}

// A·Bᵀ for 16 rows of A and column tile ct of B ([kKeys][DK + 8] rows) → 16×16 at `out` (unscaled: the
// scale is applied with the exponent).
template <int DK>
__device__ void score_tile(const bf16* a_rows, const bf16* b_rows, int ct, float* out, int ld_out) {
  constexpr int kLd = DK + 8;
  FragC acc;
  wmma::fill_fragment(acc, 0.0f);
  ra_wmma::accumulate_abt<DK>(acc, a_rows, kLd, b_rows + 16 * ct * kLd, kLd);
  wmma::store_matrix_sync(out, acc, ld_out, wmma::mem_row_major);
}

// The same for every column tile of B at once, each A fragment loaded once.
template <int DK>
__device__ void score_row(const bf16* a_rows, const bf16* b_rows, float* out, int ld_out) {
  constexpr int kLd = DK + 8;
  FragC acc[kColTiles];
#pragma unroll
  for (int ct = 0; ct < kColTiles; ++ct) wmma::fill_fragment(acc[ct], 0.0f);
#pragma unroll
  for (int kk = 0; kk < DK / 16; ++kk) {
    ra_wmma::FragA a_frag;
    wmma::load_matrix_sync(a_frag, a_rows + 16 * kk, kLd);
#pragma unroll
    for (int ct = 0; ct < kColTiles; ++ct) {
      ra_wmma::FragBT bt_frag;
      wmma::load_matrix_sync(bt_frag, b_rows + 16 * ct * kLd + 16 * kk, kLd);
      wmma::mma_sync(acc[ct], a_frag, bt_frag, acc[ct]);
    }
  }
#pragma unroll
  for (int ct = 0; ct < kColTiles; ++ct) wmma::store_matrix_sync(out + 16 * ct, acc[ct], ld_out, wmma::mem_row_major);
}

// compute(s, rows) for s = 0 .. n − 1, on the kKeys rows load(s, buffer) stages, double-buffered: step s + 1's
// copies are in flight while step s computes. Every thread of the block calls it; it begins with a
// barrier, so the buffers' earlier readers are done.
template <class Load, class Compute>
__device__ void pipelined(int n, Load load, Compute compute, bf16* buf0, bf16* buf1) {
  __syncthreads();
  load(0, buf0);
  __pipeline_commit();
  for (int s = 0; s < n; ++s) {
    if (s > 0) __syncthreads();  // step s − 1 is done with the buffer step s + 1 fills
    if (s + 1 < n) load(s + 1, s % 2 ? buf0 : buf1);
    __pipeline_commit();         // (an empty group after the last step keeps the count)
    __pipeline_wait_prior(1);    // step s's copies have landed
    __syncthreads();
    compute(s, s % 2 ? buf1 : buf0);
  }
}

// grid (ceil(T / 16), B), 16·H threads (at least 4 warps).
template <int DK, int KCAP>
__global__ void __launch_bounds__(kMaxThreads, 2) ra_topk_stats_kernel(RaTopkArgs a) {
  constexpr int kLd = DK + 8;
  const int H = a.H, Hk = a.heads_k, T = a.T, K = a.K;
  const int i0 = blockIdx.x * kRows, b = blockIdx.y;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, warps = blockDim.x / kWarpSize;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);         // [H][16][kLd] the block's queries
  bf16* sKi = sQ + H * kRows * kLd;                  // [Hk][16][kLd] the keys at the block's positions
  // [2][kKeys][kLd]: a key tile or the queries at the tile's positions (one head's), double-buffered
  bf16* sBuf[2] = {sKi + Hk * kRows * kLd, sKi + Hk * kRows * kLd + kKeys * kLd};
  float* sS = reinterpret_cast<float*>(sBuf[1] + kKeys * kLd);  // [H][16][kLdScore] S'/scale, then P
  float* sStage = sS + H * kRows * kLdScore;         // [warps][16][16] reciprocal products

  for (int h = 0; h < H; ++h) load_rows_async<DK>(sQ + h * kRows * kLd, kLd, a.q, b, h, i0, kRows, T);
  for (int h = 0; h < Hk; ++h) load_rows_async<DK>(sKi + h * kRows * kLd, kLd, a.k, b, h, i0, kRows, T);
  wait_for_rows();

  // Thread (r, h) keeps head h's list of row r. Thread (r, p) also keeps the heads' mean's list of row r
  // over the keys ≡ p (mod parts) of every tile, merged into (r, 0)'s at the end.
  const int r = threadIdx.x % kRows, h_own = threadIdx.x / kRows, i = i0 + r, mean_part = h_own;
  const int parts = blockDim.x / kRows;
  const bool owns_row = h_own < H && i < T;
  const bool heads = a.head_val != nullptr;
  const float lse = owns_row ? a.lse[(int64_t(b) * H + h_own) * T + i] : 0.f;
  TopList<KCAP> head_list, mean_list;
  head_list.clear();
  mean_list.clear();

  const float alpha = a.alpha != nullptr ? *a.alpha : 0.f;
  const int last = min(i0 + kRows, T) - 1;  // the last visible key of the block
  for (int j0 = 0; j0 <= last; j0 += kKeys) {
    // Some pair of the tile inside the band: the closest pair is i0 against the tile's last key.
    const bool reciprocal = a.alpha != nullptr && (a.window == 0 || i0 - (j0 + kKeys - 1) <= a.window);
    // Direct scores: one key tile per key head (MLA: one for all heads, a warp taking a head's row).
    pipelined(
        Hk, [&](int hk, bf16* buf) { load_rows_async<DK>(buf, kLd, a.k, b, hk, j0, kKeys, T); },
        [&](int hk, const bf16* key_tile) {
          if (Hk == 1) {
            for (int h = warp; h < H; h += warps)
              score_row<DK>(sQ + h * kRows * kLd, key_tile, sS + h * kRows * kLdScore, kLdScore);
          } else {
            for (int ct = warp; ct < kColTiles; ct += warps)
              score_tile<DK>(sQ + hk * kRows * kLd, key_tile, ct, sS + hk * kRows * kLdScore + 16 * ct, kLdScore);
          }
        },
        sBuf[0], sBuf[1]);
    if (reciprocal) {  // + alpha·q_j·k_i inside the band, head by head
      pipelined(
          H, [&](int h, bf16* buf) { load_rows_async<DK>(buf, kLd, a.q, b, h, j0, kKeys, T); },
          [&](int h, const bf16* query_tile) {
            const bf16* k_rows = sKi + (Hk == 1 ? 0 : h) * kRows * kLd;
            float* stage = sStage + warp * 16 * 16;
            for (int ct = warp; ct < kColTiles; ct += warps) {
              score_tile<DK>(k_rows, query_tile, ct, stage, 16);
              __syncwarp();
              for (int e = lane; e < 16 * 16; e += kWarpSize) {
                const int rr = e / 16, c = 16 * ct + e % 16, ii = i0 + rr, j = j0 + c;
                if (j <= ii && (a.window == 0 || ii - j <= a.window))
                  sS[(h * kRows + rr) * kLdScore + c] += alpha * stage[e];
              }
              __syncwarp();
            }
          },
          sBuf[0], sBuf[1]);
    }
    __syncthreads();

    if (h_own < H) {  // weights of row r, head h_own; zero where not visible (for the mean)
      float* row = sS + (h_own * kRows + r) * kLdScore;
      uint32_t candidates = 0;
#pragma unroll
      for (int c0 = 0; c0 < kKeys; c0 += 4) {
        float4 s4 = *reinterpret_cast<const float4*>(row + c0);
        float* p4 = &s4.x;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool visible = owns_row && j0 + c0 + e <= i;
          p4[e] = visible ? __expf(fmaf(p4[e], a.scale, -lse)) : 0.f;
          if (heads && visible && p4[e] > head_list.kth) candidates |= 1u << (c0 + e);
        }
        *reinterpret_cast<float4*>(row + c0) = s4;
      }
      offer_marked(head_list, row, j0, candidates, K);
    }
    __syncthreads();
    if (i < T) {  // the heads' mean of the part's keys j0 + part, + parts, ...
      float* mean_row = sS + r * kLdScore;  // head 0's row r: each column becomes the mean once read
      uint32_t candidates = 0;
      for (int c = mean_part; c < kKeys && j0 + c <= i; c += parts) {
        float sum = 0.f;
        for (int h = 0; h < H; ++h) sum += sS[(h * kRows + r) * kLdScore + c];
        mean_row[c] = sum / H;
        if (mean_row[c] > mean_list.kth) candidates |= 1u << c;
      }
      offer_marked(mean_list, mean_row, j0, candidates, K);
    }
  }

  // Parts 1.. hand their lists to part 0 through shared memory (sS is free now).
  __syncthreads();
  float* merge_val = sS;                                        // [parts − 1][16][K]
  int* merge_key = reinterpret_cast<int*>(sS + (parts - 1) * kRows * K);
  if (mean_part > 0)
    mean_list.store(merge_val + ((mean_part - 1) * kRows + r) * K, merge_key + ((mean_part - 1) * kRows + r) * K, K);
  __syncthreads();
  if (i >= T) return;
  if (mean_part == 0) {
    for (int part = 1; part < parts; ++part) {
      const int at = ((part - 1) * kRows + r) * K;
      for (int e = 0; e < K; ++e) mean_list.offer(merge_val[at + e], merge_key[at + e], K);
    }
    const int64_t mean_at = (int64_t(b) * T + i) * K;
    mean_list.write(a.mean_val + mean_at, a.mean_key + mean_at, K);
  }
  if (heads && h_own < H) {
    const int64_t head_at = ((int64_t(b) * H + h_own) * T + i) * K;
    head_list.write(a.head_val + head_at, a.head_key + head_at, K);
  }
}

template <int DK, int KCAP>
size_t smem_bytes(int H, int Hk, int threads) {
  constexpr int kLd = DK + 8;
  const size_t merge_floats = 2 * size_t(threads / kRows - 1) * kRows * KCAP;  // the mean parts' lists
  return size_t(H + Hk) * kRows * kLd * sizeof(bf16) + 2 * kKeys * kLd * sizeof(bf16) +
         std::max<size_t>(size_t(H) * kRows * kLdScore, merge_floats) * sizeof(float) +
         size_t(threads / kWarpSize) * 16 * 16 * sizeof(float);
}

template <int DK, int KCAP>
cudaError_t launch(const RaTopkArgs& args, cudaStream_t stream) {
  const int threads = std::max(4 * kWarpSize, (kRows * args.H + kWarpSize - 1) / kWarpSize * kWarpSize);
  const size_t smem = smem_bytes<DK, KCAP>(args.H, args.heads_k, threads);
  const cudaError_t attr =
      cudaFuncSetAttribute(ra_topk_stats_kernel<DK, KCAP>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) return attr;
  ra_topk_stats_kernel<DK, KCAP><<<dim3((args.T + kRows - 1) / kRows, args.B), threads, smem, stream>>>(args);
  return cudaGetLastError();
}

template <int DK>
cudaError_t launch_for_k(const RaTopkArgs& args, cudaStream_t stream) {
  return args.K <= 8 ? launch<DK, 8>(args, stream) : launch<DK, kRaTopkMaxK>(args, stream);
}

}  // namespace

bool ra_topk_supports(int64_t dk) { return dk == 64 || dk == 128; }

cudaError_t ra_topk_stats(const RaTopkArgs& args, cudaStream_t stream) {
  if (args.H < 1 || args.H > kRaTopkMaxHeads || (args.heads_k != 1 && args.heads_k != args.H) ||
      !ra_topk_supports(args.dk) || args.K < 1 || args.K > kRaTopkMaxK || args.window < 0)
    return cudaErrorInvalidValue;
  if (args.B == 0 || args.T == 0) return cudaSuccess;
  return args.dk == 64 ? launch_for_k<64>(args, stream) : launch_for_k<128>(args, stream);
}

}  // namespace ratio::kernels
