// Package nvshmem is moerun's binding of the NVSHMEM host library
// (libnvshmem_host.so.3, NVSHMEM 3.4): it finds and opens the library at run
// time (dlopen) and calls the host entry points through hand-declared
// prototypes, so it builds where NVSHMEM is not installed.
//
// Only real exported symbols of libnvshmem_host.so.3 are bound. nvshmem_init,
// nvshmemx_init_attr and nvshmem_finalize are inline functions of the C++
// headers that need the device library linked into the program; this package
// initialises with nvshmemx_hostlib_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID, ...)
// and tears down with nvshmemx_hostlib_finalize instead. The kernels link
// libnvshmem_device.a into their cubin, which is registered with CumoduleInit.
//
// Like CUDA, NVSHMEM works on the calling thread's current CUDA context: make
// the rank's GPU's primary context current (package cuda) on a locked OS
// thread before InitWithUniqueID, and keep every NVSHMEM call on that thread.
//
// Symbols bound (each wrapper's doc names its own):
//
//	nvshmemx_hostlib_init_attr  nvshmemx_hostlib_finalize  nvshmemx_set_attr_uniqueid_args
//	nvshmemx_get_uniqueid       nvshmemx_init_status       nvshmemx_cumodule_init
//	nvshmemx_cumodule_finalize  nvshmemx_vendor_get_version_info  nvshmem_info_get_name
//	nvshmem_my_pe  nvshmem_n_pes  nvshmem_malloc  nvshmem_calloc  nvshmem_align  nvshmem_free
//	nvshmem_ptr  nvshmem_barrier_all  nvshmem_sync_all  nvshmem_quiet
//	nvshmemx_barrier_all_on_stream
package nvshmem

/*
#cgo LDFLAGS: -ldl
#include "nvshmemdl.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/moerun/moerun/internal/cuda"
)

// LibName is the file name of the NVSHMEM host library.
const LibName = "libnvshmem_host.so.3"

// UIDPluginName is the file name of NVSHMEM's unique-id bootstrap plugin,
// which the library loads (by NVSHMEM_BOOTSTRAP_UID_PLUGIN, else by this
// name through its own RPATH, $ORIGIN) when it makes or uses a unique id.
const UIDPluginName = "nvshmem_bootstrap_uid.so.3"

// UniqueID is an NVSHMEM unique id (nvshmemx_uniqueid_t, 128 bytes): made by
// one rank with GetUniqueID and sent to all the others. It is an alias, so
// that GetUniqueID is a func() ([128]byte, error) as bootstrap.BroadcastID
// takes.
type UniqueID = [128]byte

// Status is nvshmemx_init_status's answer.
type Status int

// Init states (nvshmemx_init_status_t).
const (
	StatusNotInitialized Status = 0
	StatusIsBootstrapped Status = 1
	StatusIsInitialized  Status = 2
	StatusLimitedMPG     Status = 3
	StatusFullMPG        Status = 4
)

// Env defaults that Load sets when the variable is not set at all, before
// the library reads its environment. NVLink multicast (NVLS) can take a
// machine's GPUs out of service for a long time and must never be used on the
// shared GPU machines; moerun runs on one node, where the remote transports
// are not needed.
var envDefaults = []struct{ name, value string }{
	{"NVSHMEM_DISABLE_NVLS", "1"},
	{"NVSHMEM_REMOTE_TRANSPORT", "none"},
}

type sym int

const (
	symHostlibInitAttr sym = iota
	symHostlibFinalize
	symSetAttrUniqueIDArgs
	symGetUniqueID
	symInitStatus
	symCumoduleInit
	symCumoduleFinalize
	symVendorGetVersionInfo
	symInfoGetName
	symMyPE
	symNPEs
	symMalloc
	symCalloc
	symAlign
	symFree
	symPtr
	symBarrierAll
	symSyncAll
	symQuiet
	symBarrierAllOnStream
	numSyms
)

// symbols are the exported names bound, indexed by sym; cgo declares each
// one's prototype as pfn_<name> in nvshmemdl.h.
var symbols = [numSyms]string{
	symHostlibInitAttr:      "nvshmemx_hostlib_init_attr",
	symHostlibFinalize:      "nvshmemx_hostlib_finalize",
	symSetAttrUniqueIDArgs:  "nvshmemx_set_attr_uniqueid_args",
	symGetUniqueID:          "nvshmemx_get_uniqueid",
	symInitStatus:           "nvshmemx_init_status",
	symCumoduleInit:         "nvshmemx_cumodule_init",
	symCumoduleFinalize:     "nvshmemx_cumodule_finalize",
	symVendorGetVersionInfo: "nvshmemx_vendor_get_version_info",
	symInfoGetName:          "nvshmem_info_get_name",
	symMyPE:                 "nvshmem_my_pe",
	symNPEs:                 "nvshmem_n_pes",
	symMalloc:               "nvshmem_malloc",
	symCalloc:               "nvshmem_calloc",
	symAlign:                "nvshmem_align",
	symFree:                 "nvshmem_free",
	symPtr:                  "nvshmem_ptr",
	symBarrierAll:           "nvshmem_barrier_all",
	symSyncAll:              "nvshmem_sync_all",
	symQuiet:                "nvshmem_quiet",
	symBarrierAllOnStream:   "nvshmemx_barrier_all_on_stream",
}

// Lib is an opened NVSHMEM host library.
type Lib struct {
	path    string
	fn      [numSyms]unsafe.Pointer
	applied []string

	initMu sync.Mutex
	inited bool
}

// Error is a failed NVSHMEM call that returned a status.
type Error struct {
	Call   string // e.g. "nvshmemx_hostlib_init_attr"
	Args   string
	Status int
}

var statusNames = []string{
	"NVSHMEMX_SUCCESS",
	"NVSHMEMX_ERROR_INVALID_VALUE",
	"NVSHMEMX_ERROR_OUT_OF_MEMORY",
	"NVSHMEMX_ERROR_NOT_SUPPORTED",
	"NVSHMEMX_ERROR_SYMMETRY",
	"NVSHMEMX_ERROR_GPU_NOT_SELECTED",
	"NVSHMEMX_ERROR_COLLECTIVE_LAUNCH_FAILED",
	"NVSHMEMX_ERROR_INTERNAL",
}

func (e *Error) Error() string {
	name := fmt.Sprintf("status %d", e.Status)
	if e.Status >= 0 && e.Status < len(statusNames) {
		name = fmt.Sprintf("%s (%d)", statusNames[e.Status], e.Status)
	}
	return fmt.Sprintf("%s(%s): %s; NVSHMEM printed the cause on stderr (NVSHMEM_DEBUG=INFO says more)", e.Call, e.Args, name)
}

// Load opens the NVSHMEM host library at path (from Find, or a name for the
// dynamic linker) and resolves every symbol this package binds. It fails,
// naming the files, when the process then maps two different
// libnvshmem_host files (/proc/self/maps): another copy was loaded already
// (Find returns that one). Before
// opening it sets, where they are unset, NVSHMEM_DISABLE_NVLS=1,
// NVSHMEM_REMOTE_TRANSPORT=none and NVSHMEM_BOOTSTRAP_UID_PLUGIN (to the
// plugin beside the library, when it is there); Defaults reports what it set.
// A variable set by the user, to any value, is left alone.
func Load(path string) (*Lib, error) {
	l := &Lib{path: path}
	l.applied = applyEnvDefaults(path)

	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [1024]C.char
	h := C.mr_dlopen(cpath, &buf[0], C.size_t(len(buf)))
	if h == nil {
		return nil, fmt.Errorf("NVSHMEM host library not loaded: %s (set NVSHMEM_HOME to the NVSHMEM install, or MOERUN_NVSHMEM_LIB to the library's full path)",
			C.GoString(&buf[0]))
	}
	var missing []string
	for i, name := range symbols {
		cname := C.CString(name)
		l.fn[i] = C.dlsym(h, cname)
		C.free(unsafe.Pointer(cname))
		if l.fn[i] == nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		C.dlclose(h)
		return nil, fmt.Errorf("%s is not a usable NVSHMEM 3 host library: missing %s", path, strings.Join(missing, ", "))
	}
	// One copy in the process: a second file (even of the same version) has
	// state of its own, which NVSHMEM's other user (PyTorch) would not share.
	if err := checkOneCopy(path); err != nil {
		C.dlclose(h)
		return nil, err
	}
	return l, nil
}

// loadedSym reports whether a library named name is loaded in the process
// (never loading it) and the address of its symbol sym (0 if it lacks it).
func loadedSym(name, sym string) (loaded bool, addr uintptr) {
	cname, csym := C.CString(name), C.CString(sym)
	defer C.free(unsafe.Pointer(cname))
	defer C.free(unsafe.Pointer(csym))
	var a C.uintptr_t
	ok := C.mr_loaded_sym(cname, csym, &a)
	return ok != 0, uintptr(a)
}

// dlopenGlobal loads path with RTLD_GLOBAL and keeps it loaded, as another
// user of NVSHMEM (PyTorch) does; for tests.
func dlopenGlobal(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [1024]C.char
	if C.mr_dlopen_global(cpath, &buf[0], C.size_t(len(buf))) != 0 {
		return errors.New(C.GoString(&buf[0]))
	}
	return nil
}

// applyEnvDefaults sets the env defaults that are unset and returns them as
// NAME=value.
func applyEnvDefaults(libPath string) []string {
	var set []string
	setDefault := func(name, value string) {
		if _, ok := os.LookupEnv(name); ok {
			return
		}
		if os.Setenv(name, value) == nil {
			set = append(set, name+"="+value)
		}
	}
	for _, e := range envDefaults {
		setDefault(e.name, e.value)
	}
	if strings.Contains(libPath, "/") {
		plugin := filepath.Join(filepath.Dir(libPath), UIDPluginName)
		if st, err := os.Stat(plugin); err == nil && st.Mode().IsRegular() {
			if abs, err := filepath.Abs(plugin); err == nil {
				setDefault("NVSHMEM_BOOTSTRAP_UID_PLUGIN", abs)
			}
		}
	}
	return set
}

// Path is the path the library was loaded from.
func (l *Lib) Path() string { return l.path }

// Defaults lists the environment variables Load set, as NAME=value.
func (l *Lib) Defaults() []string { return slices.Clone(l.applied) }

// Version is the library's version, e.g. 3, 4, 5
// (nvshmemx_vendor_get_version_info; needs no init).
func (l *Lib) Version() (major, minor, patch int, err error) {
	var a, b, c C.int
	C.mr_version(l.fn[symVendorGetVersionInfo], &a, &b, &c)
	return int(a), int(b), int(c), nil
}

// Name is the library's vendor string, e.g. "NVSHMEM v3.4.5"
// (nvshmem_info_get_name; needs no init).
func (l *Lib) Name() string {
	var buf [C.MR_NVSHMEM_MAX_NAME_LEN + 1]C.char
	C.mr_name(l.fn[symInfoGetName], &buf[0])
	return C.GoString(&buf[0])
}

// GetUniqueID makes a new unique id (nvshmemx_get_uniqueid). One rank calls
// it and sends the id to every rank, itself included, for InitWithUniqueID.
func (l *Lib) GetUniqueID() (UniqueID, error) {
	if err := l.checkUIDPlugin(); err != nil {
		return UniqueID{}, err
	}
	var id UniqueID
	if st := C.mr_get_uniqueid(l.fn[symGetUniqueID], unsafe.Pointer(&id[0])); st != 0 {
		return UniqueID{}, &Error{Call: symbols[symGetUniqueID], Status: int(st)}
	}
	return id, nil
}

// InitWithUniqueID initialises NVSHMEM for this process as PE rank of npes,
// all of them using id: nvshmemx_set_attr_uniqueid_args, then
// nvshmemx_hostlib_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID, &attr). It is
// collective: it returns once every PE has called it. Call it once per
// process, with the GPU's context current on this (locked) thread.
func (l *Lib) InitWithUniqueID(id UniqueID, rank, npes int) error {
	if npes < 1 || rank < 0 || rank >= npes {
		return fmt.Errorf("nvshmem init: rank %d of %d PEs is out of range", rank, npes)
	}
	if id == (UniqueID{}) {
		return errors.New("nvshmem init: the unique id is all zero (not received from the rank that made it?)")
	}
	l.initMu.Lock()
	defer l.initMu.Unlock()
	if l.inited {
		return errors.New("nvshmem init: already initialised in this process")
	}
	if err := l.checkUIDPlugin(); err != nil {
		return err
	}
	var stage C.int
	st := C.mr_init_uid(l.fn[symSetAttrUniqueIDArgs], l.fn[symHostlibInitAttr], unsafe.Pointer(&id[0]),
		C.int(rank), C.int(npes), &stage)
	if st != 0 {
		call := symbols[symHostlibInitAttr]
		args := fmt.Sprintf("NVSHMEMX_INIT_WITH_UNIQUEID, PE %d of %d", rank, npes)
		if stage == 1 {
			call, args = symbols[symSetAttrUniqueIDArgs], fmt.Sprintf("%d, %d", rank, npes)
		}
		return &Error{Call: call, Args: args, Status: int(st)}
	}
	l.inited = true
	return nil
}

// checkUIDPlugin makes sure the unique-id bootstrap plugin can be loaded
// before NVSHMEM tries: NVSHMEM 3.4.5 does not fail cleanly when it cannot
// load it but aborts the process ("double free detected", a bug in its
// bootstrap loader's error path).
func (l *Lib) checkUIDPlugin() error {
	const env = "NVSHMEM_BOOTSTRAP_UID_PLUGIN"
	var cands []string
	libDir := ""
	if strings.Contains(l.path, "/") {
		libDir = filepath.Dir(l.path)
	}
	addName := func(name string) {
		if strings.Contains(name, "/") {
			cands = append(cands, name)
			return
		}
		if libDir != "" { // found through libnvshmem_host's RPATH, $ORIGIN
			cands = append(cands, filepath.Join(libDir, name))
		}
		cands = append(cands, name)
	}
	setting := os.Getenv(env)
	if setting != "" {
		addName(setting)
	} else {
		addName(UIDPluginName)
		addName("nvshmem_bootstrap_uid.so")
	}
	var errs []string
	for _, c := range cands {
		msg, ok := canLoad(c)
		if ok {
			return nil
		}
		errs = append(errs, msg)
	}
	what := "NVSHMEM's unique-id bootstrap plugin " + UIDPluginName
	if setting != "" {
		what = env + "=" + setting
	}
	return fmt.Errorf("%s cannot be loaded (%s); set %s to the full path of %s (it ships beside %s)",
		what, strings.Join(errs, "; "), env, UIDPluginName, LibName)
}

// canLoad reports whether dlopen can open path, or why not.
func canLoad(path string) (string, bool) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [1024]C.char
	h := C.mr_dlopen(cpath, &buf[0], C.size_t(len(buf)))
	if h == nil {
		return C.GoString(&buf[0]), false
	}
	C.dlclose(h)
	return "", true
}

// InitStatus is nvshmemx_init_status.
func (l *Lib) InitStatus() Status { return Status(C.mr_int(l.fn[symInitStatus])) }

// HostlibFinalize tears NVSHMEM down (nvshmemx_hostlib_finalize); it is
// collective. Free symmetric memory and finalize registered modules first.
func (l *Lib) HostlibFinalize() {
	C.mr_void(l.fn[symHostlibFinalize])
	l.initMu.Lock()
	l.inited = false
	l.initMu.Unlock()
}

// MyPE is this process's PE number (nvshmem_my_pe).
func (l *Lib) MyPE() int { return int(C.mr_int(l.fn[symMyPE])) }

// NPEs is the number of PEs (nvshmem_n_pes).
func (l *Lib) NPEs() int { return int(C.mr_int(l.fn[symNPEs])) }

// Malloc allocates bytes on the symmetric heap (nvshmem_malloc). It is
// collective: every PE must call it with the same size, in the same order.
// The heap is NVSHMEM_SYMMETRIC_SIZE bytes (default 1 GiB) per PE.
func (l *Lib) Malloc(bytes uint64) (cuda.DevicePtr, error) {
	if bytes == 0 {
		return 0, nil
	}
	p := C.mr_malloc(l.fn[symMalloc], C.size_t(bytes))
	if p == 0 {
		return 0, heapError(symbols[symMalloc], fmt.Sprintf("%d bytes", bytes))
	}
	return cuda.DevicePtr(p), nil
}

// Calloc is Malloc of count*size zeroed bytes (nvshmem_calloc).
func (l *Lib) Calloc(count, size uint64) (cuda.DevicePtr, error) {
	if count == 0 || size == 0 {
		return 0, nil
	}
	p := C.mr_calloc(l.fn[symCalloc], C.size_t(count), C.size_t(size))
	if p == 0 {
		return 0, heapError(symbols[symCalloc], fmt.Sprintf("%d, %d", count, size))
	}
	return cuda.DevicePtr(p), nil
}

// Align is Malloc with the address a multiple of alignment, a power of two
// (nvshmem_align).
func (l *Lib) Align(alignment, bytes uint64) (cuda.DevicePtr, error) {
	if bytes == 0 {
		return 0, nil
	}
	p := C.mr_align(l.fn[symAlign], C.size_t(alignment), C.size_t(bytes))
	if p == 0 {
		return 0, heapError(symbols[symAlign], fmt.Sprintf("%d, %d bytes", alignment, bytes))
	}
	return cuda.DevicePtr(p), nil
}

func heapError(call, args string) error {
	return fmt.Errorf("%s(%s) returned NULL: symmetric heap exhausted or not initialised (raise NVSHMEM_SYMMETRIC_SIZE?)", call, args)
}

// Free frees symmetric memory (nvshmem_free); collective. Free(0) does nothing.
func (l *Lib) Free(p cuda.DevicePtr) {
	if p != 0 {
		C.mr_free(l.fn[symFree], C.uint64_t(p))
	}
}

// Ptr is the address through which this GPU can load and store pe's copy of
// the symmetric object at p (nvshmem_ptr), or 0 when pe is not directly
// reachable (no P2P/NVLink path).
func (l *Lib) Ptr(p cuda.DevicePtr, pe int) cuda.DevicePtr {
	return cuda.DevicePtr(C.mr_ptr(l.fn[symPtr], C.uint64_t(p), C.int(pe)))
}

// BarrierAll waits for all PEs and completes their outstanding puts
// (nvshmem_barrier_all, from the host).
func (l *Lib) BarrierAll() { C.mr_void(l.fn[symBarrierAll]) }

// SyncAll waits for all PEs, without completing memory operations
// (nvshmem_sync_all).
func (l *Lib) SyncAll() { C.mr_void(l.fn[symSyncAll]) }

// Quiet completes this PE's outstanding puts issued from the host (nvshmem_quiet).
func (l *Lib) Quiet() { C.mr_void(l.fn[symQuiet]) }

// BarrierAllOnStream queues a barrier of all PEs on stream
// (nvshmemx_barrier_all_on_stream).
func (l *Lib) BarrierAllOnStream(s cuda.Stream) {
	C.mr_barrier_all_on_stream(l.fn[symBarrierAllOnStream], C.uintptr_t(s))
}

// CumoduleInit makes NVSHMEM's device state available to a module that was
// device-linked with libnvshmem_device.a (nvshmemx_cumodule_init). Call it
// after InitWithUniqueID and before the module's first launch.
func (l *Lib) CumoduleInit(m cuda.Module) error {
	if st := C.mr_cumodule(l.fn[symCumoduleInit], C.uintptr_t(m)); st != 0 {
		return &Error{Call: symbols[symCumoduleInit], Args: fmt.Sprintf("module %#x", uintptr(m)), Status: int(st)}
	}
	return nil
}

// CumoduleFinalize undoes CumoduleInit (nvshmemx_cumodule_finalize); call it
// before unloading the module and before HostlibFinalize.
func (l *Lib) CumoduleFinalize(m cuda.Module) error {
	if st := C.mr_cumodule(l.fn[symCumoduleFinalize], C.uintptr_t(m)); st != 0 {
		return &Error{Call: symbols[symCumoduleFinalize], Args: fmt.Sprintf("module %#x", uintptr(m)), Status: int(st)}
	}
	return nil
}

// mirrorLayout reports the sizes and offsets of the C mirror of NVSHMEM's
// structs, as compiled by cgo, for TestMirrorMatchesNVSHMEMHeaders.
func mirrorLayout() map[string]int {
	var uid C.mr_nvshmemx_uniqueid_t
	var uargs C.mr_nvshmemx_uniqueid_args_t
	var iargs C.mr_nvshmemx_init_args_t
	var attr C.mr_nvshmemx_init_attr_t
	return map[string]int{
		"sizeof(nvshmemx_uniqueid_t)":               int(unsafe.Sizeof(uid)),
		"offsetof(nvshmemx_uniqueid_t,internal)":    int(unsafe.Offsetof(uid.internal)),
		"sizeof(nvshmemx_uniqueid_args_t)":          int(unsafe.Sizeof(uargs)),
		"offsetof(nvshmemx_uniqueid_args_t,id)":     int(unsafe.Offsetof(uargs.id)),
		"offsetof(nvshmemx_uniqueid_args_t,myrank)": int(unsafe.Offsetof(uargs.myrank)),
		"offsetof(nvshmemx_uniqueid_args_t,nranks)": int(unsafe.Offsetof(uargs.nranks)),
		"sizeof(nvshmemx_init_args_t)":              int(unsafe.Sizeof(iargs)),
		"offsetof(nvshmemx_init_args_t,uid_args)":   int(unsafe.Offsetof(iargs.uid_args)),
		"offsetof(nvshmemx_init_args_t,content)":    int(unsafe.Offsetof(iargs.content)),
		"sizeof(nvshmemx_init_attr_t)":              int(unsafe.Sizeof(attr)),
		"offsetof(nvshmemx_init_attr_t,mpi_comm)":   int(unsafe.Offsetof(attr.mpi_comm)),
		"offsetof(nvshmemx_init_attr_t,args)":       int(unsafe.Offsetof(attr.args)),
		"NVSHMEMX_INIT_WITH_UNIQUEID":               int(C.MR_NVSHMEMX_INIT_WITH_UNIQUEID),
		"NVSHMEM_MAX_NAME_LEN":                      int(C.MR_NVSHMEM_MAX_NAME_LEN),
		"NVSHMEM_STATUS_IS_INITIALIZED":             int(StatusIsInitialized),
		"NVSHMEM_STATUS_FULL_MPG":                   int(StatusFullMPG),
		"NVSHMEMX_ERROR_INTERNAL":                   len(statusNames) - 1,
	}
}
