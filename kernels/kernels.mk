# kernels/kernels.mk: builds the moerun kernel (device code only) to a cubin.
#
# Use from the repository root, either included by the top-level Makefile
#     include kernels/kernels.mk
# or on its own
#     make -f kernels/kernels.mk kernels        # build/moerun.cubin + kernels/moerun.cubin
#     make -f kernels/kernels.mk kernels-sass   # build/moerun.sass (needs cuobjdump + nvdisasm), MMA-loop summary
#     make -f kernels/kernels.mk kernels-info   # the toolchain it found
#     make -f kernels/kernels.mk kernels-ws     # build/ws/moerun.cubin: the MOE_WS build (below)
#     make -f kernels/kernels.mk kernels-probe  # ptxas report and MMA loops of kernels/tools/ws_probe.cu (compile only)
#     make -f kernels/kernels.mk kernels-weight-stream  # build/tools/weight_stream (kernels/tools/weight_stream.cu), for the GPU
#     make -f kernels/kernels.mk kernels-clean
#
# Inputs (all optional; environment or command line):
#   CUDA_HOME     a CUDA toolkit with bin/nvcc (default: kernels/find-toolchain.sh:
#                 $CUDA_HOME, /usr/local/cuda, the nvidia-cuda-nvcc wheel of a venv)
#   NVSHMEM_HOME  an NVSHMEM with include/nvshmem.h and lib/libnvshmem_device.a
#                 (default: the nvidia-nvshmem-cu13 wheel of the same Pythons)
#   VENV          the Python venv to search first (default .venv-cuda)
#   BUILD         output folder (default build)
#   KERNEL_ARCH   default sm_90a (the kernel needs Hopper)
#   NVCC_EXTRA    extra nvcc flags
# Outputs:
#   $(BUILD)/moerun.cubin   device-linked with libnvshmem_device.a
#   $(BUILD)/ptxas.txt      ptxas resource report (-Xptxas -v): registers, smem, spills
#   kernels/moerun.cubin    a copy for `go build -tags cubin` (//go:embed); *.cubin is git-ignored
# The cubin exports moerun_abi_version, moerun_params_size and
# moerun_nvshmem_version[3] (the NVSHMEM device library it was linked with),
# which the host checks before the first launch.

KERNELS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
VENV ?= .venv-cuda
BUILD ?= build
KERNEL_ARCH ?= sm_90a
NVCC_EXTRA ?=
# Registers per thread of every function: the kernel runs 2 blocks of 256
# threads per SM (__launch_bounds__), and its out-of-line GEMM tile function
# (gemm_tc.cuh tc_tile_stage) must fit the same budget.
KERNEL_MAXREG ?= 128

FIND_TOOLCHAIN := bash $(KERNELS_DIR)/find-toolchain.sh
ifeq ($(strip $(CUDA_HOME)),)
CUDA_HOME := $(shell $(FIND_TOOLCHAIN) cuda $(VENV))
endif
ifeq ($(strip $(NVSHMEM_HOME)),)
NVSHMEM_HOME := $(shell $(FIND_TOOLCHAIN) nvshmem $(VENV))
endif
NVCC := $(CUDA_HOME)/bin/nvcc

# moe_kernel.cu: the forward and its helper entries; gemm_bench_*.cu: the
# GEMM-phase benchmark entries (params.h MoeGemmBench). One cubin.
KERNEL_SRCS := $(KERNELS_DIR)/moe_kernel.cu $(KERNELS_DIR)/gemm_bench_tc.cu $(KERNELS_DIR)/gemm_bench_ws.cu
KERNEL_HDRS := $(wildcard $(KERNELS_DIR)/*.cuh) $(KERNELS_DIR)/params.h
KERNEL_OBJS := $(patsubst $(KERNELS_DIR)/%.cu,$(BUILD)/kernels/%.o,$(KERNEL_SRCS))
KERNEL_CUBIN := $(BUILD)/moerun.cubin

NVCC_FLAGS := -rdc=true -gencode arch=$(subst sm_,compute_,$(KERNEL_ARCH)),code=$(KERNEL_ARCH) -O3 -std=c++17 -lineinfo \
	-I$(NVSHMEM_HOME)/include -I$(KERNELS_DIR) -Xptxas -v $(NVCC_EXTRA)

.PHONY: kernels kernels-ws kernels-sass kernels-probe kernels-weight-stream kernels-info kernels-clean kernels-check-toolchain

# The default build also refreshes kernels/moerun.cubin (what -tags cubin
# embeds); a variant build (BUILD=build/x) leaves it alone.
kernels: $(KERNEL_CUBIN) $(if $(filter build,$(BUILD)),$(KERNELS_DIR)/moerun.cubin)

kernels-check-toolchain:
	@test -x "$(NVCC)" || { echo "kernels: no nvcc found (CUDA_HOME='$(CUDA_HOME)'); set CUDA_HOME, install CUDA, or create $(VENV) with nvidia-cuda-nvcc" >&2; exit 1; }
	@test -f "$(NVSHMEM_HOME)/lib/libnvshmem_device.a" || { echo "kernels: no NVSHMEM device library found (NVSHMEM_HOME='$(NVSHMEM_HOME)'); set NVSHMEM_HOME or install nvidia-nvshmem-cu13 in $(VENV)" >&2; exit 1; }

kernels-info: kernels-check-toolchain
	@echo "CUDA_HOME=$(CUDA_HOME)"
	@echo "NVSHMEM_HOME=$(NVSHMEM_HOME)"
	@$(NVCC) --version | tail -2

# The register cap of the forward's objects; the warp-specialised entry takes
# its budget from __launch_bounds__ (one 384-thread block per SM: 168), which
# the cap would cut to 128.
KERNEL_REGCAP := -maxrregcount=$(KERNEL_MAXREG)
$(BUILD)/kernels/gemm_bench_ws.o: KERNEL_REGCAP :=

$(BUILD)/kernels/%.o: $(KERNELS_DIR)/%.cu $(KERNEL_HDRS) | kernels-check-toolchain
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) $(KERNEL_REGCAP) -c $< -o $@ 2> $@.ptxas || { cat $@.ptxas >&2; exit 1; }

$(KERNEL_CUBIN): $(KERNEL_OBJS)
	$(NVCC) -dlink -cubin -arch=$(KERNEL_ARCH) $(KERNEL_OBJS) -L$(NVSHMEM_HOME)/lib -lnvshmem_device -o $@
	@cat $(KERNEL_OBJS:.o=.o.ptxas) > $(BUILD)/ptxas.txt
	@echo "kernels: $@ ($$(wc -c < $@) bytes); ptxas report in $(BUILD)/ptxas.txt:"
	@grep -A3 "entry function 'moerun_moe'" $(BUILD)/ptxas.txt | grep -v "Compiling" || true

$(KERNELS_DIR)/moerun.cubin: $(KERNEL_CUBIN)
	cp $< $@

# The MOE_WS build (kernels/gemm_ws.cuh, common.cuh, expert.cuh): the forward
# at one block per SM with a producer warpgroup and 128 x 256 bf16 tiles (with
# the TMA flag). Faster than the default build for the forwards its tiles take
# (bf16 relu / gelu, not pooled), slower for the rest (docs/benchmarks.md,
# eighth session): `make build` embeds both, and the host launches this one
# for exactly those forwards (internal/gpubackend, kernels.EnvWSCubin).
# Six 32 KB stages make the phase buffer hold four 48 KB WS stages; 168
# registers are one 384-thread block's share.
WS_NVCC_EXTRA := -DMOE_WS=1 -DMOE_TC_STAGES=6
WS_CUBIN := $(BUILD)/ws/moerun.cubin
kernels-ws: kernels-check-toolchain
	@$(MAKE) --no-print-directory -f $(KERNELS_DIR)/kernels.mk $(BUILD)/ws/moerun.cubin BUILD=$(BUILD)/ws \
		KERNEL_MAXREG=168 NVCC_EXTRA="$(WS_NVCC_EXTRA) $(NVCC_EXTRA)"

kernels-sass: $(KERNEL_CUBIN)
	@CUOBJDUMP=$$($(FIND_TOOLCHAIN) tool cuobjdump $(VENV)); NVDISASM=$$($(FIND_TOOLCHAIN) tool nvdisasm $(VENV)); \
	if [ -z "$$CUOBJDUMP" ] || [ -z "$$NVDISASM" ]; then \
		echo "kernels-sass: skipped: cuobjdump and nvdisasm are both needed (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm, or a CUDA toolkit)"; \
	else \
		PATH=$$(dirname $$NVDISASM):$$PATH $$CUOBJDUMP -sass $(KERNEL_CUBIN) > $(BUILD)/moerun.sass && \
		PATH=$$(dirname $$NVDISASM):$$PATH $$CUOBJDUMP -res-usage $(KERNEL_CUBIN) > $(BUILD)/moerun.res && \
		echo "kernels-sass: $(BUILD)/moerun.sass, $(BUILD)/moerun.res; local-memory ops in moerun_moe:" && \
		awk '/Function : moerun_moe/{f=1;next} /Function :/{f=0} f && /LDL|STL/{n++} END{print n+0}' $(BUILD)/moerun.sass && \
		echo "tensor-core loops (the GEMM main loops must show 0 local-memory ops):" && \
		{ python3 $(KERNELS_DIR)/tools/sass_loops.py $(BUILD)/moerun.sass | awk '$$6 < 400' || true; }; \
	fi

# The planned one-block-per-SM tile, compiled only (kernels/tools/ws_probe.cu).
kernels-probe: kernels-check-toolchain
	@mkdir -p $(BUILD)/probe
	$(NVCC) -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 -cubin -Xptxas -v \
		$(KERNELS_DIR)/tools/ws_probe.cu -o $(BUILD)/probe/ws_probe.cubin 2> $(BUILD)/probe/ptxas.txt || { cat $(BUILD)/probe/ptxas.txt >&2; exit 1; }
	@grep -A2 "Function properties for ws_tile" $(BUILD)/probe/ptxas.txt
	@CUOBJDUMP=$$($(FIND_TOOLCHAIN) tool cuobjdump $(VENV)); NVDISASM=$$($(FIND_TOOLCHAIN) tool nvdisasm $(VENV)); \
	if [ -n "$$CUOBJDUMP" ] && [ -n "$$NVDISASM" ]; then \
		PATH=$$(dirname $$NVDISASM):$$PATH $$CUOBJDUMP -sass $(BUILD)/probe/ws_probe.cubin > $(BUILD)/probe/ws_probe.sass && \
		python3 $(KERNELS_DIR)/tools/sass_loops.py $(BUILD)/probe/ws_probe.sass; \
	else echo "kernels-probe: no SASS summary (cuobjdump and nvdisasm are both needed)"; fi

# The weight-stream benchmark (kernels/tools/weight_stream.cu): an executable
# for the GPU machine, build/tools/weight_stream.
kernels-weight-stream: kernels-check-toolchain
	@mkdir -p $(BUILD)/tools
	$(NVCC) -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 $(KERNELS_DIR)/tools/weight_stream.cu \
		-L$(CUDA_HOME)/lib -o $(BUILD)/tools/weight_stream

kernels-clean:
	rm -rf $(BUILD)/ws $(BUILD)/kernels $(BUILD)/tools $(KERNEL_CUBIN) $(BUILD)/ptxas.txt $(BUILD)/moerun.sass $(BUILD)/moerun.res $(KERNELS_DIR)/moerun.cubin
