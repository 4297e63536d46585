#!/usr/bin/env bash
# One command on the GPU machine: builds ratio-worker and ratio-bench-step (scripts/gpu-build.sh,
# incremental), then times it against bench/reference.py (eager and torch.compile) for baseline, MLA, RA,
# RA+MLA and full RATIO. Table on stdout and in runs/bench.md (or $1).
#   bench/run.sh [OUT.md | --build-only]     env: BUILD (default build-gpu), STEPS (20), WARMUP (10),
#                             VARIANTS (default baseline,mla,ra,ra_mla,step12,ratio), PHASES (baseline),
#                             REFERENCE_KERNELS (baseline,mla: also timed with train.kernels=reference),
#                             VAL_COMPARE (0: iterations of GPT-2 trained fused and reference, val loss compared)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
OUT=${1:-runs/bench.md}
scripts/gpu-build.sh "$BUILD" ratio-worker ratio-bench-step
[ "$OUT" = "--build-only" ] && exit 0
python3 bench/bench.py --worker "$BUILD/bin/ratio-worker" --out "$OUT" --steps "${STEPS:-20}" --warmup "${WARMUP:-10}" \
  --variants "${VARIANTS:-baseline,mla,ra,ra_mla,step12,ratio}" --phases "${PHASES-baseline}" \
  --reference-kernels "${REFERENCE_KERNELS-baseline,mla}" --val-compare "${VAL_COMPARE:-0}"
