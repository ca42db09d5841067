// A fake CUDA driver for TestFakeDriver*: it exports the symbols package cuda
// binds, with the prototypes of cudadl.h, and does the work on the host, so
// the Go <-> C plumbing (argument order, conversions, error paths) is tested
// on machines without a GPU. Built by the test with:
//   gcc -shared -fPIC -I.. fakecuda.c -o libfakecuda.so
#include "cudadl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_NOT_READY 600
#define FAKE_NOT_FOUND 500
#define FAKE_INVALID_DEVICE 101
#define FAKE_INVALID_VALUE 1
#define FAKE_OOM 2
#define FAKE_TOO_LARGE 720
#define FAKE_NO_DEVICE 100

static int initialised;

CUresult cuGetErrorName(CUresult e, const char **s) {
	switch (e) {
	case 0: *s = "CUDA_SUCCESS"; return 0;
	case FAKE_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; return 0;
	case FAKE_OOM: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
	case FAKE_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; return 0;
	case FAKE_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; return 0;
	case FAKE_NOT_READY: *s = "CUDA_ERROR_NOT_READY"; return 0;
	case FAKE_TOO_LARGE: *s = "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"; return 0;
	case FAKE_NO_DEVICE: *s = "CUDA_ERROR_NO_DEVICE"; return 0;
	}
	*s = NULL;
	return FAKE_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult e, const char **s) {
	switch (e) {
	case 0: *s = "no error"; return 0;
	case FAKE_INVALID_VALUE: *s = "invalid argument"; return 0;
	case FAKE_OOM: *s = "out of memory"; return 0;
	case FAKE_INVALID_DEVICE: *s = "invalid device ordinal"; return 0;
	case FAKE_NOT_FOUND: *s = "named symbol not found"; return 0;
	case FAKE_NOT_READY: *s = "device not ready"; return 0;
	case FAKE_TOO_LARGE: *s = "too many blocks in cooperative launch"; return 0;
	case FAKE_NO_DEVICE: *s = "no CUDA-capable device is detected"; return 0;
	}
	*s = NULL;
	return FAKE_INVALID_VALUE;
}

// cuInit fails as on a machine whose driver sees no GPU when
// FAKECUDA_NO_DEVICE is set.
CUresult cuInit(unsigned int flags) {
	if (flags != 0) return FAKE_INVALID_VALUE;
	if (getenv("FAKECUDA_NO_DEVICE") != NULL) return FAKE_NO_DEVICE;
	initialised = 1;
	return 0;
}
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }

CUresult cuDeviceGetCount(int *n) { *n = initialised ? 2 : 0; return 0; }
CUresult cuDeviceGet(CUdevice *d, int ordinal) {
	if (ordinal < 0 || ordinal >= 2) return FAKE_INVALID_DEVICE;
	*d = ordinal;
	return 0;
}
CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
	snprintf(name, len, "Fake GPU %d", d);
	return 0;
}
CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) {
	for (int i = 0; i < 16; i++) u->bytes[i] = (char)(0x10 * d + i);
	return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d) { *b = ((size_t)80 << 30) + d; return 0; }
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
	switch (a) {
	case 75: *v = 9; return 0;  // CC major
	case 76: *v = 0; return 0;  // CC minor
	case 16: *v = 132; return 0;  // SMs
	}
	*v = 1000 * d + (int)a;
	return 0;
}
CUresult cuDeviceGetPCIBusId(char *buf, int len, CUdevice d) {
	snprintf(buf, len, "0000:%02x:00.0", 0x18 + d);
	return 0;
}
CUresult cuDeviceCanAccessPeer(int *can, CUdevice d, CUdevice peer) { *can = d != peer; return 0; }

static int ctx_token[2];
static __thread CUcontext current;
CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
	*c = (CUcontext)&ctx_token[d];
	return 0;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return d >= 0 && d < 2 ? 0 : FAKE_INVALID_DEVICE; }
CUresult cuCtxSetCurrent(CUcontext c) { current = c; return 0; }
CUresult cuCtxGetCurrent(CUcontext *c) { *c = current; return 0; }
CUresult cuCtxGetDevice(CUdevice *d) {
	if (current == NULL) return 201;
	*d = (int)((int *)current - ctx_token);
	return 0;
}
CUresult cuCtxSynchronize(void) { return 0; }

// "Device memory" is host memory.
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
	if (n > ((size_t)1 << 40)) return FAKE_OOM;
	void *m = calloc(1, n ? n : 1);
	if (m == NULL) return FAKE_OOM;
	*p = (CUdeviceptr)(uintptr_t)m;
	return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return 0; }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) { *f = 1000; *t = 2000; return 0; }
CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned int v, size_t n) {
	unsigned int *w = (unsigned int *)(uintptr_t)p;
	for (size_t i = 0; i < n; i++) w[i] = v;
	return 0;
}
CUresult cuMemsetD32Async(CUdeviceptr p, unsigned int v, size_t n, CUstream s) {
	(void)s;
	return cuMemsetD32_v2(p, v, n);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) {
	memcpy((void *)(uintptr_t)d, s, n);
	return 0;
}
CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) {
	memcpy(d, (void *)(uintptr_t)s, n);
	return 0;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) {
	memmove((void *)(uintptr_t)d, (void *)(uintptr_t)s, n);
	return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, CUstream st) {
	(void)st;
	return cuMemcpyHtoD_v2(d, s, n);
}
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, CUstream st) {
	(void)st;
	return cuMemcpyDtoH_v2(d, s, n);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) {
	(void)st;
	return cuMemcpyDtoD_v2(d, s, n);
}

// A stream is a counter of queries still to answer "not ready": 3 for a
// new non-blocking stream, 0 for a blocking one.
struct CUstream_st {
	int pending;
	unsigned int flags;
};
CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
	*s = (CUstream)calloc(1, sizeof(struct CUstream_st));
	(*s)->flags = flags;
	(*s)->pending = flags ? 3 : 0;
	return 0;
}
CUresult cuStreamDestroy_v2(CUstream s) { free(s); return 0; }
CUresult cuStreamSynchronize(CUstream s) {
	if (s) s->pending = 0;
	return 0;
}
CUresult cuStreamQuery(CUstream s) {
	if (s && s->pending > 0) {
		s->pending--;
		return FAKE_NOT_READY;
	}
	return 0;
}
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) {
	(void)s;
	(void)e;
	return f == 0 ? 0 : FAKE_INVALID_VALUE;
}

struct CUevent_st {
	float t;
	unsigned int flags;
};
static float clock_ms;
CUresult cuEventCreate(CUevent *e, unsigned int flags) {
	*e = (CUevent)calloc(1, sizeof(struct CUevent_st));
	(*e)->flags = flags;
	return 0;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
	(void)s;
	clock_ms += 1.5f;
	e->t = clock_ms;
	return 0;
}
CUresult cuEventSynchronize(CUevent e) { (void)e; return 0; }
CUresult cuEventQuery(CUevent e) { (void)e; return 0; }
CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b) {
	*ms = b->t - a->t;
	return 0;
}
CUresult cuEventDestroy_v2(CUevent e) { free(e); return 0; }

// Modules: the image must be NUL-terminated text starting with "fake";
// function "kern" takes one 32-byte parameter, "noargs" none, "two" two.
static int module_token;
CUresult cuModuleLoadData(CUmodule *m, const void *image) {
	if (strncmp((const char *)image, "fake", 4) != 0) return 200;
	*m = (CUmodule)&module_token;
	return 0;
}
CUresult cuModuleUnload(CUmodule m) { return m == (CUmodule)&module_token ? 0 : 400; }
static int fn_kern, fn_noargs, fn_two;
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
	(void)m;
	if (strcmp(name, "kern") == 0) *f = (CUfunction)&fn_kern;
	else if (strcmp(name, "noargs") == 0) *f = (CUfunction)&fn_noargs;
	else if (strcmp(name, "two") == 0) *f = (CUfunction)&fn_two;
	else return FAKE_NOT_FOUND;
	return 0;
}
static unsigned long long global_var[4];
CUresult cuModuleGetGlobal_v2(CUdeviceptr *p, size_t *n, CUmodule m, const char *name) {
	(void)m;
	if (strcmp(name, "g") != 0) return FAKE_NOT_FOUND;
	if (p) *p = (CUdeviceptr)(uintptr_t)global_var;
	if (n) *n = sizeof global_var;
	return 0;
}
static int dyn_smem;
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
	(void)f;
	if (a != 8) return FAKE_INVALID_VALUE;
	dyn_smem = v;
	return 0;
}
CUresult cuFuncGetAttribute(int *v, CUfunction_attribute a, CUfunction f) {
	(void)f;
	*v = a == 8 ? dyn_smem : 100 + (int)a;
	return 0;
}
CUresult cuFuncGetParamInfo(CUfunction f, size_t i, size_t *off, size_t *size) {
	size_t n = f == (CUfunction)&fn_kern ? 1 : f == (CUfunction)&fn_two ? 2 : 0;
	if (i >= n) return FAKE_INVALID_VALUE;
	*off = 8 * i;
	*size = f == (CUfunction)&fn_kern ? 32 : 8;
	return 0;
}
CUresult cuFuncGetName(const char **name, CUfunction f) {
	*name = f == (CUfunction)&fn_kern ? "kern" : f == (CUfunction)&fn_two ? "two" : "noargs";
	return 0;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *n, CUfunction f, int block, size_t smem) {
	(void)f;
	*n = (int)(2048 / block) - (int)(smem >> 16);
	return 0;
}

// The "kernel" kern(struct {uint64 out; uint32 a, b; uint64 c, d}) writes
// {cooperative, grid xyz, block xyz, smem, a, b, c, d} as uint64s to out.
static CUresult run(int coop, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                    unsigned by, unsigned bz, unsigned smem, void **params) {
	if (f != (CUfunction)&fn_kern) return params == NULL ? 0 : FAKE_INVALID_VALUE;
	if (coop && gx * gy * gz > 264) return FAKE_TOO_LARGE;
	const unsigned char *arg = (const unsigned char *)params[0];
	unsigned long long out, c, d;
	unsigned int a, b;
	memcpy(&out, arg, 8);
	memcpy(&a, arg + 8, 4);
	memcpy(&b, arg + 12, 4);
	memcpy(&c, arg + 16, 8);
	memcpy(&d, arg + 24, 8);
	unsigned long long *o = (unsigned long long *)(uintptr_t)out;
	o[0] = coop;
	o[1] = gx, o[2] = gy, o[3] = gz;
	o[4] = bx, o[5] = by, o[6] = bz;
	o[7] = smem;
	o[8] = a, o[9] = b, o[10] = c, o[11] = d;
	return 0;
}
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem,
                        CUstream s, void **params, void **extra) {
	(void)s;
	if (extra != NULL) return FAKE_INVALID_VALUE;
	return run(0, f, gx, gy, gz, bx, by, bz, smem, params);
}
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                   unsigned int bx, unsigned int by, unsigned int bz,
                                   unsigned int smem, CUstream s, void **params) {
	(void)s;
	return run(1, f, gx, gy, gz, bx, by, bz, smem, params);
}

static int graph_token, exec_token, capturing;
CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode m) {
	(void)s;
	if (m < 0 || m > 2) return FAKE_INVALID_VALUE;
	capturing = 1;
	return 0;
}
CUresult cuStreamEndCapture(CUstream s, CUgraph *g) {
	(void)s;
	if (!capturing) return FAKE_INVALID_VALUE;
	capturing = 0;
	*g = (CUgraph)&graph_token;
	return 0;
}
CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
	if (g != (CUgraph)&graph_token || flags != 0) return FAKE_INVALID_VALUE;
	*e = (CUgraphExec)&exec_token;
	return 0;
}
CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
	(void)s;
	return e == (CUgraphExec)&exec_token ? 0 : FAKE_INVALID_VALUE;
}
CUresult cuGraphDestroy(CUgraph g) { return g == (CUgraph)&graph_token ? 0 : FAKE_INVALID_VALUE; }
CUresult cuGraphExecDestroy(CUgraphExec e) {
	return e == (CUgraphExec)&exec_token ? 0 : FAKE_INVALID_VALUE;
}
