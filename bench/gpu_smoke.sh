#!/usr/bin/env bash
# GPU smoke test of ratio-worker (the CLI tests run on CPU only): SIGTERM + resume on CUDA, NaN
# divergence on CUDA (exit 4), kv-report on the GPU. Prints PASS/FAIL lines; exit 1 on any FAIL.
#   bench/gpu_smoke.sh      env: BUILD (default build-gpu; built like bench/run.sh when missing)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
[ -x "$BUILD/bin/ratio-worker" ] || bench/run.sh --build-only >/dev/null || exit 1
W="$BUILD/bin/ratio-worker"
T=$(mktemp -d)
fail=0
check() { if [ "$1" = "$2" ]; then echo "PASS $3"; else echo "FAIL $3: got '$1', want '$2'"; fail=1; fi; }
final() { grep '"type":"finished"' "$1" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["result"]["final_val_loss"])'; }

python3 - "$T" <<'PY'
import json, os, sys
t = sys.argv[1]
text = "".join(open(os.path.join(r, f), errors="replace").read() for r, _, fs in os.walk(os.path.dirname(json.__file__)) for f in fs if f.endswith(".py"))
open(os.path.join(t, "corpus.txt"), "w").write(text * 20)
job = {"model": {"n_layer": 4, "n_head": 4, "n_embd": 256, "vocab_size": 256, "block_size": 256,
                 "ra": {"enabled": True}, "mla": {"enabled": True, "latent_dim": 64}},
       "train": {"max_iters": 300, "batch_size": 16, "grad_accum": 2, "warmup_iters": 20, "eval_interval": 100,
                 "eval_batches": 4, "checkpoint_interval": 100, "log_interval": 10, "grad_norm_interval": 50,
                 "device": "cuda", "seed": 3},
       "data": {"dataset": os.path.join(t, "data"), "tokenizer": "byte"}}
json.dump(job, open(os.path.join(t, "job.json"), "w"))
PY
"$W" prepare --input "$T/corpus.txt" --out "$T/data" --tokenizer byte >/dev/null

"$W" run --job "$T/job.json" --workdir "$T/straight" >"$T/straight.out" 2>"$T/straight.err"
check $? 0 "uninterrupted CUDA run"
"$W" run --job "$T/job.json" --workdir "$T/term" >"$T/term.out" 2>"$T/term.err" &
pid=$!
for _ in $(seq 600); do grep -q '"iter":59' "$T/term.out" 2>/dev/null || ! kill -0 $pid 2>/dev/null && break; sleep 0.2; done
kill -TERM $pid; wait $pid
check $? 6 "SIGTERM exits 6"
"$W" run --job "$T/job.json" --workdir "$T/term" --resume >"$T/resumed.out" 2>"$T/resumed.err"
check $? 0 "resumed CUDA run"
a=$(final "$T/straight.out"); b=$(final "$T/resumed.out")
echo "final val loss: uninterrupted $a, interrupted+resumed $b"
python3 -c "import sys; sys.exit(0 if abs($a - $b) < 0.02 else 1)"
check $? 0 "resumed loss within 0.02 of uninterrupted (CUDA kernels are not bit-deterministic)"
grep '"type":"finished"' "$T/straight.out" | cut -c1-600

RATIO_DEBUG_NAN_AT_ITER=15 "$W" run --job "$T/job.json" --workdir "$T/nan" >"$T/nan.out" 2>"$T/nan.err"
check $? 4 "NaN on CUDA exits 4"
tail -1 "$T/nan.err"

"$W" kv-report --contexts 1024,4096,16384
check $? 0 "kv-report on the GPU"
exit $fail
