#!/usr/bin/env bash
# The Python example's GPU path on 2 GPUs of this node: examples/python/moe_torch.py
# (PyTorch CUDA tensors passed to the C ABI by device pointer, on PyTorch's stream) under
# mpirun, each output checked against PyTorch's own float64 computation of the same layers
# within the dtype's tolerance (DESIGN.md section 1 item 5). Runs fp32, tf32 and bf16, once with
# NCCL all_reduces on another stream between forwards, once with device weights, after a
# CPU-backend run of the ctypes example as a sanity check of the library and MPI. Every run
# is bounded by `timeout 120`; logs go to ${OUT:-/tmp}/python-gpu-*.log; a PASS/FAIL table
# is printed last, and the exit status is non-zero on any failure.
#
# Run from the repo root (no ssh needed: mpirun starts local ranks only):
#
#   scripts/python-gpu-check.sh
#   PYTHON=/path/to/python3 MOERUN_LIB=path/to/libmoerun.so scripts/python-gpu-check.sh
#
# Needs:
#   build/libmoerun.so with the kernel embedded, built where Go, CUDA 13 and Open MPI's
#     development files are (make kernels copies build/moerun.cubin to kernels/moerun.cubin,
#     which -tags cubin embeds):
#       make -f kernels/kernels.mk kernels
#       go build -buildmode=c-shared -tags "mpi cubin" -o build/libmoerun.so ./capi
#     A library built without -tags cubin works too when build/moerun.cubin is there: this
#     script then sets MOERUN_CUBIN to it (a MOERUN_CUBIN you set, even to "", is kept).
#   PYTHON (default /opt/torch/.venv/bin/python3): PyTorch with CUDA, and numpy.
#   Open MPI's mpirun; 2 Hopper GPUs with peer access.
#
# One run by hand, without this script (the variables must be in the environment the
# processes start with: the library reads them when it is loaded):
#
#   export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
#   export MOERUN_NVSHMEM_LIB=$(/opt/torch/.venv/bin/python3 -c 'import os, nvidia.nvshmem as m; print(os.path.join(list(m.__path__)[0], "lib", "libnvshmem_host.so.3"))')
#   timeout 120 mpirun -np 2 --allow-run-as-root --oversubscribe --bind-to none --mca plm isolated \
#       /opt/torch/.venv/bin/python3 examples/python/moe_torch.py --lib build/libmoerun.so --dtype fp32
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-/opt/torch/.venv/bin/python3}
LIB=${MOERUN_LIB:-build/libmoerun.so}
LOGDIR=${OUT:-/tmp}
LIMIT=120
mkdir -p "$LOGDIR"
# Safety on shared GPU machines: NVLink multicast stays off for NVSHMEM, NCCL and PyTorch.
export NVSHMEM_DISABLE_NVLS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}

declare -a ROWS
fails=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
row() { ROWS+=("$(printf '%-12s %-4s %7s  %s' "$1" "$2" "$3" "$4")"); [ "$2" = PASS ] || fails=$((fails + 1)); }
table() {
  echo
  echo "python-gpu-check: $((${#ROWS[@]} - fails))/${#ROWS[@]} passed; logs in $LOGDIR/python-gpu-*.log"
  printf '%-12s %-4s %7s  %s\n' run "" secs detail
  printf '%s\n' "${ROWS[@]}"
  [ "$fails" -eq 0 ]
  exit $?
}

# What this machine has; anything missing ends the check with a FAIL row.
[ -f "$LIB" ] || { row setup FAIL - "$LIB not found: build it (see this script's header)"; table; }
command -v mpirun >/dev/null || { row setup FAIL - "mpirun not found (Open MPI)"; table; }
[ -x "$PY" ] || { row setup FAIL - "$PY not found: set PYTHON to a Python with PyTorch (CUDA) and numpy"; table; }
info=$("$PY" - <<'EOF' 2>&1
import importlib.metadata as md
import torch, numpy
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
try:
    nv = md.version("nvidia-nvshmem-cu13")
except md.PackageNotFoundError:
    nv = "none"
name = torch.cuda.get_device_name(0) if n else "no GPU"
print(f"{n} torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, nvidia-nvshmem-cu13 {nv}, {n}x {name}")
EOF
) || { row setup FAIL - "$PY: no PyTorch or numpy: $(echo "$info" | tail -1)"; table; }
ngpu=${info%% *}
echo "python-gpu-check: $PY: ${info#* }"
[ "$ngpu" -ge 2 ] 2>/dev/null || { row setup FAIL - "PyTorch sees $ngpu GPUs; 2 are needed"; table; }

# The kernel: embedded (-tags cubin), else build/moerun.cubin.
if [ -z "${MOERUN_CUBIN+set}" ] && [ -f build/moerun.cubin ]; then
  export MOERUN_CUBIN=$PWD/build/moerun.cubin
fi
echo "python-gpu-check: library $LIB, kernel ${MOERUN_CUBIN:-embedded in the library (MOERUN_CUBIN unset)}"
# One NVSHMEM in the process: the wheel's, which `import torch` loads, unless you chose one.
if [ -z "${MOERUN_NVSHMEM_LIB:-}" ]; then
  shm=$("$PY" -c 'import os, nvidia.nvshmem as m; print(os.path.join(list(m.__path__)[0], "lib", "libnvshmem_host.so.3"))' 2>/dev/null)
  if [ -n "$shm" ] && [ -f "$shm" ]; then export MOERUN_NVSHMEM_LIB=$shm; fi
fi
echo "python-gpu-check: NVSHMEM host library ${MOERUN_NVSHMEM_LIB:-as moerun finds it (no nvidia-nvshmem wheel in $PY)}"

port=29517
# job NAME ARGS...: one 2-rank mpirun of PY ARGS under timeout; passes on exit 0 with a
# final line that ends in "verified".
job() {
  local name=$1; shift
  local log="$LOGDIR/python-gpu-$name.log" t0 rc dt last
  t0=$(now_ms)
  port=$((port + 1))
  MASTER_PORT=$port timeout -k 10 "$LIMIT" mpirun -np 2 --allow-run-as-root --oversubscribe --bind-to none \
      --mca plm isolated "$PY" "$@" >"$log" 2>&1
  rc=$?
  dt=$(secs "$t0")
  last=$(grep -oE 'moe_(torch|ctypes): [0-9]+ ranks.*' "$log" | tail -1)
  if [ $rc -eq 0 ] && [[ "$last" == *": verified" ]]; then
    row "$name" PASS "$dt" "$(echo "$last" | cut -c1-200)"
  else
    local why="exit $rc"
    [ $rc -eq 124 ] && why="timed out after ${LIMIT}s"
    row "$name" FAIL "$dt" "$why: $(grep -m1 -E 'FAILED|rror|status [0-9]|moe_torch: rank [0-9]+: |not |refuse' "$log" | cut -c1-200)"
  fi
  tail -n 4 "$log" | cut -c1-300 | sed "s/^/  [$name] /"
}

job cpu-ctypes examples/python/moe_ctypes.py --lib "$LIB"
# The GPU runs (the first through moe_ctypes.py --backend gpu, which hands over to moe_torch.py).
job fp32 examples/python/moe_ctypes.py --lib "$LIB" --backend gpu --dtype fp32 --verbose
job tf32 examples/python/moe_torch.py --lib "$LIB" --dtype tf32 --verbose
job fp32-nccl examples/python/moe_torch.py --lib "$LIB" --dtype fp32 --nccl --verbose
job tf32-devw examples/python/moe_torch.py --lib "$LIB" --dtype tf32 --device-weights --verbose
job bf16 examples/python/moe_torch.py --lib "$LIB" --dtype bf16 --verbose
table
