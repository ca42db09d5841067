#!/usr/bin/env bash
# Do two kernels give bitwise the same outputs? For a kernel change that must
# not change results (a new task order, new row tiles, a new loader): runs the
# same forwards (same seed, same shapes) with each cubin, dumps every rank's
# output, and compares the files byte for byte.
#
#   scripts/bitwise-ab.sh build/a/moerun.cubin build/b/moerun.cubin
#   W=4 TOKENS=128,512 DTYPES=bf16,tf32 scripts/bitwise-ab.sh embedded build/x/moerun.cubin
#
# "embedded" names the binary's own cubin. FLAGS_A / FLAGS_B: kernel flags
# (MOERUN_KERNEL_FLAGS) of the first / second run, to compare two switches of
# one cubin (FLAGS_A=7 FLAGS_B=15 scripts/bitwise-ab.sh embedded embedded).
# ENV_A / ENV_B: more VAR=value words for the first / second run, e.g. the
# MOE_WS cubin that runs beside a --cubin (which otherwise runs alone):
#   ENV_A=MOERUN_WS_CUBIN=build/a/ws.cubin ENV_B=MOERUN_WS_CUBIN=build/b/ws.cubin \
#     TOKENS=2900,4096 DTYPES=bf16 scripts/bitwise-ab.sh build/a/moerun.cubin build/b/moerun.cubin
# Other shape flags: ARGS (default
# H = 512, I = 1024, E = 32, k = 2, relu and swiglu: the dump also writes
# inputs and weights, so the shape stays small). Exit 0 when every
# output file is identical; logs and dumps under LOGDIR ($OUT or
# /tmp/moerun-bitwise).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -eq 2 ] || { echo "usage: $0 CUBIN_A CUBIN_B (a path, or embedded)" >&2; exit 2; }

export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
BIN=${MOERUN:-bin/moerun}
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-bitwise}}
W=${W:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 1)}
TOKENS=${TOKENS:-128,512}
DTYPES=${DTYPES:-bf16,tf32}
read -r -a shape <<<"${ARGS:---hidden 512 --ffn-hidden 1024 --experts 32 --topk 2 --ffn relu,swiglu}"
mkdir -p "$LOGDIR"

i=0
for cb in "$1" "$2"; do
  i=$((i + 1))
  args=() envs=()
  side=A
  [ "$i" = 2 ] && side=B
  flags_var=FLAGS_$side env_var=ENV_$side
  [ -n "${!flags_var:-}" ] && envs=(MOERUN_KERNEL_FLAGS="${!flags_var}")
  read -r -a more <<<"${!env_var:-}"
  envs+=("${more[@]}")
  [ "$cb" = embedded ] || { [ -f "$cb" ] || { echo "bitwise-ab: $cb: no such cubin" >&2; exit 2; }; args=(--cubin "$PWD/$cb"); }
  rm -rf "$LOGDIR/dump$i"
  if ! timeout -k 10 300 env "${envs[@]}" "$BIN" launch -n "$W" -- bench --backend gpu "${args[@]}" "${shape[@]}" --tokens "$TOKENS" \
    --dtype "$DTYPES" --iters 1 --warmup 0 --verify --dump "$LOGDIR/dump$i" >"$LOGDIR/run$i.log" 2>&1; then
    echo "bitwise-ab: the run with $cb failed:"; tail -5 "$LOGDIR/run$i.log"; exit 1
  fi
done
files=0 diffs=0
for f in "$LOGDIR"/dump1/cfg*/rank*/out.npy; do
  [ -f "$f" ] || continue
  files=$((files + 1))
  cmp -s "$f" "${f/dump1/dump2}" || { diffs=$((diffs + 1)); echo "bitwise-ab: differs: ${f#"$LOGDIR"/dump1/}"; }
done
echo "bitwise-ab: W=$W tokens $TOKENS dtypes $DTYPES: $files output files, $diffs differ ($1${FLAGS_A:+ flags $FLAGS_A}${ENV_A:+ $ENV_A} vs $2${FLAGS_B:+ flags $FLAGS_B}${ENV_B:+ $ENV_B})"
[ "$files" -gt 0 ] && [ "$diffs" -eq 0 ]
