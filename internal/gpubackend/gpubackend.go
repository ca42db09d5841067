// Package gpubackend runs the MoE layer as moerun's persistent kernel, one
// cooperative launch per forward on this rank's GPU, tokens moved between
// GPUs by the kernel itself through the NVSHMEM symmetric heap (NVLink P2P,
// one node). It implements backend.Backend.
//
// Threading: CUDA contexts and NVSHMEM belong to the calling OS thread. Call
// Open and every method from one goroutine locked to its thread
// (runtime.LockOSThread; cmd/moerun locks the main goroutine in init).
//
// Precision modes (config.DType): fp32 runs the kernel's SIMT tiles; tf32 and
// bf16 its tensor-core tiles, for which Prepare uploads the expert weights
// transposed (K contiguous) and rounded to the mode (convert.go), and Forward
// uploads bf16 tokens in bf16 mode. Outputs, logits and combine weights are
// float32 in every mode.
package gpubackend

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/nvshmem"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/symheap"
)

// MinDriverVersion is the oldest CUDA driver (cuDriverGetVersion) that runs
// a cubin built with CUDA 13.0.
const MinDriverVersion = 13000

// DefaultWatchdog bounds every spin-wait of the kernel unless Options says otherwise.
const DefaultWatchdog = 10 * time.Second

// Options configure Open.
type Options struct {
	Cubin             string        // --cubin: path of the kernel's cubin ("" = $MOERUN_CUBIN, embedded, next to the binary)
	Watchdog          time.Duration // bound of every in-kernel wait (0: DefaultWatchdog)
	DebugWithholdPeer int           // -1: none; else the rank that withholds its dispatch signal to rank+1 (tests)
	// HeapBytes, when > 0 and NVSHMEM_SYMMETRIC_SIZE is not set, sizes the
	// symmetric heap (NVSHMEM_SYMMETRIC_SIZE = HeapBytes + a reserve) before
	// NVSHMEM starts: the largest symheap.Plan(cfg, world).SymTotal of the
	// configs to run. 0 keeps NVSHMEM's default (1 GiB).
	HeapBytes uint64
	// Graph replays each forward as a CUDA graph: the kernel launch of a
	// (config, T) (exactly: of a kernel argument) is captured once into a
	// graph, then every forward with the same argument launches the graph.
	// The token upload and the output poisoning stay ordinary stream work
	// before it (outside the timed interval, as without graphs). The kernel
	// keeps no per-launch host state (its sequence numbers live on the
	// device), so a replay is a normal forward. Graphs are dropped when
	// Prepare reallocates and at Close.
	Graph bool
	// Trace makes every forward record the kernel's per-block task trace
	// (trace.go): TraceEvents, PhaseTimes, WriteChromeTrace. It costs a
	// device buffer (symheap Layout.TraceEvents per block) and a few stores
	// per task; without it the kernel pays one branch per task.
	Trace bool
	// Timeout bounds each of the host's NVSHMEM collectives: init, the
	// symmetric heap's allocation and free, the barrier before the first
	// launch, finalize (0: transport.DefaultTimeout). They cannot be
	// abandoned, so past it the process says which call timed out and exits
	// with status 1 (boundCollective). TimeoutName names the option that set
	// it in that message ("--timeout"; "" means "Options.Timeout").
	Timeout     time.Duration
	TimeoutName string
	Log         zerolog.Logger
}

// EnvKernelFlags, when set (an integer), replaces the kernel's switches
// (kernels.Flag*, default kernels.FlagsDefault): 0 runs the previous paths
// (fp32 SIMT gate, every row copied by the dispatch), 4 adds the TMA tile
// loads (kernels.FlagTMA, opt-in), for comparisons.
const EnvKernelFlags = "MOERUN_KERNEL_FLAGS"

// EnvDebugStopBeforeInit, set to a rank number, makes that rank stop itself
// (SIGSTOP) once the NVSHMEM unique id has reached it, before
// NVSHMEM's init: a test hook for the bound on NVSHMEM's collectives
// (boundCollective; scripts/reliability.sh), where a stuck rank would leave
// the others waiting inside the init.
const EnvDebugStopBeforeInit = "MOERUN_DEBUG_STOP_BEFORE_NVSHMEM_INIT"

// KernelInfo describes the loaded kernel and its launch geometry.
type KernelInfo struct {
	Registers   int    // per thread
	LocalBytes  int    // local memory per thread (stack; spills would show here)
	StaticSmem  int    // bytes per block
	DynamicSmem int    // bytes per block of a tf32/bf16 launch (the cubin's; kernels.PhaseBytes by default; fp32: SIMTPhaseBytes); sizes the grid
	Threads     int    // per block
	BlocksPerSM int    // occupancy API
	SMs         int    // multiprocessors of the device
	Grid        int    // BlocksPerSM * SMs
	CubinFrom   string // where the cubin came from
	NVSHMEM     string // device library in the cubin, = host library version
}

// heapReserve is what NVSHMEM keeps of the symmetric heap for itself.
const heapReserve = 128 << 20

// Backend is the GPU backend of one rank.
type Backend struct {
	comm  transport.Comm
	rank  int
	world int
	opt   Options
	log   zerolog.Logger

	drv        *cuda.Driver
	dev        cuda.Device
	ordinal    int
	ctx        cuda.Context
	ctxHeld    bool
	card       string
	uuid       string // CUDA device UUID, NVML's form
	flags      int32  // MoeParams.flags
	shm        *nvshmem.Lib
	shmUp      bool
	mod        cuda.Module
	modLoaded  bool
	modShmem   bool
	fn         cuda.Function
	tileFn     cuda.Function // debug entry moerun_tile_test (TileCheck)
	convFn     cuda.Function // moerun_tokens_bf16: a bf16 device forward's tokens
	convErr    error         // why convFn is missing (a cubin older than the entry)
	info       KernelInfo
	ws         *wsKernel // the MOE_WS build's forward beside the default one, or nil (ws.go)
	lastGrid   int       // grid of the last forward launched (either kernel)
	stream     cuda.Stream
	haveStream bool
	evStart    cuda.Event
	evEnd      cuda.Event
	haveEvents bool
	evQueue    []cuda.Event // start and end of each of ForwardQueued's kernels
	launchedAt time.Time    // host clock after the last launchStaged

	// state of the prepared configuration: the buffers, sized by the
	// config that allocated them (static), and the layers' weights
	// (layers.go)
	prepared   bool
	static     config.Static
	layers     map[int]*gpuLayer // by id; Prepare's is 0
	localUsed  bool              // the local block's weight regions hold layer localOwner
	localOwner int
	evDev      cuda.Event // recorded on the caller's stream after each device forward
	haveEvDev  bool
	devPending bool // a device forward may still be running (evDev not yet waited for)
	layout     symheap.Layout
	sym        cuda.DevicePtr // symmetric heap block (nvshmem_malloc)
	local      cuda.DevicePtr // local block (cuMemAlloc)

	xbuf      []uint16                  // bf16 tokens of the current forward (bf16 mode)
	staged    bool                      // Stage has run and ForwardStaged has not
	stagedCfg config.Layer              // the config Stage prepared
	stagedID  int                       // the layer Stage prepared
	graphs    map[string]cuda.GraphExec // Options.Graph: captured forwards by kernel argument
	last      config.Layer              // the last forward's config
	haveLast  bool
	launches  uint64
	broken    error // sticky: set by a watchdog trip or a hang; refuses further forwards
	closed    bool

	// Options.Trace: the trace buffer (events, then counts) and the last
	// forward's events once read.
	traceBuf     cuda.DevicePtr
	tracePer     int    // events per block
	traceEvBytes uint64 // offset of the counts
	traceEvs     []TraceEvent
	traceDropped int
	traceCached  bool
}

var _ backend.Backend = (*Backend)(nil)

// Open brings up this rank's GPU, NVSHMEM and the kernel. It is collective
// over comm: every rank calls it. localRank picks the GPU among the visible
// ones (bootstrap.ChooseDevice). Before any GPU work it refuses, with a
// message that says what to change, a GPU that is not Hopper, a driver too
// old for the cubin, a missing cubin or NVSHMEM, and an NVSHMEM host library
// whose version differs from the device library linked into the cubin; a
// refusal on any rank makes every rank return an error (no rank is left
// waiting in NVSHMEM's init).
func Open(comm transport.Comm, localRank int, opt Options) (b *Backend, err error) {
	if opt.Watchdog <= 0 {
		opt.Watchdog = DefaultWatchdog
	}
	b = &Backend{comm: comm, rank: comm.Rank(), world: comm.Size(), opt: opt, log: opt.Log, flags: kernels.FlagsDefault}
	defer func() {
		if err != nil {
			if cerr := b.Close(); cerr != nil {
				b.log.Debug().Err(cerr).Msg("gpu backend: cleanup after a failed open")
			}
			b = nil
		}
	}()
	bootstrap.DisableNVLS()
	cubin, cinfo, err := b.preflight(localRank)
	// Every rank learns whether every other rank may go on before anyone
	// enters NVSHMEM's (unbounded, collective) init.
	if err = agree(comm, "checks before any GPU work", err); err != nil {
		return nil, err
	}
	if err = b.startNVSHMEM(); err != nil {
		return nil, err
	}
	// A rank that cannot load the kernel tells the others, which would
	// otherwise go on to the first forward without it.
	if err = agree(comm, "load the kernel", b.loadKernel(cubin, cinfo)); err != nil {
		return nil, err
	}
	b.log.Info().Str("gpu", b.card).Int("device", b.ordinal).Int("registers", b.info.Registers).
		Int("local_bytes", b.info.LocalBytes).Int("smem", b.info.StaticSmem).Int("dynamic_smem", b.info.DynamicSmem).
		Int("blocks_per_sm", b.info.BlocksPerSM).
		Int("sms", b.info.SMs).Int("grid", b.info.Grid).Str("cubin", b.info.CubinFrom).
		Str("nvshmem", b.info.NVSHMEM).Dur("watchdog", opt.Watchdog).Bool("graph", opt.Graph).
		Str("uuid", b.uuid).Int("kernel_flags", int(b.flags)).Bool("trace", opt.Trace).
		Int("ws_grid", b.wsInfo().Grid).Int("ws_registers", b.wsInfo().Registers).Str("ws_cubin", b.wsInfo().CubinFrom).
		Msg("gpu backend open")
	return b, nil
}

// preflight does every check that needs no GPU context: driver, device,
// architecture, cubin, NVSHMEM library and versions. It leaves the driver
// loaded and the device chosen.
func (b *Backend) preflight(localRank int) ([]byte, kernels.CubinInfo, error) {
	var ci kernels.CubinInfo
	if v, ok := os.LookupEnv(EnvKernelFlags); ok && v != "" {
		f, perr := strconv.ParseInt(v, 0, 32)
		const all = kernels.FlagGateTC | kernels.FlagLocalGather | kernels.FlagTMA
		if perr != nil || f < 0 || f > all {
			return nil, ci, fmt.Errorf("%s=%q: want an integer in 0..%d (bits: %d tensor-core gate, %d local gather, %d TMA loads; default %d)",
				EnvKernelFlags, v, all, kernels.FlagGateTC, kernels.FlagLocalGather, kernels.FlagTMA, kernels.FlagsDefault)
		}
		b.flags = int32(f)
	}
	if b.world > kernels.MaxWorld {
		return nil, ci, fmt.Errorf("%d ranks: the kernel supports at most %d", b.world, kernels.MaxWorld)
	}
	drv, err := cuda.Load()
	if err != nil {
		return nil, ci, fmt.Errorf("GPU backend needs the CUDA driver: %w", err)
	}
	b.drv = drv
	ver, err := drv.DriverVersion()
	if err != nil {
		return nil, ci, err
	}
	if ver < MinDriverVersion {
		return nil, ci, fmt.Errorf("the CUDA driver supports CUDA %d.%d; moerun's kernel is built with CUDA 13.0 and needs a driver for CUDA 13.0 or newer (cuDriverGetVersion >= %d, driver R580+)",
			ver/1000, ver%1000/10, MinDriverVersion)
	}
	n, err := drv.DeviceCount()
	if err != nil {
		return nil, ci, err
	}
	ord, err := bootstrap.ChooseDevice(localRank, n)
	if err != nil {
		return nil, ci, err
	}
	b.ordinal = ord
	if b.dev, err = drv.DeviceGet(ord); err != nil {
		return nil, ci, err
	}
	if b.card, err = drv.DeviceName(b.dev); err != nil {
		return nil, ci, err
	}
	if b.uuid, err = drv.DeviceUUID(b.dev); err != nil {
		return nil, ci, err
	}
	major, minor, err := drv.ComputeCapability(b.dev)
	if err != nil {
		return nil, ci, err
	}
	if major != 9 || minor != 0 {
		return nil, ci, fmt.Errorf("moerun's kernel needs a Hopper GPU (sm_90); GPU %d is %s (sm_%d%d)", ord, b.card, major, minor)
	}
	if coop, err := drv.Attribute(b.dev, cuda.AttrCooperativeLaunch); err != nil || coop == 0 {
		return nil, ci, fmt.Errorf("GPU %d (%s) does not support cooperative launches (%v)", ord, b.card, err)
	}
	cubin, from, err := kernels.Locate(b.opt.Cubin)
	if err != nil {
		return nil, ci, err
	}
	b.info.CubinFrom = from
	if ci, err = kernels.ReadCubinInfo(cubin); err != nil {
		return nil, ci, fmt.Errorf("%s: %w", from, err)
	}
	if err = ci.Check(); err != nil {
		return nil, ci, fmt.Errorf("%s: %w", from, err)
	}
	path, err := nvshmem.Find()
	if err != nil {
		return nil, ci, fmt.Errorf("GPU backend needs NVSHMEM %s: %w", ci.NVSHMEMVersion(), err)
	}
	if b.shm, err = nvshmem.Load(path); err != nil {
		return nil, ci, err
	}
	hmaj, hmin, hpatch, err := b.shm.Version()
	if err != nil {
		return nil, ci, err
	}
	if [3]int{hmaj, hmin, hpatch} != ci.NVSHMEM {
		return nil, ci, fmt.Errorf("NVSHMEM host library %s is version %d.%d.%d but the kernel (%s) was linked with the NVSHMEM %s device library: use NVSHMEM %s (NVSHMEM_HOME or MOERUN_NVSHMEM_LIB), or rebuild the kernel against %d.%d.%d",
			path, hmaj, hmin, hpatch, from, ci.NVSHMEMVersion(), ci.NVSHMEMVersion(), hmaj, hmin, hpatch)
	}
	b.info.NVSHMEM = ci.NVSHMEMVersion()
	if err = b.locateWS(from, ci); err != nil {
		return nil, ci, err
	}
	if b.opt.HeapBytes > 0 {
		if _, set := os.LookupEnv("NVSHMEM_SYMMETRIC_SIZE"); !set {
			want := (b.opt.HeapBytes + heapReserve + (1<<20 - 1)) >> 20
			os.Setenv("NVSHMEM_SYMMETRIC_SIZE", strconv.FormatUint(want, 10)+"M")
		}
	}
	return cubin, ci, nil
}

// startNVSHMEM makes the GPU's primary context current and initialises
// NVSHMEM with a unique id made on rank 0.
func (b *Backend) startNVSHMEM() error {
	ctx, err := b.drv.PrimaryCtxRetain(b.dev)
	if err != nil {
		return err
	}
	b.ctx, b.ctxHeld = ctx, true
	if err := b.drv.CtxSetCurrent(ctx); err != nil {
		return err
	}
	id, err := bootstrap.BroadcastID(b.comm, func() ([bootstrap.IDSize]byte, error) {
		u, err := b.shm.GetUniqueID()
		return [bootstrap.IDSize]byte(u), err
	})
	if err != nil {
		return fmt.Errorf("NVSHMEM unique id: %w", err)
	}
	if v, ok := os.LookupEnv(EnvDebugStopBeforeInit); ok && v == strconv.Itoa(b.rank) {
		b.log.Warn().Str("env", EnvDebugStopBeforeInit).Msg("this rank stops itself before NVSHMEM's init (test hook)")
		if err := stopSelf(); err != nil {
			return fmt.Errorf("%s=%s: %w", EnvDebugStopBeforeInit, v, err)
		}
	}
	b.collective("init", func() { err = b.shm.InitWithUniqueID(nvshmem.UniqueID(id), b.rank, b.world) })
	if err != nil {
		return fmt.Errorf("NVSHMEM init (rank %d of %d): %w", b.rank, b.world, err)
	}
	b.shmUp = true
	if pe, n := b.shm.MyPE(), b.shm.NPEs(); pe != b.rank || n != b.world {
		return fmt.Errorf("NVSHMEM says PE %d of %d, the job says rank %d of %d", pe, n, b.rank, b.world)
	}
	return nil
}

// loadKernel loads the cubin, registers it with NVSHMEM and sizes the grid.
func (b *Backend) loadKernel(cubin []byte, ci kernels.CubinInfo) error {
	d := b.drv
	mod, err := d.ModuleLoadData(cubin)
	if err != nil {
		return fmt.Errorf("load the kernel (%s): %w", b.info.CubinFrom, err)
	}
	b.mod, b.modLoaded = mod, true
	if err := b.shm.CumoduleInit(mod); err != nil {
		return fmt.Errorf("register the kernel with NVSHMEM: %w", err)
	}
	b.modShmem = true
	if b.fn, err = d.ModuleGetFunction(mod, kernels.KernelName); err != nil {
		return err
	}
	if b.tileFn, err = d.ModuleGetFunction(mod, kernels.TileTestName); err != nil {
		return err
	}
	// Only bf16 forwards on device pointers need it: an older cubin without
	// it still runs everything else (deviceTokens names what is missing).
	if b.convFn, err = d.ModuleGetFunction(mod, kernels.ConvertName); err != nil {
		b.convFn, b.convErr = 0, err
	}
	// Every block takes the cubin's phase bytes of dynamic shared memory
	// (above the 48 KB that needs no opt-in; kernels.PhaseBytes unless the
	// cubin was built with another stage count).
	phase := ci.PhaseBytes
	if optin, err := d.Attribute(b.dev, cuda.AttrMaxSharedMemoryPerBlockOptin); err != nil {
		return err
	} else if optin < phase {
		return fmt.Errorf("GPU %d (%s) allows %d bytes of shared memory per block; the kernel needs %d", b.ordinal, b.card, optin, phase)
	}
	for _, f := range []cuda.Function{b.fn, b.tileFn} {
		if err := d.FuncSetAttribute(f, cuda.FuncMaxDynamicSharedSizeBytes, phase); err != nil {
			return fmt.Errorf("allow %d bytes of dynamic shared memory: %w", phase, err)
		}
	}
	// The module's own globals must say what the image said.
	var abi [2]int32
	if p, _, err := d.ModuleGetGlobal(mod, kernels.SymABIVersion); err != nil {
		return err
	} else if err := d.MemcpyDtoH(abi[:1], p); err != nil {
		return err
	}
	if int(abi[0]) != ci.ABIVersion {
		return fmt.Errorf("kernel module reports ABI %d, its image said %d", abi[0], ci.ABIVersion)
	}
	info := &b.info
	info.Threads = ci.BlockThreads
	info.DynamicSmem = phase
	if info.SMs, err = d.Attribute(b.dev, cuda.AttrMultiprocessorCount); err != nil {
		return err
	}
	if err := b.sizeKernel(b.fn, info); err != nil {
		return err
	}
	if info.Grid < 2 {
		return fmt.Errorf("kernel occupancy: %d blocks per SM x %d SMs: the kernel needs at least 2 resident blocks", info.BlocksPerSM, info.SMs)
	}
	if b.stream, err = d.StreamCreate(true); err != nil {
		return err
	}
	b.haveStream = true
	if b.evStart, err = d.EventCreate(); err != nil {
		return err
	}
	if b.evEnd, err = d.EventCreate(); err != nil {
		d.EventDestroy(b.evStart)
		return err
	}
	b.haveEvents = true
	return b.loadWS()
}

// sizeKernel fills info's figures of fn (info.Threads, DynamicSmem and SMs
// set): registers, local and static shared memory, the blocks resident per
// SM at that shared memory, and the grid of one block per resident slot.
func (b *Backend) sizeKernel(fn cuda.Function, info *KernelInfo) error {
	d := b.drv
	var err error
	if info.Registers, err = d.FuncGetAttribute(fn, cuda.FuncNumRegs); err != nil {
		return err
	}
	if info.LocalBytes, err = d.FuncGetAttribute(fn, cuda.FuncLocalSizeBytes); err != nil {
		return err
	}
	if info.StaticSmem, err = d.FuncGetAttribute(fn, cuda.FuncSharedSizeBytes); err != nil {
		return err
	}
	if info.BlocksPerSM, err = d.OccupancyMaxActiveBlocksPerMultiprocessor(fn, info.Threads, uint64(info.DynamicSmem)); err != nil {
		return err
	}
	info.Grid = info.BlocksPerSM * info.SMs
	return nil
}

// Kernel describes the loaded kernel and its grid.
func (b *Backend) Kernel() KernelInfo { return b.info }

// Name is "gpu".
func (b *Backend) Name() string { return "gpu" }

// Card is the GPU's name.
func (b *Backend) Card() string { return b.card }

// Ordinal is the CUDA device ordinal of the backend's GPU among the
// visible ones (CUDA_VISIBLE_DEVICES): the index PyTorch's torch.cuda uses.
func (b *Backend) Ordinal() int { return b.ordinal }

// UUID is the CUDA device UUID of this rank's GPU in NVML's form
// ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"): match NVML devices, and
// check that no two ranks share a GPU, by it.
func (b *Backend) UUID() string { return b.uuid }

// KernelFlags is the kernel's MoeParams.flags (kernels.Flag*; EnvKernelFlags).
func (b *Backend) KernelFlags() int { return int(b.flags) }

// Layout is the memory plan of the prepared configuration.
func (b *Backend) Layout() symheap.Layout { return b.layout }

// Prepare plans and allocates the memory of cfg (reusing it when the static
// configuration is unchanged), zeroes the symmetric heap and uploads this
// rank's experts and the gate, as layer 0 (backend.Layers). Reallocating
// drops every other layer. Collective.
func (b *Backend) Prepare(cfg config.Layer) error {
	// CUDA's current context is per OS thread: stay on one thread for the
	// whole call (the context is made current below), whichever goroutine
	// calls. LockOSThread nests, so a caller's own lock is kept.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := b.usable(); err != nil {
		return err
	}
	if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
		return err
	}
	if l := b.layers[0]; b.prepared && b.static == cfg.Static() && l != nil && l.generated && l.static == cfg.Static() {
		return nil
	}
	if err := b.allocate(cfg, nil); err != nil {
		return err
	}
	return b.finishFirst(cfg, b.putLayer(0, cfg, nil))
}

// allocate plans and allocates the buffers of cfg, replacing any earlier
// ones (and every layer), and zeroes them. Collective: pre, an error found
// before (bad weights, say), is agreed on with the plan, so that no rank is
// left waiting.
func (b *Backend) allocate(cfg config.Layer, pre error) error {
	if err := b.quiesce(); err != nil {
		return err
	}
	lay, err := symheap.Plan(cfg, b.world)
	if err == nil {
		err = b.checkMemory(lay)
	}
	if err = agree(b.comm, "plan and allocate the buffers", errors.Join(pre, err)); err != nil {
		return err
	}
	if err := b.release(); err != nil {
		return err
	}
	b.prepared = false
	var sym cuda.DevicePtr
	b.collective("symmetric heap allocation (nvshmem_align)", func() { sym, err = b.shm.Align(4096, lay.SymTotal) })
	if err != nil {
		return fmt.Errorf("symmetric heap of %s: %w (set NVSHMEM_SYMMETRIC_SIZE to at least %dM)", symheap.Bytes(lay.SymTotal), err, (lay.SymTotal+heapReserve)>>20+1)
	}
	b.sym = sym
	if b.local, err = b.drv.MemAlloc(lay.LocalTotal); err != nil {
		return fmt.Errorf("device memory of %s: %w", symheap.Bytes(lay.LocalTotal), err)
	}
	b.layout, b.static = lay, cfg.Static()
	if b.opt.Trace {
		b.tracePer = lay.TraceEvents(b.info.Grid)
		evBytes, total := symheap.TraceBytes(b.info.Grid, b.tracePer)
		if b.traceBuf, err = b.drv.MemAlloc(total); err != nil {
			return fmt.Errorf("trace buffer of %s: %w", symheap.Bytes(total), err)
		}
		b.traceEvBytes = evBytes
		if err := b.drv.MemsetD32(b.traceBuf, 0, total/4); err != nil {
			return err
		}
	}
	if err := b.drv.MemsetD32(b.sym, 0, lay.SymTotal/4); err != nil {
		return err
	}
	if err := b.drv.MemsetD32(b.local, 0, lay.LocalTotal/4); err != nil {
		return err
	}
	for pe := 0; pe < b.world; pe++ {
		if b.shm.Ptr(b.sym, pe) == 0 {
			return fmt.Errorf("rank %d cannot reach rank %d's GPU by NVLink/PCIe peer access (nvshmem_ptr is NULL): moerun runs on the GPUs of one node with P2P between all of them", b.rank, pe)
		}
	}
	return nil
}

// finishFirst ends the preparation of the layer that allocated the buffers
// (put: its upload's error): every rank waits until every heap is zeroed
// and every upload has landed before any may launch. Collective.
func (b *Backend) finishFirst(cfg config.Layer, put error) error {
	if put == nil {
		put = b.drv.CtxSynchronize()
	}
	if err := agree(b.comm, "upload weights", put); err != nil {
		return err
	}
	b.collective("barrier before the first launch", b.shm.BarrierAll)
	b.prepared, b.haveLast = true, false
	b.log.Info().Str("config", cfg.String()).Str("memory", b.layout.String()).Msg("gpu backend prepared")
	return nil
}

// checkMemory refuses a layout that cannot fit, naming what to change.
func (b *Backend) checkMemory(lay symheap.Layout) error {
	free, total, err := b.drv.MemGetInfo()
	if err != nil {
		return err
	}
	held := uint64(0)
	if b.prepared {
		held = b.layout.LocalTotal + b.layout.SymTotal
	}
	need := lay.LocalTotal + lay.SymTotal
	if need > free+held {
		return fmt.Errorf("needs %s of GPU memory (symmetric %s, local %s); GPU %d has %s free of %s: lower --max-tokens",
			symheap.Bytes(need), symheap.Bytes(lay.SymTotal), symheap.Bytes(lay.LocalTotal), b.ordinal,
			symheap.Bytes(free+held), symheap.Bytes(total))
	}
	size, src := symmetricSize()
	if lay.SymTotal+heapReserve > size {
		return fmt.Errorf("the symmetric heap needs %s per GPU, NVSHMEM_SYMMETRIC_SIZE is %s (%s): set NVSHMEM_SYMMETRIC_SIZE=%dM for every rank, or lower --max-tokens",
			symheap.Bytes(lay.SymTotal), symheap.Bytes(size), src, (lay.SymTotal+heapReserve)>>20+1)
	}
	return nil
}

// symmetricSize is NVSHMEM's symmetric heap size per PE from the environment.
func symmetricSize() (uint64, string) {
	v, ok := os.LookupEnv("NVSHMEM_SYMMETRIC_SIZE")
	if !ok || v == "" {
		return 1 << 30, "NVSHMEM's default"
	}
	n, err := parseSize(v)
	if err != nil {
		return 1 << 30, "unparsable " + strconv.Quote(v) + ", taken as the default"
	}
	return n, "set to " + v
}

// parseSize reads NVSHMEM's size syntax: a number with an optional k/m/g/t suffix.
func parseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := 1.0
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) {
		return 0, fmt.Errorf("size %q", s)
	}
	return uint64(math.Ceil(f * mult)), nil
}

// upload copies the gate and this rank's experts of w (nil: generated from
// cfg.Seed) to the weight regions at wp, laid out as lay (the layer's own
// plan), in the layout and storage of the mode (convert.go): fp32 as given;
// tf32 and bf16 with W1, Wu [H][I] and W2 [I][H] transposed (K contiguous)
// and rounded to tf32 or converted to bf16. Gate and biases: float32.
func (b *Backend) upload(cfg config.Layer, lay symheap.Layout, wp weightPtrs, w *backend.Weights) error {
	d := b.drv
	var gate []float32
	if w != nil {
		gate = w.Gate
	} else {
		gate = datagen.Gate(cfg)
	}
	if len(gate) != cfg.Hidden*cfg.Experts {
		return fmt.Errorf("gate: %d values, want %d", len(gate), cfg.Hidden*cfg.Experts)
	}
	if err := d.MemcpyHtoD(cuda.DevicePtr(wp.GateW), gate); err != nil {
		return fmt.Errorf("upload gate: %w", err)
	}
	if lay.GateT.Name != "" {
		if err := d.MemcpyHtoD(cuda.DevicePtr(wp.GateT), gatePiecesBF16(gate, cfg.Hidden, cfg.Experts)); err != nil {
			return fmt.Errorf("upload gate pieces: %w", err)
		}
	}
	h, i := cfg.Hidden, cfg.FFNHidden
	es := uint64(storageBytes(cfg.DType))
	for le := 0; le < lay.ExpertsPerRank; le++ {
		e := b.rank*lay.ExpertsPerRank + le
		var ex datagen.Expert
		if w != nil {
			p := w.Experts[e]
			if p == nil {
				return fmt.Errorf("expert %d is missing from the weights", e)
			}
			ex = *p
		} else {
			ex = datagen.ExpertWeights(cfg, e)
		}
		l := uint64(le)
		parts := []struct {
			r          symheap.Region
			at         uint64 // the region's address
			rows, cols int    // of the matrix as datagen makes it ([K][N]); rows 1 for a bias
			data       []float32
			matrix     bool
		}{
			{lay.W1, wp.W1, h, i, ex.W1, true}, {lay.W2, wp.W2, i, h, ex.W2, true}, {lay.Wu, wp.Wu, h, i, ex.Wu, true},
			{lay.B1, wp.B1, 1, i, ex.B1, false}, {lay.B2, wp.B2, 1, h, ex.B2, false},
		}
		for _, p := range parts {
			if p.r.Name == "" {
				continue
			}
			each := uint64(p.rows * p.cols)
			if uint64(len(p.data)) != each {
				return fmt.Errorf("expert %d %s: %d values, want %d", e, p.r.Name, len(p.data), each)
			}
			var host any = p.data
			elem := uint64(4)
			if p.matrix && tensorCore(cfg.DType) {
				elem = es
				switch cfg.DType {
				case config.TF32:
					host = transposeTF32(p.data, p.rows, p.cols)
				case config.BF16:
					host = transposeBF16(p.data, p.rows, p.cols)
				}
			}
			if p.at == 0 || (l+1)*each*elem > p.r.Size {
				return fmt.Errorf("expert %d %s: %d bytes at %d overrun the region of %d", e, p.r.Name, each*elem, l*each*elem, p.r.Size)
			}
			if err := d.MemcpyHtoD(cuda.DevicePtr(p.at+l*each*elem), host); err != nil {
				return fmt.Errorf("upload expert %d %s: %w", e, p.r.Name, err)
			}
		}
	}
	return nil
}

// dtypeCode is the kernel's MOE_DTYPE_* of d.
func dtypeCode(d config.DType) int32 {
	switch d {
	case config.TF32:
		return kernels.DTypeTF32
	case config.BF16:
		return kernels.DTypeBF16
	}
	return kernels.DTypeFP32
}

// params fills the kernel's argument for a forward of cfg with the weights
// in the local block (Prepare's layer).
func (b *Backend) params(cfg config.Layer) kernels.Params {
	return b.paramsFor(cfg, localWeights(uint64(b.local), b.layout))
}

// paramsFor fills the kernel's argument for a forward of cfg with the
// weights at wp (cfg.FFNHidden may be below the buffers' width).
func (b *Backend) paramsFor(cfg config.Layer, wp weightPtrs) kernels.Params {
	lay, sym, loc := b.layout, uint64(b.sym), uint64(b.local)
	t := cfg.Tokens
	p := kernels.Params{
		Tokens: int32(t), MaxTokens: int32(lay.MaxTokens), Hidden: int32(lay.Hidden), FFNHidden: int32(cfg.FFNHidden),
		Experts: int32(lay.Experts), TopK: int32(lay.TopK), World: int32(b.world), Rank: int32(b.rank),
		ExpertsPerRank: int32(lay.ExpertsPerRank), RowsPerSource: int32(lay.RowsPerSource),
		Capacity: int32(cfg.Capacity(t)), FFN: ffnCode(cfg.FFN), DType: dtypeCode(cfg.DType), Route: kernels.RouteSoftmax,
		GateKSplit: int32(gateSplit(t, lay.Experts, lay.Hidden, b.info.Grid, lay.GatePartRows, b.gateTC(cfg.DType))), DebugWithholdPeer: int32(b.opt.DebugWithholdPeer),
		MaxRowTiles: int32(lay.MaxRowTiles), WatchdogNs: uint64(b.opt.Watchdog.Nanoseconds()),
		HeapBase: sym, OffRecvRows: lay.RecvRows.Off, OffRecvMeta: lay.RecvMeta.Off, OffRecvCounts: lay.RecvCounts.Off,
		OffRetRows: lay.RetRows.Off, OffSigDispatch: lay.SigDispatch.Off, OffSigReturn: lay.SigReturn.Off,
		OffSeq: lay.Seq.Off, OffStatus: lay.Status.Off,
		X: symheap.Addr(loc, lay.X), Out: symheap.Addr(loc, lay.Out), Logits: symheap.Addr(loc, lay.Logits),
		LogitsPart: symheap.Addr(loc, lay.LogitsPart), TopKIdx: symheap.Addr(loc, lay.TopKIdx), TopKW: symheap.Addr(loc, lay.TopKW),
		GateW: wp.GateW, W1: wp.W1, B1: wp.B1, W2: wp.W2, B2: wp.B2, Wu: wp.Wu,
		Inter: symheap.Addr(loc, lay.Inter), RouteList: symheap.Addr(loc, lay.RouteList), RouteCount: symheap.Addr(loc, lay.RouteCount),
		Sched: symheap.Addr(loc, lay.Sched), RTDesc: symheap.Addr(loc, lay.RTDesc), TileDone: symheap.Addr(loc, lay.TileDone),
		G1List: symheap.Addr(loc, lay.G1List), GateT: wp.GateT, Flags: b.flags,
	}
	if b.traceBuf != 0 {
		p.Trace, p.TraceCounts, p.TraceCap = uint64(b.traceBuf), uint64(b.traceBuf)+b.traceEvBytes, int32(b.tracePer)
	}
	if cfg.Renormalize {
		p.Renormalize = 1
	}
	if cfg.Route == config.RouteSkew {
		p.Route = kernels.RouteSkew
	}
	if b.opt.DebugWithholdPeer < 0 {
		p.DebugWithholdPeer = -1
	}
	if b.wsFor(cfg) {
		// Its own scheduler block (the grid barrier's counter assumes one
		// grid), the TMA loads its tiles need, the gate split of its grid.
		p.Sched = uint64(b.ws.sched)
		p.Flags |= kernels.FlagTMA
		p.GateKSplit = int32(gateSplit(t, lay.Experts, lay.Hidden, b.ws.info.Grid, lay.GatePartRows, b.gateTC(cfg.DType)))
	}
	return p
}

func ffnCode(f config.FFN) int32 {
	switch f {
	case config.FFNGeLU:
		return kernels.FFNGeLU
	case config.FFNSwiGLU:
		return kernels.FFNSwiGLU
	}
	return kernels.FFNReLU
}

// gateTC says whether forwards in mode d run the tensor-core gate.
func (b *Backend) gateTC(d config.DType) bool {
	return d == config.BF16 && b.flags&kernels.FlagGateTC != 0
}

// gateSplit is the K split of the gate GEMM: the largest power of two whose
// tiles fit one wave of the grid (1 when the tiles alone fill it), at most
// GateMaxSplit, H/split a multiple of the tile's K step (SIMT: TileK;
// tensor-core gate (tc): 64 bf16), split x tokens within partRows (the
// layout's GatePartRows). Tiles: SIMT TileM tokens x TileN experts;
// tensor-core TCTileM tokens x GateTCGroup experts. A gate tile takes a
// fixed ~9 us (its first code, its epilogue) plus ~1 us a K step (2x H200,
// benchmarks.md, tenth session), so one wave of longer tiles beats two waves
// of shorter ones, and small forwards split most (T = 128: one row tile, 16
// tiles of 2 K steps each).
func gateSplit(tokens, experts, hidden, grid, partRows int, tc bool) int {
	tm, tn, kstep := kernels.TileM, kernels.TileN, kernels.TileK
	if tc {
		tm, tn, kstep = kernels.TCTileM, kernels.GateTCGroup, kernels.TCKBytes/2
	}
	tiles := ((tokens + tm - 1) / tm) * ((experts + tn - 1) / tn)
	ks := 1
	for ks < kernels.GateMaxSplit && 2*ks*tiles <= grid && hidden%(2*ks*kstep) == 0 && 2*ks*tokens <= partRows {
		ks *= 2
	}
	return ks
}

// Forward runs one forward of cfg.Tokens rows of x (collective): Stage, then
// ForwardStaged.
func (b *Backend) Forward(cfg config.Layer, x []float32) (backend.Timing, error) {
	if err := b.Stage(cfg, x); err != nil {
		return backend.Timing{}, err
	}
	return b.ForwardStaged(cfg)
}

// Stage uploads this rank's tokens x [T, H] for the next forward of cfg (in
// bf16 mode converted on the host) and poisons the output with NaN, so that
// an element the kernel does not write cannot pass verification. It stages
// layer 0 (Prepare's); ForwardLayer stages other layers.
func (b *Backend) Stage(cfg config.Layer, x []float32) error {
	return b.stage(0, cfg, x)
}

// stage is Stage of layer id.
func (b *Backend) stage(id int, cfg config.Layer, x []float32) error {
	// CUDA's current context is per OS thread: stay on one thread for the
	// whole call (the context is made current below), whichever goroutine
	// calls. LockOSThread nests, so a caller's own lock is kept.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := b.usable(); err != nil {
		return err
	}
	if _, err := b.layerFor(id, cfg); err != nil {
		return err
	}
	if err := cfg.Validate(b.world); err != nil {
		return err
	}
	if len(x) != cfg.Tokens*cfg.Hidden {
		return fmt.Errorf("forward: x has %d values, want T*H = %d*%d", len(x), cfg.Tokens, cfg.Hidden)
	}
	d, lay := b.drv, b.layout
	if err := d.CtxSetCurrent(b.ctx); err != nil {
		return err
	}
	// The tokens' and outputs' buffers are shared with device forwards
	// queued on a caller's stream: wait for the last one.
	if err := b.quiesce(); err != nil {
		return err
	}
	// On the kernel's stream: a synchronous copy from pageable memory may
	// return before its DMA lands, and the stream does not wait for stream 0.
	// In bf16 mode the tokens travel as bf16 (xbuf: the copy from pageable
	// memory has staged it when the call returns, so it may be reused).
	var xs any = x
	if cfg.DType == config.BF16 {
		if cap(b.xbuf) < len(x) {
			b.xbuf = make([]uint16, len(x))
		}
		toBF16(b.xbuf[:len(x)], x)
		xs = b.xbuf[:len(x)]
	}
	if err := d.MemcpyHtoDAsync(cuda.DevicePtr(symheap.Addr(uint64(b.local), lay.X)), xs, b.stream); err != nil {
		return fmt.Errorf("upload tokens: %w", err)
	}
	if n := uint64(cfg.Tokens * cfg.Hidden); n > 0 {
		if err := d.MemsetD32Async(cuda.DevicePtr(symheap.Addr(uint64(b.local), lay.Out)), poisonNaN, n, b.stream); err != nil {
			return err
		}
	}
	b.traceCached, b.traceEvs = false, nil
	if b.traceBuf != 0 {
		// Every block stores its count at exit; zeroed so that a block that
		// never got there reads as no events.
		if err := d.MemsetD32Async(cuda.DevicePtr(uint64(b.traceBuf)+b.traceEvBytes), 0, uint64(b.info.Grid), b.stream); err != nil {
			return err
		}
	}
	// Wait (bounded) until the copies have landed: a forward launched after
	// Stage starts at once, so that ranks that meet at a barrier between the
	// two enter the kernel together.
	if err := d.StreamWait(b.stream, 10*time.Second+b.opt.Watchdog); err != nil {
		return fmt.Errorf("stage tokens: %w", err)
	}
	b.staged, b.stagedCfg, b.stagedID = true, cfg, id
	runtime.KeepAlive(x)
	return nil
}

// ForwardStaged runs the forward of the tokens that Stage uploaded for cfg.
func (b *Backend) ForwardStaged(cfg config.Layer) (backend.Timing, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var tm backend.Timing
	if err := b.usable(); err != nil {
		return tm, err
	}
	arg, exec, err := b.takeStaged(cfg)
	if err != nil {
		return tm, err
	}
	d := b.drv
	if err := d.EventRecord(b.evStart, b.stream); err != nil {
		return tm, err
	}
	if err := b.launchStaged(cfg, arg, exec); err != nil {
		return tm, err
	}
	if err := d.EventRecord(b.evEnd, b.stream); err != nil {
		return tm, err
	}
	if err := b.waitKernels(b.evEnd, 1); err != nil {
		return tm, err
	}
	if tm.Elapsed, err = d.EventElapsedTime(b.evStart, b.evEnd); err != nil {
		return tm, err
	}
	if err := b.finishTiming(&tm); err != nil {
		return tm, err
	}
	b.last, b.haveLast = cfg, true
	return tm, nil
}

// takeStaged makes the backend's context current and returns the kernel
// argument of the forward staged for cfg (and its graph exec with
// Options.Graph); the tokens are no longer staged after it.
func (b *Backend) takeStaged(cfg config.Layer) ([]byte, cuda.GraphExec, error) {
	if !b.staged || b.stagedCfg != cfg {
		return nil, 0, fmt.Errorf("forward of %s: its tokens were not staged (Stage first)", cfg.String())
	}
	b.staged = false
	if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
		return nil, 0, err
	}
	l, err := b.layerFor(b.stagedID, cfg)
	if err != nil {
		return nil, 0, err
	}
	p := b.paramsFor(cfg, l.wp)
	if err := b.setTMaps(&p, cfg); err != nil {
		return nil, 0, err
	}
	arg := p.Bytes()
	var exec cuda.GraphExec
	if b.opt.Graph {
		// A failed capture ran nothing: the runtime stays usable.
		if exec, err = b.graphFor(cfg, arg); err != nil {
			return nil, 0, err
		}
	}
	return arg, exec, nil
}

// launchStaged queues one forward of cfg on the kernel's stream: the captured
// graph exec with Options.Graph, else a cooperative launch with argument arg.
func (b *Backend) launchStaged(cfg config.Layer, arg []byte, exec cuda.GraphExec) error {
	if b.opt.Graph {
		_, info := b.kernelFor(cfg)
		b.lastGrid = info.Grid
		if err := b.drv.GraphLaunch(exec, b.stream); err != nil {
			b.broken = fmt.Errorf("kernel graph launch failed: %w", err)
			return b.broken
		}
	} else if err := b.launch(cfg, arg, b.stream); err != nil {
		b.broken = fmt.Errorf("kernel launch failed: %w", err)
		return b.broken
	}
	b.launches++
	b.launchedAt = time.Now()
	return nil
}

// LaunchedAt is the host clock when the last launch call of a staged or
// queued forward returned (the benchmark compares it across ranks).
func (b *Backend) LaunchedAt() time.Time { return b.launchedAt }

// kernelsBound is how long the host waits for n queued kernels: each ends
// within its watchdog period of every wait, so four periods each plus slack
// only fail a kernel that cannot end.
func (b *Backend) kernelsBound(n int) time.Duration {
	return time.Duration(n)*4*b.opt.Watchdog + 10*time.Second
}

// waitKernels waits for ev, recorded after the last of n queued kernels.
// The kernel's own watchdog ends each one; this bound only catches a kernel
// that cannot end (which a watchdog bug would be).
func (b *Backend) waitKernels(ev cuda.Event, n int) error {
	bound := b.kernelsBound(n)
	if err := b.drv.EventWait(ev, bound); err != nil {
		b.broken = fmt.Errorf("rank %d: kernel (launch %d) did not finish within %v: %w; the GPU stays busy until this process exits", b.rank, b.launches, bound, err)
		return b.broken
	}
	return nil
}

// finishTiming reads the status block after the last launch: an abort in
// any launch since the runtime opened is kept there (the first writer wins)
// and makes the runtime unusable. On success it fills tm's bytes put and SM
// utilisation (of the last launch).
func (b *Backend) finishTiming(tm *backend.Timing) error {
	st, err := b.statusOK()
	if err != nil {
		return err
	}
	tm.BytesPut = int64(st.BytesPut)
	tm.SMUtil = -1
	if st.TEnd > st.TStart && b.lastGrid > 0 {
		tm.SMUtil = float64(st.BusyNs) / (float64(b.lastGrid) * float64(st.TEnd-st.TStart))
		tm.Span = time.Duration(st.TEnd - st.TStart)
	}
	return nil
}

// launch queues one cooperative launch of cfg's kernel (kernelFor) on stream s.
func (b *Backend) launch(cfg config.Layer, arg []byte, s cuda.Stream) error {
	fn, info := b.kernelFor(cfg)
	b.lastGrid = info.Grid
	grid := [3]uint32{uint32(info.Grid), 1, 1}
	block := [3]uint32{uint32(info.Threads), 1, 1}
	smem := uint32(info.DynamicSmem) // the phase buffer of a tensor-core launch
	if !tensorCore(cfg.DType) {
		smem = kernels.SIMTPhaseBytes
	}
	return b.drv.LaunchCooperative(fn, grid, block, smem, s, arg)
}

// kernelFor is the kernel that runs the forward of cfg and its geometry:
// the MOE_WS build's for the forwards its tiles take (wsFor), else the
// default build's.
func (b *Backend) kernelFor(cfg config.Layer) (cuda.Function, *KernelInfo) {
	if b.wsFor(cfg) {
		return b.ws.fn, &b.ws.info
	}
	return b.fn, &b.info
}

// LastGrid is the grid of the last forward launched: the default kernel's
// (Kernel().Grid) or the MOE_WS kernel's.
func (b *Backend) LastGrid() int { return b.lastGrid }

// maxGraphs bounds the captured forwards kept at once (each is one kernel
// node); when full, all are dropped and capturing starts over.
const maxGraphs = 64

// graphFor returns the executable graph of one launch of cfg with argument
// arg (which holds the mode and, through its scheduler block, the kernel),
// capturing it on first use.
func (b *Backend) graphFor(cfg config.Layer, arg []byte) (cuda.GraphExec, error) {
	key := string(arg)
	if e, ok := b.graphs[key]; ok {
		return e, nil
	}
	if len(b.graphs) >= maxGraphs {
		b.dropGraphs()
	}
	d := b.drv
	if err := d.StreamBeginCapture(b.stream, cuda.CaptureModeThreadLocal); err != nil {
		return 0, fmt.Errorf("graph capture of the forward: %w", err)
	}
	lerr := b.launch(cfg, arg, b.stream)
	g, err := d.StreamEndCapture(b.stream)
	if lerr != nil || err != nil {
		if err == nil {
			d.GraphDestroy(g)
		}
		return 0, fmt.Errorf("graph capture of the forward (cooperative launch): %w", errors.Join(lerr, err))
	}
	e, err := d.GraphInstantiate(g)
	if derr := d.GraphDestroy(g); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		return 0, fmt.Errorf("instantiate the forward's graph: %w", err)
	}
	if b.graphs == nil {
		b.graphs = map[string]cuda.GraphExec{}
	}
	b.graphs[key] = e
	b.log.Debug().Int("graphs", len(b.graphs)).Msg("captured a forward as a CUDA graph")
	return e, nil
}

// dropGraphs destroys every captured forward.
func (b *Backend) dropGraphs() {
	for k, e := range b.graphs {
		if err := b.drv.GraphExecDestroy(e); err != nil {
			b.log.Debug().Err(err).Msg("destroy a forward's graph")
		}
		delete(b.graphs, k)
	}
}

func (b *Backend) status() (kernels.Status, error) {
	buf := make([]byte, kernels.StatusSize)
	if err := b.drv.MemcpyDtoH(buf, cuda.DevicePtr(symheap.Addr(uint64(b.sym), b.layout.Status))); err != nil {
		return kernels.Status{}, fmt.Errorf("read the kernel's status block: %w", err)
	}
	return kernels.StatusFromBytes(buf), nil
}

// statusOK reads the status block after the device work it follows and
// makes the runtime refuse further work when that could not be read or a
// launch failed (the code is sticky: an abort in any launch stays there).
func (b *Backend) statusOK() (kernels.Status, error) {
	st, err := b.status()
	if err != nil {
		b.broken = err
		return st, err
	}
	if st.Code != kernels.StatusOK {
		b.broken = b.statusError(st)
		return st, b.broken
	}
	return st, nil
}

// statusError turns a failed launch's status block into the error the host reports.
func (b *Backend) statusError(st kernels.Status) error {
	return StatusError(st, b.launches)
}

// StatusError words a status block, e.g. "watchdog: rank 1 waited 2.0s for
// the dispatch signal from rank 3 (launch 5)".
func StatusError(st kernels.Status, launch uint64) error {
	seq := st.Seq
	if seq == 0 {
		seq = launch
	}
	switch st.Code {
	case kernels.StatusWatchdog:
		what := kernels.WaitName(st.Kind)
		if st.Peer >= 0 && (st.Kind == kernels.WaitDispatch || st.Kind == kernels.WaitReturn) {
			what += fmt.Sprintf(" from rank %d", st.Peer)
		}
		el := time.Duration(st.ElapsedNs).Round(100 * time.Millisecond)
		return fmt.Errorf("watchdog: rank %d waited %.1fs for %s (launch %d); the runtime refuses further forwards until it is closed",
			st.Rank, el.Seconds(), what, seq)
	case kernels.StatusNotP2P:
		return fmt.Errorf("kernel: rank %d has no P2P mapping of rank %d's heap (launch %d)", st.Rank, st.Peer, seq)
	case kernels.StatusBadParams:
		return fmt.Errorf("kernel refused its parameters on rank %d (launch %d): a host/kernel mismatch (rebuild with make)", st.Rank, seq)
	}
	return fmt.Errorf("kernel status %d on rank %d (launch %d)", st.Code, st.Rank, seq)
}

// Result copies the last forward's outputs to the host.
func (b *Backend) Result() (*backend.Result, error) {
	// CUDA's current context is per OS thread: stay on one thread for the
	// whole call (the context is made current below), whichever goroutine
	// calls. LockOSThread nests, so a caller's own lock is kept.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if b.closed {
		return nil, errors.New("gpu backend is closed")
	}
	if !b.haveLast {
		return nil, errors.New("no forward has completed")
	}
	if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
		return nil, err
	}
	c, lay, base := b.last, b.layout, uint64(b.local)
	r := &backend.Result{
		Out:     make([]float32, c.Tokens*c.Hidden),
		TopKIdx: make([]int32, c.Tokens*c.TopK),
		TopKW:   make([]float32, c.Tokens*c.TopK),
		Logits:  make([]float32, c.Tokens*c.Experts),
	}
	copies := []struct {
		dst any
		r   symheap.Region
	}{{r.Out, lay.Out}, {r.TopKIdx, lay.TopKIdx}, {r.TopKW, lay.TopKW}, {r.Logits, lay.Logits}}
	for _, cp := range copies {
		if err := b.drv.MemcpyDtoH(cp.dst, cuda.DevicePtr(symheap.Addr(base, cp.r))); err != nil {
			return nil, fmt.Errorf("read %s: %w", cp.r.Name, err)
		}
	}
	return r, nil
}

// usable refuses work on a closed or tripped runtime.
func (b *Backend) usable() error {
	if b.closed {
		return errors.New("gpu backend is closed")
	}
	if b.broken != nil {
		return fmt.Errorf("gpu backend refuses further forwards: %w", b.broken)
	}
	return nil
}

// release frees the prepared memory (collective for the symmetric part) and
// the graphs that point into it.
func (b *Backend) release() error {
	var errs []error
	b.dropGraphs()
	errs = append(errs, b.dropLayers())
	if b.local != 0 {
		errs = append(errs, b.drv.MemFree(b.local))
		b.local = 0
	}
	if b.traceBuf != 0 {
		errs = append(errs, b.drv.MemFree(b.traceBuf))
		b.traceBuf = 0
	}
	b.traceCached, b.traceEvs = false, nil
	if b.sym != 0 {
		b.collective("symmetric heap free (nvshmem_free)", func() { b.shm.Free(b.sym) })
		b.sym = 0
	}
	b.prepared = false
	return errors.Join(errs...)
}

// Close releases everything; safe after errors and twice. After a hang
// (the kernel still running) it frees nothing on the device and does not
// finalize NVSHMEM, whose collective teardown would wait on the kernel.
func (b *Backend) Close() error {
	// CUDA's current context is per OS thread: stay on one thread for the
	// whole call (the context is made current below), whichever goroutine
	// calls. LockOSThread nests, so a caller's own lock is kept.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if b == nil || b.closed {
		return nil
	}
	b.closed = true
	if b.drv == nil {
		return nil
	}
	var errs []error
	if b.ctxHeld {
		errs = append(errs, b.drv.CtxSetCurrent(b.ctx))
	}
	hung := false
	if b.devPending {
		if err := b.drv.EventWait(b.evDev, 5*time.Second); err != nil {
			hung = true
			errs = append(errs, fmt.Errorf("close: a forward on the caller's stream is still running: %w", err))
		}
	}
	if b.haveStream {
		if err := b.drv.StreamWait(b.stream, 5*time.Second); err != nil {
			hung = true
			errs = append(errs, fmt.Errorf("close: the kernel is still running: %w", err))
		}
	}
	if hung {
		return errors.Join(errs...)
	}
	// NVSHMEM's teardown (the heap's free, finalize) waits for every rank:
	// Close is collective, and a rank that does not come within the timeout
	// ends the others from inside it (boundCollective).
	if b.shmUp {
		errs = append(errs, b.release())
	} else if b.local != 0 {
		errs = append(errs, b.drv.MemFree(b.local))
	}
	if b.haveEvents {
		errs = append(errs, b.drv.EventDestroy(b.evStart), b.drv.EventDestroy(b.evEnd))
	}
	if b.haveEvDev {
		errs = append(errs, b.drv.EventDestroy(b.evDev))
	}
	for _, ev := range b.evQueue {
		errs = append(errs, b.drv.EventDestroy(ev))
	}
	b.evQueue = nil
	if b.haveStream {
		errs = append(errs, b.drv.StreamDestroy(b.stream))
	}
	errs = append(errs, b.closeWS())
	if b.modShmem {
		errs = append(errs, b.shm.CumoduleFinalize(b.mod))
	}
	if b.modLoaded {
		errs = append(errs, b.drv.ModuleUnload(b.mod))
	}
	if b.shmUp {
		b.collective("finalize", b.shm.HostlibFinalize)
	}
	if b.ctxHeld {
		errs = append(errs, b.drv.PrimaryCtxRelease(b.dev))
	}
	return errors.Join(errs...)
}

// agree tells every rank whether every rank succeeded at step: it returns
// nil only when mine is nil everywhere, else an error naming each rank's
// failure. Collective (bounded by the communicator's timeout).
func agree(c transport.Comm, step string, mine error) error {
	msg := []byte{}
	if mine != nil {
		msg = []byte(mine.Error())
		if len(msg) == 0 {
			msg = []byte("failed")
		}
	}
	all, err := c.AllGather(msg)
	if err != nil {
		if mine != nil {
			return fmt.Errorf("%w (and telling the other ranks failed: %v)", mine, err)
		}
		return fmt.Errorf("%s: exchange with the other ranks: %w", step, err)
	}
	var errs []error
	for r, m := range all {
		if len(m) == 0 {
			continue
		}
		if r == c.Rank() {
			errs = append(errs, fmt.Errorf("rank %d: %w", r, mine))
		} else {
			errs = append(errs, fmt.Errorf("rank %d: %s", r, m))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%s: %w", step, errors.Join(errs...))
}
