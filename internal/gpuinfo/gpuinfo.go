// Package gpuinfo reads the node's GPUs, their NVLinks and their
// peer-to-peer reachability from NVML (github.com/NVIDIA/go-nvml, which
// dlopens libnvidia-ml.so.1 at run time, so this package builds and runs
// where there is no driver and says so when asked).
//
// NVML numbers every GPU of the node and ignores CUDA_VISIBLE_DEVICES: match
// CUDA devices to NVML's by UUID (Info.ByUUID), never by index.
package gpuinfo

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPU is one device as NVML sees it.
type GPU struct {
	Index        int    `json:"index"`      // NVML's index: all GPUs of the node, not CUDA's numbering
	UUID         string `json:"uuid"`       // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
	Name         string `json:"name"`       // "NVIDIA H100 80GB HBM3"
	PCIBusID     string `json:"pci_bus_id"` // "00000000:18:00.0"
	MemTotal     uint64 `json:"mem_total"`  // bytes
	ComputeMajor int    `json:"compute_major"`
	ComputeMinor int    `json:"compute_minor"`
}

// P2P matrix entries.
const (
	P2POK      = "OK" // reads and writes peer-to-peer are supported
	P2PNo      = "NS" // not supported (any reason NVML gives)
	P2PUnknown = "?"  // NVML could not say
	P2PSelf    = "-"  // the diagonal
)

// Info is the node's GPU topology.
type Info struct {
	Driver            string `json:"driver"`              // driver version, "580.159.04"
	CUDADriverVersion int    `json:"cuda_driver_version"` // CUDA version of the driver, 13000 for 13.0
	GPUs              []GPU  `json:"gpus"`
	// The matrices are indexed by position in GPUs (which is GPU.Index when
	// Probe made them).
	//
	// P2P[i][j] says whether GPU i can read from and write to GPU j
	// peer-to-peer: P2POK, P2PNo, P2PUnknown, or P2PSelf on the diagonal.
	P2P [][]string `json:"p2p"`
	// NVLinks[i][j] is the number of active NVLinks between GPUs i and j,
	// direct or through NVSwitches (0 on the diagonal).
	NVLinks [][]int `json:"nvlinks"`
}

// ErrNoDriver is wrapped by Probe's error when there is no usable NVIDIA
// driver on this machine.
var ErrNoDriver = errors.New("no NVIDIA driver")

const libName = "libnvidia-ml.so.1"

// lib is the part of NVML that Probe uses (nvml.Interface satisfies it), so
// that tests can stand in for a driver.
type lib interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	SystemGetDriverVersion() (string, nvml.Return)
	SystemGetCudaDriverVersion() (int, nvml.Return)
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(int) (nvml.Device, nvml.Return)
	DeviceGetP2PStatus(nvml.Device, nvml.Device, nvml.GpuP2PCapsIndex) (nvml.GpuP2PStatus, nvml.Return)
}

// newLib returns the real NVML.
var newLib = func() lib { return nvml.New() }

// Probe reads the GPUs, P2P reachability and NVLinks of this node. Without a
// driver it returns an error wrapping ErrNoDriver that says what was missing.
func Probe() (*Info, error) { return probe(newLib()) }

// Count returns the number of GPUs on this node according to NVML, or 0 when
// there is no driver (or NVML fails).
func Count() int {
	l := newLib()
	if l.Init() != nvml.SUCCESS {
		return 0
	}
	defer l.Shutdown()
	n, ret := l.DeviceGetCount()
	if ret != nvml.SUCCESS || n < 0 {
		return 0
	}
	return n
}

func probe(l lib) (*Info, error) {
	if err := start(l); err != nil {
		return nil, err
	}
	defer l.Shutdown()

	info := &Info{}
	var ret nvml.Return
	if info.Driver, ret = l.SystemGetDriverVersion(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("NVML: driver version: %v", ret)
	}
	if info.CUDADriverVersion, ret = l.SystemGetCudaDriverVersion(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("NVML: CUDA driver version: %v", ret)
	}
	n, ret := l.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("NVML: device count: %v", ret)
	}
	devs := make([]nvml.Device, n)
	info.GPUs = make([]GPU, n)
	for i := range devs {
		if devs[i], ret = l.DeviceGetHandleByIndex(i); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("NVML: GPU %d: handle: %v", i, ret)
		}
		g, err := readGPU(i, devs[i])
		if err != nil {
			return nil, err
		}
		info.GPUs[i] = g
	}
	info.P2P = p2pMatrix(l, devs)
	info.NVLinks = nvlinkMatrix(devs, info.GPUs)
	return info, nil
}

// start initialises NVML, turning a missing library or driver into an error
// wrapping ErrNoDriver that a user can act on.
func start(l lib) error {
	switch ret := l.Init(); ret {
	case nvml.SUCCESS:
		return nil
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		detail := "not found"
		// go-nvml keeps dlopen's message to itself: ask again for it.
		d := dl.New(libName, dl.RTLD_LAZY|dl.RTLD_GLOBAL)
		if err := d.Open(); err != nil {
			detail = err.Error()
		} else {
			d.Close()
		}
		return fmt.Errorf("%w: %s could not be loaded (NVML): %s", ErrNoDriver, libName, detail)
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return fmt.Errorf("%w: NVML is installed but the kernel driver is not loaded (NVML: %v)", ErrNoDriver, ret)
	default:
		return fmt.Errorf("NVML could not start: %v", ret)
	}
}

func readGPU(i int, d nvml.Device) (GPU, error) {
	g := GPU{Index: i}
	var ret nvml.Return
	fail := func(what string) (GPU, error) { return GPU{}, fmt.Errorf("NVML: GPU %d: %s: %v", i, what, ret) }
	if g.UUID, ret = d.GetUUID(); ret != nvml.SUCCESS {
		return fail("UUID")
	}
	if g.Name, ret = d.GetName(); ret != nvml.SUCCESS {
		return fail("name")
	}
	pci, ret := d.GetPciInfo()
	if ret != nvml.SUCCESS {
		return fail("PCI info")
	}
	g.PCIBusID = busID(pci)
	mem, ret := d.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return fail("memory info")
	}
	g.MemTotal = mem.Total
	if g.ComputeMajor, g.ComputeMinor, ret = d.GetCudaComputeCapability(); ret != nvml.SUCCESS {
		return fail("compute capability")
	}
	return g, nil
}

// busID is the PCI bus id string, "00000000:18:00.0".
func busID(p nvml.PciInfo) string {
	b := make([]byte, 0, len(p.BusId))
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	if len(b) == 0 {
		return fmt.Sprintf("%08x:%02x:%02x.0", p.Domain, p.Bus, p.Device)
	}
	return string(b)
}

// pciKey identifies a PCI device whatever the format of its bus id string.
type pciKey struct{ domain, bus, device uint32 }

// p2pMatrix asks NVML, for every ordered pair, whether reads and writes
// peer-to-peer are supported.
func p2pMatrix(l lib, devs []nvml.Device) [][]string {
	m := make([][]string, len(devs))
	for i := range devs {
		m[i] = make([]string, len(devs))
		for j := range devs {
			if i == j {
				m[i][j] = P2PSelf
				continue
			}
			status := P2POK
			for _, capIdx := range []nvml.GpuP2PCapsIndex{nvml.P2P_CAPS_INDEX_READ, nvml.P2P_CAPS_INDEX_WRITE} {
				st, ret := l.DeviceGetP2PStatus(devs[i], devs[j], capIdx)
				switch {
				case ret != nvml.SUCCESS:
					if status == P2POK {
						status = P2PUnknown
					}
				case st != nvml.P2P_STATUS_OK:
					status = P2PNo // a known "no" outweighs an unknown
				}
			}
			m[i][j] = status
		}
	}
	return m
}

// nvlinkMatrix counts the active NVLinks between every pair of GPUs: links
// that end on the other GPU, plus, where both GPUs have links into the
// NVSwitch fabric, the smaller of their switch link counts (what
// nvidia-smi topo -m shows as NV18 on an HGX H100).
func nvlinkMatrix(devs []nvml.Device, gpus []GPU) [][]int {
	byPCI := map[pciKey]int{}
	for i, d := range devs {
		if p, ret := d.GetPciInfo(); ret == nvml.SUCCESS {
			byPCI[pciKey{p.Domain, p.Bus, p.Device}] = i
		}
	}
	n := len(devs)
	direct := make([][]int, n)
	toSwitch := make([]int, n)
	for i, d := range devs {
		direct[i] = make([]int, n)
		for link := 0; link < nvml.NVLINK_MAX_LINKS; link++ {
			st, ret := d.GetNvLinkState(link)
			if ret != nvml.SUCCESS || st != nvml.FEATURE_ENABLED {
				continue
			}
			typ, ret := d.GetNvLinkRemoteDeviceType(link)
			typeKnown := ret == nvml.SUCCESS
			if typeKnown && typ == nvml.NVLINK_DEVICE_TYPE_SWITCH {
				toSwitch[i]++
				continue
			}
			p, ret := d.GetNvLinkRemotePciInfo(link)
			if ret != nvml.SUCCESS {
				continue
			}
			j, ok := byPCI[pciKey{p.Domain, p.Bus, p.Device}]
			switch {
			case ok && j != i:
				direct[i][j]++
			case !ok && !typeKnown:
				// Older drivers cannot tell the remote type: a link that
				// ends on no GPU of this node ends on a switch.
				toSwitch[i]++
			}
		}
	}
	m := make([][]int, n)
	for i := range m {
		m[i] = make([]int, n)
		for j := range m[i] {
			if i != j {
				m[i][j] = max(direct[i][j], direct[j][i]) + min(toSwitch[i], toSwitch[j])
			}
		}
	}
	return m
}

// ByUUID returns the GPU with that UUID ("GPU-…", as NVML gives it, or as
// CUDA's cuDeviceGetUuid bytes formatted with a "GPU-" prefix; case and the
// prefix do not matter).
func (i *Info) ByUUID(uuid string) (GPU, error) {
	k, err := i.find(uuid)
	if err != nil {
		return GPU{}, err
	}
	return i.GPUs[k], nil
}

// find returns the position in GPUs (and in the P2P and NVLink matrices) of
// the GPU with that UUID.
func (i *Info) find(uuid string) (int, error) {
	want := normUUID(uuid)
	for k, g := range i.GPUs {
		if normUUID(g.UUID) == want {
			return k, nil
		}
	}
	have := make([]string, len(i.GPUs))
	for k, g := range i.GPUs {
		have[k] = g.UUID
	}
	return 0, fmt.Errorf("no GPU with UUID %s among the %d that NVML sees on this node (%s)",
		uuid, len(i.GPUs), strings.Join(have, ", "))
}

func normUUID(u string) string {
	u = strings.ToLower(strings.TrimSpace(u))
	return strings.TrimPrefix(u, "gpu-")
}

// CheckP2P returns nil when every GPU in uuids can read from and write to
// every other one peer-to-peer, else an error naming the first pair that
// cannot.
func (i *Info) CheckP2P(uuids []string) error {
	pos := make([]int, len(uuids))
	for k, u := range uuids {
		p, err := i.find(u)
		if err != nil {
			return fmt.Errorf("check peer-to-peer access: %w", err)
		}
		if p >= len(i.P2P) || len(i.P2P[p]) != len(i.GPUs) {
			return fmt.Errorf("check peer-to-peer access: no P2P information for GPU %d (%s)", i.GPUs[p].Index, i.GPUs[p].UUID)
		}
		pos[k] = p
	}
	for _, pa := range pos {
		for _, pb := range pos {
			if pa == pb {
				continue
			}
			a, b := i.GPUs[pa], i.GPUs[pb]
			if st := i.P2P[pa][pb]; st != P2POK {
				why := "not supported"
				if st == P2PUnknown {
					why = "NVML could not tell"
				}
				return fmt.Errorf("GPU %d (%s, %s) cannot reach GPU %d (%s, %s) peer-to-peer (%s): "+
					"ranks on these GPUs cannot exchange tokens without a remote transport",
					a.Index, a.UUID, a.PCIBusID, b.Index, b.UUID, b.PCIBusID, why)
			}
		}
	}
	return nil
}

// CUDAVersion formats the driver's CUDA version, "13.0".
func (i *Info) CUDAVersion() string {
	v := i.CUDADriverVersion
	return fmt.Sprintf("%d.%d", v/1000, v%1000/10)
}

// Write prints the topology as text, in the manner of nvidia-smi topo -m:
// one line per GPU, then the P2P matrix and the NVLink matrix.
func (i *Info) Write(w io.Writer) {
	fmt.Fprintf(w, "NVIDIA driver %s, CUDA %s, %d GPU(s)\n\n", i.Driver, i.CUDAVersion(), len(i.GPUs))
	if len(i.GPUs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GPU\tNAME\tMEMORY\tCC\tBUS ID\tUUID")
	for _, g := range i.GPUs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d.%d\t%s\t%s\n", g.Index, g.Name, gib(g.MemTotal), g.ComputeMajor, g.ComputeMinor, g.PCIBusID, g.UUID)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nPeer-to-peer read+write (%s supported, %s not supported, %s unknown)\n", P2POK, P2PNo, P2PUnknown)
	i.matrix(w, func(a, b int) string {
		if a < len(i.P2P) && b < len(i.P2P[a]) {
			return i.P2P[a][b]
		}
		return P2PUnknown
	})

	fmt.Fprintln(w, "\nNVLink (active links between each pair, direct or through NVSwitch)")
	i.matrix(w, func(a, b int) string {
		switch {
		case a == b:
			return P2PSelf
		case a >= len(i.NVLinks) || b >= len(i.NVLinks[a]):
			return P2PUnknown
		case i.NVLinks[a][b] == 0:
			return "0"
		}
		return fmt.Sprintf("NV%d", i.NVLinks[a][b])
	})
}

// matrix prints one GPU×GPU table with cells from cell.
func (i *Info) matrix(w io.Writer, cell func(a, b int) string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, g := range i.GPUs {
		fmt.Fprintf(tw, "\tGPU%d", g.Index)
	}
	fmt.Fprintln(tw)
	for a, g := range i.GPUs {
		fmt.Fprintf(tw, "GPU%d", g.Index)
		for b := range i.GPUs {
			fmt.Fprintf(tw, "\t%s", cell(a, b))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// gib formats bytes as GiB with one decimal.
func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
