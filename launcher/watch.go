package launcher

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"
)

// Lost describes the rank whose end ended the job, as mpirun or srun reported it.
type Lost struct {
	Rank   int    // world rank
	Node   string // host name, when reported
	Signal int    // the signal that killed it, or 0
	Status int    // its exit status, when it exited (or the MPI_Abort error code)
	How    string // "exited on signal 9 (Killed)", "exited with status 3", ...
}

// watcher reads the job's output line by line, as it streams past, for the first
// error a rank logged, the lost rank that mpirun or srun names, and mpirun's own
// messages (the boxed text between lines of dashes).
type watcher struct {
	mu         sync.Mutex
	firstError string
	lost       *Lost
	launcher   string // mpirun's first message, or srun's first error line
}

const maxLine = 64 << 10

// lineWriter splits one stream into lines for the watcher.
type lineWriter struct {
	w     *watcher
	buf   []byte
	inBox bool
	box   []string
}

func (w *watcher) stream() *lineWriter { return &lineWriter{w: w} }

func (l *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		part := p
		if i >= 0 {
			part = p[:i]
		}
		if room := maxLine - len(l.buf); len(part) > room {
			part = part[:room] // keep the start of an overlong line
		}
		l.buf = append(l.buf, part...)
		if i < 0 {
			break
		}
		l.line(string(l.buf))
		l.buf = l.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

// flush handles a last line without a newline.
func (l *lineWriter) flush() {
	if len(l.buf) > 0 {
		l.line(string(l.buf))
		l.buf = l.buf[:0]
	}
	if l.inBox {
		l.w.box(l.box)
		l.inBox, l.box = false, nil
	}
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

func (l *lineWriter) line(s string) {
	s = strings.TrimRight(ansi.ReplaceAllString(s, ""), "\r \t")
	if strings.HasPrefix(s, "-----") && strings.Trim(s, "-") == "" {
		if l.inBox {
			l.w.box(l.box)
			l.inBox, l.box = false, nil
		} else {
			l.inBox = true
		}
		return
	}
	if l.inBox {
		if len(l.box) < 200 {
			l.box = append(l.box, s)
		}
		return
	}
	l.w.line(s)
}

var (
	reSignal   = regexp.MustCompile(`process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+) \(([^)]*)\)`)
	reExitCode = regexp.MustCompile(`Process name: \[\[\d+,\d+\],(\d+)\] Exit code: (\d+)`)
	reAbort    = regexp.MustCompile(`MPI_ABORT was invoked on rank (\d+) in communicator \S+ with errorcode (-?\d+)`)
	reImproper = regexp.MustCompile(`process rank (\d+) with PID \d+ on node (\S+) exiting improperly`)
	reSrunTask = regexp.MustCompile(`^srun: error: (\S+): tasks? (\d+)[\d,\-]*: (.*)$`)
	reSrunCode = regexp.MustCompile(`Exited with exit code (\d+)`)
	reTag      = regexp.MustCompile(`^\[\d+,(\d+)\]<std(?:out|err)>: ?`)
	reConsole  = regexp.MustCompile(`(?:^|\s)(ERR|FTL|PNC)(?:\s|$)`)
	reRankKV   = regexp.MustCompile(`\brank=(\d+)`)
	reMoerun   = regexp.MustCompile(`^moerun(?: [a-z][a-z-]*)?: `) // "moerun: ...", "moerun bench: ..."
)

// box handles one of mpirun's boxed messages.
func (w *watcher) box(lines []string) {
	text := strings.Join(strings.Fields(strings.Join(lines, " ")), " ")
	if text == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var l *Lost
	if m := reSignal.FindStringSubmatch(text); m != nil {
		sig, _ := strconv.Atoi(m[3])
		l = &Lost{Rank: atoi(m[1]), Node: m[2], Signal: sig, How: fmt.Sprintf("exited on signal %d (%s)", sig, m[4])}
	} else if m := reExitCode.FindStringSubmatch(text); m != nil {
		l = &Lost{Rank: atoi(m[1]), Status: atoi(m[2]), How: "exited with status " + m[2]}
	} else if m := reAbort.FindStringSubmatch(text); m != nil {
		l = &Lost{Rank: atoi(m[1]), Status: atoi(m[2]), How: "called MPI_Abort with error code " + m[2]}
	} else if m := reImproper.FindStringSubmatch(text); m != nil {
		l = &Lost{Rank: atoi(m[1]), Node: m[2], How: "exited without calling MPI_Finalize"}
	}
	switch {
	case l != nil:
		if w.lost == nil {
			w.lost = l
		}
	case w.launcher == "" && !strings.HasPrefix(text, "Primary job terminated normally"):
		w.launcher = clip(text, 240)
	}
}

// line handles one line of output that is not part of mpirun's boxed messages.
func (w *watcher) line(s string) {
	if s == "" {
		return
	}
	if m := reSrunTask.FindStringSubmatch(s); m != nil {
		w.mu.Lock()
		if w.lost == nil {
			l := &Lost{Rank: atoi(m[2]), Node: m[1], How: strings.ToLower(m[3][:1]) + m[3][1:]}
			if c := reSrunCode.FindStringSubmatch(m[3]); c != nil {
				l.Status = atoi(c[1])
				l.How = "exited with status " + c[1]
			} else if sig := signalByDescription(m[3]); sig != 0 {
				l.Signal = sig
				l.How = fmt.Sprintf("exited on signal %d (%s)", sig, m[3])
			}
			w.lost = l
		}
		w.mu.Unlock()
		return
	}
	if strings.HasPrefix(s, "srun: error:") {
		w.mu.Lock()
		if w.launcher == "" {
			w.launcher = clip(s, 240)
		}
		w.mu.Unlock()
		return
	}
	if e := errorLine(s); e != "" {
		w.mu.Lock()
		if w.firstError == "" {
			w.firstError = clip(e, 400)
		}
		w.mu.Unlock()
	}
}

// errorLine returns s, tidied, when it reports an error: a zerolog line at error or
// fatal level in JSON or console form, a line starting with "moerun:" (or "moerun
// bench:" and so on), "Error" or
// "error:", or a Go panic. Otherwise "".
func errorLine(s string) string {
	rank := ""
	if m := reTag.FindStringSubmatch(s); m != nil { // mpirun --tag-output
		rank, s = m[1], s[len(m[0]):]
	}
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '{'); i >= 0 && strings.Contains(s, `"level"`) {
		var rec map[string]any
		if json.Unmarshal([]byte(s[i:]), &rec) == nil {
			level, _ := rec["level"].(string)
			if level != "error" && level != "fatal" && level != "panic" {
				return ""
			}
			msg := fmt.Sprint(rec["message"])
			if rec["message"] == nil {
				msg = level
			}
			if e, ok := rec["error"]; ok {
				msg += ": " + fmt.Sprint(e)
			}
			if r, ok := rec["rank"]; ok {
				rank = fmt.Sprint(r)
			}
			if rank != "" {
				msg = "rank " + rank + ": " + msg
			}
			return msg
		}
		// A cut or malformed JSON line: fall back to a plain search.
		if strings.Contains(s, `"level":"error"`) || strings.Contains(s, `"level":"fatal"`) || strings.Contains(s, `"level":"panic"`) {
			return withRank(rank, s)
		}
		return ""
	}
	if reConsole.MatchString(s) {
		if rank == "" {
			if m := reRankKV.FindStringSubmatch(s); m != nil {
				rank = m[1]
			}
		}
		return withRank(rank, s)
	}
	if reMoerun.MatchString(s) {
		return withRank(rank, s)
	}
	for _, p := range []string{"Error", "error:", "ERROR", "panic:", "fatal error:"} {
		if strings.HasPrefix(s, p) {
			return withRank(rank, s)
		}
	}
	return ""
}

func withRank(rank, s string) string {
	if rank == "" {
		return s
	}
	return "rank " + rank + ": " + s
}

// signalByDescription maps srun's task status ("Killed", "Segmentation fault") to a
// signal number, or 0.
func signalByDescription(d string) int {
	d = strings.ToLower(strings.TrimSpace(strings.TrimSuffix(d, " (core dumped)")))
	for sig := syscall.Signal(1); sig < 32; sig++ {
		if strings.ToLower(sig.String()) == d {
			return int(sig)
		}
	}
	return 0
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func (w *watcher) snapshot() (firstError string, lost *Lost, launcher string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lost != nil {
		l := *w.lost
		lost = &l
	}
	return w.firstError, lost, w.launcher
}
