// fp32 tensors cast to bf16, many tensors per launch (kernels.h): a forward's weights and biases,
// which the fused ops otherwise cast one launch each. Each block takes kBlockElems consecutive
// elements of one tensor; the list says where each tensor's blocks start. Reference op:
// Tensor::to(kBFloat16), tests/model/fused_ops_test.cpp.

#include "model/kernels/kernels.h"
#include "model/kernels/vec.cuh"

namespace ratio::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;
constexpr int64_t kBlockElems = int64_t(kThreads) * kVec * 4;

__global__ void cast_to_bf16_kernel(CastList list) {
  int t = 0;
  while (t + 1 < list.count && list.first_block[t + 1] <= int64_t(blockIdx.x)) ++t;
  const CastTensor tensor = list.tensors[t];
  const int64_t begin = (int64_t(blockIdx.x) - list.first_block[t]) * kBlockElems;
  const int64_t end = min(tensor.n, begin + kBlockElems);
  auto* dst = static_cast<__nv_bfloat16*>(tensor.dst);
  if (tensor.n % kVec == 0 && aligned16(tensor.src) && aligned16(dst)) {
    for (int64_t i = begin + int64_t(threadIdx.x) * kVec; i < end; i += int64_t(kThreads) * kVec) {
      float v[kVec];
      load_vec<kVec>(tensor.src + i, v);
      store_vec<kVec>(dst + i, v);
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) dst[i] = __float2bfloat16(tensor.src[i]);
  }
}

}  // namespace

cudaError_t cast_to_bf16(CastList list, cudaStream_t stream) {
  if (list.count < 0 || list.count > kCastTensorsPerList) return cudaErrorInvalidValue;
  int64_t blocks = 0;
  for (int t = 0; t < list.count; ++t) {
    list.first_block[t] = blocks;
    blocks += (list.tensors[t].n + kBlockElems - 1) / kBlockElems;
  }
  if (blocks == 0) return cudaSuccess;
  cast_to_bf16_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(list);
  return cudaGetLastError();
}

}  // namespace ratio::kernels
