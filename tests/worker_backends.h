#pragma once
// Whether ratio-worker has the Gloo backend that CPU ranks (train.gpus > 1 on CPU) need. CMake defines
// RATIO_WORKER_HAS_GLOO for a test where worker/CMakeLists.txt found Gloo's headers; the GPU build,
// whose PyTorch wheel ships none, has CUDA ranks over NCCL only.

namespace ratio_test {

#ifdef RATIO_WORKER_HAS_GLOO
constexpr bool kWorkerHasGloo = true;
#else
constexpr bool kWorkerHasGloo = false;
#endif
constexpr const char* kNoGloo = "ratio-worker was built without Gloo, which CPU ranks need (Debian: libgloo-dev)";

}  // namespace ratio_test
