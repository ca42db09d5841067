package kernels

import "unsafe"

func unsafeBytes(s *Status) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(s)), StatusSize) }
