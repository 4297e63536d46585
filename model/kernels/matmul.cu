// Matmuls with cuBLASLt epilogues (kernels.h): c_fc's forward with its bias and GELU folded into the
// matmul (which also writes the pre-activation that the backward reads), and weight gradients that
// the matmul writes in fp32 itself. They replace ATen's linear + gelu (a second full read and write of
// the [N, 4C] activations) and mm(...).to(fp32) (a bf16 product, then a copy of every weight
// gradient). Reference ops: tests/model/fused_ops_test.cpp.
//
// Layouts: cuBLASLt is column-major, our tensors row-major. A row-major [R, K] matrix is the same
// memory as a column-major [K, R] one with leading dimension K, so each row-major product below is
// written as its transpose in column-major terms, as ATen does (Dᵀ = W·xᵀ for D = x·Wᵀ).
#include <cublasLt.h>

#include <mutex>
#include <vector>

#include "model/kernels/kernels.h"

namespace ratio::kernels {

namespace {

// A failed cuBLASLt or CUDA call inside this file; the public functions catch it and return kFailed.
struct MatmulError {
  std::string message;
};

void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) throw MatmulError{std::string(call) + ": " + cublasLtGetStatusName(status)};
}

void check(cudaError_t err, const char* call) {
  if (err != cudaSuccess) throw MatmulError{std::string(call) + ": " + cudaGetErrorString(err)};
}

// One handle per device, created on its first matmul and never destroyed (destroying it at exit
// would race the CUDA context's teardown). The first call must come before any CUDA graph capture:
// the worker runs eager warm-up steps first.
cublasLtHandle_t device_handle() {
  static std::mutex mutex;
  static std::vector<cublasLtHandle_t> handles;  // by device index
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mutex);
  if (handles.size() <= static_cast<size_t>(device)) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr) check(cublasLtCreate(&handles[device]), "cublasLtCreate");
  return handles[device];
}

// The largest power of two (up to 256) dividing the address: cuBLASLt's heuristic assumes 256-byte
// aligned buffers unless told otherwise, and would pick kernels that fault on a smaller alignment.
uint32_t alignment(const void* ptr) {
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  uint32_t bytes = 256;
  while (address % bytes != 0) bytes /= 2;
  return bytes;
}

// Owners of cuBLASLt's descriptors, destroyed on every path out.
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  // fp32 accumulation and fp32 alpha, beta, whatever the matrices' types.
  MatmulDesc() { check(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate"); }
  ~MatmulDesc() { cublasLtMatmulDescDestroy(desc); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;

  template <typename T>
  void set(cublasLtMatmulDescAttributes_t attribute, const T& value, const char* name) {  // T: the attribute's type
    const cublasStatus_t status = cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value));
    if (status != CUBLAS_STATUS_SUCCESS) check(status, (std::string("cublasLtMatmulDescSetAttribute(") + name + ")").c_str());
  }
};

// A column-major matrix: `rows` × `cols` elements of `type`, columns `ld` elements apart.
struct Layout {
  cublasLtMatrixLayout_t layout = nullptr;
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    check(cublasLtMatrixLayoutCreate(&layout, type, rows, cols, ld), "cublasLtMatrixLayoutCreate");
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(layout); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  Preference() { check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate"); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(pref); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;

  void set(cublasLtMatmulPreferenceAttributes_t attribute, uint32_t value) {
    check(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof(value)),
          "cublasLtMatmulPreferenceSetAttribute");
  }
  void set(cublasLtMatmulPreferenceAttributes_t attribute, uint64_t value) {
    check(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof(value)),
          "cublasLtMatmulPreferenceSetAttribute");
  }
};

// D = op(A)·op(B) (+ D where `accumulate`) with `desc`'s epilogue: C is D itself, read only when
// accumulating (beta = 1). Takes cuBLASLt's best heuristic algorithm for these layouts, pointers and
// workspace; kUnsupported when it has none, without launching anything.
MatmulStatus::Code matmul(const MatmulDesc& desc, const void* a, const Layout& a_layout, const void* b,
                          const Layout& b_layout, void* d, const Layout& d_layout, void* workspace,
                          cudaStream_t stream, bool accumulate = false) {
  const cublasLtHandle_t handle = device_handle();
  Preference pref;
  pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(kMatmulWorkspaceBytes));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(a));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(b));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(d));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(d));

  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, desc.desc, a_layout.layout, b_layout.layout,
                                                               d_layout.layout, d_layout.layout, pref.pref, 1,
                                                               &heuristic, &found);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0)) {
    return MatmulStatus::kUnsupported;
  }
  check(status, "cublasLtMatmulAlgoGetHeuristic");

  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;  // host scalars of the fp32 scale type
  check(cublasLtMatmul(handle, desc.desc, &alpha, a, a_layout.layout, b, b_layout.layout, &beta, d, d_layout.layout,
                       d, d_layout.layout, &heuristic.algo, workspace, kMatmulWorkspaceBytes, stream),
        "cublasLtMatmul");
  return MatmulStatus::kLaunched;
}

// Runs `body` (which returns a MatmulStatus::Code), turning a thrown MatmulError into kFailed.
template <typename Body>
MatmulStatus run(const char* what, Body body) {
  try {
    return MatmulStatus{body(), {}};
  } catch (const MatmulError& e) {
    return MatmulStatus{MatmulStatus::kFailed, std::string(what) + ": " + e.message};
  }
}

}  // namespace

bool linear_gelu_epilogue_takes(int64_t M) { return M % 8 == 0; }

MatmulStatus linear_gelu_forward(const void* x, const void* w, const void* bias, void* h, void* pre, int64_t N,
                                 int64_t M, int64_t C, void* workspace, cudaStream_t stream) {
  return run("linear_gelu_forward", [&] {
    if (!linear_gelu_epilogue_takes(M)) return MatmulStatus::kUnsupported;
    // Column-major: hᵀ [M, N] = w [M, C] · xᵀ [C, N], where w is stored as a column-major [C, M]
    // (transposed by the op) and x as a column-major [C, N].
    MatmulDesc desc;
    desc.set(CUBLASLT_MATMUL_DESC_TRANSA, int32_t{CUBLAS_OP_T}, "CUBLASLT_MATMUL_DESC_TRANSA");
    desc.set(CUBLASLT_MATMUL_DESC_TRANSB, int32_t{CUBLAS_OP_N}, "CUBLASLT_MATMUL_DESC_TRANSB");
    // Bias, then GELU in its tanh form (what the model uses), keeping the GELU input as the aux output.
    desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE, uint32_t{CUBLASLT_EPILOGUE_GELU_AUX_BIAS}, "CUBLASLT_MATMUL_DESC_EPILOGUE");
    // The bias has D's type (bf16) and one element per row of hᵀ, i.e. per output feature.
    desc.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias, "CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    // The aux output is the pre-activation in D's type (bf16), laid out like hᵀ.
    desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, pre, "CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER");
    desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, M, "CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD");
    const Layout w_layout(CUDA_R_16BF, C, M, C), x_layout(CUDA_R_16BF, C, N, C), h_layout(CUDA_R_16BF, M, N, M);
    return matmul(desc, w, w_layout, x, x_layout, h, h_layout, workspace, stream);
  });
}

MatmulStatus weight_grad_fp32(const void* dy, const void* x, float* dweight, int64_t N, int64_t M, int64_t C,
                              void* workspace, cudaStream_t stream, bool accumulate) {
  return run("weight_grad_fp32", [&] {
    // Column-major: dweightᵀ [C, M] = xᵀ [C, N] · dy [N, M], where x is stored as a column-major
    // [C, N] and dy as a column-major [M, N] (transposed by the op). bf16 in, fp32 accumulate and out.
    MatmulDesc desc;
    desc.set(CUBLASLT_MATMUL_DESC_TRANSA, int32_t{CUBLAS_OP_N}, "CUBLASLT_MATMUL_DESC_TRANSA");
    desc.set(CUBLASLT_MATMUL_DESC_TRANSB, int32_t{CUBLAS_OP_T}, "CUBLASLT_MATMUL_DESC_TRANSB");
    const Layout x_layout(CUDA_R_16BF, C, N, C), dy_layout(CUDA_R_16BF, M, N, M), dw_layout(CUDA_R_32F, C, M, C);
    return matmul(desc, x, x_layout, dy, dy_layout, dweight, dw_layout, workspace, stream, accumulate);
  });
}

}  // namespace ratio::kernels
