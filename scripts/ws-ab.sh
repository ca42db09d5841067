#!/usr/bin/env bash
# The MOE_WS build (one block per SM with a producer warpgroup, 128 x 256
# bf16 tiles: kernels/gemm_ws.cuh) against the default build, on one machine
# in one call: correctness on W = 2 and W, bitwise equality of outputs with
# the default cubin, then the paper-shape A/B and a trace of each variant.
# Each build runs alone here (the default with MOERUN_WS_CUBIN=off); VARIANTS
# word "auto" runs the embedded pair as `moerun` does by default (each
# forward on the kernel that suits it); "base" the embedded default kernel
# with the WS cubin BASE_WS (another build's, to A/B two WS kernels as they
# run by default).
#
#   make build && make kernels-ws
#   WS=build/ws/moerun.cubin W=4 scripts/ws-ab.sh
#
# The WS tiles need the TMA flag (MOERUN_KERNEL_FLAGS=7); the default build
# runs with its default flags (3) and with 7 (VARIANTS: build:flags words).
# STEPS (default "verify bitwise ab trace") picks the parts; TRACE_TOKENS (default
# 8192) the T of the traces, TRACE_BINS their timeline's bin in µs. Logs under $OUT (or LOGDIR);
# the last lines are a pass/fail table and the A/B rows (p50 us: column 10).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
BIN=${MOERUN:-bin/moerun}
WS=${WS:-build/ws/moerun.cubin}
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-ws-ab}}
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
W=${W:-$ngpu}
TOKENS=${TOKENS:-128,8192,16384}
STEPS=${STEPS:-verify bitwise ab trace}
TRACE_TOKENS=${TRACE_TOKENS:-8192}
TRACE_BINS=${TRACE_BINS:-50}
VARIANTS=${VARIANTS:-"default:3 default:7 ws:7 ws:3"}
has() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$LOGDIR"
[ -f "$WS" ] || { echo "ws-ab: $WS: no such cubin (build it as the header says)"; exit 2; }
echo "ws-ab: $("$BIN" version 2>/dev/null) on ${ngpu}x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); W=$W"

declare -a ROWS
fails=0
# run NAME LIMIT CMD...: CMD under timeout, output in LOGDIR/NAME.log.
run() {
  local name=$1 limit=$2
  shift 2
  timeout -k 10 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
  local rc=$?
  local last
  last=$(grep -v '^\s*$' "$LOGDIR/$name.log" | tail -1 | cut -c1-100)
  ROWS+=("$(printf '%-22s %s  %s' "$name" "$([ $rc -eq 0 ] && echo pass || echo "FAIL($rc)")" "$last")")
  [ $rc -eq 0 ] || fails=$((fails + 1))
}
# variant BUILD FLAGS: the bench arguments (args) and environment (envs) of
# a VARIANTS word.
variant() {
  args=()
  envs=(MOERUN_KERNEL_FLAGS="$2")
  case $1 in
    ws) args=(--cubin "$PWD/$WS") ;;
    default) envs+=(MOERUN_WS_CUBIN=off) ;;
    base) envs+=(MOERUN_WS_CUBIN="$PWD/${BASE_WS:?variant base needs BASE_WS}") ;;
    auto) ;;
    *) echo "ws-ab: unknown variant $1" >&2; exit 2 ;;
  esac
}
small=(--hidden 512 --ffn-hidden 1024 --experts 32 --topk 2)
paper=(--hidden 2048 --ffn-hidden 2048 --experts 32 --topk 2 --ffn relu)

# Correctness of the WS build against float64: small shapes whose T * k is
# above E * 128 (per-source tiles: the WS path) and below it (pooled), every
# FFN, both tensor-core dtypes, partial column tiles (I = 320, H = 192).
for w in 2 "$W"; do
  has verify || break
  run "verify_w$w" 300 env MOERUN_KERNEL_FLAGS=7 "$BIN" launch -n "$w" -- bench --backend gpu --cubin "$PWD/$WS" \
    "${small[@]}" --tokens 1,37,128,4096,5000 --ffn relu,gelu,swiglu --dtype bf16,tf32 --iters 2 --warmup 1 --verify
  run "verify_odd_w$w" 300 env MOERUN_KERNEL_FLAGS=7 "$BIN" launch -n "$w" -- bench --backend gpu --cubin "$PWD/$WS" \
    --hidden 192 --ffn-hidden 320 --experts 8 --topk 3 --tokens 600,3001 --ffn relu,gelu --dtype bf16 \
    --capacity-factor 0,0.8 --iters 2 --warmup 1 --verify
  [ "$w" = "$W" ] && break
done
# The WS tiles keep the K order and the epilogue of the default tiles: the
# same bits as the default build's cp.async path (flags 3).
has bitwise && run bitwise 400 env MOERUN_WS_CUBIN=off W="$W" TOKENS=128,4096 DTYPES=bf16 FLAGS_A=3 FLAGS_B=7 LOGDIR="$LOGDIR/bitwise" \
  ARGS="${small[*]} --ffn relu,gelu" scripts/bitwise-ab.sh embedded "$WS"

# A/B, twice: default build (flags 3 and 7), WS build (flags 7 and 3).
for rep in 1 2; do
  has ab || break
  for v in $VARIANTS; do
    set -- ${v/:/ }
    variant "$1" "$2"
    name="ab_$1_f$2_$rep"
    run "$name" 300 env "${envs[@]}" "$BIN" launch -n "$W" -- bench --backend gpu "${args[@]}" "${paper[@]}" \
      --tokens "$TOKENS" --dtype bf16 --iters 30 --warmup 5 --verify --queue --json "$LOGDIR/$name.json"
    grep -E '^ +[0-9]+ +[0-9]+ ' "$LOGDIR/$name.log" | sed "s/^/  [$1 f$2 $rep] /" >>"$LOGDIR/ab.txt"
  done
done
# Traces: each variant at each of TRACE_TOKENS, summarised per rank by
# scripts/trace-summary.py (the GEMM window: blocks in tasks, waiting for one,
# or neither; blocks in a task over time) before the large files are removed.
for v in $VARIANTS; do
  has trace || break
  set -- ${v/:/ }
  variant "$1" "$2"
  for t in $TRACE_TOKENS; do
    name="trace_$1_f$2_t$t"
    run "$name" 300 env "${envs[@]}" "$BIN" launch -n "$W" -- bench --backend gpu "${args[@]}" "${paper[@]}" \
      --tokens "$t" --dtype bf16 --iters 20 --warmup 5 --queue --trace "$LOGDIR/$name.json"
    {
      echo "[$1 f$2 T=$t]"
      grep -o '"phases":"[^"]*"' "$LOGDIR/$name.log" | head -"$W"
      for f in "$LOGDIR/$name".rank*.json; do
        [ -f "$f" ] && python3 scripts/trace-summary.py --bins "$TRACE_BINS" "$f" | grep -E '^(rank|gemm|blocks|wait|combine|dispatch|decode)'
      done
    } >>"$LOGDIR/trace.txt" 2>&1
    rm -f "$LOGDIR/$name".rank*.json  # large; summarised above
  done
done

[ -f "$LOGDIR/trace.txt" ] && { echo "traces:"; cat "$LOGDIR/trace.txt"; }
[ -f "$LOGDIR/ab.txt" ] && { echo "a/b (p50 us is column 10):"; cat "$LOGDIR/ab.txt"; }
printf '%s\n' "${ROWS[@]}"
[ "$fails" -eq 0 ] && echo "ws-ab: all passed" || echo "ws-ab: $fails failed"
[ "$fails" -eq 0 ]
