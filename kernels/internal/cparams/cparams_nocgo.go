//go:build !cgo

// Package cparams reports kernels/params.h as compiled by C; without cgo it
// has nothing to report (Available is false).
package cparams

// Available is false: this build has no C compiler (cgo disabled).
const Available = false

// Sizes is empty without cgo.
func Sizes() map[string]uint64 { return nil }

// Offsets is empty without cgo.
func Offsets() map[string]uint64 { return nil }

// Consts is empty without cgo.
func Consts() map[string]uint64 { return nil }
