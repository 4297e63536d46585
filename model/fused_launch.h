#pragma once
// What the LibTorch wrappers of model/kernels/ share (model/fused.cpp, fused_ra.cpp, fused_adamw.cpp):
// the stream kernels run on and the one check of a launch's status. Built only with the kernels.

#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/torch.h>

namespace ratio::model::fused {

// PyTorch's current stream: the one autograd, graphs and the caching allocator order work on.
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, "CUDA kernel ", kernel, " failed: ", cudaGetErrorString(err));
}

}  // namespace ratio::model::fused
