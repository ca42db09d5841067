package gpuinfo

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// fakeDev is one GPU of fakeLib. Methods that Probe does not use are left to
// the embedded nil interface (calling one panics, which fails the test).
type fakeDev struct {
	nvml.Device
	i     int
	bus   uint32
	links []fakeLink
}

type fakeLink struct {
	toSwitch bool
	peerBus  uint32 // for a GPU link
	noType   bool   // remote type query unsupported (old driver)
	inactive bool
}

func (d *fakeDev) pci(bus uint32) nvml.PciInfo {
	p := nvml.PciInfo{Domain: 0, Bus: bus, Device: 0}
	for k, c := range fmt.Sprintf("00000000:%02X:00.0", bus) {
		p.BusId[k] = int8(c)
	}
	return p
}

func (d *fakeDev) GetUUID() (string, nvml.Return) {
	return fmt.Sprintf("GPU-0000000%d-aaaa-bbbb-cccc-dddddddddddd", d.i), nvml.SUCCESS
}
func (d *fakeDev) GetName() (string, nvml.Return) { return "NVIDIA H100 80GB HBM3", nvml.SUCCESS }
func (d *fakeDev) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	return d.pci(d.bus), nvml.SUCCESS
}
func (d *fakeDev) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	return nvml.Memory{Total: 80 << 30}, nvml.SUCCESS
}
func (d *fakeDev) GetCudaComputeCapability() (int, int, nvml.Return) { return 9, 0, nvml.SUCCESS }
func (d *fakeDev) GetNvLinkState(link int) (nvml.EnableState, nvml.Return) {
	if link >= len(d.links) {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	if d.links[link].inactive {
		return nvml.FEATURE_DISABLED, nvml.SUCCESS
	}
	return nvml.FEATURE_ENABLED, nvml.SUCCESS
}
func (d *fakeDev) GetNvLinkRemoteDeviceType(link int) (nvml.IntNvLinkDeviceType, nvml.Return) {
	l := d.links[link]
	switch {
	case l.noType:
		return 0, nvml.ERROR_NOT_SUPPORTED
	case l.toSwitch:
		return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
	}
	return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
}
func (d *fakeDev) GetNvLinkRemotePciInfo(link int) (nvml.PciInfo, nvml.Return) {
	l := d.links[link]
	if l.toSwitch {
		return d.pci(0xf0 + uint32(link%4)), nvml.SUCCESS
	}
	return d.pci(l.peerBus), nvml.SUCCESS
}

// fakeLib is an NVML with hand-made GPUs.
type fakeLib struct {
	initRet  nvml.Return
	devs     []*fakeDev
	noP2P    map[[2]int]bool // pairs whose P2P write is not supported
	shutdown int
}

func (l *fakeLib) Init() nvml.Return { return l.initRet }
func (l *fakeLib) Shutdown() nvml.Return {
	l.shutdown++
	return nvml.SUCCESS
}
func (l *fakeLib) SystemGetDriverVersion() (string, nvml.Return) { return "580.159.04", nvml.SUCCESS }
func (l *fakeLib) SystemGetCudaDriverVersion() (int, nvml.Return) {
	return 13000, nvml.SUCCESS
}
func (l *fakeLib) DeviceGetCount() (int, nvml.Return) { return len(l.devs), nvml.SUCCESS }
func (l *fakeLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	return l.devs[i], nvml.SUCCESS
}
func (l *fakeLib) DeviceGetP2PStatus(a, b nvml.Device, c nvml.GpuP2PCapsIndex) (nvml.GpuP2PStatus, nvml.Return) {
	i, j := a.(*fakeDev).i, b.(*fakeDev).i
	if c == nvml.P2P_CAPS_INDEX_WRITE && (l.noP2P[[2]int{i, j}] || l.noP2P[[2]int{j, i}]) {
		return nvml.P2P_STATUS_CHIPSET_NOT_SUPPORTED, nvml.SUCCESS
	}
	return nvml.P2P_STATUS_OK, nvml.SUCCESS
}

// switchLinks is n links into the NVSwitch fabric.
func switchLinks(n int) []fakeLink {
	l := make([]fakeLink, n)
	for k := range l {
		l[k].toSwitch = true
	}
	return l
}

func TestProbeReadsGPUsP2PAndNVLinks(t *testing.T) {
	// GPUs 0-2 sit on NVSwitches with 18 links each (one of GPU 2's is
	// down); GPUs 2 and 3 also share 2 direct links, one reported by an old
	// driver that cannot say what is at the other end; GPU 3 has no switch
	// links; P2P writes between 1 and 3 are not supported.
	g2 := append(switchLinks(18), fakeLink{peerBus: 0x40}, fakeLink{peerBus: 0x40, noType: true})
	g2[5].inactive = true
	lib := &fakeLib{
		initRet: nvml.SUCCESS,
		devs: []*fakeDev{
			{i: 0, bus: 0x18, links: switchLinks(18)},
			{i: 1, bus: 0x2a, links: switchLinks(18)},
			{i: 2, bus: 0x3a, links: g2},
			{i: 3, bus: 0x40, links: []fakeLink{{peerBus: 0x3a}, {peerBus: 0x3a}}},
		},
		noP2P: map[[2]int]bool{{1, 3}: true},
	}
	info, err := probe(lib)
	if err != nil {
		t.Fatal(err)
	}
	if lib.shutdown != 1 {
		t.Errorf("NVML shut down %d times, want 1", lib.shutdown)
	}
	if info.Driver != "580.159.04" || info.CUDADriverVersion != 13000 || info.CUDAVersion() != "13.0" {
		t.Errorf("driver %q CUDA %d (%s)", info.Driver, info.CUDADriverVersion, info.CUDAVersion())
	}
	want := GPU{Index: 2, UUID: "GPU-00000002-aaaa-bbbb-cccc-dddddddddddd", Name: "NVIDIA H100 80GB HBM3",
		PCIBusID: "00000000:3A:00.0", MemTotal: 80 << 30, ComputeMajor: 9, ComputeMinor: 0}
	if len(info.GPUs) != 4 || info.GPUs[2] != want {
		t.Fatalf("GPUs = %+v, want 4 with GPU 2 = %+v", info.GPUs, want)
	}
	wantP2P := [][]string{
		{"-", "OK", "OK", "OK"},
		{"OK", "-", "OK", "NS"},
		{"OK", "OK", "-", "OK"},
		{"OK", "NS", "OK", "-"},
	}
	if fmt.Sprint(info.P2P) != fmt.Sprint(wantP2P) {
		t.Errorf("P2P = %v, want %v", info.P2P, wantP2P)
	}
	wantNV := [][]int{
		{0, 18, 17, 0},
		{18, 0, 17, 0},
		{17, 17, 0, 2},
		{0, 0, 2, 0},
	}
	if fmt.Sprint(info.NVLinks) != fmt.Sprint(wantNV) {
		t.Errorf("NVLinks = %v, want %v", info.NVLinks, wantNV)
	}
}

func TestProbeWithoutADriverSaysSo(t *testing.T) {
	for _, tc := range []struct {
		ret    nvml.Return
		noDrv  bool
		substr string
	}{
		{nvml.ERROR_LIBRARY_NOT_FOUND, true, "no NVIDIA driver: libnvidia-ml.so.1 could not be loaded (NVML): "},
		{nvml.ERROR_DRIVER_NOT_LOADED, true, "no NVIDIA driver: NVML is installed but the kernel driver is not loaded"},
		{nvml.ERROR_NO_PERMISSION, false, "NVML could not start"},
	} {
		t.Run(fmt.Sprint(int(tc.ret)), func(t *testing.T) {
			_, err := probe(&fakeLib{initRet: tc.ret})
			if err == nil || !strings.Contains(err.Error(), tc.substr) || errors.Is(err, ErrNoDriver) != tc.noDrv {
				t.Fatalf("probe: %v; want an error containing %q (no-driver %t)", err, tc.substr, tc.noDrv)
			}
		})
	}
}

// handMade is a 3-GPU node: GPUs 0 and 1 NVLinked, GPU 2 on PCIe only and
// not reachable from 0.
func handMade() *Info {
	return &Info{
		Driver:            "580.159.04",
		CUDADriverVersion: 13000,
		GPUs: []GPU{
			{0, "GPU-aaaa", "NVIDIA H200", "00000000:18:00.0", 141 << 30, 9, 0},
			{1, "GPU-bbbb", "NVIDIA H200", "00000000:2A:00.0", 141 << 30, 9, 0},
			{2, "GPU-cccc", "NVIDIA H200", "00000000:3A:00.0", 141 << 30, 9, 0},
		},
		P2P: [][]string{
			{"-", "OK", "NS"},
			{"OK", "-", "OK"},
			{"NS", "OK", "-"},
		},
		NVLinks: [][]int{
			{0, 18, 0},
			{18, 0, 0},
			{0, 0, 0},
		},
	}
}

func TestWriteLooksLikeTopo(t *testing.T) {
	var b bytes.Buffer
	handMade().Write(&b)
	want := `NVIDIA driver 580.159.04, CUDA 13.0, 3 GPU(s)

GPU  NAME         MEMORY     CC   BUS ID            UUID
0    NVIDIA H200  141.0 GiB  9.0  00000000:18:00.0  GPU-aaaa
1    NVIDIA H200  141.0 GiB  9.0  00000000:2A:00.0  GPU-bbbb
2    NVIDIA H200  141.0 GiB  9.0  00000000:3A:00.0  GPU-cccc

Peer-to-peer read+write (OK supported, NS not supported, ? unknown)
      GPU0  GPU1  GPU2
GPU0  -     OK    NS
GPU1  OK    -     OK
GPU2  NS    OK    -

NVLink (active links between each pair, direct or through NVSwitch)
      GPU0  GPU1  GPU2
GPU0  -     NV18  0
GPU1  NV18  -     0
GPU2  0     0     -
`
	if got := b.String(); got != want {
		t.Errorf("Write:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteWithoutGPUs(t *testing.T) {
	var b bytes.Buffer
	(&Info{Driver: "580.1", CUDADriverVersion: 12040}).Write(&b)
	if got, want := b.String(), "NVIDIA driver 580.1, CUDA 12.4, 0 GPU(s)\n\n"; got != want {
		t.Errorf("Write = %q, want %q", got, want)
	}
}

func TestByUUIDMatchesWhateverTheCaseAndPrefix(t *testing.T) {
	info := handMade()
	for _, u := range []string{"GPU-bbbb", "gpu-BBBB", "bbbb", " GPU-bbbb\n"} {
		g, err := info.ByUUID(u)
		if err != nil || g.Index != 1 {
			t.Errorf("ByUUID(%q) = %+v, %v; want GPU 1", u, g, err)
		}
	}
	_, err := info.ByUUID("GPU-dddd")
	if err == nil || !strings.Contains(err.Error(), "no GPU with UUID GPU-dddd among the 3 that NVML sees") {
		t.Errorf("ByUUID of a missing GPU: %v", err)
	}
}

func TestCheckP2PNamesTheFirstPairThatCannotReach(t *testing.T) {
	info := handMade()
	for _, tc := range []struct {
		uuids  []string
		substr string
	}{
		{[]string{"GPU-aaaa", "GPU-bbbb"}, ""},
		{[]string{"GPU-bbbb", "GPU-cccc"}, ""},
		{[]string{"GPU-aaaa"}, ""},
		{nil, ""},
		{[]string{"GPU-aaaa", "GPU-aaaa"}, ""},
		{[]string{"GPU-bbbb", "GPU-aaaa", "GPU-cccc"}, "GPU 0 (GPU-aaaa, 00000000:18:00.0) cannot reach GPU 2 (GPU-cccc, 00000000:3A:00.0) peer-to-peer (not supported)"},
		{[]string{"GPU-aaaa", "GPU-eeee"}, "no GPU with UUID GPU-eeee"},
	} {
		err := info.CheckP2P(tc.uuids)
		if tc.substr == "" && err != nil {
			t.Errorf("CheckP2P(%v): %v", tc.uuids, err)
		}
		if tc.substr != "" && (err == nil || !strings.Contains(err.Error(), tc.substr)) {
			t.Errorf("CheckP2P(%v): %v; want an error containing %q", tc.uuids, err, tc.substr)
		}
	}
}

// On a machine with an NVIDIA driver, Probe must see at least one GPU and
// agree with Count; elsewhere it must say that there is no driver.
func TestProbeOnThisMachine(t *testing.T) {
	info, err := Probe()
	if errors.Is(err, ErrNoDriver) {
		if n := Count(); n != 0 {
			t.Errorf("Count() = %d without a driver, want 0", n)
		}
		t.Skipf("no GPU: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(info.GPUs) != Count() {
		t.Errorf("Probe saw %d GPUs, Count %d", len(info.GPUs), Count())
	}
	var b bytes.Buffer
	info.Write(&b)
	t.Logf("\n%s", b.String())
	uuids := make([]string, len(info.GPUs))
	for k, g := range info.GPUs {
		uuids[k] = g.UUID
		if got, err := info.ByUUID(g.UUID); err != nil || got != g {
			t.Errorf("ByUUID(%s) = %+v, %v", g.UUID, got, err)
		}
	}
	t.Logf("CheckP2P(all GPUs): %v", info.CheckP2P(uuids))
}
