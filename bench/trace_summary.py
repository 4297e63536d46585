#!/usr/bin/env python3
"""Device time per kernel in Chrome traces from PyTorch's profiler (ratio-bench-step --trace,
bench/reference.py --trace), side by side: where two implementations of the same step differ. The
second line gives each trace's span on the device and the idle time inside it (launch gaps).

  python3 bench/trace_summary.py ours.json reference.json [--top 40]
"""
import argparse
import collections
import json


DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def device_events(path):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    return [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES]


def kernel_times(events):
    """{kernel name: (total microseconds, launches)} over the trace's device kernels."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        entry = totals[e["name"][:110]]
        entry[0] += e.get("dur", 0.0)
        entry[1] += 1
    return totals


def idle_time(events):
    """(span, idle) in microseconds: first start to last end on the device, and the part of it when
    nothing ran (launch gaps; for a replayed CUDA graph, the gaps between its nodes)."""
    intervals = sorted((e["ts"], e["ts"] + e.get("dur", 0.0)) for e in events)
    if not intervals:
        return 0.0, 0.0
    busy, (start, end) = 0.0, intervals[0]
    for s, e in intervals[1:]:
        if s > end:
            busy += end - start
            start, end = s, e
        else:
            end = max(end, e)
    busy += end - start
    span = max(e for _, e in intervals) - intervals[0][0]
    return span, span - busy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    traced = [device_events(p) for p in args.traces]
    tables = [kernel_times(events) for events in traced]
    names = sorted(set().union(*tables), key=lambda n: -max(t[n][0] if n in t else 0 for t in tables))
    print(" | ".join(f"{p.split('/')[-1]}: {sum(v[0] for v in t.values()) / 1000:.2f} ms, "
                     f"{sum(v[1] for v in t.values())} launches" for p, t in zip(args.traces, tables)))
    print(" | ".join("span {:.2f} ms, device idle {:.2f} ms".format(*(x / 1000 for x in idle_time(events)))
                     for events in traced))
    for name in names[:args.top]:
        cells = [f"{t[name][0] / 1000:8.3f} ms x{t[name][1]:<4d}" if name in t else " " * 19 for t in tables]
        print(" | ".join(cells), "|", name)


if __name__ == "__main__":
    main()
