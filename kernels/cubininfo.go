package kernels

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// CubinInfo is what the host checks in a cubin before any GPU work: the
// values of the globals the kernel exports (moe_kernel.cu), read from the
// cubin's ELF image.
type CubinInfo struct {
	ABIVersion int // moerun_abi_version: must equal ABIVersion
	ParamsSize int // moerun_params_size: must equal ParamsSize
	PhaseBytes int // moerun_phase_bytes: dynamic shared memory of a tf32/bf16 launch (PhaseBytes unless built with other stages)
	// BlockThreads is moerun_block_threads: threads of a block of the
	// forward, Threads, or Threads + 128 in a MOE_WS build (a producer
	// warpgroup); Threads for a cubin older than the symbol.
	BlockThreads int
	NVSHMEM      [3]int // moerun_nvshmem_version: the NVSHMEM device library linked in
	HasKernel    bool   // the entry point KernelName is defined
}

// NVSHMEMVersion formats the device library's version as "3.4.5".
func (c CubinInfo) NVSHMEMVersion() string {
	return fmt.Sprintf("%d.%d.%d", c.NVSHMEM[0], c.NVSHMEM[1], c.NVSHMEM[2])
}

// ReadCubinInfo parses a cubin (an ELF image) and reads the exported globals.
func ReadCubinInfo(image []byte) (CubinInfo, error) {
	var info CubinInfo
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return info, fmt.Errorf("cubin: not an ELF image: %w", err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return info, fmt.Errorf("cubin: no symbol table: %w", err)
	}
	read := func(name string, n int) ([]int, error) {
		for _, s := range syms {
			if s.Name != name {
				continue
			}
			if int(s.Section) <= 0 || int(s.Section) >= len(f.Sections) {
				return nil, fmt.Errorf("cubin: symbol %s has no section", name)
			}
			sec := f.Sections[s.Section]
			if sec.Type == elf.SHT_NOBITS {
				return nil, fmt.Errorf("cubin: symbol %s is not initialised data", name)
			}
			data, err := sec.Data()
			if err != nil {
				return nil, fmt.Errorf("cubin: section %s: %w", sec.Name, err)
			}
			if s.Size < uint64(4*n) || s.Value+uint64(4*n) > uint64(len(data)) {
				return nil, fmt.Errorf("cubin: symbol %s: %d bytes at %d, section %s has %d", name, s.Size, s.Value, sec.Name, len(data))
			}
			out := make([]int, n)
			for i := range out {
				out[i] = int(int32(binary.LittleEndian.Uint32(data[s.Value+uint64(4*i):])))
			}
			return out, nil
		}
		return nil, fmt.Errorf("cubin: symbol %s not found (a cubin built from another source, or too old)", name)
	}
	v, err := read(SymABIVersion, 1)
	if err != nil {
		return info, err
	}
	info.ABIVersion = v[0]
	if v, err = read(SymParamsSize, 1); err != nil {
		return info, err
	}
	info.ParamsSize = v[0]
	if v, err = read(SymPhaseBytes, 1); err != nil {
		return info, err
	}
	info.PhaseBytes = v[0]
	info.BlockThreads = Threads
	if hasSymbol(syms, SymBlockThreads) {
		if v, err = read(SymBlockThreads, 1); err != nil {
			return info, err
		}
		info.BlockThreads = v[0]
	}
	if v, err = read(SymNVSHMEMVersion, 3); err != nil {
		return info, err
	}
	copy(info.NVSHMEM[:], v)
	for _, s := range syms {
		if s.Name == KernelName && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			info.HasKernel = true
		}
	}
	return info, nil
}

func hasSymbol(syms []elf.Symbol, name string) bool {
	for _, s := range syms {
		if s.Name == name {
			return true
		}
	}
	return false
}

// Check says whether the cubin fits this host code.
func (c CubinInfo) Check() error {
	if !c.HasKernel {
		return fmt.Errorf("cubin: kernel %s not found", KernelName)
	}
	if c.ABIVersion != ABIVersion || c.ParamsSize != int(ParamsSize) {
		return fmt.Errorf("cubin was built from another version of kernels/params.h (ABI %d, params %d bytes; this binary expects ABI %d, %d bytes): rebuild it with `make kernels`",
			c.ABIVersion, c.ParamsSize, ABIVersion, ParamsSize)
	}
	if c.BlockThreads != Threads && c.BlockThreads != Threads+WSProducerThreads {
		return fmt.Errorf("cubin: moerun_block_threads = %d, want %d or %d (MOE_WS): a broken build", c.BlockThreads, Threads, Threads+WSProducerThreads)
	}
	if c.PhaseBytes < SIMTPhaseBytes {
		return fmt.Errorf("cubin: moerun_phase_bytes = %d, below the fp32 phase (%d): a broken build", c.PhaseBytes, SIMTPhaseBytes)
	}
	return nil
}
