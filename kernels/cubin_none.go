//go:build !cubin

package kernels

// embedded and embeddedWS are empty in builds without -tags cubin: Locate
// then looks for the cubin in the flag's path, $MOERUN_CUBIN, or next to the
// executable, and LocateWS finds one only in $MOERUN_WS_CUBIN.
var embedded, embeddedWS []byte
