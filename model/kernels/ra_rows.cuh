#pragma once
// Staging rows of a [B, heads, T, D] bf16 tensor (kernels.h's RaStrided) in shared memory, shared by
// the reciprocal-attention kernels (ra_band.cu, ra_topk.cu).

#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include "model/kernels/kernels.h"

namespace ratio::kernels {

// Starts copying rows [p0, p0 + n_rows) of one (b, h) slice into shared memory rows of `ld`
// elements (cp.async, 16 bytes a copy, all in flight at once); positions outside [0, T) become zeros.
// The caller commits and waits (wait_for_rows). D a multiple of 8.
template <int D>
__device__ void load_rows_async(__nv_bfloat16* dst, int ld, const RaStrided& src, int b, int h, int p0, int n_rows, int T) {
  const __nv_bfloat16* base = static_cast<const __nv_bfloat16*>(src.data) + b * src.sb + h * src.sh;
  constexpr int kVecs = D / 8;
  for (int idx = threadIdx.x; idx < n_rows * kVecs; idx += blockDim.x) {
    const int row = idx / kVecs, col = (idx % kVecs) * 8, pos = p0 + row;
    if (pos >= 0 && pos < T) {
      __pipeline_memcpy_async(dst + row * ld + col, base + pos * src.st + col, 16);
    } else {
      *reinterpret_cast<uint4*>(dst + row * ld + col) = make_uint4(0, 0, 0, 0);
    }
  }
}

__device__ inline void wait_for_rows() {
  __pipeline_commit();
  __pipeline_wait_prior(0);
  __syncthreads();
}

}  // namespace ratio::kernels
