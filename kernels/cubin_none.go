//go:build !cubin

package kernels

// embedded is empty in builds without -tags cubin: Locate then looks for the
// cubin in the flag's path, $MOERUN_CUBIN, or next to the executable.
var embedded []byte
