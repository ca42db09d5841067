//go:build !unix

package gpubackend

import "errors"

func stopSelf() error { return errors.New("stopping a process is not supported on this system") }
