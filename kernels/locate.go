package kernels

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CubinName is the cubin's file name next to the executable and in build/.
const CubinName = "moerun.cubin"

// EnvCubin names the environment variable that may point at the cubin.
const EnvCubin = "MOERUN_CUBIN"

// Embedded reports whether this binary carries the kernel (-tags cubin).
func Embedded() bool { return len(embedded) > 0 }

// EnvWSCubin names the environment variable that picks the MOE_WS build's
// cubin (`make kernels-ws`): a path, or "off" for none.
const EnvWSCubin = "MOERUN_WS_CUBIN"

// LocateWS returns the MOE_WS build's cubin that runs beside the main one
// (mainFrom: Locate's second result), and where it came from; nil when there
// is none to use. $MOERUN_WS_CUBIN names one ("off": none); unset, the
// embedded one pairs with the embedded main cubin only: a main cubin given
// by --cubin or $MOERUN_CUBIN runs alone, as named.
func LocateWS(mainFrom string) ([]byte, string, error) {
	return locateWS(mainFrom, os.Getenv(EnvWSCubin), embeddedWS)
}

func locateWS(mainFrom, envPath string, emb []byte) ([]byte, string, error) {
	switch {
	case envPath == "off":
		return nil, "", nil
	case envPath != "":
		b, err := readCubin(envPath, "MOE_WS cubin from $"+EnvWSCubin)
		if err != nil {
			return nil, "", err
		}
		return b, envPath, nil
	case mainFrom == "embedded" && len(emb) > 0:
		return emb, "embedded", nil
	}
	return nil, "", nil
}

// Locate returns the kernel's cubin and where it came from. It looks, in
// order: flagPath (--cubin) when not empty; $MOERUN_CUBIN when set; the cubin
// embedded in the binary; moerun.cubin next to the executable. A path that is
// named (flag or variable) but unreadable is an error at once; when nothing
// is found, the error lists every place looked.
func Locate(flagPath string) ([]byte, string, error) {
	return locate(flagPath, os.Getenv(EnvCubin), embedded, executableDir())
}

func executableDir() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return filepath.Dir(exe)
}

// readCubin reads a named cubin; an unreadable or empty file is an error
// that starts with what (where the name came from).
func readCubin(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: %s is empty", what, path)
	}
	return b, nil
}

func locate(flagPath, envPath string, emb []byte, exeDir string) ([]byte, string, error) {
	read := func(path, how string) ([]byte, string, error) {
		b, err := readCubin(path, "kernel cubin from "+how)
		if err != nil {
			return nil, "", err
		}
		return b, path, nil
	}
	if flagPath != "" {
		return read(flagPath, "--cubin")
	}
	if envPath != "" {
		return read(envPath, "$"+EnvCubin)
	}
	if len(emb) > 0 {
		return emb, "embedded", nil
	}
	var looked []string
	looked = append(looked, "--cubin (not given)", "$"+EnvCubin+" (not set)", "embedded (binary built without -tags cubin)")
	if exeDir != "" {
		p := filepath.Join(exeDir, CubinName)
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
			return b, p, nil
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			looked = append(looked, fmt.Sprintf("%s (%v)", p, err))
		} else {
			looked = append(looked, p+" (not there)")
		}
	}
	return nil, "", fmt.Errorf("kernel cubin not found; looked at: %s. Build it with `make kernels` (build/%s), then pass --cubin, set %s, or rebuild with `make` to embed it",
		strings.Join(looked, "; "), CubinName, EnvCubin)
}
