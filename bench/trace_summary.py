#!/usr/bin/env python3
"""Device time per kernel in Chrome traces from PyTorch's profiler (ratio-bench-step --trace,
bench/reference.py --trace), side by side: where two implementations of the same step differ.

  python3 bench/trace_summary.py ours.json reference.json [--top 40]
"""
import argparse
import collections
import json


def kernel_times(path):
    """{kernel name: (total microseconds, launches)} over the trace's device kernels."""
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    totals = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            entry = totals[e["name"][:110]]
            entry[0] += e.get("dur", 0.0)
            entry[1] += 1
    return totals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    tables = [kernel_times(p) for p in args.traces]
    names = sorted(set().union(*tables), key=lambda n: -max(t[n][0] if n in t else 0 for t in tables))
    print(" | ".join(f"{p.split('/')[-1]}: {sum(v[0] for v in t.values()) / 1000:.2f} ms, "
                     f"{sum(v[1] for v in t.values())} launches" for p, t in zip(args.traces, tables)))
    for name in names[:args.top]:
        cells = [f"{t[name][0] / 1000:8.3f} ms x{t[name][1]:<4d}" if name in t else " " * 19 for t in tables]
        print(" | ".join(cells), "|", name)


if __name__ == "__main__":
    main()
