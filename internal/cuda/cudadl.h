// Hand-written declarations of the CUDA driver API functions that package cuda
// binds through dlopen/dlsym, and one C trampoline per function that calls it
// through the pointer dlsym returned.
//
// cuda.h is NOT included: the Go build must work where CUDA is not installed.
// The types below copy cuda.h (CUDA 13.0) exactly where they cross the ABI.
// TestPrototypesMatchCudaH compiles this file after the real cuda.h (defining
// MOERUN_HAVE_CUDA_H) and checks that every pfn_ type is the type of the real
// function, and that each exported name is the one cuda.h's #defines map the
// API name to (cuMemAlloc -> cuMemAlloc_v2, ...).
#ifndef MOERUN_CUDADL_H
#define MOERUN_CUDADL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef MOERUN_HAVE_CUDA_H
typedef int CUresult;                   // enum cudaError_enum
typedef int CUdevice;                   // CUdevice_v1
typedef unsigned long long CUdeviceptr; // CUdeviceptr_v2 on LP64
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
typedef int CUdevice_attribute;   // enum CUdevice_attribute_enum
typedef int CUfunction_attribute; // enum CUfunction_attribute_enum
typedef int CUstreamCaptureMode;  // enum CUstreamCaptureMode_enum
typedef struct CUuuid_st {
	char bytes[16];
} CUuuid;
typedef uint32_t cuuint32_t;
typedef uint64_t cuuint64_t;
typedef struct CUtensorMap_st {
	_Alignas(128) cuuint64_t opaque[16];
} CUtensorMap;
typedef int CUtensorMapDataType;    // enum CUtensorMapDataType_enum
typedef int CUtensorMapInterleave;  // enum CUtensorMapInterleave_enum
typedef int CUtensorMapSwizzle;     // enum CUtensorMapSwizzle_enum
typedef int CUtensorMapL2promotion; // enum CUtensorMapL2promotion_enum
typedef int CUtensorMapFloatOOBfill; // enum CUtensorMapFloatOOBfill_enum
typedef int CUlaunchAttributeID; // enum CUlaunchAttributeID_enum
// cuda.h's union has more members, pointers among them: 64 bytes, 8-aligned.
typedef union CUlaunchAttributeValue_union {
	char pad[64];
	void *align_;
	int cooperative;
	struct {
		unsigned int x;
		unsigned int y;
		unsigned int z;
	} clusterDim;
} CUlaunchAttributeValue;
typedef struct CUlaunchAttribute_st {
	CUlaunchAttributeID id;
	char pad[8 - sizeof(CUlaunchAttributeID)];
	CUlaunchAttributeValue value;
} CUlaunchAttribute;
typedef struct CUlaunchConfig_st {
	unsigned int gridDimX;
	unsigned int gridDimY;
	unsigned int gridDimZ;
	unsigned int blockDimX;
	unsigned int blockDimY;
	unsigned int blockDimZ;
	unsigned int sharedMemBytes;
	CUstream hStream;
	CUlaunchAttribute *attrs;
	unsigned int numAttrs;
} CUlaunchConfig;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#endif

// Launch attribute ids (CUlaunchAttributeID) that mr_launch_ex sets; their
// own names so that TestPrototypesMatchCudaH sees them next to cuda.h's.
#define MR_LAUNCH_ATTRIBUTE_COOPERATIVE 2       // CU_LAUNCH_ATTRIBUTE_COOPERATIVE
#define MR_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION 4 // CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION

// The offsets mr_launch_ex relies on, asserted of whichever declarations are
// in use: ours in the Go build, cuda.h's in TestPrototypesMatchCudaH (which
// also compares the sizes).
_Static_assert(offsetof(CUlaunchAttribute, value) == 8, "CUlaunchAttribute.value");
_Static_assert(offsetof(CUlaunchAttributeValue, clusterDim.z) == 8, "CUlaunchAttributeValue.clusterDim");
_Static_assert(offsetof(CUlaunchConfig, sharedMemBytes) == 24, "CUlaunchConfig.sharedMemBytes");
_Static_assert(offsetof(CUlaunchConfig, hStream) == 32, "CUlaunchConfig.hStream");
_Static_assert(offsetof(CUlaunchConfig, attrs) == 40, "CUlaunchConfig.attrs");
_Static_assert(offsetof(CUlaunchConfig, numAttrs) == 48, "CUlaunchConfig.numAttrs");

// Error handling and initialisation.
typedef CUresult (*pfn_cuGetErrorName)(CUresult, const char **);
typedef CUresult (*pfn_cuGetErrorString)(CUresult, const char **);
typedef CUresult (*pfn_cuInit)(unsigned int);
typedef CUresult (*pfn_cuDriverGetVersion)(int *);

// Devices.
typedef CUresult (*pfn_cuDeviceGetCount)(int *);
typedef CUresult (*pfn_cuDeviceGet)(CUdevice *, int);
typedef CUresult (*pfn_cuDeviceGetName)(char *, int, CUdevice);
typedef CUresult (*pfn_cuDeviceGetUuid_v2)(CUuuid *, CUdevice);
typedef CUresult (*pfn_cuDeviceTotalMem_v2)(size_t *, CUdevice);
typedef CUresult (*pfn_cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
typedef CUresult (*pfn_cuDeviceGetPCIBusId)(char *, int, CUdevice);
typedef CUresult (*pfn_cuDeviceCanAccessPeer)(int *, CUdevice, CUdevice);

// Contexts.
typedef CUresult (*pfn_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
typedef CUresult (*pfn_cuDevicePrimaryCtxRelease_v2)(CUdevice);
typedef CUresult (*pfn_cuCtxSetCurrent)(CUcontext);
typedef CUresult (*pfn_cuCtxGetCurrent)(CUcontext *);
typedef CUresult (*pfn_cuCtxGetDevice)(CUdevice *);
typedef CUresult (*pfn_cuCtxSynchronize)(void);

// Memory.
typedef CUresult (*pfn_cuMemAlloc_v2)(CUdeviceptr *, size_t);
typedef CUresult (*pfn_cuMemFree_v2)(CUdeviceptr);
typedef CUresult (*pfn_cuMemGetInfo_v2)(size_t *, size_t *);
typedef CUresult (*pfn_cuMemsetD32_v2)(CUdeviceptr, unsigned int, size_t);
typedef CUresult (*pfn_cuMemsetD32Async)(CUdeviceptr, unsigned int, size_t, CUstream);
typedef CUresult (*pfn_cuMemcpyHtoD_v2)(CUdeviceptr, const void *, size_t);
typedef CUresult (*pfn_cuMemcpyDtoH_v2)(void *, CUdeviceptr, size_t);
typedef CUresult (*pfn_cuMemcpyDtoD_v2)(CUdeviceptr, CUdeviceptr, size_t);
typedef CUresult (*pfn_cuMemcpyHtoDAsync_v2)(CUdeviceptr, const void *, size_t, CUstream);
typedef CUresult (*pfn_cuMemcpyDtoHAsync_v2)(void *, CUdeviceptr, size_t, CUstream);
typedef CUresult (*pfn_cuMemcpyDtoDAsync_v2)(CUdeviceptr, CUdeviceptr, size_t, CUstream);

// Streams and events.
typedef CUresult (*pfn_cuStreamCreate)(CUstream *, unsigned int);
typedef CUresult (*pfn_cuStreamDestroy_v2)(CUstream);
typedef CUresult (*pfn_cuStreamSynchronize)(CUstream);
typedef CUresult (*pfn_cuStreamQuery)(CUstream);
typedef CUresult (*pfn_cuStreamWaitEvent)(CUstream, CUevent, unsigned int);
typedef CUresult (*pfn_cuEventCreate)(CUevent *, unsigned int);
typedef CUresult (*pfn_cuEventRecord)(CUevent, CUstream);
typedef CUresult (*pfn_cuEventSynchronize)(CUevent);
typedef CUresult (*pfn_cuEventQuery)(CUevent);
typedef CUresult (*pfn_cuEventElapsedTime_v2)(float *, CUevent, CUevent);
typedef CUresult (*pfn_cuEventDestroy_v2)(CUevent);

// Modules, functions, launches.
typedef CUresult (*pfn_cuModuleLoadData)(CUmodule *, const void *);
typedef CUresult (*pfn_cuModuleUnload)(CUmodule);
typedef CUresult (*pfn_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
typedef CUresult (*pfn_cuModuleGetGlobal_v2)(CUdeviceptr *, size_t *, CUmodule, const char *);
typedef CUresult (*pfn_cuFuncSetAttribute)(CUfunction, CUfunction_attribute, int);
typedef CUresult (*pfn_cuFuncGetAttribute)(int *, CUfunction_attribute, CUfunction);
typedef CUresult (*pfn_cuFuncGetParamInfo)(CUfunction, size_t, size_t *, size_t *);
typedef CUresult (*pfn_cuFuncGetName)(const char **, CUfunction);
typedef CUresult (*pfn_cuOccupancyMaxActiveBlocksPerMultiprocessor)(int *, CUfunction, int, size_t);
typedef CUresult (*pfn_cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int,
                                       unsigned int, unsigned int, unsigned int, unsigned int,
                                       CUstream, void **, void **);
typedef CUresult (*pfn_cuLaunchCooperativeKernel)(CUfunction, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, CUstream, void **);
// Launch attributes: cooperative and cluster launches (CUDA 11.8 and newer).
typedef CUresult (*pfn_cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*pfn_cuOccupancyMaxActiveClusters)(int *, CUfunction, const CUlaunchConfig *);

// Tensor maps (TMA descriptors; CUDA 12.0 and newer).
typedef CUresult (*pfn_cuTensorMapEncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                              const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                              const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                              CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// Graphs.
typedef CUresult (*pfn_cuStreamBeginCapture_v2)(CUstream, CUstreamCaptureMode);
typedef CUresult (*pfn_cuStreamEndCapture)(CUstream, CUgraph *);
typedef CUresult (*pfn_cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*pfn_cuGraphLaunch)(CUgraphExec, CUstream);
typedef CUresult (*pfn_cuGraphDestroy)(CUgraph);
typedef CUresult (*pfn_cuGraphExecDestroy)(CUgraphExec);

// ---- dlopen ----------------------------------------------------------------

#include <dlfcn.h>
#include <stdio.h>

// mr_dlopen opens path and, on failure, copies dlerror() into errbuf in the
// same C call (dlerror's text is per thread; a goroutine can change threads
// between two cgo calls).
static inline void *mr_dlopen(const char *path, char *errbuf, size_t n) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL && n > 0) {
		const char *e = dlerror();
		snprintf(errbuf, n, "%s", e ? e : "unknown dlopen error");
	}
	return h;
}

// mr_dlopen_loaded returns a handle of path when the process has loaded it
// already (RTLD_NOLOAD: it never loads it), else NULL.
static inline void *mr_dlopen_loaded(const char *path) {
	return dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
}

// ---- trampolines -----------------------------------------------------------
// Handles cross the cgo boundary as uintptr_t so that Go never converts an
// integer to unsafe.Pointer.

#define MR_H(T, h) ((T)(uintptr_t)(h))

static inline CUresult mr_cuGetErrorName(void *f, CUresult e, const char **s) {
	return ((pfn_cuGetErrorName)f)(e, s);
}
static inline CUresult mr_cuGetErrorString(void *f, CUresult e, const char **s) {
	return ((pfn_cuGetErrorString)f)(e, s);
}
static inline CUresult mr_cuInit(void *f, unsigned int flags) { return ((pfn_cuInit)f)(flags); }
static inline CUresult mr_cuDriverGetVersion(void *f, int *v) {
	return ((pfn_cuDriverGetVersion)f)(v);
}

static inline CUresult mr_cuDeviceGetCount(void *f, int *n) {
	return ((pfn_cuDeviceGetCount)f)(n);
}
static inline CUresult mr_cuDeviceGet(void *f, CUdevice *d, int ordinal) {
	return ((pfn_cuDeviceGet)f)(d, ordinal);
}
static inline CUresult mr_cuDeviceGetName(void *f, char *name, int len, CUdevice d) {
	return ((pfn_cuDeviceGetName)f)(name, len, d);
}
static inline CUresult mr_cuDeviceGetUuid(void *f, unsigned char *out16, CUdevice d) {
	CUuuid u;
	memset(&u, 0, sizeof u);
	CUresult r = ((pfn_cuDeviceGetUuid_v2)f)(&u, d);
	memcpy(out16, u.bytes, 16);
	return r;
}
static inline CUresult mr_cuDeviceTotalMem(void *f, size_t *bytes, CUdevice d) {
	return ((pfn_cuDeviceTotalMem_v2)f)(bytes, d);
}
static inline CUresult mr_cuDeviceGetAttribute(void *f, int *v, int attr, CUdevice d) {
	return ((pfn_cuDeviceGetAttribute)f)(v, (CUdevice_attribute)attr, d);
}
static inline CUresult mr_cuDeviceGetPCIBusId(void *f, char *buf, int len, CUdevice d) {
	return ((pfn_cuDeviceGetPCIBusId)f)(buf, len, d);
}
static inline CUresult mr_cuDeviceCanAccessPeer(void *f, int *can, CUdevice d, CUdevice peer) {
	return ((pfn_cuDeviceCanAccessPeer)f)(can, d, peer);
}

static inline CUresult mr_cuDevicePrimaryCtxRetain(void *f, uintptr_t *ctx, CUdevice d) {
	CUcontext c = NULL;
	CUresult r = ((pfn_cuDevicePrimaryCtxRetain)f)(&c, d);
	*ctx = (uintptr_t)c;
	return r;
}
static inline CUresult mr_cuDevicePrimaryCtxRelease(void *f, CUdevice d) {
	return ((pfn_cuDevicePrimaryCtxRelease_v2)f)(d);
}
static inline CUresult mr_cuCtxSetCurrent(void *f, uintptr_t ctx) {
	return ((pfn_cuCtxSetCurrent)f)(MR_H(CUcontext, ctx));
}
static inline CUresult mr_cuCtxGetCurrent(void *f, uintptr_t *ctx) {
	CUcontext c = NULL;
	CUresult r = ((pfn_cuCtxGetCurrent)f)(&c);
	*ctx = (uintptr_t)c;
	return r;
}
static inline CUresult mr_cuCtxGetDevice(void *f, CUdevice *d) {
	return ((pfn_cuCtxGetDevice)f)(d);
}
static inline CUresult mr_cuCtxSynchronize(void *f) { return ((pfn_cuCtxSynchronize)f)(); }

static inline CUresult mr_cuMemAlloc(void *f, CUdeviceptr *p, size_t n) {
	return ((pfn_cuMemAlloc_v2)f)(p, n);
}
static inline CUresult mr_cuMemFree(void *f, CUdeviceptr p) { return ((pfn_cuMemFree_v2)f)(p); }
static inline CUresult mr_cuMemGetInfo(void *f, size_t *free_, size_t *total) {
	return ((pfn_cuMemGetInfo_v2)f)(free_, total);
}
static inline CUresult mr_cuMemsetD32(void *f, CUdeviceptr p, unsigned int v, size_t n) {
	return ((pfn_cuMemsetD32_v2)f)(p, v, n);
}
static inline CUresult mr_cuMemsetD32Async(void *f, CUdeviceptr p, unsigned int v, size_t n,
                                           uintptr_t s) {
	return ((pfn_cuMemsetD32Async)f)(p, v, n, MR_H(CUstream, s));
}
static inline CUresult mr_cuMemcpyHtoD(void *f, CUdeviceptr dst, const void *src, size_t n) {
	return ((pfn_cuMemcpyHtoD_v2)f)(dst, src, n);
}
static inline CUresult mr_cuMemcpyDtoH(void *f, void *dst, CUdeviceptr src, size_t n) {
	return ((pfn_cuMemcpyDtoH_v2)f)(dst, src, n);
}
static inline CUresult mr_cuMemcpyDtoD(void *f, CUdeviceptr dst, CUdeviceptr src, size_t n) {
	return ((pfn_cuMemcpyDtoD_v2)f)(dst, src, n);
}
static inline CUresult mr_cuMemcpyHtoDAsync(void *f, CUdeviceptr dst, const void *src, size_t n,
                                            uintptr_t s) {
	return ((pfn_cuMemcpyHtoDAsync_v2)f)(dst, src, n, MR_H(CUstream, s));
}
static inline CUresult mr_cuMemcpyDtoHAsync(void *f, void *dst, CUdeviceptr src, size_t n,
                                            uintptr_t s) {
	return ((pfn_cuMemcpyDtoHAsync_v2)f)(dst, src, n, MR_H(CUstream, s));
}
static inline CUresult mr_cuMemcpyDtoDAsync(void *f, CUdeviceptr dst, CUdeviceptr src, size_t n,
                                            uintptr_t s) {
	return ((pfn_cuMemcpyDtoDAsync_v2)f)(dst, src, n, MR_H(CUstream, s));
}

static inline CUresult mr_cuStreamCreate(void *f, uintptr_t *s, unsigned int flags) {
	CUstream h = NULL;
	CUresult r = ((pfn_cuStreamCreate)f)(&h, flags);
	*s = (uintptr_t)h;
	return r;
}
static inline CUresult mr_cuStreamDestroy(void *f, uintptr_t s) {
	return ((pfn_cuStreamDestroy_v2)f)(MR_H(CUstream, s));
}
static inline CUresult mr_cuStreamSynchronize(void *f, uintptr_t s) {
	return ((pfn_cuStreamSynchronize)f)(MR_H(CUstream, s));
}
static inline CUresult mr_cuStreamQuery(void *f, uintptr_t s) {
	return ((pfn_cuStreamQuery)f)(MR_H(CUstream, s));
}
static inline CUresult mr_cuStreamWaitEvent(void *f, uintptr_t s, uintptr_t ev) {
	return ((pfn_cuStreamWaitEvent)f)(MR_H(CUstream, s), MR_H(CUevent, ev), 0);
}
static inline CUresult mr_cuEventCreate(void *f, uintptr_t *ev, unsigned int flags) {
	CUevent h = NULL;
	CUresult r = ((pfn_cuEventCreate)f)(&h, flags);
	*ev = (uintptr_t)h;
	return r;
}
static inline CUresult mr_cuEventRecord(void *f, uintptr_t ev, uintptr_t s) {
	return ((pfn_cuEventRecord)f)(MR_H(CUevent, ev), MR_H(CUstream, s));
}
static inline CUresult mr_cuEventSynchronize(void *f, uintptr_t ev) {
	return ((pfn_cuEventSynchronize)f)(MR_H(CUevent, ev));
}
static inline CUresult mr_cuEventQuery(void *f, uintptr_t ev) {
	return ((pfn_cuEventQuery)f)(MR_H(CUevent, ev));
}
static inline CUresult mr_cuEventElapsedTime(void *f, float *ms, uintptr_t a, uintptr_t b) {
	return ((pfn_cuEventElapsedTime_v2)f)(ms, MR_H(CUevent, a), MR_H(CUevent, b));
}
static inline CUresult mr_cuEventDestroy(void *f, uintptr_t ev) {
	return ((pfn_cuEventDestroy_v2)f)(MR_H(CUevent, ev));
}

// mr_cuModuleLoadData copies the image into C memory with a trailing NUL: a
// PTX image is read up to its terminating NUL, which a Go slice need not have.
static inline CUresult mr_cuModuleLoadData(void *f, uintptr_t *mod, const void *image, size_t n) {
	char *copy = (char *)malloc(n + 1);
	if (copy == NULL) return (CUresult)CUDA_ERROR_OUT_OF_MEMORY;
	memcpy(copy, image, n);
	copy[n] = 0;
	CUmodule m = NULL;
	CUresult r = ((pfn_cuModuleLoadData)f)(&m, copy);
	free(copy);
	*mod = (uintptr_t)m;
	return r;
}
static inline CUresult mr_cuModuleUnload(void *f, uintptr_t mod) {
	return ((pfn_cuModuleUnload)f)(MR_H(CUmodule, mod));
}
static inline CUresult mr_cuModuleGetFunction(void *f, uintptr_t *fn, uintptr_t mod,
                                              const char *name) {
	CUfunction h = NULL;
	CUresult r = ((pfn_cuModuleGetFunction)f)(&h, MR_H(CUmodule, mod), name);
	*fn = (uintptr_t)h;
	return r;
}
static inline CUresult mr_cuModuleGetGlobal(void *f, CUdeviceptr *p, size_t *bytes, uintptr_t mod,
                                            const char *name) {
	return ((pfn_cuModuleGetGlobal_v2)f)(p, bytes, MR_H(CUmodule, mod), name);
}
static inline CUresult mr_cuFuncSetAttribute(void *f, uintptr_t fn, int attr, int v) {
	return ((pfn_cuFuncSetAttribute)f)(MR_H(CUfunction, fn), (CUfunction_attribute)attr, v);
}
static inline CUresult mr_cuFuncGetAttribute(void *f, int *v, int attr, uintptr_t fn) {
	return ((pfn_cuFuncGetAttribute)f)(v, (CUfunction_attribute)attr, MR_H(CUfunction, fn));
}
static inline CUresult mr_cuFuncGetParamInfo(void *f, uintptr_t fn, size_t i, size_t *off,
                                             size_t *size) {
	return ((pfn_cuFuncGetParamInfo)f)(MR_H(CUfunction, fn), i, off, size);
}
static inline CUresult mr_cuFuncGetName(void *f, const char **name, uintptr_t fn) {
	return ((pfn_cuFuncGetName)f)(name, MR_H(CUfunction, fn));
}
static inline CUresult mr_cuOccupancyMaxActiveBlocksPerMultiprocessor(void *f, int *n, uintptr_t fn,
                                                                      int block, size_t smem) {
	return ((pfn_cuOccupancyMaxActiveBlocksPerMultiprocessor)f)(n, MR_H(CUfunction, fn), block,
	                                                            smem);
}

// mr_cuTensorMapEncodeTiled encodes a 2-D map (dims/strides/box as
// cuTensorMapEncodeTiled takes them, element strides 1) into out16, the
// map's 16 words, from an aligned local: Go memory carries no 64-byte
// alignment guarantee.
static inline CUresult mr_cuTensorMapEncodeTiled2D(void *f, uint64_t *out16, int dtype, CUdeviceptr addr,
                                                   const uint64_t *dims, uint64_t stride1,
                                                   const uint32_t *box, int swizzle, int l2promo) {
	CUtensorMap m;
	memset(&m, 0, sizeof m);
	cuuint64_t d[2] = {dims[0], dims[1]};
	cuuint64_t st[1] = {stride1};
	cuuint32_t b[2] = {box[0], box[1]};
	cuuint32_t es[2] = {1, 1};
	CUresult r = ((pfn_cuTensorMapEncodeTiled)f)(&m, (CUtensorMapDataType)dtype, 2, (void *)(uintptr_t)addr, d, st,
	                                              b, es, (CUtensorMapInterleave)0, (CUtensorMapSwizzle)swizzle,
	                                              (CUtensorMapL2promotion)l2promo, (CUtensorMapFloatOOBfill)0);
	memcpy(out16, &m, sizeof m);
	return r;
}

// mr_kernel_params points *kp at a heap copy of the kernel's one argument
// (arg, n bytes; none when n is 0), to free with *copy after the launch call.
// Returns 0 when the copy cannot be made.
static inline int mr_kernel_params(const void *arg, size_t n, void **copy, void *params[1], void ***kp) {
	*copy = NULL;
	*kp = NULL;
	if (n == 0) return 1;
	*copy = malloc(n);
	if (*copy == NULL) return 0;
	memcpy(*copy, arg, n);
	params[0] = *copy;
	*kp = params;
	return 1;
}

// mr_launch launches fn with a single by-value argument: the n bytes at arg
// (none when n is 0). The bytes are copied to malloc'ed (16-byte aligned) C
// memory first; the driver copies kernel parameters before the launch call
// returns, so the copy is freed right after.
static inline CUresult mr_launch(void *f, int cooperative, uintptr_t fn, unsigned int gx,
                                 unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,
                                 unsigned int bz, unsigned int smem, uintptr_t s, const void *arg,
                                 size_t n) {
	void *copy = NULL;
	void *params[1] = {NULL};
	void **kp = NULL;
	if (!mr_kernel_params(arg, n, &copy, params, &kp)) return (CUresult)CUDA_ERROR_OUT_OF_MEMORY;
	CUresult r;
	if (cooperative) {
		r = ((pfn_cuLaunchCooperativeKernel)f)(MR_H(CUfunction, fn), gx, gy, gz, bx, by, bz, smem,
		                                       MR_H(CUstream, s), kp);
	} else {
		r = ((pfn_cuLaunchKernel)f)(MR_H(CUfunction, fn), gx, gy, gz, bx, by, bz, smem,
		                            MR_H(CUstream, s), kp, NULL);
	}
	free(copy);
	return r;
}

// mr_launch_config fills cfg for a launch of fn's geometry on stream s with
// the attributes at attrs: cooperative when coop, in clusters of
// clusterX x 1 x 1 blocks.
static inline void mr_launch_config(CUlaunchConfig *cfg, CUlaunchAttribute attrs[2], int coop,
                                    unsigned int clusterX, unsigned int gx, unsigned int gy,
                                    unsigned int gz, unsigned int bx, unsigned int by,
                                    unsigned int bz, unsigned int smem, uintptr_t s) {
	memset(attrs, 0, 2 * sizeof attrs[0]);
	memset(cfg, 0, sizeof *cfg);
	unsigned int n = 0;
	if (coop) {
		attrs[n].id = (CUlaunchAttributeID)MR_LAUNCH_ATTRIBUTE_COOPERATIVE;
		attrs[n++].value.cooperative = 1;
	}
	attrs[n].id = (CUlaunchAttributeID)MR_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
	attrs[n].value.clusterDim.x = clusterX;
	attrs[n].value.clusterDim.y = 1;
	attrs[n++].value.clusterDim.z = 1;
	cfg->gridDimX = gx, cfg->gridDimY = gy, cfg->gridDimZ = gz;
	cfg->blockDimX = bx, cfg->blockDimY = by, cfg->blockDimZ = bz;
	cfg->sharedMemBytes = smem;
	cfg->hStream = MR_H(CUstream, s);
	cfg->attrs = attrs;
	cfg->numAttrs = n;
}

// mr_launch_ex launches fn with cuLaunchKernelEx in clusters of
// clusterX x 1 x 1 blocks, cooperatively when coop; the argument as for
// mr_launch.
static inline CUresult mr_launch_ex(void *f, int coop, unsigned int clusterX, uintptr_t fn,
                                    unsigned int gx, unsigned int gy, unsigned int gz,
                                    unsigned int bx, unsigned int by, unsigned int bz,
                                    unsigned int smem, uintptr_t s, const void *arg, size_t n) {
	CUlaunchConfig cfg;
	CUlaunchAttribute attrs[2];
	mr_launch_config(&cfg, attrs, coop, clusterX, gx, gy, gz, bx, by, bz, smem, s);
	void *copy = NULL;
	void *params[1] = {NULL};
	void **kp = NULL;
	if (!mr_kernel_params(arg, n, &copy, params, &kp)) return (CUresult)CUDA_ERROR_OUT_OF_MEMORY;
	CUresult r = ((pfn_cuLaunchKernelEx)f)(&cfg, MR_H(CUfunction, fn), kp, NULL);
	free(copy);
	return r;
}

// mr_cuOccupancyMaxActiveClusters asks how many clusters of clusterX x 1 x 1
// blocks of a launch of this geometry fit on the device at once.
static inline CUresult mr_cuOccupancyMaxActiveClusters(void *f, int *clusters, uintptr_t fn,
                                                       unsigned int clusterX, unsigned int gx,
                                                       unsigned int gy, unsigned int gz,
                                                       unsigned int bx, unsigned int by,
                                                       unsigned int bz, unsigned int smem) {
	CUlaunchConfig cfg;
	CUlaunchAttribute attrs[2];
	mr_launch_config(&cfg, attrs, 0, clusterX, gx, gy, gz, bx, by, bz, smem, 0);
	return ((pfn_cuOccupancyMaxActiveClusters)f)(clusters, MR_H(CUfunction, fn), &cfg);
}

static inline CUresult mr_cuStreamBeginCapture(void *f, uintptr_t s, int mode) {
	return ((pfn_cuStreamBeginCapture_v2)f)(MR_H(CUstream, s), (CUstreamCaptureMode)mode);
}
static inline CUresult mr_cuStreamEndCapture(void *f, uintptr_t s, uintptr_t *g) {
	CUgraph h = NULL;
	CUresult r = ((pfn_cuStreamEndCapture)f)(MR_H(CUstream, s), &h);
	*g = (uintptr_t)h;
	return r;
}
static inline CUresult mr_cuGraphInstantiate(void *f, uintptr_t *exec, uintptr_t g,
                                             unsigned long long flags) {
	CUgraphExec h = NULL;
	CUresult r = ((pfn_cuGraphInstantiateWithFlags)f)(&h, MR_H(CUgraph, g), flags);
	*exec = (uintptr_t)h;
	return r;
}
static inline CUresult mr_cuGraphLaunch(void *f, uintptr_t exec, uintptr_t s) {
	return ((pfn_cuGraphLaunch)f)(MR_H(CUgraphExec, exec), MR_H(CUstream, s));
}
static inline CUresult mr_cuGraphDestroy(void *f, uintptr_t g) {
	return ((pfn_cuGraphDestroy)f)(MR_H(CUgraph, g));
}
static inline CUresult mr_cuGraphExecDestroy(void *f, uintptr_t exec) {
	return ((pfn_cuGraphExecDestroy)f)(MR_H(CUgraphExec, exec));
}
#endif // MOERUN_CUDADL_H
