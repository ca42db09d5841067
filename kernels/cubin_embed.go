//go:build cubin

package kernels

import _ "embed" // the cubin, copied here by `make kernels`

//go:embed moerun.cubin
var embedded []byte
