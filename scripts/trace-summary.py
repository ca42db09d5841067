#!/usr/bin/env python3
"""Summarise a `moerun bench --trace` file by event kind.

    scripts/trace-summary.py [--bins US] out/trace.cfg000.rank000.json ...

One line per kind (gate, topk, dispatch, gemm0, ...), in order of first start:
how many events, on how many blocks, the first start and the last end (µs from
the trace's first event), the median, mean and longest duration and the time
per block (the kind's summed durations over the blocks of the trace), all in
µs. The phase line of `moerun bench --trace` says when each phase ended; this
says how the time inside a phase was spent (few long events, or many short
ones late).

Then the GEMM window of each rank (first GEMM task start to last GEMM task
end): the blocks' time in GEMM tasks (the union of a block's task intervals,
so that a task's epilogue that overlaps the next task is counted once), in
next-task waits, and the rest, as fractions of blocks x window. With --bins,
the number of blocks inside a GEMM task, sampled at the middle of each bin of
US µs: where in the window the grid runs short of work.
"""
import json
import statistics
import sys

GEMM = ("gemm0", "gemm1")


def load(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    return [(e["cat"], float(e["ts"]), float(e["dur"]), e["pid"], e["tid"]) for e in events if e.get("ph") == "X"]


def union_length(intervals):
    """Total length covered by (start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def kinds_lines(evs, t0):
    kinds = {}
    for cat, ts, dur, _, tid in evs:
        kinds.setdefault(cat, []).append((ts, dur, tid))
    nblocks = len({tid for _, _, _, _, tid in evs})
    lines = []
    for kind, ks in sorted(kinds.items(), key=lambda kv: min(ts for ts, _, _ in kv[1])):
        durs = [d for _, d, _ in ks]
        start = min(ts for ts, _, _ in ks) - t0
        end = max(ts + d for ts, d, _ in ks) - t0
        blocks = len({b for _, _, b in ks})
        lines.append(f"{kind:14s} n={len(ks):5d} blocks={blocks:4d} start {start:8.1f} end {end:8.1f} "
                     f"dur p50 {statistics.median(durs):7.1f} mean {statistics.fmean(durs):7.1f} "
                     f"max {max(durs):7.1f} per block {sum(durs) / nblocks:7.1f}")
    return lines


def window_lines(evs, t0, bins):
    tasks = [(ts, ts + dur, tid) for cat, ts, dur, _, tid in evs if cat in GEMM]
    if not tasks:
        return []
    w0 = min(s for s, _, _ in tasks)
    w1 = max(e for _, e, _ in tasks)
    span = w1 - w0
    blocks = sorted({tid for _, _, _, _, tid in evs})

    def covered(cats):
        """Blocks' time inside the window covered by events of cats (each block's union)."""
        per = {}
        for cat, ts, dur, _, tid in evs:
            if cats(cat) and ts < w1 and ts + dur > w0:
                per.setdefault(tid, []).append((max(ts, w0), min(ts + dur, w1)))
        return sum(union_length(v) for v in per.values())

    busy = covered(lambda c: c in GEMM)
    with_waits = covered(lambda c: c in GEMM or c == "wait_task")
    everything = covered(lambda c: True)
    cap = span * len(blocks)
    lines = [f"gemm window    {w0 - t0:8.1f} .. {w1 - t0:8.1f} ({span:.1f} µs, {len(blocks)} blocks): "
             f"in tasks {busy / cap:.3f}, next-task waits {(with_waits - busy) / cap:.3f}, "
             f"other events {(everything - with_waits) / cap:.3f}, no event {(cap - everything) / cap:.3f}"]
    if bins > 0:
        cells = []
        t = w0
        while t < w1:
            mid = t + bins / 2
            n = len({b for s, e, b in tasks if s <= mid < e})
            cells.append(f"{t - t0:.0f}:{n}")
            t += bins
        lines.append("blocks in a GEMM task by time (µs from start: blocks): " + " ".join(cells))
    return lines


def summarise(path, bins):
    evs = load(path)
    if not evs:
        return [f"{path}: no events"]
    lines = []
    for pid in sorted({pid for _, _, _, pid, _ in evs}):
        mine = [e for e in evs if e[3] == pid]
        t0 = min(ts for _, ts, _, _, _ in mine)
        lines.append(f"rank {pid}")
        lines += kinds_lines(mine, t0)
        lines += window_lines(mine, t0, bins)
    return lines


def main(argv):
    args = argv[1:]
    bins = 0.0
    if len(args) >= 2 and args[0] == "--bins":
        bins = float(args[1])
        args = args[2:]
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in args:
        print(f"# {path}")
        for line in summarise(path, bins):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
