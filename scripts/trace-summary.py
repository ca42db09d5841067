#!/usr/bin/env python3
"""Summarise a `moerun bench --trace` file by event kind.

    scripts/trace-summary.py [--bins US] [--sources] out/trace.cfg000.rank000.json ...

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

With --sources, per rank and per source rank: when the source's dispatch
signal was seen and decoded, and its GEMM0 and GEMM1 tasks (count, first
start, last end, median duration); the GEMM tasks' durations by the block's
task before them (after a GEMM1 task of another source's rows, whose results
went to that source, or after any other); with --bins as well, the blocks
inside a task of the rank's own rows and of other sources' rows by time:
when the own rows' work runs out and the others' rows arrive (W >= 2).
"""
import json
import statistics
import sys

GEMM = ("gemm0", "gemm1")


def load(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    out = []
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args", {})
        # A dispatch event's role (remote: 1, the block copied other owners'
        # rows) stands in its source's place.
        src = args.get("remote", -1) if e["cat"] == "dispatch" else args.get("src", -1)
        out.append((e["cat"], float(e["ts"]), float(e["dur"]), e["pid"], e["tid"], src))
    return out


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
    for cat, ts, dur, _, tid, _ in evs:
        kinds.setdefault(cat, []).append((ts, dur, tid))
    nblocks = len({e[4] for e in evs})
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
    tasks = [(ts, ts + dur, tid) for cat, ts, dur, _, tid, _ in evs if cat in GEMM]
    if not tasks:
        return []
    w0 = min(s for s, _, _ in tasks)
    w1 = max(e for _, e, _ in tasks)
    span = w1 - w0
    blocks = sorted({e[4] for e in evs})

    def covered(cats):
        """Blocks' time inside the window covered by events of cats (each block's union)."""
        per = {}
        for cat, ts, dur, _, tid, _ in evs:
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
        cells = timeline(w0, w1, bins, t0, lambda mid: len({b for s, e, b in tasks if s <= mid < e}))
        lines.append("blocks in a GEMM task by time (µs from start: blocks): " + cells)
    return lines


def timeline(w0, w1, bins, t0, cell):
    """Bins of `bins` µs from w0 to w1, each as "start:cell(middle)", the
    start in µs from t0."""
    cells = []
    t = w0
    while t < w1:
        cells.append(f"{t - t0:.0f}:{cell(t + bins / 2)}")
        t += bins
    return " ".join(cells)


def source_lines(evs, t0, rank, bins):
    lines = []
    for role, name in ((1, "copying other owners' rows"), (0, "own rows")):
        ds = [e for e in evs if e[0] == "dispatch" and e[5] == role]
        if ds:
            ends = sorted(e[1] + e[2] - t0 for e in ds)
            lines.append(f"dispatch, {name}: {len(ds)} blocks, {min(e[1] for e in ds) - t0:7.1f} .. "
                         f"{ends[-1]:7.1f} (p50 end {statistics.median(ends):7.1f})")
    srcs = sorted({e[5] for e in evs if e[0] in GEMM + ("wait_dispatch", "decode") and e[5] >= 0})
    for src in srcs:
        mine = [e for e in evs if e[5] == src]
        seen = [e[1] + e[2] - t0 for e in mine if e[0] == "wait_dispatch"]
        dec = [e[1] + e[2] - t0 for e in mine if e[0] == "decode"]
        parts = [f"src {src}{' (own)' if src == rank else ''}:",
                 f"signal seen {min(seen):7.1f}" if seen else "signal seen       -",
                 f"decoded {max(dec):7.1f}" if dec else "decoded       -"]
        for cat in GEMM:
            ts = [e for e in mine if e[0] == cat]
            if ts:
                parts.append(f"{cat} n={len(ts):5d} {min(e[1] for e in ts) - t0:7.1f} .. "
                             f"{max(e[1] + e[2] for e in ts) - t0:7.1f} p50 {statistics.median(e[2] for e in ts):5.1f}")
        lines.append(" ".join(parts))
    tasks = [(e[1], e[1] + e[2], e[4], e[5] == rank) for e in evs if e[0] in GEMM]
    if bins > 0 and tasks:
        w0, w1 = min(t[0] for t in tasks), max(t[1] for t in tasks)

        def own_other(mid):
            own = len({b for s, e, b, o in tasks if o and s <= mid < e})
            other = len({b for s, e, b, o in tasks if not o and s <= mid < e})
            return f"{own}/{other}"

        cells = timeline(w0, w1, bins, t0, own_other)
        lines.append("blocks in a task of own / other sources' rows (µs: own/other): " + cells)
    lines += after_lines(evs, rank)
    return lines


def after_lines(evs, rank):
    """A block's GEMM tasks by the task before them in the block: after a
    GEMM1 task of another source's rows (its results stored to that source,
    W >= 2) or after any other task. The first finding of the fifteenth
    session: at W = 4 the former waited for their stages while the returns
    backed up (docs/benchmarks.md)."""
    by_block = {}
    for e in sorted((e for e in evs if e[0] in GEMM), key=lambda e: e[1]):
        by_block.setdefault(e[4], []).append(e)
    groups = {}
    for tasks in by_block.values():
        for prev, cur in zip(tasks, tasks[1:]):
            after = "remote gemm1" if prev[0] == "gemm1" and prev[5] not in (rank, -1) else "other"
            groups.setdefault((after, cur[0]), []).append(cur[2])
    parts = []
    for (after, kind), durs in sorted(groups.items(), reverse=True):
        durs.sort()
        p90 = durs[min(len(durs) - 1, int(0.9 * len(durs)))]
        parts.append(f"after {after}: {kind} n={len(durs)} p50 {statistics.median(durs):.1f} p90 {p90:.1f}")
    return ["tasks by the block's task before (µs): " + "; ".join(parts)] if parts else []


def summarise(path, bins, sources):
    evs = load(path)
    if not evs:
        return [f"{path}: no events"]
    lines = []
    for pid in sorted({e[3] for e in evs}):
        mine = [e for e in evs if e[3] == pid]
        t0 = min(e[1] for e in mine)
        lines.append(f"rank {pid}")
        lines += kinds_lines(mine, t0)
        lines += window_lines(mine, t0, bins)
        if sources:
            lines += source_lines(mine, t0, pid, bins)
    return lines


def main(argv):
    args = argv[1:]
    bins, sources = 0.0, False
    while args and args[0] in ("--bins", "--sources"):
        if args[0] == "--sources":
            sources = True
            args = args[1:]
        elif len(args) >= 2:
            bins = float(args[1])
            args = args[2:]
        else:
            break
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in args:
        print(f"# {path}")
        for line in summarise(path, bins, sources):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
