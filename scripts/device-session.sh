#!/usr/bin/env bash
# One GPU-machine call that runs several of the project's GPU checks in a row
# and prints one table last (a device call costs a machine start, so the
# checks travel together). Every step runs under `timeout`; full logs go to
# LOGDIR/<step>/.
#
#   STEPS="soak driver check bench" scripts/device-session.sh
#   STEPS="python compare" W=4 scripts/device-session.sh
#
# Steps (run in the order given):
#   soak     W ranks, ITERS (10,000) verified forwards, memory flat (scripts/soak.sh)
#   driver   examples/driver on W GPUs: 4 layers x 10 steps, every output verified
#   check    scripts/device-check.sh with GPUS (default "1 2 4")
#   python   scripts/python-gpu-check.sh (2 GPUs, PyTorch tensors by device pointer)
#   bench    paper shape (H = I = 2048, E = 32, k = 2, T = 8192) bf16 and tf32 on W GPUs, verified
#   compare  scripts/compare.sh (moerun vs the PyTorch baseline) on W GPUs
#   weak     weak scaling: the paper shape on 1, 2, .. W GPUs, DTYPES
#   trace    the paper shape at TOKENS (128,8192) on 1 and W GPUs, bf16, with
#            --trace: the phase summary of the last forward (log lines "phases")
#   sweep    scripts/sweep.sh on GPUS (SWEEP_EXPERTS 8,32,128; SWEEP_TOKENS
#            128,1024,4096,8192,16384; moerun and, with BASELINE=1, PyTorch)
#   gotest   the GPU Go tests (bin/gpubackend.test: the tile alone against
#            float64, forwards in every dtype, graph, trace, layers)
#   ab       the same paper-shape bench with each cubin of CUBINS (default: the
#            embedded one and build/head/moerun.cubin) and each kernel flag set
#            of KFLAGS (MOERUN_KERNEL_FLAGS; default: the kernel's own), twice
#            each, W GPUs: a kernel change measured against its baseline in
#            one call
#   profile  scripts/profile.sh (ncu of one forward on one GPU) for the first
#            of DTYPES, TOKENS (8192), each flag set of KFLAGS
#
# Needs: bin/moerun (make build), build/driver and build/moerun.cubin for
# driver, build/libmoerun.so for python. Settings: STEPS, W (default: every
# GPU), ITERS, GPUS, DTYPES (bf16,tf32), LOGDIR ($OUT or /tmp/moerun-session),
# BUNDLE (a .tgz path: every step's JSON and tables packed into it at the end),
# EXTRA (more `moerun bench` flags for the bench, weak, trace and ab steps,
# e.g. --queue).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
BIN=${MOERUN:-bin/moerun}
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-session}}
STEPS=${STEPS:-"soak driver check bench"}
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
W=${W:-$ngpu}
DTYPES=${DTYPES:-bf16,tf32}
EXTRA=${EXTRA:-}
MPIRUN=(mpirun -np "$W" --allow-run-as-root --oversubscribe --bind-to none --mca plm isolated)
mkdir -p "$LOGDIR"
echo "device-session: $("$BIN" version 2>/dev/null) on ${ngpu}x ${card:-no GPU}; steps: $STEPS; W=$W; logs in $LOGDIR"

declare -a ROWS
fails=0
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# step NAME LIMIT CMD...: runs CMD under timeout, its output in LOGDIR/NAME.log;
# the row carries the command's last line.
step() {
  local name=$1 limit=$2
  shift 2
  local log="$LOGDIR/$name.log" t0 rc dt
  t0=$(now_ms)
  LOGDIR="$LOGDIR/$name" OUT="$LOGDIR/$name" timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  dt=$((($(now_ms) - t0) / 1000))
  local last
  last=$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-110)
  if [ $rc -eq 0 ]; then
    ROWS+=("$(printf '%-8s pass %4ss  %s' "$name" "$dt" "$last")")
  else
    ROWS+=("$(printf '%-8s FAIL %4ss  exit %s: %s' "$name" "$dt" "$rc" "$last")")
    fails=$((fails + 1))
  fi
  echo "--- $name (exit $rc, ${dt}s): last lines of $log"
  tail -25 "$log"
}

paper=(--hidden 2048 --ffn-hidden 2048 --experts 32 --topk 2 --ffn relu)

for s in $STEPS; do
  mkdir -p "$LOGDIR/$s"
  case $s in
  soak) step soak 600 env W="$W" ITERS="${ITERS:-10000}" scripts/soak.sh ;;
  driver)
    step driver 300 env MOERUN_CUBIN="$PWD/build/moerun.cubin" "${MPIRUN[@]}" -x MOERUN_CUBIN -x NVSHMEM_DISABLE_NVLS \
      build/driver -backend gpu -hidden 256 -ffn-hidden 256 -max-tokens 256 -experts 8 -layers 4 -steps 10 ;;
  check) step check 600 env GPUS="${GPUS:-1 2 4}" scripts/device-check.sh ;;
  python) step python 400 scripts/python-gpu-check.sh ;;
  bench)
    step bench 300 "$BIN" launch -n "$W" -- bench --backend gpu "${paper[@]}" --tokens 8192 --dtype "$DTYPES" \
      --iters 30 --warmup 5 --verify --json "$LOGDIR/bench/bench.json" $EXTRA ;;
  compare) step compare 600 env W="$W" DTYPES="${DTYPES//,/ }" TOKENS="${TOKENS:-128,8192,16384}" scripts/compare.sh ;;
  weak)
    for w in $(seq 1 "$W"); do
      [ "$w" -eq 1 ] || [ "$w" -eq 2 ] || [ "$w" -eq 4 ] || [ "$w" -eq 8 ] || continue
      step "weak$w" 300 "$BIN" launch -n "$w" -- bench --backend gpu "${paper[@]}" --tokens 8192 --dtype "$DTYPES" \
        --iters 30 --warmup 5 --verify --json "$LOGDIR/weak/w$w.json" $EXTRA
    done ;;
  trace)
    for w in 1 "$W"; do
      step "trace_w$w" 300 "$BIN" launch -n "$w" -- bench --backend gpu "${paper[@]}" --tokens "${TOKENS:-128,8192}" \
        --dtype "${TRACE_DTYPE:-bf16}" --iters 20 --warmup 5 --trace "$LOGDIR/trace/w$w.json" $EXTRA
      grep -o '"config":"[^"]*"\|"phases":"[^"]*"\|"rank":[0-9]*,"local_rank".*"launch_return_us":[-0-9.eNa]*' "$LOGDIR/trace_w$w.log" |
        sed "s/^/  [w$w] /" | tee -a "$LOGDIR/trace.txt"
      [ "$w" = "$W" ] && break
    done ;;
  sweep)
    step sweep 600 env GPUS="${GPUS:-1 2 4}" EXPERTS="${SWEEP_EXPERTS:-8,32,128}" \
      TOKENS="${SWEEP_TOKENS:-128,1024,4096,8192,16384}" BASELINE="${BASELINE:-0}" scripts/sweep.sh ;;
  gotest)
    step gotest 300 env -C internal/gpubackend MOERUN_CUBIN="$PWD/build/moerun.cubin" \
      ../../bin/gpubackend.test -test.v -test.run "${GOTESTS:-TestForwardOneRank|TestLayers}" ;;
  ab)
    for rep in 1 2; do
      for cb in ${CUBINS:-embedded build/head/moerun.cubin}; do
        for kf in ${KFLAGS:-default}; do
          name=$(basename "$(dirname "$cb")")
          [ "$cb" = embedded ] && name=new
          args=()
          [ "$cb" = embedded ] || args=(--cubin "$PWD/$cb")
          envs=()
          [ "$kf" = default ] || { envs=(MOERUN_KERNEL_FLAGS="$kf"); name="${name}_f$kf"; }
          step "ab_${name}_$rep" 300 env "${envs[@]}" "$BIN" launch -n "$W" -- bench --backend gpu "${args[@]}" "${paper[@]}" \
            --tokens "${TOKENS:-128,8192}" --dtype "$DTYPES" --iters 30 --warmup 5 --verify --json "$LOGDIR/ab/${name}_$rep.json" $EXTRA
          grep -E '^ +[0-9]+ +[0-9]+ ' "$LOGDIR/ab_${name}_$rep.log" | sed "s/^/  [$name $rep] /" | tee -a "$LOGDIR/ab.txt"
        done
      done
    done ;;
  profile) step profile 600 env DTYPE="${DTYPES%%,*}" TOKENS="${TOKENS:-8192}" KFLAGS="${KFLAGS:-default}" scripts/profile.sh ;;
  *) echo "device-session: unknown step $s (soak driver check python bench compare weak trace sweep gotest ab profile)"; exit 2 ;;
  esac
done

[ -f "$LOGDIR/trace.txt" ] && { echo; echo "trace phases:"; cat "$LOGDIR/trace.txt"; }
[ -f "$LOGDIR/ab.txt" ] && { echo; echo "a/b (p50 us is column 10):"; cat "$LOGDIR/ab.txt"; }
# The device tool returns few files: the JSON of every step travels as one
# archive (traces excepted: large; their phase lines are in trace.txt).
if [ -n "${BUNDLE:-}" ]; then
  (cd "$LOGDIR" && find . -name '*.json' ! -path './trace/*' -o -name '*.txt' | tar czf "$BUNDLE" -T -) &&
    echo "device-session: JSON and tables in $BUNDLE"
fi
echo
echo "device-session: ${ngpu}x ${card:-no GPU}, $("$BIN" version 2>/dev/null | head -1)"
printf '%s\n' "${ROWS[@]}"
[ "$fails" -eq 0 ] && echo "device-session: all steps passed" || echo "device-session: $fails step(s) failed"
[ "$fails" -eq 0 ]
