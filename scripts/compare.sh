#!/usr/bin/env bash
# moerun against the eager PyTorch baseline (scripts/baseline/), on the same
# GPUs and shapes, in one call (issue 4): both latencies and their ratio.
#
#   scripts/compare.sh                       # bf16, T = 128 and 8192, W = all local GPUs
#   DTYPES="bf16 tf32" scripts/compare.sh    # also tf32
#   W=2 TOKENS=128,1024,8192 EXPERTS=64 scripts/compare.sh
#
# Settings (environment): W [all local GPUs], TOKENS [128,8192], HIDDEN [2048],
# FFN_HIDDEN [2048], EXPERTS [32], TOPK [2], FFN [relu], DTYPES [bf16],
# ITERS [20], WARMUP [5], VERIFY [1: moerun --verify, baseline --check],
# MOERUN [bin/moerun], PYTHON [/opt/torch/.venv/bin/python3, else python3],
# LIMIT [600: seconds per job], LOGDIR [$OUT, else /tmp/moerun-compare],
# MOERUN_ARGS, BASELINE_ARGS (extra flags for either side).
#
# Each side runs under `timeout`; logs and JSON go to LOGDIR (moerun_<dtype>.*,
# baseline_<dtype>.*, compare.json). The last lines printed are the table:
# latency p50/p99 of each side (median over iterations of the slowest rank,
# each iteration after a barrier) and speedup = baseline p50 / moerun p50.
# Exit status: 0 when every job ran and every verification passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

MOERUN=${MOERUN:-bin/moerun}
if [ -z "${PYTHON:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
fi
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-compare}}
mkdir -p "$LOGDIR"
# Safety on shared GPU machines: NVLink multicast stays off everywhere.
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
W=${W:-$ngpu}
TOKENS=${TOKENS:-128,8192}
HIDDEN=${HIDDEN:-2048}
FFN_HIDDEN=${FFN_HIDDEN:-2048}
EXPERTS=${EXPERTS:-32}
TOPK=${TOPK:-2}
FFN=${FFN:-relu}
DTYPES=${DTYPES:-bf16}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
VERIFY=${VERIFY:-1}
LIMIT=${LIMIT:-600}
read -r -a MOERUN_EXTRA <<<"${MOERUN_ARGS:-}"
read -r -a BASELINE_EXTRA <<<"${BASELINE_ARGS:-}"

echo "compare: ${ngpu}x ${card:-no GPU}, W=$W, logs in $LOGDIR"
[ "${W:-0}" -ge 1 ] 2>/dev/null || { echo "compare: no GPU visible (set W to override)"; exit 1; }
[ -x "$MOERUN" ] || { echo "compare: $MOERUN not found or not executable (build it with make)"; exit 1; }
"$PYTHON" -c 'import torch' 2>/dev/null || { echo "compare: $PYTHON has no torch (set PYTHON)"; exit 1; }
echo "compare: $("$MOERUN" version 2>&1 | head -1); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"

SHAPE=(--tokens "$TOKENS" --hidden "$HIDDEN" --ffn-hidden "$FFN_HIDDEN" --experts "$EXPERTS" --topk "$TOPK"
       --ffn "$FFN" --iters "$ITERS" --warmup "$WARMUP")
fails=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
for d in ${DTYPES//,/ }; do
  # moerun
  js="$LOGDIR/moerun_$d.json"; log="$LOGDIR/moerun_$d.log"; rm -f "$js"
  v=(); [ "$VERIFY" = 1 ] && v=(--verify)
  t0=$(now_ms)
  timeout -k 10 "$LIMIT" "$MOERUN" launch -n "$W" -- bench --backend gpu --dtype "$d" "${SHAPE[@]}" "${v[@]}" \
      --json "$js" "${MOERUN_EXTRA[@]}" >"$log" 2>&1
  rc=$?
  echo "compare: moerun $d: exit $rc after $(( ($(now_ms) - t0) / 1000 )) s"
  [ $rc -eq 0 ] || { fails=$((fails + 1)); grep -m3 -E 'FAIL|rror' "$log" | cut -c1-200 | sed 's/^/  /'; }
  grep -E '^ +[0-9]' "$log" | sed 's/^/  moerun: /'

  # the baseline
  js="$LOGDIR/baseline_$d.json"; log="$LOGDIR/baseline_$d.log"; rm -f "$js"
  v=(); [ "$VERIFY" = 1 ] && v=(--check)
  t0=$(now_ms)
  timeout -k 10 "$LIMIT" "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$W" \
      scripts/baseline/moe_baseline.py --dtype "$d" "${SHAPE[@]}" "${v[@]}" --json "$js" "${BASELINE_EXTRA[@]}" \
      >"$log" 2>&1
  rc=$?
  echo "compare: baseline $d: exit $rc after $(( ($(now_ms) - t0) / 1000 )) s"
  [ $rc -eq 0 ] || { fails=$((fails + 1)); grep -m3 -E 'FAIL|rror' "$log" | cut -c1-200 | sed 's/^/  /'; }
  grep -E '^ +[0-9]' "$log" | sed 's/^/  baseline: /'
done

# The table: one row per (dtype, shape) present on either side.
"$PYTHON" - "$LOGDIR" "${card:-?}" "$DTYPES" <<'EOF' || fails=$((fails + 1))
import json, os, sys

logdir, card, dtypes = sys.argv[1], sys.argv[2], " ".join(sys.argv[3:]).replace(",", " ").split()
KEYS = ("tokens", "hidden", "ffn_hidden", "experts", "topk", "ffn", "dtype", "capacity_factor")

def load(path):
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return None, {}
    return rep, {tuple(r["config"][k] for k in KEYS): r for r in rep.get("results", [])}

rows, table = [], []
for d in dtypes:
    mrep, m = load(os.path.join(logdir, f"moerun_{d}.json"))
    brep, b = load(os.path.join(logdir, f"baseline_{d}.json"))
    world = (mrep or brep or {}).get("world", "?")
    for key in sorted(set(m) | set(b), key=lambda k: (k[6], k[4], k[0])):
        mr, br = m.get(key), b.get(key)
        ratio = br["latency_us_p50"] / mr["latency_us_p50"] if mr and br and mr["latency_us_p50"] > 0 else None
        c = dict(zip(KEYS, key))
        # The issue's targets for the paper's shape on 4 GPUs: bf16 at least
        # 3x at T = 8192 and 10x at T = 128 against this baseline.
        target = None
        if (d == "bf16" and world == 4 and c["hidden"] == 2048 and c["ffn_hidden"] == 2048 and c["experts"] == 32
                and c["topk"] == 2 and c["ffn"] == "relu" and c["capacity_factor"] == 0):
            target = {8192: 3.0, 128: 10.0}.get(c["tokens"])
        ok = lambda r, k: "-" if r is None or r.get(k) is None else ("pass" if r[k] else "FAIL")
        rows.append({"config": c, "world": world, "card": card,
                     "moerun": mr and {k: mr[k] for k in ("latency_us_p50", "latency_us_p99", "verified", "rel_err")},
                     "baseline": br and {k: br.get(k) for k in ("latency_us_p50", "latency_us_p99", "verified",
                                                                 "rel_err", "expert_gemm", "host_syncs")},
                     "speedup": ratio, "target": target})
        f = lambda r, k: f"{r[k]:10.1f}" if r else f"{'-':>10}"
        tgt = "" if target is None else (f">={target:g}x " + ("met" if ratio and ratio >= target else "NOT met"))
        table.append(f"{world:>3} {c['tokens']:>6} {c['hidden']:>5} {c['ffn_hidden']:>5} {c['experts']:>4} {c['topk']:>2} "
                     f"{c['ffn']:>6} {d:>5} {f(mr, 'latency_us_p50')} {f(mr, 'latency_us_p99')} {ok(mr, 'verified'):>5} "
                     f"{f(br, 'latency_us_p50')} {f(br, 'latency_us_p99')} {ok(br, 'verified'):>5} "
                     f"{(f'{ratio:8.2f}x' if ratio else '        -'):>9}  {tgt}")
with open(os.path.join(logdir, "compare.json"), "w") as fo:
    json.dump({"card": card, "rows": rows}, fo, indent=2)
    fo.write("\n")
print()
print(f"compare: {card}; latency in us (p50/p99 over iterations of the slowest rank); speedup = baseline p50 / moerun p50")
print(f"{'W':>3} {'T':>6} {'H':>5} {'I':>5} {'E':>4} {'k':>2} {'ffn':>6} {'dtype':>5} {'moerun p50':>10} {'p99':>10} "
      f"{'ok':>5} {'torch p50':>10} {'p99':>10} {'ok':>5} {'speedup':>9}  target")
print("\n".join(table) if table else "  (no results)")
sys.exit(0 if table else 1)
EOF
echo "compare: $fails failed job(s); JSON and logs in $LOGDIR"
[ $fails -eq 0 ]
