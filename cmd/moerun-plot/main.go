// Command moerun-plot merges the JSON of `moerun bench` and of the PyTorch
// baseline (scripts/baseline/) into one collection, and draws the pictures
// of issue 4 from it as PNG files: latency vs T (moerun and the baseline),
// latency vs E, weak scaling (latency vs W with T per GPU fixed) and the
// overlap efficiency latency(W=2)/latency(W).
//
//	moerun-plot collect -o sweep.json out/*.json       # merge reports and collections
//	moerun-plot draw -o plots sweep.json               # the four PNGs
//	moerun-plot draw -o plots -dtype tf32 -experts 64 out/
//
// Inputs are files or folders (their *.json files): bench reports, baseline
// reports, or collections written by `collect` or scripts/sweep.sh.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

const usage = `Usage:
  moerun-plot collect [-o FILE] FILE|DIR...   merge bench/baseline reports and collections into one file
  moerun-plot draw [flags] FILE|DIR...        draw the PNG charts from reports or collections

Reports are the --json output of 'moerun bench' and of scripts/baseline/moe_baseline.py;
collections are what 'collect' and scripts/sweep.sh write. A folder stands for its *.json files.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command; it returns the exit status (0 ok, 1 failure, 2 usage).
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "collect":
		return runCollect(args[1:], stdout, stderr)
	case "draw":
		return runDraw(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "moerun-plot: unknown command %q\n%s", args[0], usage)
	return 2
}

func runCollect(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("collect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "sweep.json", "the collection file to write")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: moerun-plot collect [-o FILE] FILE|DIR...\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitFlag(err)
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "moerun-plot collect: no input files")
		return 2
	}
	c, err := Collect(fs.Args(), time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "moerun-plot collect: %v\n", err)
		return 1
	}
	if err := WriteCollection(*out, c); err != nil {
		fmt.Fprintf(stderr, "moerun-plot collect: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "moerun-plot: %d runs merged into %s\n", len(c.Runs), *out)
	return 0
}

func runDraw(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("draw", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var s Selection
	out := fs.String("o", "plots", "folder for the PNG files")
	width := fs.Int("width", 960, "image width in pixels")
	height := fs.Int("height", 600, "image height in pixels")
	fs.StringVar(&s.DType, "dtype", "", "precision mode to plot (default: bf16 if measured, else the most common)")
	fs.StringVar(&s.FFN, "ffn", "", "FFN to plot (default: relu if measured, else the most common)")
	fs.IntVar(&s.Hidden, "hidden", 0, "hidden size H (default: 2048 if measured, else the most common)")
	fs.IntVar(&s.FFNHidden, "ffn-hidden", 0, "FFN width I (default: 2048 if measured, else the most common)")
	fs.IntVar(&s.TopK, "topk", 0, "k (default: 2 if measured, else the most common)")
	fs.Float64Var(&s.CapacityFactor, "capacity-factor", 0, "capacity factor (default: 0 if measured, else the most common)")
	fs.IntVar(&s.Experts, "experts", 0, "E of the charts over T and W (default: 32 if measured, else the most common)")
	fs.IntVar(&s.Tokens, "tokens", 0, "T per GPU of the chart over E (default: 8192 if measured, else the most common)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: moerun-plot draw [flags] FILE|DIR...\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitFlag(err)
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "moerun-plot draw: no input files")
		return 2
	}
	raw, err := LoadRaw(fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "moerun-plot draw: %v\n", err)
		return 1
	}
	runs, err := ParseRuns(raw)
	if err != nil {
		fmt.Fprintf(stderr, "moerun-plot draw: %v\n", err)
		return 1
	}
	recs := Records(runs)
	if len(recs) == 0 {
		fmt.Fprintln(stderr, "moerun-plot draw: no measured points in the input")
		return 1
	}
	s = Defaults(s, recs)
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "moerun-plot draw: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "moerun-plot: %d points from %d runs; %s, E=%d (T=%d for the chart over E)\n",
		len(recs), len(runs), s.describe("", nil), s.Experts, s.Tokens)
	for _, nc := range Charts(recs, s) {
		c := nc.Chart
		c.Width, c.Height = *width, *height
		path := filepath.Join(*out, nc.File)
		if err := c.SavePNG(path); err != nil {
			fmt.Fprintf(stderr, "moerun-plot draw: %v\n", err)
			return 1
		}
		n := 0
		for _, se := range c.Series {
			n += len(se.Points)
		}
		note := ""
		if n == 0 {
			note = " (no data for this selection)"
		}
		fmt.Fprintf(stdout, "  %s: %d lines, %d points%s\n", path, len(c.Series), n, note)
	}
	return 0
}

func exitFlag(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
