// Hand-written mirror of the parts of the NVSHMEM 3.4 host API that package
// nvshmem binds through dlopen/dlsym, and one C trampoline per function.
//
// The NVSHMEM headers are C++ only and pull in cuda.h: they are NOT included.
// TestMirrorMatchesNVSHMEMHeaders compiles this file with g++ after the real
// nvshmemx.h (defining MOERUN_HAVE_NVSHMEM_H) and checks every pfn_ type
// against the real function and every mirrored struct's size and offsets.
#ifndef MOERUN_NVSHMEMDL_H
#define MOERUN_NVSHMEMDL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
#define MR_STATIC_ASSERT static_assert
#else
#define MR_STATIC_ASSERT _Static_assert
#endif

// ---- mirrored structs (bootstrap_device_host/nvshmem_uniqueid.h and
// device_host/nvshmem_types.h, NVSHMEM 3.4.5). Each has a version field that
// NVSHMEM checks: (1 << 16) + sizeof(the struct).

#define MR_NVSHMEM_UNIQUEID_PADDING 124 // UNIQUEID_PADDING
#define MR_NVSHMEM_INIT_ARGS_PADDING 96 // INIT_ARGS_PADDING

typedef struct {
	int version;
	char internal[MR_NVSHMEM_UNIQUEID_PADDING];
} mr_nvshmemx_uniqueid_t; // nvshmemx_uniqueid_v1

typedef struct {
	int version;
	mr_nvshmemx_uniqueid_t *id;
	int myrank;
	int nranks;
} mr_nvshmemx_uniqueid_args_t; // nvshmemx_uniqueid_args_v1

typedef struct {
	int version;
	mr_nvshmemx_uniqueid_args_t uid_args;
	char content[MR_NVSHMEM_INIT_ARGS_PADDING];
} mr_nvshmemx_init_args_t; // nvshmemx_init_args_v1

typedef struct {
	int version;
	void *mpi_comm;
	mr_nvshmemx_init_args_t args;
} mr_nvshmemx_init_attr_t; // nvshmemx_init_attr_v1

// The same static_asserts as NVSHMEM's own headers.
MR_STATIC_ASSERT(sizeof(mr_nvshmemx_uniqueid_t) == 128, "uniqueid_v1 must be 128 bytes");
MR_STATIC_ASSERT(sizeof(mr_nvshmemx_uniqueid_args_t) == 24, "uniqueid_args_v1 must be 24 bytes");
MR_STATIC_ASSERT(sizeof(mr_nvshmemx_init_args_t) == 128, "init_args_v1 must be 128 bytes");
MR_STATIC_ASSERT(sizeof(mr_nvshmemx_init_attr_t) == 144, "init_attr_v1 must be 144 bytes");

#define MR_NVSHMEMX_INIT_WITH_UNIQUEID (1 << 3) // enum flags, host/nvshmemx_api.h

// In the header test the pfn_ types name the real NVSHMEM and CUDA types.
#ifdef MOERUN_HAVE_NVSHMEM_H
typedef nvshmemx_uniqueid_t mr_uid_t;
typedef nvshmemx_init_attr_t mr_attr_t;
typedef cudaStream_t mr_stream_t;
#else
typedef struct CUmod_st *CUmodule;
typedef mr_nvshmemx_uniqueid_t mr_uid_t;
typedef mr_nvshmemx_init_attr_t mr_attr_t;
typedef struct CUstream_st *mr_stream_t; // cudaStream_t is CUstream_st * too
#endif

// ---- prototypes (host/nvshmemx_api.h, host/nvshmem_api.h) ------------------

typedef int (*pfn_nvshmemx_hostlib_init_attr)(unsigned int, mr_attr_t *);
typedef void (*pfn_nvshmemx_hostlib_finalize)(void);
typedef int (*pfn_nvshmemx_set_attr_uniqueid_args)(const int, const int, const mr_uid_t *,
                                                   mr_attr_t *);
typedef int (*pfn_nvshmemx_get_uniqueid)(mr_uid_t *);
typedef int (*pfn_nvshmemx_init_status)(void);
typedef int (*pfn_nvshmemx_cumodule_init)(CUmodule);
typedef int (*pfn_nvshmemx_cumodule_finalize)(CUmodule);
typedef void (*pfn_nvshmemx_vendor_get_version_info)(int *, int *, int *);
typedef void (*pfn_nvshmem_info_get_name)(char *);
typedef int (*pfn_nvshmem_my_pe)(void);
typedef int (*pfn_nvshmem_n_pes)(void);
typedef void *(*pfn_nvshmem_malloc)(size_t);
typedef void *(*pfn_nvshmem_calloc)(size_t, size_t);
typedef void *(*pfn_nvshmem_align)(size_t, size_t);
typedef void (*pfn_nvshmem_free)(void *);
typedef void *(*pfn_nvshmem_ptr)(const void *, int);
typedef void (*pfn_nvshmem_barrier_all)(void);
typedef void (*pfn_nvshmem_sync_all)(void);
typedef void (*pfn_nvshmem_quiet)(void);
typedef void (*pfn_nvshmemx_barrier_all_on_stream)(mr_stream_t);

#define MR_NVSHMEM_MAX_NAME_LEN 256 // NVSHMEM_MAX_NAME_LEN

// ---- dlopen ----------------------------------------------------------------

#include <dlfcn.h>
#include <stdio.h>

static inline void *mr_dlopen(const char *path, char *errbuf, size_t n) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL && n > 0) {
		const char *e = dlerror();
		snprintf(errbuf, n, "%s", e ? e : "unknown dlopen error");
	}
	return h;
}

// mr_loaded_sym looks for a library named name that the process has loaded
// already (RTLD_NOLOAD: it never loads one; a bare name matches a loaded
// library's SONAME too). It returns 0 when there is none, else 1 with the
// address of its symbol sym in *addr (0 when it lacks sym).
static inline int mr_loaded_sym(const char *name, const char *sym, uintptr_t *addr) {
	void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	*addr = 0;
	if (h == NULL) {
		return 0;
	}
	*addr = (uintptr_t)dlsym(h, sym);
	dlclose(h);
	return 1;
}

// mr_dlopen_global opens path with RTLD_GLOBAL, as another user of NVSHMEM
// (PyTorch) loads it (tests). Returns 0 on success, else copies dlerror().
static inline int mr_dlopen_global(const char *path, char *errbuf, size_t n) {
	void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	if (h == NULL) {
		const char *e = dlerror();
		snprintf(errbuf, n, "%s", e ? e : "unknown dlopen error");
		return -1;
	}
	return 0;
}

// ---- trampolines -----------------------------------------------------------
// Device addresses cross as uint64_t, handles as uintptr_t, so that Go never
// turns an integer into unsafe.Pointer.

// The unique id and init attributes live in static storage: nvshmemx_
// set_attr_uniqueid_args keeps a pointer to the id, not a copy, and NVSHMEM
// is initialised once per process.
static mr_nvshmemx_uniqueid_t mr_uid_storage;
static mr_nvshmemx_init_attr_t mr_attr_storage;

static inline void mr_set_versions(mr_nvshmemx_init_attr_t *a) {
	// nvshmemx_init_init_attr_ver_only (device_host/nvshmem_types.h).
	a->version = (1 << 16) + (int)sizeof(mr_nvshmemx_init_attr_t);
	a->args.version = (1 << 16) + (int)sizeof(mr_nvshmemx_init_args_t);
	a->args.uid_args.version = (1 << 16) + (int)sizeof(mr_nvshmemx_uniqueid_args_t);
}

// mr_init_uid does nvshmemx_set_attr_uniqueid_args then
// nvshmemx_hostlib_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID). *stage says which
// call failed: 1 the first, 2 the second.
static inline int mr_init_uid(void *set_args, void *init_attr, const void *id128, int rank,
                              int npes, int *stage) {
	memcpy(&mr_uid_storage, id128, sizeof mr_uid_storage);
	memset(&mr_attr_storage, 0, sizeof mr_attr_storage);
	mr_set_versions(&mr_attr_storage);
	*stage = 1;
	int st = ((pfn_nvshmemx_set_attr_uniqueid_args)set_args)(
	    rank, npes, (const mr_uid_t *)&mr_uid_storage, (mr_attr_t *)&mr_attr_storage);
	if (st != 0) return st;
	mr_set_versions(&mr_attr_storage);
	*stage = 2;
	return ((pfn_nvshmemx_hostlib_init_attr)init_attr)(MR_NVSHMEMX_INIT_WITH_UNIQUEID,
	                                                   (mr_attr_t *)&mr_attr_storage);
}

static inline int mr_get_uniqueid(void *f, void *out128) {
	mr_nvshmemx_uniqueid_t id;
	memset(&id, 0, sizeof id);
	id.version = (1 << 16) + (int)sizeof id; // NVSHMEMX_UNIQUEID_INITIALIZER
	int st = ((pfn_nvshmemx_get_uniqueid)f)((mr_uid_t *)&id);
	memcpy(out128, &id, sizeof id);
	return st;
}

static inline void mr_void(void *f) { ((void (*)(void))f)(); }
static inline int mr_int(void *f) { return ((int (*)(void))f)(); }

static inline int mr_cumodule(void *f, uintptr_t mod) {
	return ((pfn_nvshmemx_cumodule_init)f)((CUmodule)mod);
}
static inline void mr_version(void *f, int *major, int *minor, int *patch) {
	((pfn_nvshmemx_vendor_get_version_info)f)(major, minor, patch);
}
static inline void mr_name(void *f, char *buf) { ((pfn_nvshmem_info_get_name)f)(buf); }
static inline uint64_t mr_malloc(void *f, size_t n) {
	return (uint64_t)(uintptr_t)((pfn_nvshmem_malloc)f)(n);
}
static inline uint64_t mr_calloc(void *f, size_t count, size_t size) {
	return (uint64_t)(uintptr_t)((pfn_nvshmem_calloc)f)(count, size);
}
static inline uint64_t mr_align(void *f, size_t alignment, size_t n) {
	return (uint64_t)(uintptr_t)((pfn_nvshmem_align)f)(alignment, n);
}
static inline void mr_free(void *f, uint64_t p) { ((pfn_nvshmem_free)f)((void *)(uintptr_t)p); }
static inline uint64_t mr_ptr(void *f, uint64_t p, int pe) {
	return (uint64_t)(uintptr_t)((pfn_nvshmem_ptr)f)((const void *)(uintptr_t)p, pe);
}
static inline void mr_barrier_all_on_stream(void *f, uintptr_t s) {
	((pfn_nvshmemx_barrier_all_on_stream)f)((mr_stream_t)s);
}

#endif // MOERUN_NVSHMEMDL_H
