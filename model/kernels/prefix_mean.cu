// Mechanism 1's causal prefix mean over time and its backward (kernels.h). It replaces ATen's cumsum
// (tensor_kernel_scan_outer_dim, one thread per (b, g) column scanning T serially: 4.1 ms of a GPT-2
// step at B = 16, T = 1024 with the backward's reverse cumsum, flips and casts). A block takes one
// batch row and a 32-byte run of columns and scans T in tiles of 1024 rows: each thread scans its own
// consecutive rows in registers, the threads' totals are scanned across the warp by shuffles and
// across warps through shared memory, and a carry takes the tile's sum into the next tile. The
// backward is the same scan from the last row to the first. Reference op: the cumsum formula of
// MlpImpl::head_gate, tests/model/fused_ops_test.cpp.

#include <climits>

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;

// VEC columns a thread. Side by side, a row's threads read 32 bytes of bf16 (two 8-wide vectors, or
// eight scalars where G is not a multiple of 8 (16 bytes then); fp32 reads twice that), and the rest
// of the block stacks threads down the rows: 128 or 32 row threads of 8 or 32 rows each, so a tile
// is 1024 rows and GPT-2's T = 1024 is one pass with every load in flight at once.
template <int VEC>
struct Layout {
  static constexpr int kColumnThreads = VEC == 8 ? 2 : 8;
  static constexpr int kColumns = kColumnThreads * VEC;  // a block's columns: 16 or 8
  static constexpr int kRowThreads = kThreads / kColumnThreads;
  static constexpr int kRowsPerThread = VEC == 8 ? 8 : 32;  // 64 or 32 fp32 values in registers
  static constexpr int kTileRows = kRowThreads * kRowsPerThread;
};

// An inclusive scan over T of `in` for one block's columns, in fp32, written to `out`:
//   forward (REVERSE false): out[t] = (Σ_{s ≤ t} in[s]) / (t + 1)
//   backward (REVERSE true): out[s] = Σ_{t ≥ s} in[t] / (t + 1)
// The scan runs over positions p = 0..T−1, row t = p forward and t = T − 1 − p backward; thread r
// of a tile takes positions tile + r·kRowsPerThread onward. Tensors [B, T, G] contiguous.
// One block per SM is all GPT-2 has (B·G/16 = 64 blocks), and without saying so ptxas capped the
// 8-wide path at 128 registers and spilled; at 1 it takes up to 168 and spills nothing.
template <typename In, typename Out, int VEC, bool REVERSE>
__global__ void __launch_bounds__(kThreads, 1)
    prefix_scan_kernel(const In* __restrict__ in, Out* __restrict__ out, int64_t T, int G, int column_groups) {
  using L = Layout<VEC>;
  constexpr int kRows = L::kRowsPerThread;
  // The warps' totals, two buffers by tile parity so that one barrier a tile suffices: a warp can
  // write tile k + 1's only after tile k's barrier, and tile k + 2's only after every thread
  // has passed tile k + 1's, that is, finished reading tile k's.
  __shared__ float warp_totals[2][kWarps][L::kColumns];
  const int b = blockIdx.x / column_groups;
  const int column_thread = threadIdx.x % L::kColumnThreads, row_thread = threadIdx.x / L::kColumnThreads;
  const int block_col = column_thread * VEC;
  const int col = (blockIdx.x % column_groups) * L::kColumns + block_col;
  const bool active = col < G;  // G % 8 == 0 for VEC = 8: a vector is wholly in or out
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t base = int64_t(b) * T * G + col;

  float carry[VEC];  // Σ of every earlier tile, per column
#pragma unroll
  for (int c = 0; c < VEC; ++c) carry[c] = 0.f;

  int parity = 0;
  for (int64_t tile = 0; tile < T; tile += L::kTileRows, parity ^= 1) {
    const int64_t first = tile + int64_t(row_thread) * kRows;
    float v[kRows][VEC];  // the loaded values, then their inclusive scan over this thread's rows
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t p = first + i;
      if (active && p < T) {
        const int64_t t = REVERSE ? T - 1 - p : p;
        load_vec<VEC>(in + base + t * G, v[i]);
        if constexpr (REVERSE) {
#pragma unroll
          for (int c = 0; c < VEC; ++c) v[i][c] /= float(t + 1);
        }
      } else {
#pragma unroll
        for (int c = 0; c < VEC; ++c) v[i][c] = 0.f;
      }
    }
#pragma unroll
    for (int i = 1; i < kRows; ++i)
#pragma unroll
      for (int c = 0; c < VEC; ++c) v[i][c] += v[i - 1][c];

    // Inclusive scan of the threads' totals down the warp: lanes of one column run are kColumnThreads apart.
    float run[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) run[c] = v[kRows - 1][c];
#pragma unroll
    for (int d = L::kColumnThreads; d < kWarpSize; d *= 2)
#pragma unroll
      for (int c = 0; c < VEC; ++c) {
        const float up = __shfl_up_sync(0xffffffffu, run[c], d);
        if (lane >= d) run[c] += up;
      }
    if (lane >= kWarpSize - L::kColumnThreads)  // the warp's last row thread holds the warp's total
#pragma unroll
      for (int c = 0; c < VEC; ++c) warp_totals[parity][warp][block_col + c] = run[c];
    __syncthreads();

    // What precedes this thread's first row: earlier tiles, earlier warps, earlier threads of its warp.
    float offset[VEC], tile_total[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) {
      offset[c] = carry[c] + (run[c] - v[kRows - 1][c]);
      tile_total[c] = 0.f;
    }
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
#pragma unroll
      for (int c = 0; c < VEC; ++c) {
        const float s = warp_totals[parity][w][block_col + c];
        if (w < warp) offset[c] += s;
        tile_total[c] += s;
      }

#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t p = first + i;
      if (!active || p >= T) continue;
      const int64_t t = REVERSE ? T - 1 - p : p;
      float o[VEC];
#pragma unroll
      for (int c = 0; c < VEC; ++c) o[c] = REVERSE ? v[i][c] + offset[c] : (v[i][c] + offset[c]) / float(t + 1);
      store_vec<VEC>(out + base + t * G, o);
    }
#pragma unroll
    for (int c = 0; c < VEC; ++c) carry[c] += tile_total[c];
  }
}

template <typename In, typename Out, int VEC, bool REVERSE>
cudaError_t launch_scan(const void* in, void* out, int64_t B, int64_t T, int64_t G, cudaStream_t stream) {
  const int64_t column_groups = (G + Layout<VEC>::kColumns - 1) / Layout<VEC>::kColumns;
  if (B * column_groups > INT_MAX) return cudaErrorInvalidValue;
  prefix_scan_kernel<In, Out, VEC, REVERSE><<<unsigned(B * column_groups), kThreads, 0, stream>>>(
      static_cast<const In*>(in), static_cast<Out*>(out), T, int(G), int(column_groups));
  return cudaGetLastError();
}

template <typename In, typename Out, bool REVERSE>
cudaError_t launch_vec(const void* in, void* out, int64_t B, int64_t T, int64_t G, cudaStream_t stream) {
  if (G % 8 == 0 && aligned16(in) && aligned16(out)) return launch_scan<In, Out, 8, REVERSE>(in, out, B, T, G, stream);
  return launch_scan<In, Out, 1, REVERSE>(in, out, B, T, G, stream);
}

template <bool REVERSE>
cudaError_t launch_typed(const void* in, DType in_type, void* out, DType out_type, int64_t B, int64_t T, int64_t G,
                         cudaStream_t stream) {
  if (B < 0 || T < 0 || G < 0 || G > INT_MAX) return cudaErrorInvalidValue;
  if (B == 0 || T == 0 || G == 0) return cudaSuccess;
  const bool in_bf16 = in_type == DType::kBFloat16, out_bf16 = out_type == DType::kBFloat16;
  if (in_bf16 && out_bf16) return launch_vec<__nv_bfloat16, __nv_bfloat16, REVERSE>(in, out, B, T, G, stream);
  if (in_bf16) return launch_vec<__nv_bfloat16, float, REVERSE>(in, out, B, T, G, stream);
  if (out_bf16) return launch_vec<float, __nv_bfloat16, REVERSE>(in, out, B, T, G, stream);
  return launch_vec<float, float, REVERSE>(in, out, B, T, G, stream);
}

}  // namespace

cudaError_t prefix_mean_forward(const void* z, DType z_type, void* out, DType out_type, int64_t B, int64_t T,
                                int64_t G, cudaStream_t stream) {
  return launch_typed<false>(z, z_type, out, out_type, B, T, G, stream);
}

cudaError_t prefix_mean_backward(const void* dout, DType dout_type, void* dz, DType dz_type, int64_t B, int64_t T,
                                 int64_t G, cudaStream_t stream) {
  return launch_typed<true>(dout, dout_type, dz, dz_type, B, T, G, stream);
}

}  // namespace ratio::kernels
