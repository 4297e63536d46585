#!/usr/bin/env python3
"""Data-parallel scaling of ratio-worker (train.gpus, docs/job-spec.md): tokens/s of GPT-2 124M
(T=1024, bf16; any of bench.py's variants, the baseline by default) with the same global batch on 1 GPU and on N GPUs of this machine, in one run, and
the scaling efficiency (speed-up / N). With --val-iters K it also trains K iterations on each and
compares the final validation loss (20 fixed batches): the N-GPU run computes the same steps, so
the two differ only by bf16 rounding (and reduction order).

Run on the GPU machine through bench/dp.sh; prints a Markdown table and writes it to --out.
"""
import argparse
import json
import os
import subprocess
import tempfile

import bench  # bench/bench.py: the job spec and the corpus of the single-GPU benchmark


def run(worker, spec, work, name, gpus):
    spec["train"]["gpus"] = gpus
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(str(i) for i in range(gpus)))
    proc = subprocess.run([worker, "run", "--job", path, "--workdir", os.path.join(work, f"w-{name}")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        reason = events[-1].get("reason") if events else proc.stderr[-500:]
        raise SystemExit(f"dp: {name} on {gpus} GPU(s) exited {proc.returncode}: {reason}")
    return events


def speed(worker, data, work, gpus, args):
    spec = bench.job_spec(args.variant, data, args.warmup + args.steps, args.warmup, spam=False)
    spec["train"].update({"batch_size": args.batch_size, "grad_accum": args.grad_accum})
    events = run(worker, spec, work, f"speed-{gpus}", gpus)
    # Each metric covers LOG_EVERY iterations ending at its iter; keep those that start after warm-up.
    rates = [e["tokens_per_s"] for e in events
             if e["type"] == "metric" and e["iter"] + 1 - bench.LOG_EVERY >= args.warmup]
    tokens = args.batch_size * args.grad_accum * 1024 * bench.LOG_EVERY
    return len(rates) * tokens / sum(tokens / r for r in rates)


def val_loss(worker, data, work, gpus, args):
    iters = args.val_iters
    spec = bench.job_spec(args.variant, data, iters, 0, spam=False, eval_interval=iters, eval_batches=20)
    spec["train"].update({"batch_size": args.batch_size, "grad_accum": args.grad_accum, "lr": 6e-4,
                          "min_lr": 6e-5, "warmup_iters": min(100, iters // 4)})
    events = run(worker, spec, work, f"val-{gpus}", gpus)
    return next(e["result"] for e in events if e["type"] == "finished")["final_val_loss"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default="build-gpu/bin/ratio-worker")
    ap.add_argument("--out", default="runs/dp.md")
    ap.add_argument("--gpus", type=int, default=2, help="the N compared with 1 GPU")
    ap.add_argument("--variant", default="baseline", choices=sorted(bench.VARIANTS),
                    help="the model, as in bench.py (ratio: full RATIO, step 16)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="micro-batch (rows of 1024 tokens)")
    ap.add_argument("--grad-accum", type=int, default=8, help="micro-batches per step, split across the GPUs")
    ap.add_argument("--val-iters", type=int, default=0, help="also train this many iterations on each and compare")
    args = ap.parse_args()
    worker = os.path.abspath(args.worker)
    with tempfile.TemporaryDirectory(prefix="ratio-dp-") as work:
        data = bench.prepare_data(worker, work)
        one = speed(worker, data, work, 1, args)
        many = speed(worker, data, work, args.gpus, args)
        global_batch = f"{args.batch_size}×{args.grad_accum}×1024"
        table = (f"GPT-2 124M ({args.variant}), bf16, global batch {global_batch} tokens, {args.steps} timed steps after {args.warmup}\n\n"
                 "| GPUs | tokens/s | speed-up | scaling efficiency |\n|---|---|---|---|\n"
                 f"| 1 | {one / 1000:.0f}k | 1.00× | – |\n"
                 f"| {args.gpus} | {many / 1000:.0f}k | {many / one:.2f}× | {many / one / args.gpus:.1%} |\n")
        if args.val_iters:
            a, b = val_loss(worker, data, work, 1, args), val_loss(worker, data, work, args.gpus, args)
            table += (f"\nval loss after {args.val_iters} iterations: 1 GPU {a:.4f}, {args.gpus} GPUs {b:.4f} "
                      f"(difference {b - a:+.4f})\n")
    bench.publish(table, args.out)


if __name__ == "__main__":
    main()
