#!/usr/bin/env bash
# Builds RATIO on a GPU machine: LibTorch from its Python PyTorch, every other library from the
# .deps/ bundle made by scripts/gpu-bundle.sh on a Debian machine.
# Usage: scripts/gpu-build.sh [BUILD_DIR [TARGET...]]   (no target: build everything)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
shift || true
[ -d .deps/root/usr ] || { echo "gpu-build: .deps/root is missing; run scripts/gpu-bundle.sh on a Debian machine and copy .deps here" >&2; exit 2; }
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
DEPS="$PWD/.deps/root/usr"
ARCH=$(python3 -c 'import torch; p = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0); print(f"{p[0]}.{p[1]}")')
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS" -DTORCH_CUDA_ARCH_LIST="$ARCH" \
  -DCMAKE_BUILD_RPATH="$DEPS/lib/x86_64-linux-gnu" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags"  # RPATH, not RUNPATH: ICU's own libicudata is found there too
cmake --build "$BUILD" -j "$(nproc)" ${1:+--target "$@"}
echo "gpu-build: binaries in $BUILD/bin (libraries from .deps are on their RPATH)"
