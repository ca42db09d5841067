//go:build linux && amd64

package launcher

const sysProcessVMReadv = 310
