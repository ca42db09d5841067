# moerun build. `make` builds bin/moerun (MPI, with the kernel embedded when
# the CUDA toolchain is found), `make run` runs the main job, `make test` runs
# every test, `make dist` packs a binary for GPU nodes that have no Go.
# Run scripts/setup.sh once on a fresh machine first.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
# Go's build cache keys a cgo package on the files in its own directory only,
# so kernels/internal/cparams (which includes ../../params.h) would be reused
# stale after params.h changes: CI once failed on a constant it had compiled
# from an older header. A digest of params.h in the cgo flags is part of the
# cache key, so every edit of the header recompiles what includes it.
# (cksum: POSIX, on every system; override: also when CGO_CPPFLAGS is given on
# make's command line.)
PARAMS_H_SUM := $(firstword $(shell cksum kernels/params.h))
override CGO_CPPFLAGS += -DMOE_PARAMS_H_SUM=$(PARAMS_H_SUM)
export CGO_CPPFLAGS
LDFLAGS  := -X github.com/moerun/moerun/internal/version.Version=$(VERSION)
BIN      := bin/moerun
GOFILES  := $(shell find . -name '*.go' -not -path './.venv*' 2>/dev/null)

# The kernel build (kernels/kernels.mk) defines the `kernels` target and
# KERNEL_CUBIN, the device-linked cubin.
include kernels/kernels.mk

.PHONY: all build build-nocubin run test lint dist clean capi examples

all: build

# The binary with the kernels embedded (-tags cubin: the default build and the
# MOE_WS build, which runs the bf16 forwards its tiles take) and MPI (-tags mpi).
build: kernels kernels-ws
	cp $(KERNEL_CUBIN) kernels/moerun.cubin
	cp $(WS_CUBIN) kernels/moerun_ws.cubin
	$(GO) build -buildvcs=auto -tags "mpi cubin" -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/moerun

# Without CUDA: the binary looks for the cubin next to itself, in
# MOERUN_CUBIN or --cubin, and the CPU backend needs none.
build-nocubin:
	$(GO) build -buildvcs=auto -tags mpi -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/moerun

# The main job: the GPU backend on every local GPU when there are GPUs; the
# CPU backend on 4 ranks with a small verified config otherwise.
run: build
	@if [ -e /dev/nvidia0 ] || [ -e /dev/nvidiactl ]; then \
	  set -x; $(BIN) launch -- bench --verify; \
	else \
	  set -x; $(BIN) launch -n 4 -- bench --backend cpu --tokens 0,1,37,64 --hidden 64 \
	    --ffn-hidden 128 --experts 8 --topk 2 --ffn relu,swiglu --verify --iters 5 --warmup 1; \
	fi

# The C ABI: build/libmoerun.so with capi/moerun.h (cgo's own header is
# dropped), with the kernel embedded (-tags cubin) as `build` does; the
# library also finds build/moerun.cubin beside itself.
capi: kernels kernels-ws
	cp $(KERNEL_CUBIN) kernels/moerun.cubin
	cp $(WS_CUBIN) kernels/moerun_ws.cubin
	$(GO) build -buildvcs=auto -buildmode=c-shared -tags "mpi cubin" -ldflags "$(LDFLAGS)" -o build/libmoerun.so ./capi
	rm -f build/libmoerun.h

# The embedding examples: the Go driver and the C example (mpicc).
examples: capi
	$(GO) build -buildvcs=auto -tags mpi -ldflags "$(LDFLAGS)" -o build/driver ./examples/driver
	mpicc -O2 -std=c11 -Wall -I capi examples/c/moe_example.c -L build -lmoerun -Wl,-rpath,'$$ORIGIN' -lm -o build/moe_example

lint:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags mpi ./...
	$(GO) build ./...

# The Python example's test uses the numpy that scripts/setup.sh puts in $(VENV).
VENV ?= .venv-cuda
test: lint kernels kernels-ws build examples
	MOERUN_PYTHON=$(abspath $(VENV))/bin/python $(GO) test -count=1 -tags mpi ./...
	$(GO) test -race -count=1 ./...   # the race detector: a data race once failed CI only by chance

dist: build
	mkdir -p dist
	tar -C bin -czf dist/moerun-$(VERSION)-linux-amd64.tar.gz moerun
	@echo "dist/moerun-$(VERSION)-linux-amd64.tar.gz: one binary with the kernel embedded; needs libmpi.so.40 (Open MPI 4), the CUDA driver and NVSHMEM 3.4.5 on the node"

clean:
	rm -rf bin build dist kernels/moerun.cubin kernels/moerun_ws.cubin
