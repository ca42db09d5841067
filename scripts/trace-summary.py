#!/usr/bin/env python3
"""Summarise a `moerun bench --trace` file by event kind.

    scripts/trace-summary.py out/trace.cfg000.rank000.json

One line per kind (gate, topk, dispatch, gemm0, ...), in order of first start:
how many events, on how many blocks, the first start and the last end (µs from
the trace's first event) and the median and longest duration (µs). The phase
line of `moerun bench --trace` says when each phase ended; this says how the
time inside a phase was spent (few long events, or many short ones late).
"""
import json
import statistics
import sys


def summarise(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    kinds = {}
    for e in events:
        if e.get("ph") != "X":
            continue
        kinds.setdefault(e["cat"], []).append((float(e["ts"]), float(e["dur"]), e["tid"]))
    if not kinds:
        return [f"{path}: no events"]
    t0 = min(ts for evs in kinds.values() for ts, _, _ in evs)
    lines = []
    for kind, evs in sorted(kinds.items(), key=lambda kv: min(ts for ts, _, _ in kv[1])):
        durs = [d for _, d, _ in evs]
        start = min(ts for ts, _, _ in evs) - t0
        end = max(ts + d for ts, d, _ in evs) - t0
        blocks = len({b for _, _, b in evs})
        lines.append(f"{kind:14s} n={len(evs):5d} blocks={blocks:4d} start {start:8.1f} end {end:8.1f} "
                     f"dur p50 {statistics.median(durs):7.1f} max {max(durs):7.1f}")
    return lines


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in argv[1:]:
        print(f"# {path}")
        for line in summarise(path):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
