#!/usr/bin/env bash
# Nsight Compute profile of one forward of the moerun kernel (one GPU): the
# throughput, memory, warp-state and tensor-pipe figures of the launch, for
# each kernel flag set of KFLAGS (MOERUN_KERNEL_FLAGS; default: the kernel's
# own). Prints each report; full reports under LOGDIR.
#
#   DTYPE=bf16 TOKENS=8192 KFLAGS="7 3" scripts/profile.sh
#
# Settings: DTYPE (bf16), TOKENS (8192), KFLAGS, CUBIN (another build's
# cubin, e.g. build/ws/moerun.cubin; default: the embedded one), LOGDIR ($OUT
# or /tmp/moerun-profile), MOERUN (bin/moerun), NCU (ncu on PATH or under
# /usr/local/cuda/bin). The shape is the paper's (H = I = 2048, E = 32, k = 2).
# ncu runs with --clock-control none (the card's own clocks, as the benches).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
BIN=${MOERUN:-bin/moerun}
LOGDIR=${LOGDIR:-${OUT:-/tmp/moerun-profile}}
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
[ -x "$NCU" ] || { echo "profile: no ncu (looked on PATH and at $NCU)"; exit 2; }
mkdir -p "$LOGDIR"
rc=0
for kf in ${KFLAGS:-default}; do
  envs=()
  [ "$kf" = default ] || envs=(MOERUN_KERNEL_FLAGS="$kf")
  log="$LOGDIR/ncu_${DTYPE:-bf16}_${TOKENS:-8192}_f$kf${CUBIN:+_$(basename "$(dirname "$CUBIN")")}.txt"
  echo "=== profile: dtype ${DTYPE:-bf16} T=${TOKENS:-8192} flags $kf"
  env "${envs[@]}" timeout -k 10 300 "$NCU" --clock-control none -k moerun_moe -c 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats \
    --metrics "regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$,regex:^sm__pipe_tensor_op.*cycles_active\.avg\.pct_of_peak_sustained_active$" \
    "$BIN" bench --backend gpu ${CUBIN:+--cubin "$PWD/$CUBIN"} --hidden 2048 --ffn-hidden 2048 --experts 32 --topk 2 --ffn relu \
    --tokens "${TOKENS:-8192}" --dtype "${DTYPE:-bf16}" --iters 1 --warmup 0 >"$log" 2>&1 || rc=1
  grep -E "Duration|Throughput|Hit Rate|Warp Cycles Per Issued|Issued Warp|stalled_|pipe_tensor|Executed Ipc|Busy|Bandwidth|==ERR|==WARN" "$log" |
    grep -v "^\s*$" | awk '!seen[$0]++' | head -60
done
exit $rc
