package cuda

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// cudaInclude finds a directory holding the real cuda.h: $MOERUN_CUDA_INCLUDE,
// $CUDA_HOME/include, the project's .venv-cuda (scripts/setup.sh), or
// /usr/local/cuda/include. The tests that need it skip when there is none.
func cudaInclude(t *testing.T) string {
	t.Helper()
	var cands []string
	if v := os.Getenv("MOERUN_CUDA_INCLUDE"); v != "" {
		cands = append(cands, v)
	}
	if v := os.Getenv("CUDA_HOME"); v != "" {
		cands = append(cands, filepath.Join(v, "include"))
	}
	if root, err := filepath.Abs("../.."); err == nil {
		m, _ := filepath.Glob(filepath.Join(root, ".venv-cuda/lib/python3*/site-packages/nvidia/cu13/include"))
		cands = append(cands, m...)
	}
	cands = append(cands, "/usr/local/cuda/include")
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(c, "cuda.h")); err == nil {
			return c
		}
	}
	t.Skipf("no cuda.h (looked in %s; run scripts/setup.sh or set MOERUN_CUDA_INCLUDE)", strings.Join(cands, ", "))
	return ""
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: %v", name, err)
	}
	return p
}

// TestPrototypesMatchCudaH compiles cudadl.h after the real cuda.h and checks,
// for every function the package binds, that
//   - the exported name dlsym looks up first is the one cuda.h's #defines map
//     the API name to (cuMemAlloc -> cuMemAlloc_v2, cuGraphInstantiate ->
//     cuGraphInstantiateWithFlags, ...), and
//   - the hand-written pfn_ type is exactly the type of the real function;
//
// and that the enum values this package hard-codes equal cuda.h's.
func TestPrototypesMatchCudaH(t *testing.T) {
	inc := cudaInclude(t)
	gcc := needTool(t, "gcc")

	type constant struct {
		goValue int64
		cName   string
	}
	consts := []constant{
		{int64(AttrMaxThreadsPerBlock), "CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK"},
		{int64(AttrMaxSharedMemoryPerBlock), "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK"},
		{int64(AttrWarpSize), "CU_DEVICE_ATTRIBUTE_WARP_SIZE"},
		{int64(AttrMaxRegistersPerBlock), "CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK"},
		{int64(AttrClockRate), "CU_DEVICE_ATTRIBUTE_CLOCK_RATE"},
		{int64(AttrMultiprocessorCount), "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"},
		{int64(AttrPCIBusID), "CU_DEVICE_ATTRIBUTE_PCI_BUS_ID"},
		{int64(AttrPCIDeviceID), "CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID"},
		{int64(AttrMemoryClockRate), "CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE"},
		{int64(AttrGlobalMemoryBusWidth), "CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH"},
		{int64(AttrL2CacheSize), "CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE"},
		{int64(AttrMaxThreadsPerMultiprocessor), "CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR"},
		{int64(AttrUnifiedAddressing), "CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING"},
		{int64(AttrPCIDomainID), "CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID"},
		{int64(AttrComputeCapabilityMajor), "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR"},
		{int64(AttrComputeCapabilityMinor), "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR"},
		{int64(AttrMaxSharedMemoryPerMultiprocessor), "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"},
		{int64(AttrMaxRegistersPerMultiprocessor), "CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR"},
		{int64(AttrCooperativeLaunch), "CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH"},
		{int64(AttrMaxSharedMemoryPerBlockOptin), "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"},
		{int64(AttrMaxBlocksPerMultiprocessor), "CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR"},
		{int64(AttrReservedSharedMemoryPerBlock), "CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK"},
		{int64(AttrMulticastSupported), "CU_DEVICE_ATTRIBUTE_MULTICAST_SUPPORTED"},
		{int64(FuncMaxThreadsPerBlock), "CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK"},
		{int64(FuncSharedSizeBytes), "CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES"},
		{int64(FuncConstSizeBytes), "CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES"},
		{int64(FuncLocalSizeBytes), "CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES"},
		{int64(FuncNumRegs), "CU_FUNC_ATTRIBUTE_NUM_REGS"},
		{int64(FuncPTXVersion), "CU_FUNC_ATTRIBUTE_PTX_VERSION"},
		{int64(FuncBinaryVersion), "CU_FUNC_ATTRIBUTE_BINARY_VERSION"},
		{int64(FuncCacheModeCA), "CU_FUNC_ATTRIBUTE_CACHE_MODE_CA"},
		{int64(FuncMaxDynamicSharedSizeBytes), "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES"},
		{int64(FuncPreferredSharedMemoryCarveout), "CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT"},
		{int64(CaptureModeGlobal), "CU_STREAM_CAPTURE_MODE_GLOBAL"},
		{int64(CaptureModeThreadLocal), "CU_STREAM_CAPTURE_MODE_THREAD_LOCAL"},
		{int64(CaptureModeRelaxed), "CU_STREAM_CAPTURE_MODE_RELAXED"},
		{int64(EventDefault), "CU_EVENT_DEFAULT"},
		{int64(EventBlockingSync), "CU_EVENT_BLOCKING_SYNC"},
		{int64(EventDisableTiming), "CU_EVENT_DISABLE_TIMING"},
		{1, "CU_STREAM_NON_BLOCKING"}, // StreamCreate(true)
		{8, "sizeof(CUdeviceptr)"},
		{16, "sizeof(CUuuid)"},
		{int64(TensorFloat32), "CU_TENSOR_MAP_DATA_TYPE_FLOAT32"},
		{int64(TensorBFloat16), "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16"},
		{tensorSwizzle128B, "CU_TENSOR_MAP_SWIZZLE_128B"},
		{tensorL2Promote256B, "CU_TENSOR_MAP_L2_PROMOTION_L2_256B"},
		{int64(unsafe.Sizeof(TensorMap{})), "sizeof(CUtensorMap)"},
		{4, "sizeof(CUresult)"},
		{launchAttrCooperative, "CU_LAUNCH_ATTRIBUTE_COOPERATIVE"},
		{launchAttrClusterDimension, "CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION"},
		{launchAttributeSize, "sizeof(CUlaunchAttribute)"},
		{launchAttributeValueSize, "sizeof(CUlaunchAttributeValue)"},
		{8, "_Alignof(CUlaunchAttributeValue)"},
		{launchConfigSize, "sizeof(CUlaunchConfig)"},
		{4, "sizeof(CUdevice)"},
	}
	for code, name := range resultNames {
		consts = append(consts, constant{int64(code), name})
	}

	var src strings.Builder
	src.WriteString("#include <cuda.h>\n#include <stdio.h>\n#define MOERUN_HAVE_CUDA_H 1\n#include \"cudadl.h\"\n")
	src.WriteString("#define STR2(x) #x\n#define STR(x) STR2(x)\n")
	for _, s := range symbols {
		fmt.Fprintf(&src, "_Static_assert(__builtin_types_compatible_p(pfn_%s, __typeof__(&%s)), \"prototype of %s\");\n",
			s.names[0], s.names[0], s.names[0])
	}
	src.WriteString("int main(void) {\n")
	for _, s := range symbols {
		fmt.Fprintf(&src, "\tprintf(\"sym %s %%s\\n\", STR(%s));\n", s.api, s.api)
	}
	for _, c := range consts {
		fmt.Fprintf(&src, "\tprintf(\"const %s %%lld\\n\", (long long)(%s));\n", strings.ReplaceAll(c.cName, " ", ""), c.cName)
	}
	src.WriteString("\treturn 0;\n}\n")

	dir := t.TempDir()
	cfile := filepath.Join(dir, "check.c")
	if err := os.WriteFile(cfile, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "check")
	pkgDir, _ := filepath.Abs(".")
	cmd := exec.Command(gcc, "-std=gnu11", "-Wall", "-Werror", "-Wno-deprecated-declarations",
		"-I", inc, "-I", pkgDir, cfile, "-o", exe, "-ldl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cudadl.h does not match %s/cuda.h:\n%s", inc, out)
	}
	out, err := exec.Command(exe).Output()
	if err != nil {
		t.Fatal(err)
	}

	wantSym := map[string]string{}
	for _, s := range symbols {
		wantSym[s.api] = s.names[0]
	}
	wantConst := map[string]int64{}
	for _, c := range consts {
		wantConst[strings.ReplaceAll(c.cName, " ", "")] = c.goValue
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("bad line %q", line)
		}
		switch f[0] {
		case "sym":
			if wantSym[f[1]] != f[2] {
				t.Errorf("cuda.h maps %s to %s; the package binds %s first", f[1], f[2], wantSym[f[1]])
			}
		case "const":
			v, _ := strconv.ParseInt(f[2], 10, 64)
			if wantConst[f[1]] != v {
				t.Errorf("%s is %d in cuda.h, %d in the package", f[1], v, wantConst[f[1]])
			}
		}
	}
	t.Logf("checked %d prototypes and %d constants against %s/cuda.h", len(symbols), len(consts), inc)
}
