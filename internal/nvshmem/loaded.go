package nvshmem

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// hostLibPrefix begins the file name of every copy of the NVSHMEM host
// library (libnvshmem_host.so.3, libnvshmem_host.so, ...).
const hostLibPrefix = "libnvshmem_host"

// mapping is one line of /proc/self/maps.
type mapping struct {
	start, end uint64
	dev        string // major:minor, hex
	inode      uint64
	path       string // "" for anonymous memory; without " (deleted)"
	deleted    bool
}

// parseMaps reads /proc/<pid>/maps text; lines it cannot read are skipped.
func parseMaps(text string) []mapping {
	var out []mapping
	for _, line := range strings.Split(text, "\n") {
		// start-end perms offset dev inode [path]; the path may hold spaces.
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		inode, err3 := strconv.ParseUint(f[4], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		m := mapping{start: start, end: end, dev: f[3], inode: inode}
		if len(f) > 5 {
			// The path is the rest of the line after the inode field.
			rest := line
			for range 5 {
				rest = strings.TrimLeft(rest, " \t")
				if i := strings.IndexAny(rest, " \t"); i >= 0 {
					rest = rest[i:]
				} else {
					rest = ""
				}
			}
			m.path = strings.TrimSpace(rest)
			if p, ok := strings.CutSuffix(m.path, " (deleted)"); ok {
				m.path, m.deleted = p, true
			}
		}
		out = append(out, m)
	}
	return out
}

// readMaps reads this process's mappings.
func readMaps() ([]mapping, error) {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	return parseMaps(string(b)), nil
}

// hostCopies lists the different NVSHMEM host library files mapped (by
// device and inode), in the order they first appear.
func hostCopies(ms []mapping) []mapping {
	var out []mapping
	seen := map[string]bool{}
	for _, m := range ms {
		if m.inode == 0 || !strings.HasPrefix(filepath.Base(m.path), hostLibPrefix) {
			continue
		}
		key := m.dev + ":" + strconv.FormatUint(m.inode, 10)
		if !seen[key] {
			seen[key] = true
			out = append(out, m)
		}
	}
	return out
}

// checkOneCopy fails when the process maps more than one NVSHMEM host
// library file, path (the one just loaded) among them. Without
// /proc/self/maps there is nothing to check.
func checkOneCopy(path string) error {
	ms, err := readMaps()
	if err != nil {
		return nil
	}
	return oneCopy(hostCopies(ms), path)
}

func oneCopy(copies []mapping, path string) error {
	if len(copies) < 2 {
		return nil
	}
	var names []string
	keep := ""
	for _, c := range copies {
		n := c.path
		if c.deleted {
			n += " (deleted)"
		}
		names = append(names, n)
		if keep == "" && !sameFile(c.path, path) {
			keep = c.path
		}
	}
	if keep == "" {
		keep = copies[0].path
	}
	return fmt.Errorf("%d copies of the NVSHMEM host library are loaded in this process (%s), each with its own state, after loading %s; "+
		"moerun must use the copy already loaded (by PyTorch, say): set MOERUN_NVSHMEM_LIB=%s",
		len(copies), strings.Join(names, ", "), path, keep)
}

// loadedLib returns the path of the NVSHMEM host library that the process
// has loaded already (by PyTorch, say), or "" when it has none. It never
// loads one.
func loadedLib() (string, error) {
	probe := symbols[symVendorGetVersionInfo]
	for _, name := range []string{LibName, "libnvshmem_host.so"} {
		ok, addr := loadedSym(name, probe)
		if !ok {
			continue
		}
		if addr == 0 {
			return "", fmt.Errorf("a library named %s is loaded in this process but is not an NVSHMEM 3 host library (it has no %s)", name, probe)
		}
		ms, err := readMaps()
		if err != nil {
			return "", fmt.Errorf("%s is loaded in this process; where from: %w", name, err)
		}
		if p := mappedFile(ms, uint64(addr)); p != "" {
			return p, nil
		}
		return "", fmt.Errorf("%s is loaded in this process but /proc/self/maps names no file at its %s (%#x)", name, probe, addr)
	}
	return "", nil
}

// mappedFile is the file mapped at addr, or "".
func mappedFile(ms []mapping, addr uint64) string {
	for _, m := range ms {
		if m.start <= addr && addr < m.end {
			return m.path
		}
	}
	return ""
}

// sameFile reports whether a and b name the same file (device and inode,
// after symlinks).
func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// useLoaded is Find's answer when the process has loaded loaded already:
// that library, unless an explicit setting names another file, which is an
// error naming both (two copies cannot share NVSHMEM's state).
func (f finder) useLoaded(loaded string) (string, error) {
	const why = "two copies of NVSHMEM cannot run in one process"
	if p := f.getenv("MOERUN_NVSHMEM_LIB"); p != "" {
		if !sameFile(p, loaded) {
			return "", fmt.Errorf("MOERUN_NVSHMEM_LIB=%s is not the NVSHMEM host library this process has already loaded (%s, by PyTorch, say) and %s: set MOERUN_NVSHMEM_LIB=%s, or unset it",
				p, loaded, why, loaded)
		}
		return loaded, nil
	}
	if h := f.getenv("NVSHMEM_HOME"); h != "" {
		named := ""
		for _, name := range []string{LibName, "libnvshmem_host.so"} {
			if p := filepath.Join(h, "lib", name); isFile(p) {
				named = p
				break
			}
		}
		if named == "" {
			return "", fmt.Errorf("NVSHMEM_HOME=%s: no %s in %s, and this process has already loaded the NVSHMEM host library %s (by PyTorch, say): set MOERUN_NVSHMEM_LIB=%s, or unset NVSHMEM_HOME",
				h, LibName, filepath.Join(h, "lib"), loaded, loaded)
		}
		if !sameFile(named, loaded) {
			return "", fmt.Errorf("NVSHMEM_HOME=%s names %s, not the NVSHMEM host library this process has already loaded (%s, by PyTorch, say), and %s: set MOERUN_NVSHMEM_LIB=%s, or unset NVSHMEM_HOME",
				h, named, loaded, why, loaded)
		}
	}
	return loaded, nil
}
