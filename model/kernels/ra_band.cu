// Band-limited reciprocal attention (kernels.h, "ra_band.cu"): the band's scores, softmax and
// gradients in 64-row blocks on tensor cores (WMMA, bf16 in, fp32 accumulate), merged with the far
// part that cuDNN's attention computes (model/fused_ra.cpp). Nothing T×T is stored: a block holds
// its 64×128 score tile in shared memory and the backward recomputes it from q, k, v and the saved
// log-sum-exp. 1024 threads a block: eight warps per 16 query rows, each taking every eighth tile (512 and
// four under MLA's backward, which sums the heads' key gradients in registers: SHARED_KEY below). (The
// kernels are latency-bound at one block per SM, which their shared memory allows: ncu gave the backward
// IPC 1.22 with two warps per 16 rows, no warp eligible in 69 % of the cycles.)
//
// Geometry of one block (b, h, rows i0 .. i0+63):
//   window rows w = 0..127 are positions p0 + w, p0 = i0 − 64; rows 64..127 are the block's own.
//   Query row r (position i0 + r) and window column c (position p0 + c) are i − j = 64 + r − c apart;
//   the pair is in the band when 0 ≤ 64 + r − c ≤ window and p0 + c ≥ 0.
//   16×16 tiles outside the band are skipped, not masked.

#include <cstdint>

#include <cuda_bf16.h>
#include <mma.h>

#include "model/kernels/kernels.h"
#include "model/kernels/ra_rows.cuh"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int kRows = 64;                     // query rows per block
constexpr int kWindowRows = 2 * kRows;        // the 64 positions before the block and its own 64
constexpr int kGroups = kRows / 16;           // 16-row query groups (WMMA's tile height)
constexpr int kSplit = 8;                     // warps per group: each takes every kSplit-th tile and 16/kSplit rows
constexpr int kWarps = kGroups * kSplit;      // 32: a group's warps hide each other's latency
constexpr int kThreads = kWarps * kWarpSize;  // 1024
constexpr int kWarpRows = 16 / kSplit;        // rows a warp owns in the row-by-row passes
constexpr int kLdScore = kWindowRows + 4;     // fp32 score rows (padded against bank conflicts)
constexpr int kLdProb = kWindowRows + 8;      // bf16 probability rows

// Rows of the partial-gradient buffers: T rounded up to whole blocks.
__host__ __device__ inline int64_t padded_t(int64_t T) { return (T + kRows - 1) / kRows * kRows; }

using namespace ra_wmma;

// Whether the 16×16 tile of query tile qt (block rows 16·qt..) and window tile kt holds any pair
// with 0 ≤ i − j ≤ window.
__device__ inline bool tile_in_band(int qt, int kt, int window) {
  const int d_max = kRows + 16 * qt + 15 - 16 * kt;
  const int d_min = kRows + 16 * qt - 16 * kt - 15;
  return d_max >= 0 && d_min <= window;
}

// Whether query row r (block-local) and window column c are an attended pair of the band.
__device__ inline bool in_band(int r, int c, int i, int p0, int T, int window) {
  const int d = kRows + r - c;
  return i < T && p0 + c >= 0 && d >= 0 && d <= window;
}

// Rows row0 .. row0 + ROWS − 1 of a [.., T, DV] slice as bf16 pairs in registers, every load
// issued before any is used: pairs[rr][m] holds columns 2·(lane + 32·m) and the one after. Rows ≥ T
// and rows before `first_row` read as zeros.
template <int DV, int ROWS = kWarpRows>
__device__ void load_warp_rows(__nv_bfloat162 (&pairs)[ROWS][DV / 64], const bf16* base, int64_t st, int row0,
                               int first_row, int T, int lane) {
#pragma unroll
  for (int rr = 0; rr < ROWS; ++rr) {
    const int row = row0 + rr;
    const bool valid = row >= first_row && row < T;
#pragma unroll
    for (int m = 0; m < DV / 64; ++m) {
      pairs[rr][m] = valid ? *reinterpret_cast<const __nv_bfloat162*>(base + row * st + 2 * (lane + 32 * m))
                           : __floats2bfloat162_rn(0.0f, 0.0f);
    }
  }
}

// S' for a group's 16 query rows against the window columns, tiles in the band only, this warp's
// share of them (every SPLIT-th tile): scale·(Q_own·K_winᵀ + alpha·K_own·Q_winᵀ), both products
// accumulated in fp32. → score [16][kLdScore]
template <int DK, int SPLIT = kSplit>
__device__ void band_scores(const bf16* sQ, const bf16* sK, float* score, int group, int part, int window,
                            float scale, float alpha) {
  constexpr int kLd = DK + 8;
  const int own = kRows + 16 * group;  // the group's query rows among the window rows
  for (int kt = part; kt < kWindowRows / 16; kt += SPLIT) {
    if (!tile_in_band(group, kt, window)) continue;
    FragC direct, reciprocal;
    wmma::fill_fragment(direct, 0.0f);
    wmma::fill_fragment(reciprocal, 0.0f);
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
      FragA a;
      FragBT bt;
      wmma::load_matrix_sync(a, sQ + own * kLd + 16 * kk, kLd);
      wmma::load_matrix_sync(bt, sK + 16 * kt * kLd + 16 * kk, kLd);
      wmma::mma_sync(direct, a, bt, direct);  // q_i·k_j
      wmma::load_matrix_sync(a, sK + own * kLd + 16 * kk, kLd);
      wmma::load_matrix_sync(bt, sQ + 16 * kt * kLd + 16 * kk, kLd);
      wmma::mma_sync(reciprocal, a, bt, reciprocal);  // k_i·q_j = S[j, i]
    }
#pragma unroll
    for (int e = 0; e < direct.num_elements; ++e) direct.x[e] = scale * (direct.x[e] + alpha * reciprocal.x[e]);
    wmma::store_matrix_sync(score + 16 * kt, direct, kLdScore, wmma::mem_row_major);
  }
}

template <int DK, int DV>
constexpr size_t forward_smem_bytes() {
  return sizeof(bf16) * (2 * kWindowRows * (DK + 8) + kWindowRows * (DV + 8) + kRows * kLdProb) +
         sizeof(float) * (kRows * kLdScore + kRows);
}

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) ra_band_forward_kernel(RaBandForwardArgs a) {
  constexpr int kLdK = DK + 8, kLdV = DV + 8;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);             // [128][kLdK] window queries (rows 64.. the block's)
  bf16* sK = sQ + kWindowRows * kLdK;                   // [128][kLdK] window keys
  bf16* sV = sK + kWindowRows * kLdK;                   // [128][kLdV] window values
  bf16* sP = sV + kWindowRows * kLdV;                   // [64][kLdProb] probabilities
  float* sS = reinterpret_cast<float*>(sP + kRows * kLdProb);  // [64][kLdScore] scores, then P·V
  float* sFar = sS + kRows * kLdScore;                  // [64] weight of the far part's output

  const RaBandShape& s = a.shape;
  const int b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * kRows, p0 = i0 - kRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int group = warp % kGroups, part = warp / kGroups;
  const float alpha = *s.alpha;
  load_rows_async<DK>(sQ, kLdK, a.q, b, h, p0, kWindowRows, s.T);
  load_rows_async<DK>(sK, kLdK, a.k, b, h, p0, kWindowRows, s.T);
  load_rows_async<DV>(sV, kLdV, a.v, b, h, p0, kWindowRows, s.T);
  wait_for_rows();

  float* score = sS + 16 * group * kLdScore;  // the group's 16 rows
  band_scores<DK>(sQ, sK, score, group, part, s.window, s.scale, alpha);
  __syncthreads();

  // Softmax of each row over band ∪ far: lse = log(Σ_band exp(S') + exp(lse_far)).
  const int64_t bh = int64_t(b) * s.H + h;
  const int row0 = 16 * group + kWarpRows * part;  // this warp's rows in the row-by-row passes
  for (int r = row0; r < row0 + kWarpRows; ++r) {
    const int rr = r - 16 * group, i = i0 + r;
    float x[kWindowRows / kWarpSize];
    float row_max = -INFINITY;
#pragma unroll
    for (int m = 0; m < kWindowRows / kWarpSize; ++m) {
      const int c = lane + kWarpSize * m;
      x[m] = in_band(r, c, i, p0, s.T, s.window) ? score[rr * kLdScore + c] : -INFINITY;
      row_max = fmaxf(row_max, x[m]);
    }
    row_max = warp_max(row_max);
    float lse = INFINITY, far_weight = 0.0f;  // rows past T: every probability 0
    if (i < s.T) {                        // the diagonal is in the band, so row_max is finite
      float band_sum = 0.0f;
#pragma unroll
      for (int m = 0; m < kWindowRows / kWarpSize; ++m) band_sum += expf(x[m] - row_max);
      band_sum = warp_sum(band_sum);
      const float lse_far =
          i > s.window ? a.lse_far[b * a.lse_far_sb + h * a.lse_far_sh + (i - s.window - 1) * a.lse_far_st] : -INFINITY;
      const float top = fmaxf(row_max, lse_far);
      lse = top + logf(band_sum * expf(row_max - top) + expf(lse_far - top));
      far_weight = expf(lse_far - lse);
      if (lane == 0) a.lse[bh * s.T + i] = lse;
    }
#pragma unroll
    for (int m = 0; m < kWindowRows / kWarpSize; ++m)
      sP[r * kLdProb + lane + kWarpSize * m] = __float2bfloat16(expf(x[m] - lse));
    if (lane == 0) sFar[r] = far_weight;
  }
  __syncthreads();

  // The band's share of the output, P·V_win, into the group's score rows. [16, DV]
  for (int ot = part; ot < DV / 16; ot += kSplit) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kt = 0; kt < kWindowRows / 16; ++kt) {
      if (!tile_in_band(group, kt, s.window)) continue;
      FragA p;
      FragB v;
      wmma::load_matrix_sync(p, sP + 16 * group * kLdProb + 16 * kt, kLdProb);
      wmma::load_matrix_sync(v, sV + 16 * kt * kLdV + 16 * ot, kLdV);
      wmma::mma_sync(acc, p, v, acc);
    }
    wmma::store_matrix_sync(score + 16 * ot, acc, kLdScore, wmma::mem_row_major);
  }
  __syncthreads();

  // out = far_weight·out_far + P·V (out_far already normalised by its own softmax). Far row of
  // position i: i − window − 1.
  const bf16* far = static_cast<const bf16*>(a.out_far.data) + b * a.out_far.sb + h * a.out_far.sh;
  __nv_bfloat162 far_pairs[kWarpRows][DV / 64];
  load_warp_rows<DV>(far_pairs, far, a.out_far.st, i0 + row0 - s.window - 1, 0, s.T - s.window - 1, lane);
  bf16* out = static_cast<bf16*>(a.out.data) + b * a.out.sb + h * a.out.sh;
#pragma unroll
  for (int k = 0; k < kWarpRows; ++k) {
    const int r = row0 + k, rr = r - 16 * group, i = i0 + r;
    if (i >= s.T) break;
#pragma unroll
    for (int m = 0; m < DV / 64; ++m) {
      const int c = 2 * (lane + 32 * m);
      const float2 f = __bfloat1622float2(far_pairs[k][m]);
      *reinterpret_cast<__nv_bfloat162*>(out + i * a.out.st + c) = __floats2bfloat162_rn(
          score[rr * kLdScore + c] + sFar[r] * f.x, score[rr * kLdScore + c + 1] + sFar[r] * f.y);
    }
  }
}

template <int DK, int DV>
constexpr size_t backward_smem_bytes() {
  return sizeof(bf16) * (2 * kWindowRows * (DK + 8) + kWindowRows * (DV + 8) + kRows * (DV + 8) +
                         2 * kRows * kLdProb) +
         sizeof(float) * (2 * kRows * kLdScore + 2 * kRows + kWarps);
}

// acc ·= factor, element by element (the fragment layout does not matter for a uniform factor).
__device__ inline void scale_fragment(FragC& acc, float factor) {
#pragma unroll
  for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= factor;
}

// A 16×16 tile of fp32 accumulators to bf16 rows `ld` elements apart, through the warp's staging
// tile: WMMA stores accumulators only as fp32, and bf16 halves the partials' traffic.
__device__ inline void store_bf16(const FragC& acc, float* tile, bf16* dst, int ld, int lane) {
  wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
  __syncwarp();
  const int row = lane / 2, col = (lane % 2) * 8;
  float v[8];
  load_vec<8>(tile + row * 16 + col, v);
  store_vec<8>(dst + row * ld + col, v);
  __syncwarp();
}

// acc += Σ over the block's query tiles i of Aᵀ[t, i]·rows[i]: the key-side sum for window tile wt,
// A = sdS or sP [64][kLdProb] read transposed, rows = the block's own rows of a [.., ld] operand.
__device__ inline void key_side(FragC& acc, const bf16* a, const bf16* rows, int ld, int wt, int ct, int window) {
  for (int it = 0; it < kGroups; ++it) {
    if (!tile_in_band(it, wt, window)) continue;
    FragAT at;
    FragB r;
    wmma::load_matrix_sync(at, a + 16 * it * kLdProb + 16 * wt, kLdProb);
    wmma::load_matrix_sync(r, rows + 16 * it * ld + 16 * ct, ld);
    wmma::mma_sync(acc, at, r, acc);
  }
}

// acc += Σ over window tiles j of dS[r, j]·window[j]: the query-side sum for a group's rows.
__device__ inline void query_side(FragC& acc, const bf16* sdS, const bf16* window_rows, int ld, int group, int ct,
                                  int window) {
  for (int kt = 0; kt < kWindowRows / 16; ++kt) {
    if (!tile_in_band(group, kt, window)) continue;
    FragA ds;
    FragB w;
    wmma::load_matrix_sync(ds, sdS + 16 * group * kLdProb + 16 * kt, kLdProb);
    wmma::load_matrix_sync(w, window_rows + 16 * kt * ld + 16 * ct, ld);
    wmma::mma_sync(acc, ds, w, acc);
  }
}

// acc_sum += acc, element by element (both fragments of one layout).
__device__ inline void add_fragment(FragC& acc_sum, const FragC& acc) {
#pragma unroll
  for (int e = 0; e < acc.num_elements; ++e) acc_sum.x[e] += acc.x[e];
}

// SHARED_KEY (MLA: one key for every head): a block takes its 64 rows of every head in turn, the key
// window loaded once, and sums the heads' key gradients in its warps' fragments, so it writes one key
// partial instead of one per head (grid (blocks, 1, B)). Otherwise a block is one (b, h). The sums
// stay in registers across the heads: at 1024 threads (64 registers a thread) they spilled, so
// SHARED_KEY runs four warps per 16 rows (512 threads), each summing two key column tiles.
__host__ __device__ constexpr int backward_split(bool shared_key) { return shared_key ? 4 : kSplit; }
__host__ __device__ constexpr int backward_threads(bool shared_key) {
  return kGroups * backward_split(shared_key) * kWarpSize;
}

template <int DK, int DV, bool SHARED_KEY>
__global__ void __launch_bounds__(backward_threads(SHARED_KEY)) ra_band_backward_kernel(RaBandBackwardArgs a) {
  constexpr int kLdK = DK + 8, kLdV = DV + 8;
  constexpr int kSplitB = backward_split(SHARED_KEY), kWarpsB = kGroups * kSplitB, kWarpRowsB = 16 / kSplitB;
  constexpr int kKeyTiles = (DK / 16 + kSplitB - 1) / kSplitB;  // key column tiles a warp takes
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [128][kLdK] window queries
  bf16* sK = sQ + kWindowRows * kLdK;        // [128][kLdK] window keys
  bf16* sV = sK + kWindowRows * kLdK;        // [128][kLdV] window values
  bf16* sdO = sV + kWindowRows * kLdV;       // [64][kLdV] output gradient of the block's rows
  bf16* sP = sdO + kRows * kLdV;             // [64][kLdProb] P
  bf16* sdS = sP + kRows * kLdProb;          // [64][kLdProb] dS
  float* sS = reinterpret_cast<float*>(sdS + kRows * kLdProb);  // [64][kLdScore] S', then staging
  float* sdP = sS + kRows * kLdScore;        // [64][kLdScore] dP = dO·Vᵀ
  float* sD = sdP + kRows * kLdScore;        // [64] D_i = dO_i·O_i
  float* sLse = sD + kRows;                  // [64]
  float* sAlpha = sLse + kRows;              // [kWarps] the warps' dalpha sums

  const RaBandShape& s = a.shape;
  const int b = blockIdx.z, i0 = blockIdx.x * kRows, p0 = i0 - kRows;
  const int h_begin = SHARED_KEY ? 0 : blockIdx.y, h_end = SHARED_KEY ? s.H : blockIdx.y + 1;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int group = warp % kGroups, part = warp / kGroups;
  const int row0 = 16 * group + kWarpRowsB * part;  // this warp's rows in the row-by-row passes
  const float alpha = *s.alpha;
  const int64_t t_pad = padded_t(s.T);
  float* score = sS + 16 * group * kLdScore;
  float* dprob = sdP + 16 * group * kLdScore;
  const bf16* sQ_own = sQ + kRows * kLdK;
  const bf16* sK_own = sK + kRows * kLdK;
  const int own_wt = kGroups + group;
  // dP is spent once P and dS are: its rows become the warps' bf16 conversion tiles. [kWarpsB][16][16]
  static_assert(kWarpsB * 16 * 16 <= kRows * kLdScore && kWarpsB <= kWarps, "the conversion tiles fit in dP's rows");
  float* sTile = sdP + 16 * 16 * warp;
  float dalpha = 0.0f;  // scale·Σ_ij dS[i, j]·q_j·k_i = scale·Σ_i k_i·G_i, over this warp's tiles and heads
  FragC key_own[kKeyTiles], key_prev[kKeyTiles];  // SHARED_KEY: the key gradient summed over the heads
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
    wmma::fill_fragment(key_own[n], 0.0f);
    wmma::fill_fragment(key_prev[n], 0.0f);
  }
  load_rows_async<DK>(sK, kLdK, a.k, b, h_begin, p0, kWindowRows, s.T);

  for (int h = h_begin; h < h_end; ++h) {
    if (h > h_begin) __syncthreads();  // every warp is done with the previous head's rows
    const int64_t bh = int64_t(b) * s.H + h;
    load_rows_async<DK>(sQ, kLdK, a.q, b, h, p0, kWindowRows, s.T);
    load_rows_async<DV>(sV, kLdV, a.v, b, h, p0, kWindowRows, s.T);
    load_rows_async<DV>(sdO, kLdV, a.dout, b, h, i0, kRows, s.T);
    __nv_bfloat162 out_pairs[kWarpRowsB][DV / 64];  // this warp's rows of the output, for D_i
    const bf16* out_rows = static_cast<const bf16*>(a.out.data) + b * a.out.sb + h * a.out.sh;
    load_warp_rows<DV, kWarpRowsB>(out_pairs, out_rows, a.out.st, i0 + row0, 0, s.T, lane);
    wait_for_rows();

#pragma unroll
    for (int k = 0; k < kWarpRowsB; ++k) {  // D_i = dO_i·O_i and the saved log-sum-exp
      const int r = row0 + k, i = i0 + r;
      float d = 0.0f;
#pragma unroll
      for (int m = 0; m < DV / 64; ++m) {
        const int c = 2 * (lane + 32 * m);
        const float2 o = __bfloat1622float2(out_pairs[k][m]);
        d += o.x * __bfloat162float(sdO[r * kLdV + c]) + o.y * __bfloat162float(sdO[r * kLdV + c + 1]);
      }
      d = warp_sum(d);
      if (lane == 0) {
        sD[r] = d + (a.d_shift != nullptr && i < s.T ? a.d_shift[bh * s.T + i] : 0.0f);
        sLse[r] = i < s.T ? a.lse[bh * s.T + i] : INFINITY;
      }
    }

    band_scores<DK, kSplitB>(sQ, sK, score, group, part, s.window, s.scale, alpha);
    for (int kt = part; kt < kWindowRows / 16; kt += kSplitB) {  // dP = dO_own·V_winᵀ
      if (!tile_in_band(group, kt, s.window)) continue;
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      accumulate_abt<DV>(acc, sdO + 16 * group * kLdV, kLdV, sV + 16 * kt * kLdV, kLdV);
      wmma::store_matrix_sync(dprob + 16 * kt, acc, kLdScore, wmma::mem_row_major);
    }
    __syncthreads();

    // P = exp(S' − lse), dS = P·(dP − D); zero outside the band.
    for (int r = row0; r < row0 + kWarpRowsB; ++r) {
      const int rr = r - 16 * group, i = i0 + r;
      for (int c = lane; c < kWindowRows; c += kWarpSize) {
        float p = 0.0f, ds = 0.0f;
        if (in_band(r, c, i, p0, s.T, s.window)) {
          p = expf(score[rr * kLdScore + c] - sLse[r]);
          ds = p * (dprob[rr * kLdScore + c] - sD[r]);
        }
        sP[r * kLdProb + c] = __float2bfloat16(p);
        sdS[r * kLdProb + c] = __float2bfloat16(ds);
      }
    }
    __syncthreads();  // the sums below read every group's rows of P and dS

    // Own rows (positions i0 + 16·group ..): query side (the group's rows of dS) plus key side (window
    // tile kGroups + group, the same positions, from every query row of the block). The group's warps
    // take every kSplitB-th column tile.
    const int64_t own_row = bh * t_pad + i0 + 16 * group;
    float* staging = score;  // the group's 16 rows of S' are no longer needed
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {  // n known at compile time: key_own[n] stays in registers
      const int ct = part + n * kSplitB;
      if (ct >= DK / 16) break;
      FragC acc;  // dq_t = scale·(alpha·Σ_i dS[i, t]·k_i + Σ_j dS[t, j]·k_j)
      wmma::fill_fragment(acc, 0.0f);
      key_side(acc, sdS, sK_own, kLdK, own_wt, ct, s.window);
      scale_fragment(acc, alpha);
      query_side(acc, sdS, sK, kLdK, group, ct, s.window);
      scale_fragment(acc, s.scale);
      store_bf16(acc, sTile, static_cast<bf16*>(a.own_q) + own_row * DK + 16 * ct, DK, lane);

      wmma::fill_fragment(acc, 0.0f);  // dk_t = scale·(alpha·G_t + Σ_i dS[i, t]·q_i), G_t = Σ_j dS[t, j]·q_j
      query_side(acc, sdS, sQ, kLdK, group, ct, s.window);
      wmma::store_matrix_sync(staging + 16 * ct, acc, kLdScore, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 16 * 16; e += kWarpSize) {
        const int rr = e / 16, c = 16 * ct + e % 16;
        dalpha += staging[rr * kLdScore + c] * __bfloat162float(sK_own[(16 * group + rr) * kLdK + c]);
      }
      scale_fragment(acc, alpha);
      key_side(acc, sdS, sQ_own, kLdK, own_wt, ct, s.window);
      scale_fragment(acc, s.scale);
      if constexpr (SHARED_KEY)
        add_fragment(key_own[n], acc);
      else
        store_bf16(acc, sTile, static_cast<bf16*>(a.own_k) + own_row * DK + 16 * ct, DK, lane);
    }
    for (int ct = part; ct < DV / 16; ct += kSplitB) {
      FragC acc;  // dv_t = Σ_i P[i, t]·dO_i
      wmma::fill_fragment(acc, 0.0f);
      key_side(acc, sP, sdO, kLdV, own_wt, ct, s.window);
      store_bf16(acc, sTile, static_cast<bf16*>(a.own_v) + own_row * DV + 16 * ct, DV, lane);
    }

    // The 64 positions before the block (window tile `group`): key-side contributions only.
    if (blockIdx.x > 0) {
      const int64_t prev_row = bh * t_pad + p0 + 16 * group;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        const int ct = part + n * kSplitB;
        if (ct >= DK / 16) break;
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
        key_side(acc, sdS, sK_own, kLdK, group, ct, s.window);
        scale_fragment(acc, alpha * s.scale);
        store_bf16(acc, sTile, static_cast<bf16*>(a.prev_q) + prev_row * DK + 16 * ct, DK, lane);
        wmma::fill_fragment(acc, 0.0f);
        key_side(acc, sdS, sQ_own, kLdK, group, ct, s.window);
        scale_fragment(acc, s.scale);
        if constexpr (SHARED_KEY)
          add_fragment(key_prev[n], acc);
        else
          store_bf16(acc, sTile, static_cast<bf16*>(a.prev_k) + prev_row * DK + 16 * ct, DK, lane);
      }
      for (int ct = part; ct < DV / 16; ct += kSplitB) {
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
        key_side(acc, sP, sdO, kLdV, group, ct, s.window);
        store_bf16(acc, sTile, static_cast<bf16*>(a.prev_v) + prev_row * DV + 16 * ct, DV, lane);
      }
    }
  }

  if constexpr (SHARED_KEY) {  // one key partial a block: [B, 1, T_pad, DK]
    const int64_t key_row = int64_t(b) * t_pad + 16 * group;
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
      const int ct = part + n * kSplitB;
      if (ct >= DK / 16) break;
      store_bf16(key_own[n], sTile, static_cast<bf16*>(a.own_k) + (key_row + i0) * DK + 16 * ct, DK, lane);
      if (blockIdx.x > 0)
        store_bf16(key_prev[n], sTile, static_cast<bf16*>(a.prev_k) + (key_row + p0) * DK + 16 * ct, DK, lane);
    }
  }
  dalpha = warp_sum(dalpha);
  if (lane == 0) sAlpha[warp] = dalpha;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int w = 0; w < kWarpsB; ++w) sum += sAlpha[w];
    a.dalpha_partial[(int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = s.scale * sum;
  }
}

__global__ void ra_band_combine_kernel(RaBandCombineArgs a) {
  const int vecs = a.D / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // over [B, heads_out, T, D/8]
  if (idx >= int64_t(a.B) * a.heads_out * a.T * vecs) return;
  const int col = int(idx % vecs) * 8;
  const int t = int((idx / vecs) % a.T);
  const int g = int((idx / vecs / a.T) % a.heads_out);
  const int b = int(idx / vecs / a.T / a.heads_out);
  const int64_t t_pad = padded_t(a.T);
  const bool has_prev = t / kRows + 1 < t_pad / kRows;
  const int64_t far_t = t - a.far_offset;
  const bool has_far = far_t >= 0 && far_t < a.t_far;
  float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float part[8];
  const int p_begin = a.heads_out == 1 ? 0 : g, p_end = a.heads_out == 1 ? a.partial_heads : g + 1;
  for (int h = p_begin; h < p_end; ++h) {
    const int64_t row = (int64_t(b) * a.partial_heads + h) * t_pad + t;
    load_vec<8>(static_cast<const bf16*>(a.own) + row * a.D + col, part);
#pragma unroll
    for (int e = 0; e < 8; ++e) sum[e] += part[e];
    if (has_prev) {
      load_vec<8>(static_cast<const bf16*>(a.prev) + row * a.D + col, part);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum[e] += part[e];
    }
  }
  const int f_begin = a.heads_out == 1 ? 0 : g, f_end = a.heads_out == 1 ? a.far_heads : g + 1;
  for (int h = f_begin; has_far && h < f_end; ++h) {
    load_vec<8>(static_cast<const bf16*>(a.far.data) + b * a.far.sb + h * a.far.sh + far_t * a.far.st + col, part);
#pragma unroll
    for (int e = 0; e < 8; ++e) sum[e] += part[e];
  }
  store_vec<8>(static_cast<bf16*>(a.out.data) + b * a.out.sb + g * a.out.sh + t * a.out.st + col, sum);
}

// One band kernel over (row blocks, heads, batch), or (row blocks, 1, batch) when a block takes every
// head, its shared memory opted in above the 48 KiB default.
template <typename Args>
cudaError_t launch_band(void (*kernel)(Args), size_t smem, const Args& args, cudaStream_t stream,
                        bool every_head = false, int threads = kThreads) {
  if (!ra_band_supports(args.dk, args.dv) || args.shape.window < 1 || args.shape.window > kRaMaxWindow)
    return cudaErrorInvalidValue;
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) return attr;
  const RaBandShape& s = args.shape;
  kernel<<<dim3((s.T + kRows - 1) / kRows, every_head ? 1 : s.H, s.B), threads, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

bool ra_band_supports(int64_t dk, int64_t dv) { return (dk == 64 && dv == 64) || (dk == 128 && dv == 64); }

int64_t ra_band_padded_t(int64_t T) { return padded_t(T); }

int64_t ra_band_blocks(int64_t B, int64_t H, int64_t T) { return B * H * ((T + kRows - 1) / kRows); }

cudaError_t ra_band_forward(const RaBandForwardArgs& args, cudaStream_t stream) {
  return args.dk == 64 ? launch_band(ra_band_forward_kernel<64, 64>, forward_smem_bytes<64, 64>(), args, stream)
                       : launch_band(ra_band_forward_kernel<128, 64>, forward_smem_bytes<128, 64>(), args, stream);
}

cudaError_t ra_band_backward(const RaBandBackwardArgs& args, cudaStream_t stream) {
  const bool shared_key = args.k.sh == 0;  // one key head for every query head (MLA)
  const int threads = backward_threads(shared_key);
  if (args.dk == 64)
    return shared_key ? launch_band(ra_band_backward_kernel<64, 64, true>, backward_smem_bytes<64, 64>(), args,
                                    stream, true, threads)
                      : launch_band(ra_band_backward_kernel<64, 64, false>, backward_smem_bytes<64, 64>(), args, stream);
  return shared_key ? launch_band(ra_band_backward_kernel<128, 64, true>, backward_smem_bytes<128, 64>(), args, stream,
                                  true, threads)
                    : launch_band(ra_band_backward_kernel<128, 64, false>, backward_smem_bytes<128, 64>(), args, stream);
}

cudaError_t ra_band_combine(const RaBandCombineArgs& args, cudaStream_t stream) {
  const bool heads_ok = args.heads_out == 1 ? args.partial_heads >= 1 && args.far_heads >= 1
                                           : args.partial_heads == args.heads_out && args.far_heads == args.heads_out;
  if (args.D % 8 != 0 || !heads_ok) return cudaErrorInvalidValue;
  const int64_t work = int64_t(args.B) * args.heads_out * args.T * (args.D / 8);
  constexpr int kBlock = 256;
  ra_band_combine_kernel<<<unsigned((work + kBlock - 1) / kBlock), kBlock, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace ratio::kernels
