#!/usr/bin/env bash
# Installs what moerun needs to build and test on a fresh Debian/Ubuntu
# machine: Open MPI (Debian packages), the CUDA 13.0 compiler and NVSHMEM
# 3.4.5 device library (Python wheels, in .venv-cuda; no GPU needed to compile
# the kernel) and the Go modules. Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
pkg-config --exists ompi 2>/dev/null || need_apt+=(libopenmpi-dev pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

VENV=${VENV:-.venv-cuda}
CUDA_PINS=("cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.*" "nvidia-nvshmem-cu13==3.4.5")
if [ ! -x "$VENV/lib/python3"*/site-packages/nvidia/cu13/bin/nvcc ] 2>/dev/null || \
   [ ! -f "$(ls -d "$VENV"/lib/python3*/site-packages/nvidia/nvshmem/lib 2>/dev/null | head -1)/libnvshmem_device.a" ]; then
  echo "setup: installing the CUDA 13.0 compiler and NVSHMEM 3.4.5 into $VENV (Python wheels)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${CUDA_PINS[@]}"
fi

# numpy for the Python embedding example's test (examples/python).
"$VENV/bin/python" -c "import numpy" 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check "numpy>=1.26"

command -v go >/dev/null 2>&1 || { echo "setup: Go 1.26 or newer is required (https://go.dev/dl)" >&2; exit 1; }
go mod download
echo "setup: ready (mpirun: $(command -v mpirun); nvcc: $(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc))"
