package nvshmem

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Find locates libnvshmem_host.so.3 and returns its path.
//
// When the process has loaded an NVSHMEM host library already (import torch
// does), Find returns that file, so that the process holds one copy: an
// explicit setting (MOERUN_NVSHMEM_LIB, else NVSHMEM_HOME) that names a
// different file is an error naming both. Otherwise it looks, in order:
//
//  1. $MOERUN_NVSHMEM_LIB, the library's full path (an error if it is not there);
//  2. $NVSHMEM_HOME/lib (an error if the library is not there);
//  3. beside the running binary: its folder, lib/ and ../lib under it, and
//     nvidia/nvshmem/lib under it (a wheel unpacked next to the binary);
//  4. the folders of $LD_LIBRARY_PATH;
//  5. nvidia/nvshmem/lib of the Python wheel (nvidia-nvshmem-cu13) in the
//     site-packages of $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local,
//     /usr/lib/python3*, /usr/local/lib/python3*, /opt/*/.venv, /opt/*
//     (dist-packages and site-packages);
//  6. system library folders (/usr/lib/x86_64-linux-gnu and its nvshmem/*,
//     /usr/local/lib, /usr/lib64, /usr/local/nvshmem/lib, /opt/nvidia/nvshmem/lib);
//  7. last, it asks Python where the wheel is: each python3 on $PATH and
//     /opt/*/.venv/bin/python3 runs
//     `import nvidia.nvshmem as m; print(m.__path__[0])`.
//
// The error lists where it looked and says to set NVSHMEM_HOME.
func Find() (string, error) {
	exeDir := ""
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			exeDir = filepath.Dir(exe)
		}
	}
	home, _ := os.UserHomeDir()
	f := finder{getenv: os.Getenv, home: home, exeDir: exeDir, askPython: askPython, loaded: loadedLib}
	return f.find()
}

// finder holds what Find depends on, so that tests can run it on a fake tree.
type finder struct {
	getenv    func(string) string
	root      string // prefix of the fixed absolute paths ("" but in tests)
	home      string
	exeDir    string
	askPython func(python string) (pkgDir string, err error)
	// loaded returns the NVSHMEM host library the process has loaded
	// already ("" if none); nil skips the check.
	loaded func() (string, error)
}

// wheelLib is where the library sits inside a site-packages folder.
const wheelLib = "nvidia/nvshmem/lib"

func (f finder) find() (string, error) {
	if f.loaded != nil {
		p, err := f.loaded()
		if err != nil {
			return "", err
		}
		if p != "" {
			return f.useLoaded(p)
		}
	}
	var looked []string

	if p := f.getenv("MOERUN_NVSHMEM_LIB"); p != "" {
		if isFile(p) {
			return p, nil
		}
		return "", fmt.Errorf("MOERUN_NVSHMEM_LIB=%s: no such file (it must be the full path of %s)", p, LibName)
	}
	looked = append(looked, "$MOERUN_NVSHMEM_LIB (unset)")

	if h := f.getenv("NVSHMEM_HOME"); h != "" {
		for _, name := range []string{LibName, "libnvshmem_host.so"} {
			if p := filepath.Join(h, "lib", name); isFile(p) {
				return p, nil
			}
		}
		return "", fmt.Errorf("NVSHMEM_HOME=%s: no %s in %s", h, LibName, filepath.Join(h, "lib"))
	}
	looked = append(looked, "$NVSHMEM_HOME/lib (unset)")

	try := func(dirs ...string) string {
		for _, d := range dirs {
			if d == "" {
				continue
			}
			if p := filepath.Join(d, LibName); isFile(p) {
				return p
			}
		}
		return ""
	}

	if f.exeDir != "" {
		dirs := []string{f.exeDir, filepath.Join(f.exeDir, "lib"), filepath.Join(f.exeDir, "..", "lib"), filepath.Join(f.exeDir, wheelLib)}
		if p := try(dirs...); p != "" {
			return p, nil
		}
		looked = append(looked, dirs...)
	}

	if lp := f.getenv("LD_LIBRARY_PATH"); lp != "" {
		dirs := filepath.SplitList(lp)
		if p := try(dirs...); p != "" {
			return p, nil
		}
		looked = append(looked, "$LD_LIBRARY_PATH: "+lp)
	} else {
		looked = append(looked, "$LD_LIBRARY_PATH (unset)")
	}

	var prefixes []string // folders holding lib/python3*/{site,dist}-packages
	for _, v := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := f.getenv(v); p != "" {
			prefixes = append(prefixes, p)
		}
	}
	if f.home != "" {
		prefixes = append(prefixes, filepath.Join(f.home, ".local"))
	}
	prefixes = append(prefixes, f.root+"/usr", f.root+"/usr/local", f.root+"/opt/*/.venv", f.root+"/opt/*")
	for _, pre := range prefixes {
		for _, kind := range []string{"site-packages", "dist-packages"} {
			pattern := filepath.Join(pre, "lib", "python3*", kind, wheelLib)
			if p := try(globNewestFirst(pattern)...); p != "" {
				return p, nil
			}
			looked = append(looked, pattern)
		}
	}

	sys := []string{
		f.root + "/usr/lib/x86_64-linux-gnu",
		f.root + "/usr/lib/x86_64-linux-gnu/nvshmem/*",
		f.root + "/usr/local/lib",
		f.root + "/usr/lib64",
		f.root + "/usr/local/nvshmem/lib",
		f.root + "/opt/nvidia/nvshmem/lib",
	}
	for _, pattern := range sys {
		if p := try(globNewestFirst(pattern)...); p != "" {
			return p, nil
		}
		looked = append(looked, pattern)
	}

	for _, py := range f.pythons() {
		dir, err := f.askPython(py)
		if err != nil {
			looked = append(looked, fmt.Sprintf("%s: %v", py, err))
			continue
		}
		if p := try(filepath.Join(dir, "lib")); p != "" {
			return p, nil
		}
		looked = append(looked, fmt.Sprintf("%s: %s", py, filepath.Join(dir, "lib")))
	}
	if len(f.pythons()) == 0 {
		looked = append(looked, "python3: none on $PATH or in /opt/*/.venv/bin")
	}

	return "", fmt.Errorf("NVSHMEM host library %s not found; looked in:\n  %s\n"+
		"set NVSHMEM_HOME to the NVSHMEM install (its lib/ holds %s) or MOERUN_NVSHMEM_LIB to the library's full path; "+
		"with the Python wheel (nvidia-nvshmem-cu13), NVSHMEM_HOME is the folder that "+
		"python3 -c \"import nvidia.nvshmem as m; print(m.__path__[0])\" prints",
		LibName, strings.Join(looked, "\n  "), LibName)
}

// pythons lists the Python interpreters to ask: python3 in each $PATH folder,
// then /opt/*/.venv/bin/python3, without duplicates.
func (f finder) pythons() []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !isExecutable(p) {
			return
		}
		key := p
		if r, err := filepath.EvalSymlinks(p); err == nil {
			key = r
		}
		if !seen[key] {
			seen[key] = true
			out = append(out, p)
		}
	}
	for _, d := range filepath.SplitList(f.getenv("PATH")) {
		if d != "" {
			add(filepath.Join(d, "python3"))
		}
	}
	for _, p := range globNewestFirst(f.root + "/opt/*/.venv/bin/python3") {
		add(p)
	}
	return out
}

// askPython runs python and returns the folder of the nvidia.nvshmem package.
func askPython(python string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", "import nvidia.nvshmem as m; print(m.__path__[0])")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:] // the exception line
		}
		if msg == "" {
			msg = err.Error()
		}
		return "", errors.New(msg)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", errors.New("printed nothing")
	}
	return dir, nil
}

// globNewestFirst expands pattern and sorts the matches in reverse, so that
// python3.12 comes before python3.11 (and nvshmem/13 before nvshmem/12).
func globNewestFirst(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	slices.SortFunc(m, func(a, b string) int { return -compareNatural(a, b) })
	return m
}

// compareNatural compares strings with runs of digits compared as numbers.
func compareNatural(a, b string) int {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da != "" && db != "" {
			if c := compareDigits(da, db); c != 0 {
				return c
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			if a[0] < b[0] {
				return -1
			}
			return 1
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digitPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

func compareDigits(a, b string) int {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}
