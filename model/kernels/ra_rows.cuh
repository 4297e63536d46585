#pragma once
// What the reciprocal-attention kernels (ra_band.cu, ra_topk.cu) share: staging rows of a
// [B, heads, T, D] bf16 tensor (kernels.h's RaStrided) in shared memory, and their WMMA tile product.

#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <mma.h>

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

namespace ra_wmma {
using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major>;
using FragAT = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16,
                                      nvcuda::wmma::col_major>;  // A read transposed
using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major>;
using FragBT = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16,
                                      nvcuda::wmma::col_major>;  // B read transposed
using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

// acc += A·Bᵀ over D columns: A's 16 rows at `a` and B's 16 rows at `b`, in rows of lda and ldb elements.
template <int D>
__device__ inline void accumulate_abt(FragC& acc, const __nv_bfloat16* a, int lda, const __nv_bfloat16* b, int ldb) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    FragA a_frag;
    FragBT bt_frag;
    nvcuda::wmma::load_matrix_sync(a_frag, a + 16 * kk, lda);
    nvcuda::wmma::load_matrix_sync(bt_frag, b + 16 * kk, ldb);
    nvcuda::wmma::mma_sync(acc, a_frag, bt_frag, acc);
  }
}
}  // namespace ra_wmma

}  // namespace ratio::kernels
