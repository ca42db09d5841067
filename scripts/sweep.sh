#!/usr/bin/env bash
# The sweep of issue 4 item 6: moerun (and the eager PyTorch baseline) over
# T in {128, 1024, 4096, 8192, 16384} tokens per GPU, E in {8, 16, 32, 64, 128}
# and W in {1, 2, 4} GPUs, H = I = 2048, k = 2, relu, collected into one JSON
# file for cmd/moerun-plot:
#
#   scripts/sweep.sh                           # moerun and the baseline, bf16, logs under $OUT
#   BASELINE=0 GPUS="2 4" scripts/sweep.sh     # moerun only, W = 2 and 4
#   DTYPES=bf16,tf32 VERIFY=1 scripts/sweep.sh
#   go run ./cmd/moerun-plot draw -o plots $OUT/sweep.json    # then, anywhere: the PNGs
#
# Settings (environment): GPUS ["1 2 4", those above the local GPU count are
# skipped], TOKENS [128,1024,4096,8192,16384], EXPERTS [8,16,32,64,128],
# HIDDEN [2048], FFN_HIDDEN [2048], TOPK [2], FFN [relu], DTYPES [bf16],
# ITERS [20], WARMUP [5], VERIFY [0; 1 adds moerun --verify and baseline --check],
# BASELINE [1; 0 skips it], LIMIT [600: seconds per job], MOERUN [bin/moerun],
# PYTHON [/opt/torch/.venv/bin/python3, else python3], LOGDIR [$OUT, else
# /tmp/moerun-sweep], MOERUN_ARGS, BASELINE_ARGS, NGPU [the local GPU count;
# set it to test the script with a CPU stand-in for moerun].
#
# One job per (tool, W): the lists form one cartesian product inside each job
# (one bootstrap, the heap sized for the largest T). Each job runs under
# `timeout`; its JSON goes to LOGDIR/<tool>_w<W>.json, and all of them are
# merged into LOGDIR/sweep.json ({"sweep": {...}, "runs": [report + "tool",
# "file"]}, the format `moerun-plot collect` writes). The last lines printed
# are a table of the jobs and a latency summary.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

MOERUN=${MOERUN:-bin/moerun}
if [ -z "${PYTHON:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
fi
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-sweep}}
mkdir -p "$LOGDIR"
# Safety on shared GPU machines: NVLink multicast stays off everywhere.
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1

ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
GPUS=${GPUS:-"1 2 4"}
TOKENS=${TOKENS:-128,1024,4096,8192,16384}
EXPERTS=${EXPERTS:-8,16,32,64,128}
HIDDEN=${HIDDEN:-2048}
FFN_HIDDEN=${FFN_HIDDEN:-2048}
TOPK=${TOPK:-2}
FFN=${FFN:-relu}
DTYPES=${DTYPES:-bf16}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
VERIFY=${VERIFY:-0}
BASELINE=${BASELINE:-1}
LIMIT=${LIMIT:-600}
read -r -a MOERUN_EXTRA <<<"${MOERUN_ARGS:-}"
read -r -a BASELINE_EXTRA <<<"${BASELINE_ARGS:-}"

echo "sweep: ${ngpu}x ${card:-no GPU}; W in {$GPUS}, T in {$TOKENS}, E in {$EXPERTS}, dtype $DTYPES; logs in $LOGDIR"
[ -x "$MOERUN" ] || { echo "sweep: $MOERUN not found or not executable (build it with make)"; exit 1; }
if [ "$BASELINE" = 1 ] && ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "sweep: $PYTHON has no torch: the baseline is skipped (set PYTHON, or BASELINE=0)"; BASELINE=0
fi

SHAPE=(--tokens "$TOKENS" --experts "$EXPERTS" --hidden "$HIDDEN" --ffn-hidden "$FFN_HIDDEN" --topk "$TOPK"
       --ffn "$FFN" --dtype "$DTYPES" --iters "$ITERS" --warmup "$WARMUP")
declare -a ROWS FILES
fails=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
row() { ROWS+=("$(printf '%-10s %3s  %-4s %6s  %s' "$1" "$2" "$3" "$4" "$5")"); [ "$3" = ok ] || [ "$3" = skip ] || fails=$((fails + 1)); }

# job TOOL W CMD...: runs one job under timeout, keeps its JSON.
job() {
  local tool=$1 w=$2; shift 2
  local name="${tool}_w$w" js="$LOGDIR/${tool}_w$w.json" log="$LOGDIR/${tool}_w$w.log"
  rm -f "$js"
  local t0 n
  t0=$(now_ms)
  timeout -k 10 "$LIMIT" "$@" --json "$js" >"$log" 2>&1
  local rc=$? dt=$(( ($(now_ms) - t0) / 1000 ))
  n=$(grep -cE '^ +[0-9]' "$log")
  [ -s "$js" ] && FILES+=("$js")
  if [ $rc -eq 0 ]; then row "$tool" "$w" ok "$dt" "$n configs"
  else row "$tool" "$w" FAIL "$dt" "exit $rc: $(grep -m1 -E 'FAIL|rror' "$log" | cut -c1-120)"; fi
  echo "sweep: $name: exit $rc after $dt s, $n configs"
}

for w in $GPUS; do
  if [ "$w" -gt "$ngpu" ]; then row moerun "$w" skip - "only $ngpu GPUs"; continue; fi
  v=(); [ "$VERIFY" = 1 ] && v=(--verify)
  job moerun "$w" "$MOERUN" launch -n "$w" -- bench --backend gpu "${SHAPE[@]}" "${v[@]}" "${MOERUN_EXTRA[@]}"
  if [ "$BASELINE" = 1 ]; then
    v=(); [ "$VERIFY" = 1 ] && v=(--check)
    job baseline "$w" "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$w" \
        scripts/baseline/moe_baseline.py "${SHAPE[@]}" "${v[@]}" "${BASELINE_EXTRA[@]}"
  fi
done

# Merge every job's JSON into one file (the format of `moerun-plot collect`).
python3 - "$LOGDIR/sweep.json" "${card:-?}" "$("$MOERUN" version 2>/dev/null | head -1)" "${FILES[@]}" <<'EOF'
import datetime, json, os, sys

out, card, version, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = []
for path in files:
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError) as e:
        print(f"sweep: skipping {path}: {e}")
        continue
    rep["tool"] = "baseline" if rep.get("backend") == "pytorch" else "moerun"
    rep["file"] = os.path.basename(path)
    runs.append(rep)
meta = {"card": card, "moerun": version, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
with open(out, "w") as f:
    json.dump({"sweep": meta, "runs": runs}, f, indent=1)
    f.write("\n")

# A summary: p50 latency (us) per (tool, W, dtype, E) across T.
print(f"\nsweep: p50 latency in us ({card}); rows: tool W dtype E, columns: T per GPU")
ts = sorted({r["config"]["tokens"] for rep in runs for r in rep["results"]})
print(f"{'tool':<9}{'W':>3} {'dtype':>5} {'E':>4} " + "".join(f"{t:>10}" for t in ts))
lines = {}
for rep in runs:
    for r in rep["results"]:
        c = r["config"]
        key = (rep["tool"], rep["world"], c["dtype"], c["experts"])
        lines.setdefault(key, {})[c["tokens"]] = r["latency_us_p50"]
for key in sorted(lines):
    print(f"{key[0]:<9}{key[1]:>3} {key[2]:>5} {key[3]:>4} " +
          "".join(f"{lines[key][t]:>10.1f}" if t in lines[key] else f"{'-':>10}" for t in ts))
print(f"sweep: {len(runs)} job files merged into {out}")
EOF

echo
echo "sweep: ${ngpu}x ${card:-?}"
printf '%-10s %3s  %-4s %6s  %s\n' job W ok seconds detail
printf '%s\n' "${ROWS[@]}"
echo "sweep: $fails failed"
[ $fails -eq 0 ]
