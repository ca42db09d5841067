//go:build cubin

package kernels

import _ "embed" // the cubins, copied here by `make build`

//go:embed moerun.cubin
var embedded []byte

//go:embed moerun_ws.cubin
var embeddedWS []byte
