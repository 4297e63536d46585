#!/usr/bin/env python3
"""ratio-worker vs a PyTorch reference: tokens/s for GPT-2 124M (B=16, T=1024, bf16) in the study's
attention variants. Run on the GPU machine through bench/run.sh; prints a Markdown table and writes
it to --out.

ratio-worker runs `run` with a short max_iters and logs every 5 iterations; its tokens/s is taken
over the iterations after --warmup (the metric events' own timing, which excludes evaluation).
The reference (bench/reference.py) reports the median step over the same number of steps.
"""
import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# Variant -> model overrides of the job spec (docs/job-spec.md); "step12" is step 12 (RA + MLA + ratio +
# mechanisms 1 and 2), "ratio" step 16, full RATIO (step 12 + RA-CT), "step14" step 14 (MLA + RA-CT
# without RA: the statistics path without the band), "step18" step 18 (RA-CT's entropy, standard heads).
VARIANTS = {
    "baseline": {},
    "mla": {"mla": {"enabled": True, "latent_dim": 128}},
    "ra": {"ra": {"enabled": True, "alpha": 0.3, "window": 64}},
    "ra_mla": {"mla": {"enabled": True, "latent_dim": 128}, "ra": {"enabled": True, "alpha": 0.3, "window": 64}},
    "step12": {"mla": {"enabled": True, "latent_dim": 128}, "ra": {"enabled": True, "alpha": 0.3, "window": 64},
               "mlp_ratio": 2048 / 768, "mlp_gate": {"enabled": True}, "mlp_cross": {"enabled": True}},
    "ratio": {"mla": {"enabled": True, "latent_dim": 128}, "ra": {"enabled": True, "alpha": 0.3, "window": 64},
              "mlp_ratio": 2048 / 768, "mlp_gate": {"enabled": True}, "mlp_cross": {"enabled": True},
              "ra_ct": {"enabled": True, "mode": "topk", "apply": "output"}},
    "step14": {"mla": {"enabled": True, "latent_dim": 128}, "mlp_ratio": 2560 / 768,
               "ra_ct": {"enabled": True, "mode": "topk", "apply": "output"}},
    "step18": {"ra_ct": {"enabled": True, "mode": "entropy", "apply": "output"}},
    "ct_rms": {"ra_ct": {"enabled": True, "mode": "rms", "apply": "output"}},
}
LOG_EVERY = 5


def job_spec(variant, data_dir, iters, warmup, spam, kernels="auto", eval_interval=1_000_000, eval_batches=1,
             cuda_graph="auto"):
    model = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "vocab_pad_to": 64, "block_size": 1024}
    model.update(VARIANTS[variant])
    return {
        "matrix": "bench", "step": variant, "name": variant,
        "model": model,
        "train": {"max_iters": iters, "batch_size": 16, "grad_accum": 1, "warmup_iters": warmup,
                  "eval_interval": eval_interval, "eval_batches": eval_batches, "checkpoint_interval": 1_000_000,
                  "log_interval": LOG_EVERY, "grad_norm_interval": 1_000_000, "device": "cuda", "dtype": "bf16",
                  "kernels": kernels, "cuda_graph": cuda_graph, "spam": {"enabled": spam}},
        "data": {"dataset": data_dir, "tokenizer": "byte"},
    }


def prepare_data(worker, work):
    """Bytes of Python's standard library: any text will do, the content does not change the speed."""
    out = os.path.join(work, "data")
    text = os.path.join(work, "corpus.txt")
    size = 0
    with open(text, "wb") as f:
        for root, _, files in sorted(os.walk(sysconfig.get_paths()["stdlib"])):
            for name in sorted(files):
                if name.endswith(".py") and size < 20_000_000:
                    with open(os.path.join(root, name), "rb") as src:
                        data = src.read()
                    f.write(data)
                    size += len(data)
    subprocess.run([worker, "prepare", "--input", text, "--out", out, "--tokenizer", "byte"], check=True)
    return out


def run_worker(worker, variant, data, work, steps, warmup, spam, kernels="auto", cuda_graph="auto"):
    iters = warmup + steps
    name = f"{variant}-{spam}-{kernels}-{cuda_graph}"
    spec_path = os.path.join(work, f"{name}.json")
    with open(spec_path, "w") as f:
        json.dump(job_spec(variant, data, iters, warmup, spam, kernels, cuda_graph=cuda_graph), f)
    proc = subprocess.run([worker, "run", "--job", spec_path, "--workdir", os.path.join(work, f"w-{name}")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        reason = events[-1].get("reason") if events else proc.stderr[-500:]
        return {"error": f"exit {proc.returncode}: {reason}"}
    # Each metric covers LOG_EVERY iterations ending at its iter; keep those that start after warm-up.
    rates = [e["tokens_per_s"] for e in events if e["type"] == "metric" and e["iter"] + 1 - LOG_EVERY >= warmup]
    tokens_per_interval = 16 * 1024 * LOG_EVERY
    seconds = sum(tokens_per_interval / r for r in rates)
    result = next(e["result"] for e in events if e["type"] == "finished")
    steady = len(rates) * tokens_per_interval / seconds
    # finished.result's MFU covers every iteration, warm-up included; rescale it to the timed ones.
    mfu = result["mfu"] * steady / result["tokens_per_s"] if result["mfu"] else None
    started = next(e for e in events if e["type"] == "started")
    return {"tokens_per_s": steady, "peak_memory_bytes": result["peak_memory_bytes"], "mfu": mfu,
            "kernels": started.get("kernels", "?"), "cuda_graph": result.get("cuda_graph", "?")}


def run_val_compare(worker, data, work, iters):
    """The same GPT-2 124M job trained `iters` iterations with the fused kernels and with ATen's ops:
    validation loss at the end (20 fixed batches) of each, same seed and data order."""
    out = {}
    for kernels in ("fused", "reference"):
        spec = job_spec("baseline", data, iters, 0, spam=False, kernels=kernels, eval_interval=iters, eval_batches=20)
        spec["train"].update({"lr": 6e-4, "min_lr": 6e-5, "warmup_iters": min(100, iters // 4)})
        spec_path = os.path.join(work, f"val-{kernels}.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        proc = subprocess.run([worker, "run", "--job", spec_path, "--workdir", os.path.join(work, f"val-{kernels}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            out[kernels] = {"error": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
            continue
        result = next(e["result"] for e in events if e["type"] == "finished")
        out[kernels] = {"val_loss": result["final_val_loss"], "tokens_per_s": result["tokens_per_s"]}
    return out


def run_reference(variant, compiled, steps):
    cmd = [sys.executable, os.path.join(HERE, "reference.py"), "--variant", variant, "--steps", str(steps)]
    if compiled:
        cmd.append("--compile")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_phases(worker, variant, data, work, steps, warmup):
    """Forward / backward / optimizer medians: ratio-bench-step (beside the worker) and reference.py."""
    spec_path = os.path.join(work, f"{variant}-phases.json")
    with open(spec_path, "w") as f:
        json.dump(job_spec(variant, data, warmup + steps, warmup, spam=False), f)
    tool = os.path.join(os.path.dirname(worker), "ratio-bench-step")
    proc = subprocess.run([tool, "--job", spec_path, "--steps", str(steps), "--warmup", str(warmup)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ours = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()[-200:]}
    cmd = [sys.executable, os.path.join(HERE, "reference.py"), "--variant", variant, "--steps", str(steps), "--phases"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eager = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-200:]}
    return ours, eager


def phase_table(phases):
    lines = ["", "Where a step's time goes (median ms, device synchronised between phases; step = whole step without them)",
             "", "| variant | | forward | backward | optimizer | step |", "| --- | --- | --- | --- | --- | --- |"]
    for variant, ours, eager in phases:
        for name, r in (("ratio-worker", ours), ("PyTorch eager", eager)):
            if "error" in r:
                lines.append(f"| {variant} | {name} | {r['error'][:80]} | | | |")
                continue
            step = r.get("step_ms", r.get("ms_per_step"))
            lines.append(f"| {variant} | {name} | {r['forward_ms']:.2f} | {r['backward_ms']:.2f} | "
                         f"{r['optimizer_ms']:.2f} | {step:.2f} |")
    return "\n".join(lines) + "\n"


def fmt_rate(r):
    return f"{r['tokens_per_s'] / 1000:.0f}k" if "tokens_per_s" in r else r["error"][:60]


def fmt_mem(r):
    b = r.get("peak_memory_bytes")
    return f"{b / 2**30:.1f} GiB" if b else "–"


def publish(table, out):
    """The table on stdout and in `out` (its folder made if missing)."""
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(table)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", default="build-gpu/bin/ratio-worker")
    ap.add_argument("--out", default="runs/bench.md")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-reference", action="store_true", help="time ratio-worker only")
    ap.add_argument("--phases", default="baseline", help="variants to split into forward/backward/optimizer ('' for none)")
    ap.add_argument("--reference-kernels", default="baseline,mla",
                    help="variants also timed with train.kernels=reference ('' for none)")
    ap.add_argument("--val-compare", type=int, default=0, metavar="ITERS",
                    help="train GPT-2 124M ITERS iterations with fused and with reference kernels; compare val loss")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="ratio-bench-")
    data = prepare_data(args.worker, work)
    rows = []
    with_reference = [v for v in args.reference_kernels.split(",") if v]
    for variant in args.variants.split(","):
        worker = run_worker(args.worker, variant, data, work, args.steps, args.warmup, spam=False)
        spam = run_worker(args.worker, variant, data, work, args.steps, args.warmup, spam=True) if variant == "baseline" else None
        aten = (run_worker(args.worker, variant, data, work, args.steps, args.warmup, spam=False, kernels="reference")
                if variant in with_reference else None)
        no_graph = (run_worker(args.worker, variant, data, work, args.steps, args.warmup, spam=False, cuda_graph="off")
                    if variant in with_reference else None)
        eager = compiled = {"error": "skipped"}
        if not args.no_reference:
            eager = run_reference(variant, False, args.steps)
            compiled = run_reference(variant, True, args.steps)
        rows.append((variant, worker, no_graph, aten, spam, eager, compiled))
        print(f"bench: {variant}: worker {fmt_rate(worker)}, eager {fmt_rate(eager)}, compile {fmt_rate(compiled)}",
              file=sys.stderr, flush=True)

    import torch  # only for the device name in the table
    lines = [f"GPT-2 124M, B=16, T=1024, bf16 autocast, {args.steps} timed steps after {args.warmup} warm-up, "
             f"{torch.cuda.get_device_name(0)}, PyTorch {torch.__version__}",
             "",
             "| variant | ratio-worker tok/s (kernels, graph) | worker, no graph | worker, ATen ops | worker + SPAM | "
             "worker MFU | PyTorch eager | PyTorch compile | worker / compile | peak mem worker / eager / compile |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for variant, worker, no_graph, aten, spam, eager, compiled in rows:
        mfu = f"{worker['mfu'] * 100:.1f} %" if worker.get("mfu") else "–"
        # Three decimals: rounded to two, 1.4956 would read as a bar of 1.5 met.
        ratio = (f"**{worker['tokens_per_s'] / compiled['tokens_per_s']:.3f}×**"
                 if "tokens_per_s" in worker and "tokens_per_s" in compiled else "–")
        graph = worker.get("cuda_graph", "?")
        lines.append(f"| {variant} | {fmt_rate(worker)} ({worker.get('kernels', '?')}, {graph[:60]}) | "
                     f"{fmt_rate(no_graph) if no_graph else '–'} | {fmt_rate(aten) if aten else '–'} | "
                     f"{fmt_rate(spam) if spam else '–'} | {mfu} | {fmt_rate(eager)} | {fmt_rate(compiled)} | {ratio} | "
                     f"{fmt_mem(worker)} / {fmt_mem(eager)} / {fmt_mem(compiled)} |")
    table = "\n".join(lines) + "\n"
    phases = [(v, *run_phases(args.worker, v, data, work, args.steps, args.warmup)) for v in args.phases.split(",") if v]
    if phases:
        table += phase_table(phases)
    if args.val_compare:
        val = run_val_compare(args.worker, data, work, args.val_compare)
        table += (f"\nGPT-2 124M, {args.val_compare} iterations on the byte-level corpus, validation loss (20 fixed "
                  "batches) at the end:\n\n| kernels | val loss | tok/s over the run |\n| --- | --- | --- |\n")
        for kernels, r in val.items():
            table += (f"| {kernels} | {r['val_loss']:.4f} | {r['tokens_per_s'] / 1000:.0f}k |\n" if "val_loss" in r
                      else f"| {kernels} | {r['error'][:120]} | |\n")
        if all("val_loss" in r for r in val.values()):
            table += f"\n|Δ val loss| = {abs(val['fused']['val_loss'] - val['reference']['val_loss']):.4f}\n"
    publish(table, args.out)


if __name__ == "__main__":
    main()
