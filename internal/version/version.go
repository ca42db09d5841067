// Package version says which build of moerun is running; ranks compare it so
// that a job never mixes binaries.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release name, set at link time by the Makefile
// (-X github.com/moerun/moerun/internal/version.Version=...).
var Version = "dev"

// Commit returns the VCS revision the binary was built from, with "+dirty"
// when the tree had uncommitted changes, or "unknown".
func Commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
			if len(rev) > 12 {
				rev = rev[:12]
			}
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		rev += "+dirty"
	}
	return rev
}

// String is the full version line: release, commit, Go version.
func String() string {
	return fmt.Sprintf("moerun %s (commit %s, %s, %s/%s)", Version, Commit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
