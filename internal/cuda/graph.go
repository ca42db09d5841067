package cuda

/*
#include "cudadl.h"
*/
import "C"

// CaptureMode is a CUstreamCaptureMode.
type CaptureMode int32

// Stream capture modes.
const (
	CaptureModeGlobal      CaptureMode = 0
	CaptureModeThreadLocal CaptureMode = 1
	CaptureModeRelaxed     CaptureMode = 2
)

// StreamBeginCapture starts capturing the work queued on s into a graph
// instead of running it.
func (d *Driver) StreamBeginCapture(s Stream, mode CaptureMode) error {
	return d.check(C.mr_cuStreamBeginCapture(d.fn[symStreamBeginCapture], C.uintptr_t(s), C.int(mode)), symStreamBeginCapture, "")
}

// StreamEndCapture ends a capture and returns the graph captured.
func (d *Driver) StreamEndCapture(s Stream) (Graph, error) {
	var g C.uintptr_t
	err := d.check(C.mr_cuStreamEndCapture(d.fn[symStreamEndCapture], C.uintptr_t(s), &g), symStreamEndCapture, "")
	return Graph(g), err
}

// GraphInstantiate makes an executable graph (cuGraphInstantiateWithFlags,
// no flags).
func (d *Driver) GraphInstantiate(g Graph) (GraphExec, error) {
	var e C.uintptr_t
	err := d.check(C.mr_cuGraphInstantiate(d.fn[symGraphInstantiate], &e, C.uintptr_t(g), 0), symGraphInstantiate, "")
	return GraphExec(e), err
}

// GraphLaunch queues an executable graph on s.
func (d *Driver) GraphLaunch(e GraphExec, s Stream) error {
	return d.check(C.mr_cuGraphLaunch(d.fn[symGraphLaunch], C.uintptr_t(e), C.uintptr_t(s)), symGraphLaunch, "")
}

// GraphDestroy destroys a graph (executable graphs made from it live on).
func (d *Driver) GraphDestroy(g Graph) error {
	return d.check(C.mr_cuGraphDestroy(d.fn[symGraphDestroy], C.uintptr_t(g)), symGraphDestroy, "")
}

// GraphExecDestroy destroys an executable graph.
func (d *Driver) GraphExecDestroy(e GraphExec) error {
	return d.check(C.mr_cuGraphExecDestroy(d.fn[symGraphExecDestroy], C.uintptr_t(e)), symGraphExecDestroy, "")
}
