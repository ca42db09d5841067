//go:build linux && 386

package launcher

const sysProcessVMReadv = 347
