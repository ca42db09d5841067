package launcher

import (
	"io"
	"reflect"
	"strings"
	"testing"
)

const box = "--------------------------------------------------------------------------\n"

// Messages as Open MPI 4.1.4 prints them.
const (
	mpiPrimary = box + "Primary job  terminated normally, but 1 process returned\n" +
		"a non-zero exit code. Per user-direction, the job has been aborted.\n" + box
	mpiSignal = box + "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).\n" + box
	mpiExit   = box + "mpirun detected that one or more processes exited with non-zero status, thus causing\n" +
		"the job to be terminated. The first process to do so was:\n\n  Process name: [[31291,1],2]\n  Exit code:    3\n" + box
	mpiAbort = box + "MPI_ABORT was invoked on rank 2 in communicator MPI_COMM_WORLD\nwith errorcode 5.\n\n" +
		"NOTE: invoking MPI_ABORT causes Open MPI to kill all MPI processes.\n" + box
	mpiImproper = box + "mpirun has exited due to process rank 2 with PID 0 on\nnode vm exiting improperly. There are three reasons this could occur:\n" + box
	mpiSlots    = box + "There are not enough slots available in the system to satisfy the 4\nslots that were requested by the application:\n\n  sh\n" + box
)

func watch(streams ...string) *watcher {
	w := &watcher{}
	for _, s := range streams {
		l := w.stream()
		// Write in awkward pieces, as pipes deliver.
		for len(s) > 0 {
			n := min(7, len(s))
			io.WriteString(l, s[:n])
			s = s[n:]
		}
		l.flush()
	}
	return w
}

func TestWatcherLost(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      *Lost
		launcher  string
	}{
		{"signal", mpiPrimary + mpiSignal, &Lost{Rank: 1, Node: "vm", Signal: 9, How: "exited on signal 9 (Killed)"}, ""},
		{"exit code", mpiPrimary + mpiExit, &Lost{Rank: 2, Status: 3, How: "exited with status 3"}, ""},
		{"abort", mpiAbort, &Lost{Rank: 2, Status: 5, How: "called MPI_Abort with error code 5"}, ""},
		{"improper", mpiImproper, &Lost{Rank: 2, Node: "vm", How: "exited without calling MPI_Finalize"}, ""},
		{"srun signal", "srun: error: gpu7: task 3: Killed\nsrun: error: gpu7: tasks 0-2: Terminated\n",
			&Lost{Rank: 3, Node: "gpu7", Signal: 9, How: "exited on signal 9 (Killed)"}, ""},
		{"srun exit", "srun: error: gpu7: task 1: Exited with exit code 4\n",
			&Lost{Rank: 1, Node: "gpu7", Status: 4, How: "exited with status 4"}, ""},
		{"no rank (ranks that never called MPI_Init)", mpiPrimary, nil, ""},
		{"mpirun's own error", mpiSlots, nil, "There are not enough slots available in the system to satisfy the 4 slots that were requested by the application: sh"},
		{"srun's own error", "srun: error: Unable to allocate resources: Invalid partition\n", nil, "srun: error: Unable to allocate resources: Invalid partition"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, lost, launcher := watch(tc.out).snapshot()
			if !reflect.DeepEqual(lost, tc.want) {
				t.Errorf("lost %+v, want %+v", lost, tc.want)
			}
			if launcher != tc.launcher {
				t.Errorf("launcher message %q, want %q", launcher, tc.launcher)
			}
		})
	}
}

func TestWatcherFirstError(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  []string
		want string
	}{
		{"json error", []string{
			`{"level":"info","rank":0,"message":"starting"}` + "\n" +
				`{"level":"error","rank":2,"host":"vm","error":"peer 3 silent","message":"exchange failed"}` + "\n" +
				`{"level":"fatal","rank":0,"message":"later"}` + "\n"},
			"rank 2: exchange failed: peer 3 silent"},
		{"json fatal without newline", []string{`{"level":"fatal","rank":1,"message":"no cubin"}`}, "rank 1: no cubin"},
		{"json warn is no error", []string{`{"level":"warn","rank":1,"message":"Error budget low"}` + "\n"}, ""},
		{"console", []string{"\x1b[90m10:04AM\x1b[0m \x1b[31mERR\x1b[0m verify failed \x1b[36mrank=\x1b[0m3 max_err=0.5\n"},
			"rank 3: 10:04AM ERR verify failed rank=3 max_err=0.5"},
		{"console fatal", []string{"10:04AM INF ready rank=0\r\n10:04AM FTL cannot open device rank=1\r\n"}, "rank 1: 10:04AM FTL cannot open device rank=1"},
		{"moerun prefix", []string{"some output\nmoerun: unknown command \"x\"\n"}, `moerun: unknown command "x"`},
		{"moerun subcommand prefix", []string{"moerun bench: config T=64: experts 8: must be a multiple of the number of ranks 3\n"},
			"moerun bench: config T=64: experts 8: must be a multiple of the number of ranks 3"},
		{"moerun text is no error", []string{"moerun dev (commit unknown)\n"}, ""},
		{"tagged output", []string{"[1,3]<stderr>:Error: bad flag\n"}, "rank 3: Error: bad flag"},
		{"go panic", []string{"panic: runtime error: index out of range\n\ngoroutine 1 [running]:\n"}, "panic: runtime error: index out of range"},
		{"mpirun boxes are not rank errors", []string{mpiPrimary + mpiExit}, ""},
		{"the first of two streams", []string{"", "ERROR x\n"}, "ERROR x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, _, _ := watch(tc.out...).snapshot()
			if first != tc.want {
				t.Errorf("first error %q, want %q", first, tc.want)
			}
		})
	}
}

func TestWatcherLongLine(t *testing.T) {
	w := &watcher{}
	l := w.stream()
	long := `{"level":"error","rank":0,"message":"` + strings.Repeat("x", 2*maxLine) + `"}` + "\n"
	io.WriteString(l, long)
	io.WriteString(l, "moerun: next\n")
	l.flush()
	first, _, _ := w.snapshot()
	// The cut JSON line still counts as an error; it is clipped for the summary.
	if !strings.HasPrefix(first, `{"level":"error","rank":0`) || len(first) > 500 {
		t.Errorf("first error %.80q (len %d)", first, len(first))
	}
}
