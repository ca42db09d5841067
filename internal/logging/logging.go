// Package logging makes the per-rank logger: every line carries the rank,
// local rank and host, in JSON when stderr is not a terminal (so launchers and
// log collectors can parse it) and in colourless console form otherwise.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// ParseLevel parses --log-level, naming the bad value on error.
func ParseLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return zerolog.DebugLevel, nil
	case "info", "":
		return zerolog.InfoLevel, nil
	case "warn", "warning":
		return zerolog.WarnLevel, nil
	case "error":
		return zerolog.ErrorLevel, nil
	}
	return zerolog.NoLevel, fmt.Errorf("log-level %q: must be debug, info, warn or error", s)
}

// New returns a logger writing to w (os.Stderr when nil) with the rank's
// identity fields.
func New(w io.Writer, level zerolog.Level, rank, localRank int, host string) zerolog.Logger {
	if w == nil {
		w = os.Stderr
	}
	out := w
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		out = zerolog.ConsoleWriter{Out: w, NoColor: true, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(out).Level(level).With().Timestamp().
		Int("rank", rank).Int("local_rank", localRank).Str("host", host).Logger()
}
