#!/usr/bin/env bash
# Data-parallel scaling on the GPU machine: builds ratio-worker (scripts/gpu-build.sh, incremental),
# then times GPT-2 124M on 1 and on GPUS GPUs in one run (bench/dp.py). Table on stdout and in
# runs/dp.md (or $1).
#   bench/dp.sh [OUT.md]     env: BUILD (default build-gpu), GPUS (2), VARIANT (a bench.py variant:
#                            baseline; ratio is full RATIO, step 16), STEPS (20), WARMUP (10),
#                            BATCH (16), GRAD_ACCUM (8), VAL_ITERS (0: iterations trained on each, val loss compared)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
scripts/gpu-build.sh "$BUILD" ratio-worker
python3 bench/dp.py --worker "$BUILD/bin/ratio-worker" --out "${1:-runs/dp.md}" --gpus "${GPUS:-2}" --variant "${VARIANT:-baseline}" \
  --steps "${STEPS:-20}" --warmup "${WARMUP:-10}" --batch-size "${BATCH:-16}" --grad-accum "${GRAD_ACCUM:-8}" \
  --val-iters "${VAL_ITERS:-0}"
