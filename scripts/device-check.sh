#!/usr/bin/env bash
# The GPU test matrix of the persistent kernel, on 1, 2 and 4 GPUs (as many as
# the machine has, up to MAX_GPUS), with a prebuilt binary, in one call:
#
#   scripts/device-check.sh                # bin/moerun, logs under $OUT or /tmp/moerun-check
#   MOERUN=path/to/moerun GPUS="2 4" scripts/device-check.sh
#
# Every job runs under `timeout`; the last lines printed are a pass/fail
# table. Full logs and JSON go to $OUT (or LOGDIR).
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${MOERUN:-bin/moerun}
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-check}}
mkdir -p "$LOGDIR"
# Safety on shared GPU machines: NVLink multicast stays off everywhere.
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
GPUS=${GPUS:-"1 2 4"}
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "device-check: $($BIN version) on ${ngpu}x ${card:-no GPU}; logs in $LOGDIR"
[ -x "$BIN" ] || { echo "device-check: $BIN not found or not executable (build it with make)"; exit 1; }

declare -a ROWS
fails=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
row() { ROWS+=("$(printf '%-34s %3s  %-4s %7s  %s' "$1" "$2" "$3" "$4" "$5")"); [ "$3" = pass ] || fails=$((fails + 1)); }

# verified_summary FILE: "N/M verified" from a bench JSON file.
verified_summary() {
  python3 - "$1" <<'EOF' 2>/dev/null || echo "no JSON"
import json, sys
r = json.load(open(sys.argv[1]))["results"]
ok = sum(1 for x in r if x.get("verified") is True)
worst = max((x["rel_err"] or 0) for x in r) if r else 0
print(f"{ok}/{len(r)} verified, max rel_err {worst:.2e}")
EOF
}

# job NAME W LIMIT ARGS...: one bench job under timeout; passes on exit 0.
job() {
  local name=$1 w=$2 limit=$3; shift 3
  local log="$LOGDIR/$name.log" js="$LOGDIR/$name.json"
  local t0=$(now_ms)
  timeout -k 10 "$limit" "$BIN" launch -n "$w" -- bench --backend gpu "$@" --json "$js" >"$log" 2>&1
  local rc=$?
  local dt=$(secs "$t0")
  if [ $rc -eq 0 ]; then row "$name" "$w" pass "$dt" "$(verified_summary "$js")"
  else row "$name" "$w" FAIL "$dt" "exit $rc: $(grep -m1 -E 'FAIL|error|rror:' "$log" | cut -c1-150)"; fi
  tail -n 3 "$log" | sed "s/^/  [$name] /"
}

MATRIX=(--verify --dtype fp32 --ffn relu,swiglu --tokens 0,1,100,4096 --hidden 256,2048 --ffn-hidden 256,2048
        --capacity-factor 0,1 --iters 2 --warmup 0)
for w in $GPUS; do
  [ "$w" -le "$ngpu" ] || { row "gpus$w" "$w" skip - "only $ngpu GPUs"; continue; }
  for ek in "$w:1" "8:2" "32:2" "64:4"; do
    e=${ek%:*}; k=${ek#*:}
    job "w${w}_e${e}_k${k}" "$w" 300 "${MATRIX[@]}" --experts "$e" --topk "$k"
  done
  # The tensor-core modes, with their own tolerances (tf32 5e-3, bf16 2e-2).
  job "w${w}_tf32_bf16" "$w" 300 --verify --dtype tf32,bf16 --ffn relu,swiglu --tokens 0,1,100,4096 \
      --hidden 256,2048 --ffn-hidden 256,2048 --experts 32 --topk 2 --capacity-factor 0,1 --iters 2 --warmup 0
  job "w${w}_skew" "$w" 120 --verify --dtype fp32 --route skew --ffn relu,swiglu --tokens 1,100,4096 --hidden 256 \
      --ffn-hidden 512 --experts 8 --topk 2 --capacity-factor 0,1 --iters 2 --warmup 0
  # Small tensor-core forwards pool the sources' rows of an expert into shared
  # row tiles (expert.cuh pool_tiles); skewed routing sends every token to
  # experts 0 and 1: 1 to 256 rows per source and expert (one to four sources
  # per pooled tile, 128-row segments), and owners that receive nothing.
  job "w${w}_skew_pooled" "$w" 120 --verify --dtype tf32,bf16 --route skew --ffn relu,swiglu --tokens 0,1,50,100,256 \
      --hidden 256 --ffn-hidden 512 --experts 16 --topk 2 --iters 2 --warmup 0

  # A withheld signal must end every rank with the watchdog's message, never
  # hang: with a 2 s watchdog the whole job (bootstrap and weights included)
  # must be over within 15 s.
  if [ "$w" -ge 2 ]; then
    log="$LOGDIR/w${w}_watchdog.log"; t0=$(now_ms)
    timeout -k 5 30 "$BIN" launch -n "$w" -- bench --backend gpu --tokens 100 --hidden 256 --ffn-hidden 256 \
        --experts 8 --topk 2 --iters 1 --warmup 0 --watchdog 2s --debug-withhold-signal 0 >"$log" 2>&1
    rc=$?; dt=$(secs "$t0"); ms=$(( $(now_ms) - t0 ))
    n=$(grep -c 'watchdog' "$log")
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -ge 1 ] && [ "$ms" -lt 15000 ]; then
      row "w${w}_watchdog" "$w" pass "$dt" "exit $rc, $n watchdog lines: $(grep -m1 -o 'watchdog[^"]*' "$log" | cut -c1-100)"
    else row "w${w}_watchdog" "$w" FAIL "$dt" "exit $rc, $n watchdog lines"; fi
  fi
done

wmax=0; for w in $GPUS; do [ "$w" -le "$ngpu" ] && wmax=$w; done
if [ "$wmax" -ge 1 ]; then
  # Two runs of the same config give bitwise equal outputs; 1000 forwards in a
  # row run without error and the last equals the first (bench checks that).
  job "w${wmax}_repeat1000" "$wmax" 300 --verify --tokens 100,4096 --hidden 256 --ffn-hidden 512 \
      --experts 8 --topk 2 --dtype fp32,bf16 --iters 500 --warmup 0 --dump "$LOGDIR/dumpA"
  job "w${wmax}_rerun" "$wmax" 120 --tokens 100,4096 --hidden 256 --ffn-hidden 512 \
      --experts 8 --topk 2 --dtype fp32,bf16 --iters 1 --warmup 0 --dump "$LOGDIR/dumpB"
  diffs=0; files=0
  for f in "$LOGDIR"/dumpA/cfg*/rank*/out.npy; do
    g=${f/dumpA/dumpB}; files=$((files + 1)); cmp -s "$f" "$g" || diffs=$((diffs + 1))
  done
  if [ $files -gt 0 ] && [ $diffs -eq 0 ]; then row "w${wmax}_bitwise_two_runs" "$wmax" pass - "$files output files identical"
  else row "w${wmax}_bitwise_two_runs" "$wmax" FAIL - "$diffs of $files output files differ"; fi
  rm -rf "$LOGDIR/dumpA" "$LOGDIR/dumpB"

  # The paper's shape in every mode (speed is not this check's bar; it is recorded).
  job "w${wmax}_paper" "$wmax" 300 --verify --tokens 8192 --hidden 2048 --ffn-hidden 2048 \
      --experts 32 --topk 2 --ffn relu --dtype fp32,tf32,bf16 --iters 20 --warmup 5
  grep -E '^ +[0-9]' "$LOGDIR/w${wmax}_paper.log" | sed 's/^/  paper shape: /'
fi

echo
echo "device-check: ${ngpu}x ${card:-?}, $($BIN version)"
printf '%-34s %3s  %-4s %7s  %s\n' check W ok seconds detail
printf '%s\n' "${ROWS[@]}"
echo "device-check: $fails failed"
[ $fails -eq 0 ]
