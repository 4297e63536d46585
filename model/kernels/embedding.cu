// The token embedding's backward into an existing gradient (kernels.h): GPT-2's tied head gets its
// classifier gradient first, and the embedding's rows are added to it in place. Replaces ATen's
// embedding_dense_backward, which builds a zeroed [V, C] gradient of its own (sort, segment sums,
// scatter) that autograd then adds to the classifier's: two extra passes over 154 MB of fp32.
// Deterministic like ATen's, without atomics: the ids arrive sorted by a stable sort; warps sum
// fixed segments of 32 sorted rows, run by run, and a run longer than its segment (a frequent
// token: a few percent of GPT-2 text, up to a sixth of byte-level text) is finished by a second
// pass that adds its segments' partial sums in order. Every row of the gradient has one writer. Reference op: tests/model/fused_ops_test.cpp.

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int64_t kSegment = 32;  // sorted positions per warp in the first pass

// dst += src over VEC channels.
template <int VEC>
__device__ inline void add_into(float* dst, const float (&src)[VEC]) {
  float v[VEC];
  load_vec<VEC>(dst, v);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] += src[i];
  store_vec<VEC>(dst, v);
}

// Pass 1, one warp per segment of kSegment sorted positions: the sum of each run of equal ids
// within the segment, in order. A run wholly inside the segment is added to its gradient row here;
// a run that crosses a segment edge is left in the segment's two partial rows for pass 2: slot 0
// for the run the segment starts with (continued from the segment before), slot 1 for the one it
// ends with (continued in the next). partial: [segments, 2, C].
template <int VEC>
__global__ void embedding_segment_sums_kernel(const int64_t* __restrict__ sorted_ids, const int64_t* __restrict__ order,
                                              const float* __restrict__ dout, float* __restrict__ grad,
                                              float* __restrict__ partial, int64_t N, int64_t C, int64_t V) {
  const int64_t segment = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t p0 = segment * kSegment, p1 = min(N, p0 + kSegment);
  if (p0 >= N) return;
  float* from_before = partial + segment * 2 * C;
  float* into_next = from_before + C;

  for (int64_t c = int64_t(lane) * VEC; c < C; c += int64_t(kWarpSize) * VEC) {
    // Emits the run of `id` over sorted positions [start, end) with its sum.
    auto emit = [&](int64_t id, int64_t start, int64_t end, const float (&sum)[VEC]) {
      if (id < 0 || id >= V) return;
      if (start == p0 && p0 > 0 && sorted_ids[p0 - 1] == id) {
        store_vec<VEC>(from_before + c, sum);
      } else if (end == p1 && p1 < N && sorted_ids[p1] == id) {
        store_vec<VEC>(into_next + c, sum);
      } else {
        add_into<VEC>(grad + id * C + c, sum);
      }
    };
    float sum[VEC] = {};
    int64_t run_id = sorted_ids[p0], run_start = p0;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t id = sorted_ids[p];
      if (id != run_id) {
        emit(run_id, run_start, p, sum);
#pragma unroll
        for (int i = 0; i < VEC; ++i) sum[i] = 0.f;
        run_id = id;
        run_start = p;
      }
      float v[VEC];
      load_vec<VEC>(dout + order[p] * C + c, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum[i] += v[i];
    }
    emit(run_id, run_start, p1, sum);
  }
}

// Pass 2, one warp per sorted position; the warp at the head of a run that crosses segment edges
// adds its partial sums, in segment order, to the id's gradient row.
template <int VEC>
__global__ void embedding_crossing_runs_kernel(const int64_t* __restrict__ sorted_ids, const float* __restrict__ partial,
                                               float* __restrict__ grad, int64_t N, int64_t C, int64_t V) {
  const int64_t head = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (head >= N) return;
  const int64_t id = sorted_ids[head];
  if ((head > 0 && sorted_ids[head - 1] == id) || id < 0 || id >= V) return;
  const int64_t first_segment = head / kSegment, next_start = (first_segment + 1) * kSegment;
  if (next_start >= N || sorted_ids[next_start] != id) return;  // inside one segment: pass 1 added it

  for (int64_t c = int64_t(lane) * VEC; c < C; c += int64_t(kWarpSize) * VEC) {
    float sum[VEC];
    load_vec<VEC>(partial + (first_segment * 2 + 1) * C + c, sum);
    for (int64_t s = first_segment + 1; s * kSegment < N && sorted_ids[s * kSegment] == id; ++s) {
      float v[VEC];
      load_vec<VEC>(partial + s * 2 * C + c, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum[i] += v[i];
    }
    add_into<VEC>(grad + id * C + c, sum);
  }
}

template <int VEC>
void launch(const int64_t* sorted_ids, const int64_t* order, const float* dout, float* grad, float* partial, int64_t N,
            int64_t C, int64_t V, cudaStream_t stream) {
  const unsigned threads = kWarpsPerBlock * kWarpSize;
  const int64_t segments = (N + kSegment - 1) / kSegment;
  embedding_segment_sums_kernel<VEC><<<unsigned((segments + kWarpsPerBlock - 1) / kWarpsPerBlock), threads, 0, stream>>>(
      sorted_ids, order, dout, grad, partial, N, C, V);
  embedding_crossing_runs_kernel<VEC><<<unsigned((N + kWarpsPerBlock - 1) / kWarpsPerBlock), threads, 0, stream>>>(
      sorted_ids, partial, grad, N, C, V);
}

}  // namespace

int64_t embedding_backward_partial_floats(int64_t N, int64_t C) { return (N + kSegment - 1) / kSegment * 2 * C; }

cudaError_t embedding_backward_add(const int64_t* sorted_ids, const int64_t* order, const float* dout, float* grad,
                                   float* partial, int64_t N, int64_t C, int64_t V, cudaStream_t stream) {
  if (C < 1 || V < 1) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  if (C % 8 == 0 && aligned16(dout) && aligned16(grad) && aligned16(partial)) {
    launch<8>(sorted_ids, order, dout, grad, partial, N, C, V, stream);
  } else {
    launch<1>(sorted_ids, order, dout, grad, partial, N, C, V, stream);
  }
  return cudaGetLastError();
}

}  // namespace ratio::kernels
