package launcher

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// GPUCount returns the number of local GPUs; the main package may replace it (with
// NVML, say). The default counts the entries of CUDA_VISIBLE_DEVICES when it is set,
// else the /dev/nvidia<N> device files, and returns 0 when there are none.
var GPUCount func() int = countGPUs

func countGPUs() int {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		n := 0
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "" || strings.HasPrefix(f, "-") {
				break // CUDA stops at the first invalid entry
			}
			n++
		}
		return n
	}
	m, _ := filepath.Glob("/dev/nvidia[0-9]*")
	return len(m)
}

// LocalHost describes this machine for Plan.
func LocalHost() Host {
	gpus := 0
	if GPUCount != nil {
		gpus = GPUCount()
	}
	return Host{
		LookPath: exec.LookPath,
		Euid:     os.Geteuid(),
		Cores:    Cores(),
		GPUs:     gpus,
		Env:      os.Environ(),
		CMA:      cmaPermitted(),
	}
}

// Cores returns the number of cores (not hardware threads) this process may run on,
// which is what Open MPI counts as the node's slots; at most runtime.NumCPU().
func Cores() int {
	n := runtime.NumCPU()
	cpus := allowedCPUs()
	if len(cpus) == 0 {
		return n
	}
	cores := map[string]bool{}
	for _, c := range cpus {
		dir := "/sys/devices/system/cpu/cpu" + strconv.Itoa(c) + "/topology/"
		pkg, err1 := os.ReadFile(dir + "physical_package_id")
		core, err2 := os.ReadFile(dir + "core_id")
		if err1 != nil || err2 != nil {
			return n
		}
		cores[strings.TrimSpace(string(pkg))+"/"+strings.TrimSpace(string(core))] = true
	}
	if len(cores) > 0 && len(cores) < n {
		return len(cores)
	}
	return n
}

// allowedCPUs parses Cpus_allowed_list from /proc/self/status ("0-3,8,10-11").
func allowedCPUs() []int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "Cpus_allowed_list:")
		if !ok {
			continue
		}
		return parseCPUList(strings.TrimSpace(v))
	}
	return nil
}

func parseCPUList(s string) []int {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus
}
