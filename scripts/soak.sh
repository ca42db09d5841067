#!/usr/bin/env bash
# Soak: ITERS (10,000) verified forwards per config on W GPUs without error,
# the last output bitwise equal to the first (bench checks that with
# --verify), and host and GPU memory flat.
#
#   scripts/soak.sh                                    # every GPU, 10,000 iterations
#   W=4 ITERS=10000 scripts/soak.sh
#   SOAK_BACKEND=cpu W=2 ITERS=200 scripts/soak.sh     # the script's logic, on CPUs
#
# The job runs the same config twice (--tokens T,T): bench runs each config
# ITERS timed and ITERS back-to-back forwards, then verifies (bitwise
# repeatability included) and prints its row. Memory of every rank is sampled
# every SAMPLE seconds from /proc/PID/status (VmRSS) and nvidia-smi (the
# rank's process on its GPU, and memory.used of each GPU):
#   start: SETTLE seconds after the ranks began their forwards;
#   mid:   when rank 0 printed the first config's row (its verification done:
#          the reference's weight cache, which the second config reuses, is
#          in the host figure from here on);
#   end:   the last sample before the ranks exited.
# Fails (exit 1) when the job fails, a config is not verified, a sample is
# missing, a rank's VmRSS grows from mid to end by more than HOST_BOUND_MB
# (default 64 MiB), or a rank's GPU memory grows from start to end by more
# than GPU_BOUND_MB (default 2 MiB).
#
# Environment: MOERUN (binary, default bin/moerun), W (ranks; default all
# GPUs, 2 on CPUs), ITERS, SOAK_BACKEND (gpu; cpu to test), TOKENS, CONFIG
# (the other bench flags), SETTLE (5 s), SAMPLE (1 s), TIMEOUT (540 s),
# LOGDIR (default $OUT or a new folder under /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${MOERUN:-bin/moerun}
BACKEND=${SOAK_BACKEND:-gpu}
ITERS=${ITERS:-10000}
SETTLE=${SETTLE:-5}
SAMPLE=${SAMPLE:-1}
TIMEOUT=${TIMEOUT:-540}
HOST_BOUND_MB=${HOST_BOUND_MB:-64}
GPU_BOUND_MB=${GPU_BOUND_MB:-2}
LOGDIR=${LOGDIR:-${OUT:-$(mktemp -d /tmp/moerun-soak.XXXXXX)}}
mkdir -p "$LOGDIR"
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
[ -x "$BIN" ] || { echo "soak: $BIN not found or not executable (build it with make)"; exit 1; }

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "$BACKEND" = gpu ]; then
  [ "${ngpu:-0}" -gt 0 ] || { echo "soak: no GPU visible (nvidia-smi -L); SOAK_BACKEND=cpu tests the script on CPUs"; exit 1; }
  W=${W:-$ngpu}
  TOKENS=${TOKENS:-512}
  E=32; [ $((E % W)) -eq 0 ] || E=$((8 * W))
  read -r -a CFG <<<"${CONFIG:---hidden 1024 --ffn-hidden 1024 --experts $E --topk 2}"
else
  W=${W:-2}
  TOKENS=${TOKENS:-64}
  read -r -a CFG <<<"${CONFIG:---hidden 64 --ffn-hidden 128 --experts $((2 * W)) --topk 2}"
fi
MARK="soak$$"
LOG="$LOGDIR/soak.log"; JSON="$LOGDIR/soak.json"; SAMPLES="$LOGDIR/samples.tsv"
card=$([ "$BACKEND" = gpu ] && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo cpu)
echo "soak: $("$BIN" version); $W ranks, backend $BACKEND ($card); --tokens $TOKENS,$TOKENS ${CFG[*]} --iters $ITERS; logs in $LOGDIR"

# rank_pids: "rank pid gpu" for each rank of this job; gpu is the nvidia-smi
# index of the rank's GPU: its local rank's entry of CUDA_VISIBLE_DEVICES
# when that lists indices, else its local rank (moerun binds GPUs so).
rank_pids() {
  local f p env r lr cvd g
  for f in $(grep -l -z -x "MOERUN_SOAK=$MARK" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}; p=${p%/environ}
    env=$( { tr '\0' '\n' <"$f"; } 2>/dev/null)
    r=$(sed -n 's/^OMPI_COMM_WORLD_RANK=//p' <<<"$env")
    [ -n "$r" ] || continue
    lr=$(sed -n 's/^OMPI_COMM_WORLD_LOCAL_RANK=//p' <<<"$env"); lr=${lr:-$r}
    cvd=$(sed -n 's/^CUDA_VISIBLE_DEVICES=//p' <<<"$env")
    g=$lr
    if [ -n "$cvd" ]; then
      IFS=, read -r -a list <<<"$cvd"
      if [ "${#list[@]}" -eq 1 ]; then g=${list[0]}; else g=${list[$lr]:-$lr}; fi
    fi
    echo "$r $p $g"
  done | sort -n
}
# sample TAG: one line per rank: tag, rank, pid, VmRSS kB, the process's
# memory on its GPU (MiB; "-" when nvidia-smi does not list the process, as
# in containers with their own PID namespace) and its GPU's memory.used (MiB).
sample() {
  local tag=$1 r p g rss gmem gused apps gpus
  apps=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null)
  gpus=$(nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits 2>/dev/null)
  while read -r r p g; do
    [ -n "$p" ] || continue
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
    [ -n "$rss" ] || continue
    gmem=-; gused=-
    if [ -n "$gpus" ]; then
      gmem=$(awk -F', *' -v p="$p" '$1 == p { s += $2 } END { print (s == "" ? "-" : s) }' <<<"$apps")
      gused=$(awk -F', *' -v g="$g" '$1 == g { print $2 }' <<<"$gpus")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tag" "$r" "$p" "$rss" "${gmem:--}" "${gused:--}"
  done < <(rank_pids)
}

: >"$SAMPLES"
t0=$(date +%s)
MOERUN_SOAK=$MARK timeout -k 10 "$TIMEOUT" "$BIN" launch -n "$W" -- bench --backend "$BACKEND" --tokens "$TOKENS,$TOKENS" \
    "${CFG[@]}" --iters "$ITERS" --warmup 0 --verify --json "$JSON" >"$LOG" 2>&1 &
job=$!

have_start=0; have_mid=0; last=""; started=""
while kill -0 "$job" 2>/dev/null; do
  if [ -z "$started" ] && grep -q '^# ranks' "$LOG" 2>/dev/null; then started=$(date +%s); fi
  if [ -n "$started" ] && [ $have_start = 0 ] && [ $(( $(date +%s) - started )) -ge "$SETTLE" ]; then
    s=$(sample start); [ "$(grep -c . <<<"$s")" -eq "$W" ] && { echo "$s" >>"$SAMPLES"; have_start=1; }
  fi
  if [ $have_mid = 0 ] && [ "$(grep -c -E '^ +[0-9]+ ' "$LOG" 2>/dev/null)" -ge 1 ]; then
    s=$(sample mid); [ "$(grep -c . <<<"$s")" -eq "$W" ] && { echo "$s" >>"$SAMPLES"; have_mid=1; }
  fi
  s=$(sample end); [ "$(grep -c . <<<"$s")" -eq "$W" ] && last=$s
  sleep "$SAMPLE"
done
wait "$job"; rc=$?
[ -n "$last" ] && echo "$last" >>"$SAMPLES"
secs=$(( $(date +%s) - t0 ))

echo
grep -E '^#  *ranks|^ +[0-9]+ |FAIL|^# [0-9]+ configs' "$LOG" | sed 's/^/  /'
fails=()
[ "$rc" -eq 0 ] || fails+=("the job ended with status $rc: $(grep -E '^moerun (launch|bench): ' "$LOG" | grep -v ' mpirun ' | tail -1 | cut -c1-300)")
verified=$(grep -c -E '^ +[0-9]+ .* pass$' "$LOG")
[ "$verified" -eq 2 ] || fails+=("$verified of 2 configs verified (bitwise repeatability included)")
[ $have_start = 1 ] || fails+=("no start sample (the job ended within SETTLE=${SETTLE}s of its first forward?)")
[ $have_mid = 1 ] || fails+=("no mid sample")
[ -n "$last" ] || fails+=("no end sample")

# The figures per rank, and the bounds.
mib() { if [ -z "$1" ] || [ "$1" = - ]; then echo -; else echo "$1 MiB"; fi; }
kib2mib() { if [ -z "$1" ] || [ "$1" = - ]; then echo -; else echo $(( $1 / 1024 )); fi; }
echo
printf '  %-5s %-8s %12s %12s %12s %10s   %10s %10s %8s   %10s %10s\n' rank pid "rss start" "rss mid" "rss end" "d(mid,end)" \
    "gpu start" "gpu end" "d" "used start" "used end"
for r in $(seq 0 $((W - 1))); do
  get() { awk -F'\t' -v t="$1" -v r="$r" -v c="$2" '$1 == t && $2 == r { print $c }' "$SAMPLES"; }
  rs=$(get start 4); rm=$(get mid 4); re=$(get end 4)
  gs=$(get start 5); ge=$(get end 5); us=$(get start 6); ue=$(get end 6); pid=$(get end 3)
  dh="-"; dg="-"
  if [ -n "$rm" ] && [ -n "$re" ]; then
    dh=$(( (re - rm) / 1024 ))
    [ $(( re - rm )) -gt $(( HOST_BOUND_MB * 1024 )) ] && fails+=("rank $r: VmRSS grew by $dh MiB from mid to end (bound $HOST_BOUND_MB MiB)")
  fi
  if [ "${gs:--}" != - ] && [ "${ge:--}" != - ]; then
    dg=$(( ge - gs ))
    [ "$dg" -gt "$GPU_BOUND_MB" ] && fails+=("rank $r: its GPU memory grew by $dg MiB from start to end (bound $GPU_BOUND_MB MiB)")
  elif [ "${us:--}" != - ] && [ "${ue:--}" != - ]; then
    # nvidia-smi does not list the process: judge by its GPU's memory.used
    # (other work on that GPU would count too).
    dg="$(( ue - us ))*"
    [ $(( ue - us )) -gt "$GPU_BOUND_MB" ] && fails+=("rank $r: memory.used of its GPU grew by $(( ue - us )) MiB from start to end (bound $GPU_BOUND_MB MiB)")
  elif [ "$BACKEND" = gpu ]; then
    fails+=("rank $r: no GPU memory figure from nvidia-smi")
  fi
  printf '  %-5s %-8s %12s %12s %12s %10s   %10s %10s %8s   %10s %10s\n' "$r" "${pid:--}" \
      "$(mib "$(kib2mib "$rs")")" "$(mib "$(kib2mib "$rm")")" "$(mib "$(kib2mib "$re")")" "$(mib "$dh")" \
      "$(mib "$gs")" "$(mib "$ge")" "$(mib "$dg")" "$(mib "$us")" "$(mib "$ue")"
done
forwards=$(( 2 * (2 * ITERS + 1) ))
echo
echo "soak: $W ranks ($card), $forwards forwards per rank planned, ${secs}s; bounds: VmRSS +${HOST_BOUND_MB} MiB (mid to end), GPU +${GPU_BOUND_MB} MiB (start to end; * = by the GPU's memory.used, nvidia-smi did not list the process); samples in $SAMPLES"
if [ ${#fails[@]} -gt 0 ]; then
  printf 'soak: FAIL: %s\n' "${fails[@]}"
  exit 1
fi
echo "soak: pass"
