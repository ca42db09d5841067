package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
)

func printHeader(w io.Writer, r Report, o Options) {
	verify := "off"
	if o.Verify {
		verify = "on"
	}
	fmt.Fprintf(w, "# moerun bench  version %s  backend %s  ranks %d  card %s\n", r.Version, r.Backend, r.World, r.Card)
	fmt.Fprintf(w, "# iters %d  warmup %d  verify %s  seed %d  latency: median/p99 over iters of the slowest rank\n#\n", o.Iters, o.Warmup, verify, o.Seed)
	fmt.Fprintf(w, "#%6s %7s %6s %7s %7s %4s %6s %5s %4s %10s %10s %10s %12s %8s %9s %9s %9s %6s %6s %5s\n",
		"ranks", "tokens", "hidden", "ffn_hid", "experts", "topk", "ffn", "dtype", "cf",
		"p50(us)", "p99(us)", "b2b(us)", "tokens/s", "TFLOP/s", "put(MB)", "put(GB/s)", "rel_err", "wrong", "route", "ok")
}

func printRow(w io.Writer, world int, r Row) {
	c := r.Config
	relErr, wrong, route, ok := "-", "-", "-", "-"
	if r.Verified != nil {
		relErr = fmt.Sprintf("%.2e", *r.RelErr)
		wrong = fmt.Sprint(*r.Wrong)
		route = fmt.Sprint(*r.RouteMismatch)
		ok = "pass"
		if !*r.Verified {
			ok = "FAIL"
		}
	}
	fmt.Fprintf(w, " %6d %7d %6d %7d %7d %4d %6s %5s %4g %10.1f %10.1f %10.1f %12.4g %8.4g %9.2f %9.2f %9s %6s %6s %5s\n",
		world, c.Tokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.FFN, c.DType, c.CapacityFactor,
		r.LatencyP50, r.LatencyP99, r.BackToBack, r.TokensPerS, r.TFLOPs,
		float64(r.BytesPut)/1e6, r.PutGBps, relErr, wrong, route, ok)
	for _, f := range r.failures {
		fmt.Fprintf(w, "#   FAIL: %s\n", f)
	}
}

func printSummary(w io.Writer, r Report, failed int) {
	verified := 0
	for _, row := range r.Results {
		if row.Verified != nil {
			verified++
		}
	}
	status := "OK"
	if failed > 0 {
		status = "FAILED"
	}
	fmt.Fprintf(w, "#\n# %d configs, %d verified, %d failed: %s\n", len(r.Results), verified, failed, status)
}

// writeJSON writes the report; non-finite figures become null, since JSON
// has no NaN (a NaN error has already failed verification).
func writeJSON(path string, r Report) error {
	for i := range r.Results {
		row := &r.Results[i]
		if row.RelErr != nil && (math.IsNaN(*row.RelErr) || math.IsInf(*row.RelErr, 0)) {
			row.RelErr = nil
		}
		if row.SMUtil != nil && (math.IsNaN(*row.SMUtil) || math.IsInf(*row.SMUtil, 0)) {
			row.SMUtil = nil
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
