# Finds LibTorch in this order:
#  1. -DTorch_DIR=... or CMAKE_PREFIX_PATH given by the user;
#  2. a Python installation of PyTorch (how GPU machines have it);
#  3. Debian's libtorch-dev (1.13, CPU only).
if(NOT Torch_DIR AND NOT CMAKE_PREFIX_PATH MATCHES "[Tt]orch")
  find_program(RATIO_PYTHON3 python3)
  if(RATIO_PYTHON3)
    execute_process(
      COMMAND ${RATIO_PYTHON3} -c "import torch; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE RATIO_PY_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE RATIO_PY_TORCH_RC ERROR_QUIET)
    if(RATIO_PY_TORCH_RC EQUAL 0 AND EXISTS "${RATIO_PY_TORCH_PREFIX}")
      message(STATUS "LibTorch: using Python's PyTorch at ${RATIO_PY_TORCH_PREFIX}")
      list(PREPEND CMAKE_PREFIX_PATH "${RATIO_PY_TORCH_PREFIX}")
    endif()
  endif()
endif()
find_package(Torch REQUIRED)
message(STATUS "LibTorch ${Torch_VERSION} (${TORCH_INSTALL_PREFIX})")

# Every LibTorch user links this target: flags, includes and the precompiled header.
# libstdc++ comes first: the PyTorch wheel's libtorch.so exports its own std::filesystem symbols, and
# a binary that found them there first called into them (std::filesystem::remove_all jumped to
# address 0 on the GPU machine). Linked ahead, libstdc++ defines them for every binary here.
add_library(ratio_torch INTERFACE)
target_link_libraries(ratio_torch INTERFACE stdc++ ${TORCH_LIBRARIES})
separate_arguments(RATIO_TORCH_CXX_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(ratio_torch INTERFACE ${RATIO_TORCH_CXX_FLAGS})

# model/kernels/ (fused CUDA kernels) build only against a CUDA LibTorch and with nvcc present; Debian's
# CPU LibTorch has no c10_cuda, so the CPU build never enables CUDA. RATIO_CUDA_KERNELS says which.
set(RATIO_CUDA_KERNELS OFF)
find_library(RATIO_C10_CUDA_LIBRARY c10_cuda PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
if(RATIO_C10_CUDA_LIBRARY)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # The GPU's compute capability, as scripts/gpu-build.sh passes it for LibTorch ("9.0" -> 90).
    # LibTorch's CMake sets CMAKE_CUDA_ARCHITECTURES to OFF, so model/kernels/ sets it per target.
    set(RATIO_CUDA_ARCH 90)
    if(TORCH_CUDA_ARCH_LIST MATCHES "^([0-9]+)\\.([0-9]+)$")
      set(RATIO_CUDA_ARCH "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
    endif()
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # the libcudart LibTorch itself uses
    enable_language(CUDA)
    set(RATIO_CUDA_KERNELS ON)
    message(STATUS "CUDA kernels: on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, sm_${RATIO_CUDA_ARCH})")
  else()
    message(STATUS "CUDA kernels: off (LibTorch has CUDA, but no nvcc was found)")
  endif()
else()
  message(STATUS "CUDA kernels: off (CPU LibTorch)")
endif()
