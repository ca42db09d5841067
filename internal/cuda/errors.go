package cuda

/*
#include "cudadl.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"strconv"
)

// Result is a CUresult code. It is an error itself so that
// errors.Is(err, cuda.ErrorOutOfMemory) works on the *Error values the
// Driver's methods return.
type Result int32

// CUresult codes callers test for (values from cuda.h, CUDA 13.0).
const (
	Success                        Result = 0
	ErrorInvalidValue              Result = 1
	ErrorOutOfMemory               Result = 2
	ErrorNotInitialized            Result = 3
	ErrorDeinitialized             Result = 4
	ErrorNoDevice                  Result = 100
	ErrorInvalidDevice             Result = 101
	ErrorInvalidImage              Result = 200
	ErrorInvalidContext            Result = 201
	ErrorNoBinaryForGPU            Result = 209
	ErrorInvalidPTX                Result = 218
	ErrorUnsupportedPTXVersion     Result = 222
	ErrorInvalidHandle             Result = 400
	ErrorNotFound                  Result = 500
	ErrorNotReady                  Result = 600
	ErrorIllegalAddress            Result = 700
	ErrorLaunchOutOfResources      Result = 701
	ErrorLaunchTimeout             Result = 702
	ErrorAssert                    Result = 710
	ErrorIllegalInstruction        Result = 715
	ErrorMisalignedAddress         Result = 716
	ErrorLaunchFailed              Result = 719
	ErrorCooperativeLaunchTooLarge Result = 720
	ErrorNotSupported              Result = 801
	ErrorSystemDriverMismatch      Result = 803
	ErrorStreamCaptureUnsupported  Result = 900
	ErrorUnknown                   Result = 999
)

var resultNames = map[Result]string{
	Success:                        "CUDA_SUCCESS",
	ErrorInvalidValue:              "CUDA_ERROR_INVALID_VALUE",
	ErrorOutOfMemory:               "CUDA_ERROR_OUT_OF_MEMORY",
	ErrorNotInitialized:            "CUDA_ERROR_NOT_INITIALIZED",
	ErrorDeinitialized:             "CUDA_ERROR_DEINITIALIZED",
	ErrorNoDevice:                  "CUDA_ERROR_NO_DEVICE",
	ErrorInvalidDevice:             "CUDA_ERROR_INVALID_DEVICE",
	ErrorInvalidImage:              "CUDA_ERROR_INVALID_IMAGE",
	ErrorInvalidContext:            "CUDA_ERROR_INVALID_CONTEXT",
	ErrorNoBinaryForGPU:            "CUDA_ERROR_NO_BINARY_FOR_GPU",
	ErrorInvalidPTX:                "CUDA_ERROR_INVALID_PTX",
	ErrorUnsupportedPTXVersion:     "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	ErrorInvalidHandle:             "CUDA_ERROR_INVALID_HANDLE",
	ErrorNotFound:                  "CUDA_ERROR_NOT_FOUND",
	ErrorNotReady:                  "CUDA_ERROR_NOT_READY",
	ErrorIllegalAddress:            "CUDA_ERROR_ILLEGAL_ADDRESS",
	ErrorLaunchOutOfResources:      "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
	ErrorLaunchTimeout:             "CUDA_ERROR_LAUNCH_TIMEOUT",
	ErrorAssert:                    "CUDA_ERROR_ASSERT",
	ErrorIllegalInstruction:        "CUDA_ERROR_ILLEGAL_INSTRUCTION",
	ErrorMisalignedAddress:         "CUDA_ERROR_MISALIGNED_ADDRESS",
	ErrorLaunchFailed:              "CUDA_ERROR_LAUNCH_FAILED",
	ErrorCooperativeLaunchTooLarge: "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
	ErrorNotSupported:              "CUDA_ERROR_NOT_SUPPORTED",
	ErrorSystemDriverMismatch:      "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
	ErrorStreamCaptureUnsupported:  "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
	ErrorUnknown:                   "CUDA_ERROR_UNKNOWN",
}

// Error returns the code's name from cuda.h, or "CUresult N" for codes this
// package does not list (an *Error carries the driver's own name for those).
func (r Result) Error() string {
	if s, ok := resultNames[r]; ok {
		return s
	}
	return "CUresult " + strconv.Itoa(int(r))
}

// Error is a failed driver call.
type Error struct {
	Call    string // the API function, e.g. "cuMemAlloc"
	Args    string // what it was called with, for the message; may be empty
	Code    Result
	Name    string // the driver's cuGetErrorName text, e.g. "CUDA_ERROR_OUT_OF_MEMORY"
	Message string // the driver's cuGetErrorString text, e.g. "out of memory"
}

// Error formats as "cuMemAlloc(1073741824 bytes): CUDA_ERROR_OUT_OF_MEMORY: out of memory".
func (e *Error) Error() string {
	s := e.Call + "(" + e.Args + "): " + e.Name
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap returns the Result, so errors.Is can match codes.
func (e *Error) Unwrap() error { return e.Code }

// ErrTimeout is returned (wrapped) by the bounded waits when work is still
// running at the deadline.
var ErrTimeout = errors.New("timed out")

// check turns a CUresult into nil or an *Error for the call s with args.
func (d *Driver) check(r C.CUresult, s sym, args string) error {
	if r == 0 {
		return nil
	}
	return d.newError(Result(r), symbols[s].api, args)
}

func (d *Driver) newError(code Result, call, args string) *Error {
	e := &Error{Call: call, Args: args, Code: code}
	var name, msg *C.char
	if d.fn[symGetErrorName] != nil && C.mr_cuGetErrorName(d.fn[symGetErrorName], C.CUresult(code), &name) == 0 && name != nil {
		e.Name = C.GoString(name)
	} else {
		e.Name = code.Error()
	}
	if d.fn[symGetErrorString] != nil && C.mr_cuGetErrorString(d.fn[symGetErrorString], C.CUresult(code), &msg) == 0 && msg != nil {
		e.Message = C.GoString(msg)
	}
	return e
}

// GetErrorString is the driver's description of a code (cuGetErrorString),
// or the code's name when the driver does not know it.
func (d *Driver) GetErrorString(code Result) string {
	var msg *C.char
	if C.mr_cuGetErrorString(d.fn[symGetErrorString], C.CUresult(code), &msg) == 0 && msg != nil {
		return C.GoString(msg)
	}
	return code.Error()
}

// GetErrorName is the driver's name of a code (cuGetErrorName).
func (d *Driver) GetErrorName(code Result) string {
	var name *C.char
	if C.mr_cuGetErrorName(d.fn[symGetErrorName], C.CUresult(code), &name) == 0 && name != nil {
		return C.GoString(name)
	}
	return code.Error()
}

func bytesArg(n uint64) string { return fmt.Sprintf("%d bytes", n) }
