#!/usr/bin/env bash
# find-toolchain.sh cuda|nvshmem|tool NAME [VENV]
#
# Prints the CUDA or NVSHMEM install to build the kernels with, or the path
# of a CUDA tool (cuobjdump, nvdisasm), or nothing and exit status 1.
#
# CUDA:    $CUDA_HOME if it has bin/nvcc; /usr/local/cuda if it has bin/nvcc;
#          the nvidia-cuda-nvcc wheel (nvidia/cu13) of the first Python that
#          has it: $VENV/bin/python, .venv-cuda/bin/python (repository root),
#          /work/.venv-cuda/bin/python, python3.
# NVSHMEM: $NVSHMEM_HOME if it has include/nvshmem.h and
#          lib/libnvshmem_device.a; /usr/local/nvshmem, /usr/lib/nvshmem; the
#          nvidia-nvshmem-cu13 wheel (nvidia/nvshmem) of the same Pythons.
# tool:    CUDA_HOME/bin/NAME, then NAME on PATH, then the wheel's nvidia/cu13/bin.
set -u
what=${1:-}
arg2=${2:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

pythons() {
  local venv=$1
  [ -n "$venv" ] && { [ -x "$venv/bin/python" ] && echo "$venv/bin/python"; [ -x "$repo/$venv/bin/python" ] && echo "$repo/$venv/bin/python"; }
  [ -x "$repo/.venv-cuda/bin/python" ] && echo "$repo/.venv-cuda/bin/python"
  [ -x /work/.venv-cuda/bin/python ] && echo /work/.venv-cuda/bin/python
  command -v python3 2>/dev/null
}

# wheel_dir MODULE VENV: the folder of a Python package (namespace packages too).
wheel_dir() {
  local mod=$1 venv=$2 py d
  for py in $(pythons "$venv"); do
    d=$("$py" -c "import importlib, sys
try:
    m = importlib.import_module('$mod')
except Exception:
    sys.exit(1)
print(list(m.__path__)[0])" 2>/dev/null) && [ -n "$d" ] && { echo "$d"; return 0; }
  done
  return 1
}

find_cuda() {
  local venv=$1 d
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME"; return 0; fi
  if [ -x /usr/local/cuda/bin/nvcc ]; then echo /usr/local/cuda; return 0; fi
  d=$(wheel_dir nvidia.cu13 "$venv") && [ -x "$d/bin/nvcc" ] && { echo "$d"; return 0; }
  return 1
}

find_nvshmem() {
  local venv=$1 d
  ok() { [ -f "$1/include/nvshmem.h" ] && [ -f "$1/lib/libnvshmem_device.a" ]; }
  if [ -n "${NVSHMEM_HOME:-}" ] && ok "$NVSHMEM_HOME"; then echo "$NVSHMEM_HOME"; return 0; fi
  for d in /usr/local/nvshmem /usr/lib/nvshmem; do ok "$d" && { echo "$d"; return 0; }; done
  d=$(wheel_dir nvidia.nvshmem "$venv") && ok "$d" && { echo "$d"; return 0; }
  return 1
}

find_tool() {
  local name=$1 venv=${2:-} c d
  if c=$(find_cuda "$venv") && [ -x "$c/bin/$name" ]; then echo "$c/bin/$name"; return 0; fi
  command -v "$name" 2>/dev/null && return 0
  d=$(wheel_dir nvidia.cu13 "$venv") && [ -x "$d/bin/$name" ] && { echo "$d/bin/$name"; return 0; }
  return 1
}

case "$what" in
  cuda) find_cuda "$arg2" ;;
  nvshmem) find_nvshmem "$arg2" ;;
  tool) find_tool "$arg2" "${3:-}" ;;
  *) echo "usage: $0 cuda|nvshmem [VENV] | tool NAME [VENV]" >&2; exit 2 ;;
esac
