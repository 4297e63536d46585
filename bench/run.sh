#!/usr/bin/env bash
# One command on the GPU machine: builds ratio-worker (scripts/gpu-build.sh's recipe, this target
# only), then times it against bench/reference.py (eager and torch.compile) for baseline, MLA, RA,
# RA+MLA and full RATIO. Table on stdout and in runs/bench.md (or $1).
#   bench/run.sh [OUT.md | --build-only]     env: BUILD (default build-gpu), STEPS (20), WARMUP (10),
#                             VARIANTS (default baseline,mla,ra,ra_mla,ratio)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
OUT=${1:-runs/bench.md}
if [ ! -x "$BUILD/bin/ratio-worker" ]; then
  [ -d .deps/root/usr ] || { echo "bench: .deps/root is missing; run scripts/gpu-bundle.sh on a Debian machine and copy .deps here" >&2; exit 2; }
  TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  DEPS="$PWD/.deps/root/usr"
  ARCH=$(python3 -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}")')
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRATIO_BUILD_TESTS=OFF \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS" -DTORCH_CUDA_ARCH_LIST="$ARCH" \
    -DCMAKE_BUILD_RPATH="$DEPS/lib/x86_64-linux-gnu" >/dev/null
  cmake --build "$BUILD" -j "$(nproc)" --target ratio-worker
fi
[ "$OUT" = "--build-only" ] && exit 0
python3 bench/bench.py --worker "$BUILD/bin/ratio-worker" --out "$OUT" --steps "${STEPS:-20}" --warmup "${WARMUP:-10}" \
  --variants "${VARIANTS:-baseline,mla,ra,ra_mla,ratio}"
