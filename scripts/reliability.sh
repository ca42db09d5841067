#!/usr/bin/env bash
# Bad inputs and faults through the real moerun binary: every case must end
# non-zero within LIMIT (10) seconds with a message that names the bad value,
# leave no rank process behind, and never hang (each runs under `timeout`).
#
#   scripts/reliability.sh                             # run, print the table and "N passed, M failed"
#   scripts/reliability.sh --write docs/reliability.md # and put the table into that file
#   MOERUN=path/to/moerun ONLY='sigkill|json' GPU=0 scripts/reliability.sh
#
# MOERUN: the binary (default bin/moerun, built with `make build-nocubin` when
# missing). Cases that need other builds (no MPI, other versions) use `go` and
# are skipped without it. GPU=auto|0|1: the GPU cases run when a GPU is visible
# (auto) or when asked; GPU_W ranks (default: all GPUs, at least 2).
# Logs: LOGDIR (default a fresh folder under /tmp). Exit status: 0 when every
# case that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."

WRITE=""
while [ $# -gt 0 ]; do
  case $1 in
    --write) WRITE=${2:?--write needs a file}; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "reliability: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

LIMIT=${LIMIT:-10}   # seconds a case may take
HANG=${HANG:-40}     # hard bound: `timeout` kills a case after this long
ONLY=${ONLY:-}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/moerun-reliability.XXXXXX)}
mkdir -p "$LOGDIR"
RUN_ID="rel$$"
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export OMPI_MCA_rmaps_base_oversubscribe=1

BIN=${MOERUN:-bin/moerun}
if [ ! -x "$BIN" ]; then
  echo "reliability: $BIN not found: building it (make build-nocubin)"
  make build-nocubin >"$LOGDIR/build.log" 2>&1 || { echo "reliability: build failed, see $LOGDIR/build.log"; exit 1; }
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HAVE_GO=0; command -v go >/dev/null 2>&1 && HAVE_GO=1
HAVE_MPIRUN=0; command -v mpirun >/dev/null 2>&1 && HAVE_MPIRUN=1
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
case ${GPU:-auto} in
  auto) RUN_GPU=0; [ "${ngpu:-0}" -gt 0 ] && RUN_GPU=1 ;;
  1|yes) RUN_GPU=1 ;;
  *) RUN_GPU=0 ;;
esac
GPU_W=${GPU_W:-$(( ngpu > 0 ? ngpu : 2 ))}

# mpirun's options for cases that start ranks without `moerun launch`.
MPIRUN=(mpirun --oversubscribe --bind-to none --mca btl ^openib --mca btl_vader_single_copy_mechanism none)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)

# A small CPU config (S) and one that runs until stopped (FOREVER).
S=(--backend cpu --tokens 64 --hidden 64 --ffn-hidden 64 --experts 4 --topk 2 --iters 2 --warmup 0)
FOREVER=(--backend cpu --tokens 256 --hidden 128 --ffn-hidden 128 --experts 8 --topk 2 --iters 100000000 --warmup 0)

ROWS=(); passed=0; failed=0; skipped=0; n=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# procs MARK: pids of live processes whose environment holds MOERUN_RELIABILITY=MARK.
procs() {
  local f p st
  for f in $(grep -l -z -x "MOERUN_RELIABILITY=$1" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}; p=${p%/environ}
    st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && echo "$p"
  done
}
# rank_pid MARK R: the pid of world rank R of the case (Open MPI's variable).
rank_pid() {
  local p
  for p in $(procs "$1"); do
    grep -q -z -x "OMPI_COMM_WORLD_RANK=$2" "/proc/$p/environ" 2>/dev/null && { echo "$p"; return; }
  done
}
# settle MARK: wait up to 3 s for the case's processes to end.
settle() {
  local i
  for i in $(seq 30); do [ -z "$(procs "$1")" ] && return; sleep 0.1; done
}
# leftovers MARK: kill and count the case's processes still alive.
leftovers() {
  local left p
  left=$(procs "$1")
  for p in $left; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  echo "$left" | wc -w
}

# message LOG: the first line of what the user is told. The launcher's summary
# ("moerun launch: rank 1 exited ...") when there is one, else the first
# "moerun ...:" line, else the first error-looking line, else the first line.
# said LOG: the output without the launcher's echo of its command line (which
# repeats the arguments) and its notes on forwarded signals.
said() { grep -v -E '^moerun launch: .*(mpirun|srun) .*'"$(basename "$BIN")"' |^moerun launch: (SIGINT|SIGTERM|SIGHUP)' "$1" | tr -d '\r'; }
message() {
  local m text
  text=$(said "$1")
  m=$(grep -E '^moerun launch: ' <<<"$text" | tail -1)
  [ -z "$m" ] && m=$(grep -m1 -E '^moerun[a-z ]*: ' <<<"$text")
  [ -z "$m" ] && m=$(grep -m1 -E 'flag provided|invalid value|[Ee]rror|fatal|panic|runtime:|MPI_ABORT' <<<"$text")
  [ -z "$m" ] && m=$(grep -m1 -v -E '^\s*$|^#' <<<"$text")
  printf '%s' "${m:-(no message)}" | cut -c1-300
}

# row NAME DISPLAY LOG RC MS PATTERN LEFT [EXPECT]: judge and record one case.
# EXPECT is "fail" (default: exit non-zero, not by the timeout, within LIMIT,
# PATTERN in the output) or "ok" (exit 0: a case that must run).
row() {
  local name=$1 show=$2 log=$3 rc=$4 ms=$5 pat=$6 left=$7 expect=${8:-fail} verdict=pass why=""
  local msg; msg=$(message "$log")
  if [ "$expect" = ok ]; then
    [ "$rc" -eq 0 ] || { verdict=FAIL; why="exit $rc, want 0"; }
  else
    if [ "$rc" -eq 124 ]; then verdict=FAIL; why="hung: stopped by timeout ${HANG}s"
    elif [ "$rc" -eq 0 ]; then verdict=FAIL; why="exit 0"
    elif [ "$ms" -gt $((LIMIT * 1000)) ]; then verdict=FAIL; why="took more than ${LIMIT}s"
    fi
  fi
  if [ "$verdict" = pass ] && [ -n "$pat" ] && ! said "$log" | grep -q -E -- "$pat"; then verdict=FAIL; why="message lacks /$pat/"; fi
  if [ "$left" -gt 0 ]; then verdict=FAIL; why="${why:+$why; }$left processes left behind"; fi
  [ "$verdict" = pass ] && passed=$((passed + 1)) || failed=$((failed + 1))
  ROWS+=("$n"$'\t'"$name"$'\t'"$show"$'\t'"$msg"$'\t'"$rc"$'\t'"$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))"$'\t'"$verdict${why:+ ($why)}")
  printf '%3d %-30s %-4s exit %3s %5ss  %s\n' "$n" "$name" "$verdict" "$rc" "$(awk -v m="$ms" 'BEGIN { printf "%.1f", m / 1000 }')" "${why:-$msg}" | cut -c1-200
}

skip() { # skip NAME DISPLAY WHY
  n=$((n + 1)); skipped=$((skipped + 1))
  ROWS+=("$n"$'\t'"$1"$'\t'"$2"$'\t'"-"$'\t'"-"$'\t'"-"$'\t'"skipped: $3")
  printf '%3d %-30s skip  %s\n' "$n" "$1" "$3"
}

want() { [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]; }

# run NAME PATTERN DISPLAY -- CMD...: one case in the foreground.
run() {
  local name=$1 pat=$2 show=$3; shift 4
  want "$name" || return 0
  n=$((n + 1))
  local log="$LOGDIR/$(printf '%02d' $n)-$name.log" mark="$RUN_ID.$n" t0 rc ms
  t0=$(now_ms)
  MOERUN_RELIABILITY=$mark timeout -k 5 "$HANG" "$@" >"$log" 2>&1 </dev/null
  rc=$?; settle "$mark"; ms=$(( $(now_ms) - t0 ))
  row "$name" "$show" "$log" "$rc" "$ms" "$pat" "$(leftovers "$mark")"
}

# fault NAME PATTERN DISPLAY WHEN TARGET SIGNALS -- CMD...: start CMD in the
# background; when the ranks are up (WHEN=running: rank 0 printed the table
# header, plus 1 s; WHEN=startup: as soon as rank 1's process exists), send
# SIGNALS (e.g. KILL, or INT,INT: twice, 0.3 s apart) to TARGET (rank1,
# launch or mpirun), and time from the first signal to the end of CMD.
fault() {
  local name=$1 pat=$2 show=$3 when=$4 target=$5 sigs=$6; shift 7
  want "$name" || return 0
  n=$((n + 1))
  local log="$LOGDIR/$(printf '%02d' $n)-$name.log" mark="$RUN_ID.$n" t0 rc ms pid i victim="" sig first=1
  MOERUN_RELIABILITY=$mark timeout -k 5 "$HANG" "$@" >"$log" 2>&1 </dev/null &
  pid=$!
  for i in $(seq 1000); do
    if [ "$when" = startup ]; then [ -n "$(rank_pid "$mark" 1)" ] && break
    else grep -q '^# ranks' "$log" 2>/dev/null && { sleep 1; break; }; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  case $target in
    rank1) victim=$(rank_pid "$mark" 1) ;;
    launch|mpirun) for i in $(procs "$mark"); do
        { tr '\0' ' ' <"/proc/$i/cmdline"; } 2>/dev/null | grep -q -E "^($BIN launch|mpirun) " || continue
        { tr '\0' ' ' <"/proc/$i/cmdline"; } 2>/dev/null | grep -q "^mpirun " && [ "$target" = mpirun ] && victim=$i
        { tr '\0' ' ' <"/proc/$i/cmdline"; } 2>/dev/null | grep -q "^$BIN launch " && [ "$target" = launch ] && victim=$i
      done ;;
  esac
  echo "$target: pid ${victim:-not found}, signals $sigs" >"$log.action"
  t0=$(now_ms)
  for sig in ${sigs//,/ }; do
    [ $first = 1 ] || sleep 0.3
    first=0
    [ -n "$victim" ] && kill -"$sig" "$victim"
  done
  wait "$pid" 2>/dev/null; rc=$?; settle "$mark"; ms=$(( $(now_ms) - t0 ))
  row "$name" "$show" "$log" "$rc" "$ms" "$pat" "$(leftovers "$mark")"
}

echo "reliability: $("$BIN" version) on $(nproc) cores; GPUs: ${ngpu:-0} (GPU cases: $([ $RUN_GPU = 1 ] && echo on || echo off)); logs in $LOGDIR"

# ---- Bad configuration values: one rank, refused before any work ----------
M='moerun bench $S'
run hidden-0            'hidden 0: must be in \[1, 65536\]'        "$M --hidden 0" -- "$BIN" bench "${S[@]}" --hidden 0
run hidden-too-large    'hidden 70000: must be in \[1, 65536\]'    "$M --hidden 70000" -- "$BIN" bench "${S[@]}" --hidden 70000
run ffn-hidden-negative 'ffn-hidden -1: must be in'                "$M --ffn-hidden -1" -- "$BIN" bench "${S[@]}" --ffn-hidden -1
run experts-0           'experts 0: must be in \[1, 4096\]'        "$M --experts 0" -- "$BIN" bench "${S[@]}" --experts 0
run experts-too-many    'experts 5000: must be in \[1, 4096\]'     "$M --experts 5000" -- "$BIN" bench "${S[@]}" --experts 5000
run topk-0              'topk 0: must be at least 1'               "$M --topk 0" -- "$BIN" bench "${S[@]}" --topk 0
run topk-above-experts  'topk 5: must not exceed experts 4'        "$M --topk 5" -- "$BIN" bench "${S[@]}" --topk 5
run tokens-negative     'tokens -1: must not be negative'          "$M --tokens -1" -- "$BIN" bench "${S[@]}" --tokens -1
run tokens-above-max    'tokens 65: exceeds max-tokens 64'         "$M --tokens 65 --max-tokens 64" -- "$BIN" bench "${S[@]}" --tokens 65 --max-tokens 64
run tokens-above-limit  '2000000.*1048576'                         "$M --tokens 2000000" -- "$BIN" bench "${S[@]}" --tokens 2000000
run max-tokens-negative 'max-tokens -5: must be in'                "$M --tokens 0 --max-tokens -5" -- "$BIN" bench "${S[@]}" --tokens 0 --max-tokens -5
run ffn-unknown         'ffn "tanh": must be relu, gelu or swiglu' "$M --ffn tanh" -- "$BIN" bench "${S[@]}" --ffn tanh
run dtype-unknown       'dtype "fp16": must be fp32, tf32 or bf16' "$M --dtype fp16" -- "$BIN" bench "${S[@]}" --dtype fp16
run route-unknown       'route "random": must be softmax or skew'  "$M --route random" -- "$BIN" bench "${S[@]}" --route random
run capacity-negative   'capacity-factor -1: must be 0'            "$M --capacity-factor -1" -- "$BIN" bench "${S[@]}" --capacity-factor -1
run capacity-nan        'capacity-factor NaN: must be 0'           "$M --capacity-factor NaN" -- "$BIN" bench "${S[@]}" --capacity-factor NaN
run capacity-inf        'capacity-factor \+Inf: must be 0'         "$M --capacity-factor Inf" -- "$BIN" bench "${S[@]}" --capacity-factor Inf
run iters-0             'iters 0: must be at least 1'              "$M --iters 0" -- "$BIN" bench "${S[@]}" --iters 0
run warmup-negative     'warmup -1: must not be negative'          "$M --warmup -1" -- "$BIN" bench "${S[@]}" --warmup -1
run watchdog-0          'watchdog 0s: must be positive'            "$M --watchdog 0" -- "$BIN" bench "${S[@]}" --watchdog 0
run timeout-0           'timeout 0s: must be positive'             "$M --timeout 0s" -- "$BIN" bench "${S[@]}" --timeout 0s
run watchdog-no-unit    'invalid value "5" for flag -watchdog'     "$M --watchdog 5" -- "$BIN" bench "${S[@]}" --watchdog 5
run experts-not-integer '"x" is not an integer'                    "$M --experts x" -- "$BIN" bench "${S[@]}" --experts x
run seed-negative       'invalid value "-1" for flag -seed'        "$M --seed -1" -- "$BIN" bench "${S[@]}" --seed -1
run unknown-flag        'flag provided but not defined: -bogus'    "moerun bench --bogus" -- "$BIN" bench --bogus
run stray-argument      'unexpected argument "stray"'              "moerun bench --backend cpu stray" -- "$BIN" bench --backend cpu stray
run log-level-unknown   'log-level "loud": must be debug, info'    "$M --log-level loud" -- "$BIN" bench "${S[@]}" --log-level loud
run backend-unknown     'backend "tpu": must be cpu or gpu'        "moerun bench --backend tpu" -- "$BIN" bench --backend tpu
run too-many-configs    '20000 configs.*at most 10000'             "$M --tokens 1,2,..,200 --hidden 1,2,..,100" -- "$BIN" bench "${S[@]}" --tokens "$(seq -s, 1 200)" --hidden "$(seq -s, 1 100)"
run json-unwritable     '--json /nonexistent/out.json: cannot write it' "$M --json /nonexistent/out.json" -- "$BIN" bench "${S[@]}" --json /nonexistent/out.json
run dump-unwritable     '--dump /proc/moerun-dump: cannot make the folder' "$M --dump /proc/moerun-dump" -- "$BIN" bench "${S[@]}" --dump /proc/moerun-dump
run host-memory-too-small 'needs at least .* of host memory per rank' "moerun bench --backend cpu --hidden 32768 --ffn-hidden 32768 --experts 64 --topk 1 --tokens 1" -- "$BIN" bench --backend cpu --hidden 32768 --ffn-hidden 32768 --experts 64 --topk 1 --tokens 1
run bad-local-rank-env  'OMPI_COMM_WORLD_LOCAL_RANK="x" is not a non-negative integer' "OMPI_COMM_WORLD_LOCAL_RANK=x $M" -- env OMPI_COMM_WORLD_LOCAL_RANK=x "$BIN" bench "${S[@]}"
run unknown-command     'unknown command "frob"'                   "moerun frob" -- "$BIN" frob
run no-command          'Usage:'                                   "moerun" -- "$BIN"

# ---- moerun launch ---------------------------------------------------------
run launch-experts-not-divisible 'experts 8: must be a multiple of the number of ranks 3' \
    "moerun launch -n 3 -- bench \$S --experts 8" -- "$BIN" launch -n 3 -- bench "${S[@]}" --experts 8
run launch-no-mpirun    'mpirun not found'                         "PATH=/nonexistent moerun launch -n 2 -- bench \$S" -- env PATH=/nonexistent "$BIN" launch -n 2 -- bench "${S[@]}"
run launch-unknown-command 'unknown command "frob" for the ranks'  "moerun launch -n 2 -- frob" -- "$BIN" launch -n 2 -- frob
run launch-no-command   'missing the command'                      "moerun launch -n 2" -- "$BIN" launch -n 2
run launch-negative-n   '-n -2: the number of ranks must be positive' "moerun launch -n -2 -- bench" -- "$BIN" launch -n -2 -- bench
run launch-bad-via      '--via "pbs": want auto, mpirun or srun'   "moerun launch --via pbs -- bench" -- "$BIN" launch --via pbs -- bench
run launch-timeout      '--timeout 2s reached'                     "moerun launch -n 2 --timeout 2s -- bench \$F" -- "$BIN" launch -n 2 --timeout 2s -- bench "${FOREVER[@]}"

# ---- Ranks that do not belong together -------------------------------------
if [ $HAVE_GO = 1 ] && [ $HAVE_MPIRUN = 1 ]; then
  if want nompi-binary-4-ranks || want versions-differ; then
    go build -o "$LOGDIR/moerun-nompi" ./cmd/moerun >"$LOGDIR/build-nompi.log" 2>&1
    for v in a b; do
      go build -tags mpi -ldflags "-X github.com/moerun/moerun/internal/version.Version=reliability-$v" \
          -o "$LOGDIR/moerun-$v" ./cmd/moerun >"$LOGDIR/build-$v.log" 2>&1
    done
  fi
  run nompi-binary-4-ranks 'built without MPI support but was started as one of 4 ranks' \
      "go build -o moerun-nompi ./cmd/moerun; mpirun -np 4 moerun-nompi bench \$S" -- "${MPIRUN[@]}" -np 4 "$LOGDIR/moerun-nompi" bench "${S[@]}"
  run versions-differ     'rank 1 runs version moerun reliability-b.*rank 0 runs moerun reliability-a' \
      "mpirun -np 2 sh -c 'rank 0: moerun-a (version reliability-a), rank 1: moerun-b (reliability-b)'" -- \
      "${MPIRUN[@]}" -np 2 sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec "$0" "$@"; else exec "${0%-a}-b" "$@"; fi' "$LOGDIR/moerun-a" bench "${S[@]}"
else
  skip nompi-binary-4-ranks "go build -o moerun-nompi ./cmd/moerun; mpirun -np 4 moerun-nompi bench" "needs go and mpirun"
  skip versions-differ "two builds of different versions, one per rank" "needs go and mpirun"
fi
if [ $HAVE_MPIRUN = 1 ]; then
  run ranks-disagree-on-config 'rank 1 runs hidden=128, rank 0 runs hidden=64' \
      "mpirun -np 2 sh -c 'exec moerun bench \$S --hidden \$((64 + 64*OMPI_COMM_WORLD_RANK))'" -- \
      "${MPIRUN[@]}" -np 2 sh -c 'exec "$0" "$@" --hidden $((64 + 64 * OMPI_COMM_WORLD_RANK))' "$BIN" bench "${S[@]}"
  run ranks-disagree-on-verify 'rank 1 runs verify=false, rank 0 runs verify=true' \
      "mpirun -np 2 sh -c 'rank 0: moerun bench \$S --verify; rank 1: moerun bench \$S'" -- \
      "${MPIRUN[@]}" -np 2 sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec "$0" "$@" --verify; else exec "$0" "$@"; fi' "$BIN" bench "${S[@]}"
  run ranks-disagree-on-iters 'rank 1 runs iters=5, rank 0 runs iters=2' \
      "mpirun -np 2 sh -c 'exec moerun bench \$S --iters \$((2 + 3*OMPI_COMM_WORLD_RANK))'" -- \
      "${MPIRUN[@]}" -np 2 sh -c 'exec "$0" "$@" --iters $((2 + 3 * OMPI_COMM_WORLD_RANK))' "$BIN" bench "${S[@]}"
  run ranks-disagree-on-config-count 'rank 1 runs 1 --tokens values, rank 0 runs 2' \
      "mpirun -np 2 sh -c 'rank 0: moerun bench \$S --tokens 64,32; rank 1: moerun bench \$S'" -- \
      "${MPIRUN[@]}" -np 2 sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec "$0" "$@" --tokens 64,32; else exec "$0" "$@"; fi' "$BIN" bench "${S[@]}"
fi

# ---- No GPU here: the GPU paths must say so --------------------------------
if [ "${ngpu:-0}" -eq 0 ]; then
  run gpu-backend-no-driver 'CUDA driver'  "moerun bench --backend gpu ... (no NVIDIA driver)" -- "$BIN" bench --backend gpu --tokens 64 --hidden 64 --ffn-hidden 64 --experts 4 --iters 1
  run info-no-driver        'no NVIDIA driver found' "moerun info (no NVIDIA driver)" -- "$BIN" info
fi

# ---- Faults while the CPU backend runs (4 ranks unless said) ----------------
L='moerun launch -n 4 -- bench $F'
fault sigkill-rank-midrun   'rank 1 .*exited on signal 9'   "$L; kill -KILL <rank 1>" running rank1 KILL -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"
fault sigkill-rank-startup  'rank 1 .*(exited on signal 9|signal 9)' "$L; kill -KILL <rank 1> as soon as it exists" startup rank1 KILL -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"
fault sigstop-rank-midrun   'waited 3.*gave up'             "$L --timeout 3s; kill -STOP <rank 1>" running rank1 STOP -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}" --timeout 3s
fault sigstop-rank-startup  'did not finish within --timeout 5s' "$L --timeout 5s; kill -STOP <rank 1> during start-up" startup rank1 STOP -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}" --timeout 5s
fault sigint-launch         'interrupted by SIGINT'         "$L; kill -INT <moerun launch>" running launch INT -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"
fault sigterm-launch        'interrupted by SIGTERM'        "$L; kill -TERM <moerun launch>" running launch TERM -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"
fault sigint-twice          'interrupted by SIGINT'         "$L; kill -INT <moerun launch>, again 0.3 s later" running launch INT,INT -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"
fault sigkill-mpirun        'mpirun ended on signal 9|signal 9' "$L; kill -KILL <mpirun>" running mpirun KILL -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"
fault sigkill-launch        ''                              "$L; kill -KILL <moerun launch> (the ranks must not outlive it)" running launch KILL -- "$BIN" launch -n 4 -- bench "${FOREVER[@]}"

# The project's own kill test (it counts every "moerun bench" process on the
# machine as left over: run it where nothing else runs bench).
if want kill-test-script; then
  n=$((n + 1)); log="$LOGDIR/$(printf '%02d' $n)-kill-test-script.log"; t0=$(now_ms)
  MOERUN_RELIABILITY=$RUN_ID.$n MOERUN="$BIN" N=4 LOG="$log.job" timeout -k 5 "$HANG" scripts/kill-test.sh >"$log" 2>&1
  rc=$?; settle "$RUN_ID.$n"
  row kill-test-script "N=4 scripts/kill-test.sh (must pass: SIGKILL of rank 1 of 4 ends the job in < 10 s)" "$log" "$rc" $(( $(now_ms) - t0 )) \
      'job ended with status 137' "$(leftovers "$RUN_ID.$n")" ok
fi

# ---- GPU (only where a GPU is visible) --------------------------------------
G=(--backend gpu --tokens 256 --hidden 256 --ffn-hidden 256 --experts $((2 * GPU_W)) --topk 2 --iters 2 --warmup 0)
GF=(--backend gpu --tokens 256 --hidden 256 --ffn-hidden 256 --experts $((2 * GPU_W)) --topk 2 --iters 100000000 --warmup 0)
GL="moerun launch -n $GPU_W -- bench"
declare -A GS=(
  [gpu-no-cubin-anywhere]="moerun-without-cubin launch -n $GPU_W -- bench \$G (built without -tags cubin, no moerun.cubin next to it)"
  [gpu-cubin-missing]="$GL \$G --cubin /nonexistent.cubin"
  [gpu-cubin-bad-file]="$GL \$G --cubin bad.cubin (a text file)"
  [gpu-cubin-env-missing]="MOERUN_CUBIN=/nonexistent.cubin $GL \$G"
  [gpu-nvshmem-lib-missing]="MOERUN_NVSHMEM_LIB=/nonexistent/libnvshmem_host.so.3 $GL \$G"
  [gpu-symmetric-size-too-small]="NVSHMEM_SYMMETRIC_SIZE=1M $GL \$G --tokens 4096"
  [gpu-heap-does-not-fit]="$GL --backend gpu --tokens 1048576 --hidden 8192 --ffn-hidden 8192 --experts $((2 * GPU_W)) --iters 1"
  [gpu-hidden-not-multiple-64]="$GL \$G --hidden 100"
  [gpu-more-ranks-than-gpus]="moerun launch -n <GPUs + 1> -- bench \$G"
  [gpu-two-ranks-one-gpu]="CUDA_VISIBLE_DEVICES=0 moerun launch -n 2 -- bench \$G --experts 4"
  [gpu-watchdog]="$GL \$G --watchdog 2s --debug-withhold-signal 0"
  [gpu-rank-stuck-in-nvshmem-init]="MOERUN_DEBUG_STOP_BEFORE_NVSHMEM_INIT=1 $GL \$G --timeout 3s (rank 1 stops itself before NVSHMEM's init)"
  [gpu-sigkill-rank-midrun]="$GL \$GF; kill -KILL <rank 1>"
  [gpu-sigint-launch]="$GL \$GF; kill -INT <moerun launch>"
  [gpu-capacity-factor-huge]="$GL \$G --capacity-factor 1e300 --verify (must pass: finding 1)"
  [gpu-memory-freed]="nvidia-smi --query-compute-apps=pid,used_memory after the cases above (must list no process of this run)"
)
GPU_CASES=(gpu-no-cubin-anywhere gpu-cubin-missing gpu-cubin-bad-file gpu-cubin-env-missing gpu-nvshmem-lib-missing
  gpu-symmetric-size-too-small gpu-heap-does-not-fit gpu-hidden-not-multiple-64 gpu-more-ranks-than-gpus
  gpu-two-ranks-one-gpu gpu-watchdog gpu-rank-stuck-in-nvshmem-init gpu-sigkill-rank-midrun gpu-sigint-launch gpu-capacity-factor-huge gpu-memory-freed)
gpu_cases() {
  printf 'not a cubin\n' >"$LOGDIR/bad.cubin"
  if [ $HAVE_GO = 1 ]; then
    if want gpu-no-cubin-anywhere; then
      mkdir -p "$LOGDIR/nocubin" && go build -tags mpi -o "$LOGDIR/nocubin/moerun" ./cmd/moerun >"$LOGDIR/build-nocubin.log" 2>&1
      run gpu-no-cubin-anywhere 'kernel cubin not found; looked at' "${GS[gpu-no-cubin-anywhere]}" -- \
          "$LOGDIR/nocubin/moerun" launch -n "$GPU_W" -- bench "${G[@]}"
    fi
  else
    want gpu-no-cubin-anywhere && skip gpu-no-cubin-anywhere "${GS[gpu-no-cubin-anywhere]}" "needs go"
  fi
  run gpu-cubin-missing 'kernel cubin from --cubin: open /nonexistent.cubin: no such file' "${GS[gpu-cubin-missing]}" -- \
      "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --cubin /nonexistent.cubin
  run gpu-cubin-bad-file 'cubin: not an ELF image' "${GS[gpu-cubin-bad-file]}" -- \
      "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --cubin "$LOGDIR/bad.cubin"
  run gpu-cubin-env-missing 'kernel cubin from [$]MOERUN_CUBIN: open /nonexistent.cubin' "${GS[gpu-cubin-env-missing]}" -- \
      env MOERUN_CUBIN=/nonexistent.cubin "$BIN" launch -n "$GPU_W" -- bench "${G[@]}"
  run gpu-nvshmem-lib-missing 'MOERUN_NVSHMEM_LIB=/nonexistent/libnvshmem_host.so.3: no such file' "${GS[gpu-nvshmem-lib-missing]}" -- \
      env MOERUN_NVSHMEM_LIB=/nonexistent/libnvshmem_host.so.3 "$BIN" launch -n "$GPU_W" -- bench "${G[@]}"
  run gpu-symmetric-size-too-small 'set NVSHMEM_SYMMETRIC_SIZE' "${GS[gpu-symmetric-size-too-small]}" -- \
      env NVSHMEM_SYMMETRIC_SIZE=1M "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --tokens 4096
  run gpu-heap-does-not-fit 'needs .* of GPU memory|NVSHMEM init|symmetric heap' "${GS[gpu-heap-does-not-fit]}" -- \
      "$BIN" launch -n "$GPU_W" -- bench --backend gpu --tokens 1048576 --hidden 8192 --ffn-hidden 8192 --experts $((2 * GPU_W)) --iters 1
  run gpu-hidden-not-multiple-64 'hidden 100: the GPU backend needs a multiple of' "${GS[gpu-hidden-not-multiple-64]}" -- \
      "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --hidden 100
  run gpu-more-ranks-than-gpus 'has no GPU of its own' "${GS[gpu-more-ranks-than-gpus]}" -- \
      "$BIN" launch -n $((ngpu + 1)) -- bench "${G[@]}" --experts $((2 * (ngpu + 1)))
  run gpu-two-ranks-one-gpu 'would both use GPU' "${GS[gpu-two-ranks-one-gpu]}" -- \
      env CUDA_VISIBLE_DEVICES=0 "$BIN" launch -n 2 -- bench "${G[@]}" --experts 4
  if [ "$GPU_W" -lt 2 ]; then
    want gpu-watchdog && skip gpu-watchdog "${GS[gpu-watchdog]}" "needs 2 GPUs"
    want gpu-sigkill-rank-midrun && skip gpu-sigkill-rank-midrun "${GS[gpu-sigkill-rank-midrun]}" "needs 2 GPUs"
    want gpu-rank-stuck-in-nvshmem-init && skip gpu-rank-stuck-in-nvshmem-init "${GS[gpu-rank-stuck-in-nvshmem-init]}" "needs 2 GPUs"
  else
    run gpu-watchdog 'watchdog: rank [0-9]+ waited' "${GS[gpu-watchdog]}" -- \
        "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --watchdog 2s --debug-withhold-signal 0
    # NVSHMEM's init has no bound of its own: boundCollective ends the
    # ranks that wait in it for the stopped one.
    run gpu-rank-stuck-in-nvshmem-init 'NVSHMEM init did not finish within --timeout 3s' "${GS[gpu-rank-stuck-in-nvshmem-init]}" -- \
        env MOERUN_DEBUG_STOP_BEFORE_NVSHMEM_INIT=1 "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --timeout 3s
    fault gpu-sigkill-rank-midrun 'rank 1 .*exited on signal 9' "${GS[gpu-sigkill-rank-midrun]}" running rank1 KILL -- \
        "$BIN" launch -n "$GPU_W" -- bench "${GF[@]}"
  fi
  fault gpu-sigint-launch 'interrupted by SIGINT' "${GS[gpu-sigint-launch]}" running launch INT -- \
      "$BIN" launch -n "$GPU_W" -- bench "${GF[@]}"
  # Finding 1: a huge capacity factor means "every pair fits"; until
  # config.Capacity clamps it, the kernel gets capacity int32(...) = 0.
  if want gpu-capacity-factor-huge; then
    n=$((n + 1)); local log="$LOGDIR/$(printf '%02d' $n)-gpu-capacity-factor-huge.log" t0 rc; t0=$(now_ms)
    MOERUN_RELIABILITY=$RUN_ID.$n timeout -k 5 "$HANG" "$BIN" launch -n "$GPU_W" -- bench "${G[@]}" --capacity-factor 1e300 --verify >"$log" 2>&1
    rc=$?; settle "$RUN_ID.$n"
    row gpu-capacity-factor-huge "${GS[gpu-capacity-factor-huge]}" "$log" "$rc" $(( $(now_ms) - t0 )) '' "$(leftovers "$RUN_ID.$n")" ok
  fi
  # No process of this run holds GPU memory after the cases above.
  if want gpu-memory-freed; then
    n=$((n + 1)); local log="$LOGDIR/$(printf '%02d' $n)-gpu-memory-freed.log" used
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader >"$log" 2>&1
    used=$(while read -r p _; do p=${p%,}; grep -q -z "MOERUN_RELIABILITY=$RUN_ID" "/proc/$p/environ" 2>/dev/null && echo "$p"; done <"$log" | wc -l)
    sed -i "1i moerun: processes of this run holding GPU memory: $used" "$log"
    row gpu-memory-freed "${GS[gpu-memory-freed]}" "$log" "$used" 0 '' 0 ok
  fi
}
if [ $RUN_GPU = 1 ]; then
  gpu_cases
else
  for c in "${GPU_CASES[@]}"; do want "$c" && skip "$c" "${GS[$c]}" "no GPU here (GPU=1 to force)"; done
fi

echo
echo "reliability: $passed passed, $failed failed, $skipped skipped (limit ${LIMIT}s per case; logs in $LOGDIR)"

if [ -n "$WRITE" ]; then
  table=$(
    echo "Generated by \`scripts/reliability.sh --write $WRITE\` on $(date -u +%Y-%m-%d) with \`$("$BIN" version)\`, $(nproc) CPU cores,"
    echo "${ngpu:-0} GPUs$( [ "${ngpu:-0}" -gt 0 ] && echo " ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"). In the commands, \`\$S\` is \`${S[*]}\` and"
    echo "\`\$F\` is \`${FOREVER[*]}\` (runs until stopped); for the GPU, \`\$G\` is \`${G[*]}\` and \`\$GF\` the same"
    echo "with \`--iters 100000000\`. Seconds: from the start of"
    echo "the command, or for a fault from the moment it was injected, until the command and every process of the job had ended."
    echo "Result: pass = a non-zero exit within ${LIMIT} s, the expected message (naming the bad value) in the output, and no"
    echo "process of the job left; the rows marked \"must pass\" are checks that must exit 0 instead."
    echo
    echo "| # | case | command | message (first line) | exit | seconds | result |"
    echo "| ---: | --- | --- | --- | ---: | ---: | --- |"
    for r in "${ROWS[@]}"; do
      IFS=$'\t' read -r i name show msg rc secs verdict <<<"$r"
      esc() { printf '%s' "$1" | sed -e 's/|/\\|/g' -e 's/`/'"'"'/g'; }
      echo "| $i | $name | \`$(esc "$show")\` | $(esc "$msg") | $rc | $secs | $verdict |"
    done
    echo
    echo "**$passed passed, $failed failed, $skipped skipped.**"
  )
  begin='<!-- reliability.sh: begin -->'; end='<!-- reliability.sh: end -->'
  printf '%s\n' "$table" >"$LOGDIR/table.md"
  if [ -f "$WRITE" ] && grep -q "$begin" "$WRITE" && grep -q "$end" "$WRITE"; then
    awk -v b="$begin" -v e="$end" -v t="$LOGDIR/table.md" '
      $0 == b { print; while ((getline l < t) > 0) print l; skip = 1; next }
      $0 == e { skip = 0 }
      !skip { print }' "$WRITE" >"$WRITE.tmp" && mv "$WRITE.tmp" "$WRITE"
  else
    { echo "# Reliability"; echo; echo "$begin"; printf '%s\n' "$table"; echo "$end"; } >"$WRITE"
  fi
  echo "reliability: wrote the table to $WRITE"
fi
[ "$failed" -eq 0 ]
