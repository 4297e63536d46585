#!/usr/bin/env bash
# Where one training step's device time goes, ratio-worker beside torch.compile, kernel by kernel.
# On the GPU machine, after scripts/gpu-build.sh BUILD ratio-bench-step:
#   bench/trace.sh OUT_DIR [VARIANT...]     env: BUILD (build-gpu), TOP (45), REFERENCE (compile|eager|none),
#                                            GRAPH (1: trace a replay of the captured step), KEEP (1: keep the traces)
# For each variant (default baseline mla): OUT_DIR/VARIANT.txt lists device time per kernel of one
# step (ratio-bench-step --trace) and of the reference's step (bench/reference.py --trace), side by side,
# with each step's span and idle time on the device. KEEP=1 also leaves the traces, gzipped, in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/trace.sh OUT_DIR [VARIANT...]}
shift
BUILD=${BUILD:-build-gpu}
REFERENCE=${REFERENCE:-compile}
mkdir -p "$OUT"
WORK=$(mktemp -d)
for variant in "${@:-baseline mla}"; do
  for v in $variant; do
    python3 -c "import sys, json; sys.path.insert(0, 'bench'); import bench
json.dump(bench.job_spec('$v', '/nonexistent', 30, 10, spam=False), open('$WORK/$v.json', 'w'))"
    "$BUILD/bin/ratio-bench-step" --job "$WORK/$v.json" --steps 10 --warmup 3 --trace "$WORK/$v-ours.json" \
      --graph "${GRAPH:-0}" \
      > "$WORK/$v-ours.log" 2>&1 || { echo "trace: ratio-bench-step failed for $v:"; tail -5 "$WORK/$v-ours.log"; continue; }
    traces=("$WORK/$v-ours.json")
    if [ "$REFERENCE" != none ]; then
      flag=$([ "$REFERENCE" = compile ] && echo --compile || true)
      python3 bench/reference.py --variant "$v" $flag --steps 5 --warmup 3 --trace "$WORK/$v-ref.json" \
        > "$WORK/$v-ref.log" 2>&1 && traces+=("$WORK/$v-ref.json") || { echo "trace: reference failed for $v"; tail -3 "$WORK/$v-ref.log"; }
    fi
    { tail -3 "$WORK/$v-ours.log"; python3 bench/trace_summary.py "${traces[@]}" --top "${TOP:-45}"; } > "$OUT/$v.txt"
    [ "${KEEP:-0}" = 1 ] && gzip -c "$WORK/$v-ours.json" > "$OUT/$v-ours.json.gz"
    echo "== $v"; head -2 "$OUT/$v.txt" | tail -1
  done
done
rm -rf "$WORK"
