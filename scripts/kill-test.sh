#!/usr/bin/env bash
# Fault test: SIGKILL one rank in the middle of a run of many forwards and time
# how long the whole job takes to end (it must end, non-zero, within 10 s, and
# name the lost rank).
#   N=4 BACKEND=gpu scripts/kill-test.sh        # victim: rank VICTIM (default 1)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${MOERUN:-bin/moerun}; N=${N:-4}; BACKEND=${BACKEND:-cpu}; VICTIM=${VICTIM:-1}
LOG=${LOG:-/tmp/moerun-kill.log}
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1

"$BIN" launch -n "$N" -- bench --backend "$BACKEND" --tokens 256 --hidden 256 --ffn-hidden 256 \
    --experts "$((2 * N))" --topk 2 --iters 1000000 --warmup 0 >"$LOG" 2>&1 &
launch=$!
# Wait until every rank is running forwards (they log when the backend is ready).
for _ in $(seq 1 300); do
  pids=$(pgrep -P "$(pgrep -n -P "$launch" mpirun || echo 0)" -f "moerun bench" 2>/dev/null | sort -n)
  [ "$(echo "$pids" | grep -c .)" -ge "$N" ] && break
  sleep 0.1
done
sleep 3
victim=""
for p in $pids; do  # the rank's number is in its environment
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$VICTIM" && victim=$p
done
if [ -z "$victim" ]; then echo "kill-test: ranks not found"; kill -TERM "$launch"; exit 1; fi
t0=$(date +%s%N)
kill -9 "$victim"
# Bounded wait for the launcher.
for _ in $(seq 1 300); do kill -0 "$launch" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$launch" 2>/dev/null; then
  echo "kill-test: FAIL: job still running 30 s after SIGKILL of pid $victim"; kill -TERM "$launch"; exit 1
fi
wait "$launch"; rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
left=$(pgrep -f "moerun bench" | wc -l)
echo "kill-test: $N ranks ($BACKEND), SIGKILL of rank $VICTIM (pid $victim): job ended with status $rc after ${ms} ms; $left rank processes left"
grep -m1 "moerun launch: rank" "$LOG" || tail -3 "$LOG"
[ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && [ "$left" -eq 0 ]
