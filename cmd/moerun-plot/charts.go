package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/plot"
)

// Selection fixes the config values that a chart does not vary. Zero or
// empty fields are chosen from the data by Defaults.
type Selection struct {
	DType          string
	FFN            string
	Hidden         int
	FFNHidden      int
	TopK           int
	CapacityFactor float64
	Experts        int // for the charts over T and W
	Tokens         int // for the chart over E
}

// mostCommon returns the value that most records have (ties: the one seen
// first), or the preferred value when any record has it.
func mostCommon[T comparable](recs []Record, get func(Record) T, prefer ...T) T {
	counts := map[T]int{}
	var order []T
	for _, r := range recs {
		v := get(r)
		if counts[v] == 0 {
			order = append(order, v)
		}
		counts[v]++
	}
	for _, p := range prefer {
		if counts[p] > 0 {
			return p
		}
	}
	var best T
	n := 0
	for _, v := range order {
		if counts[v] > n {
			best, n = v, counts[v]
		}
	}
	return best
}

// Defaults fills the unset fields of s from the records: bf16, E = 32 and
// T = 8192 (the paper's shape) where measured, else the most common value;
// each choice narrows the records the next one looks at.
func Defaults(s Selection, recs []Record) Selection {
	recs = filter(recs, func(r Record) bool { return r.Cfg.Route != config.RouteSkew })
	if s.DType == "" {
		s.DType = string(mostCommon(recs, func(r Record) config.DType { return r.Cfg.DType }, config.BF16))
	}
	recs = filter(recs, func(r Record) bool { return string(r.Cfg.DType) == s.DType })
	if s.FFN == "" {
		s.FFN = string(mostCommon(recs, func(r Record) config.FFN { return r.Cfg.FFN }, config.FFNReLU))
	}
	recs = filter(recs, func(r Record) bool { return string(r.Cfg.FFN) == s.FFN })
	if s.Hidden == 0 {
		s.Hidden = mostCommon(recs, func(r Record) int { return r.Cfg.Hidden }, 2048)
	}
	recs = filter(recs, func(r Record) bool { return r.Cfg.Hidden == s.Hidden })
	if s.FFNHidden == 0 {
		s.FFNHidden = mostCommon(recs, func(r Record) int { return r.Cfg.FFNHidden }, 2048)
	}
	recs = filter(recs, func(r Record) bool { return r.Cfg.FFNHidden == s.FFNHidden })
	if s.TopK == 0 {
		s.TopK = mostCommon(recs, func(r Record) int { return r.Cfg.TopK }, 2)
	}
	recs = filter(recs, func(r Record) bool { return r.Cfg.TopK == s.TopK })
	s.CapacityFactor = mostCommon(recs, func(r Record) float64 { return r.Cfg.CapacityFactor }, s.CapacityFactor)
	recs = filter(recs, func(r Record) bool { return r.Cfg.CapacityFactor == s.CapacityFactor })
	if s.Experts == 0 {
		s.Experts = mostCommon(recs, func(r Record) int { return r.Cfg.Experts }, 32)
	}
	if s.Tokens == 0 {
		s.Tokens = mostCommon(recs, func(r Record) int { return r.Cfg.Tokens }, 8192)
	}
	return s
}

func filter(recs []Record, keep func(Record) bool) []Record {
	var out []Record
	for _, r := range recs {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// base keeps the records of the selection's fixed values (all but E and T).
func (s Selection) base(recs []Record) []Record {
	return filter(recs, func(r Record) bool {
		c := r.Cfg
		return string(c.DType) == s.DType && string(c.FFN) == s.FFN && c.Hidden == s.Hidden &&
			c.FFNHidden == s.FFNHidden && c.TopK == s.TopK && c.CapacityFactor == s.CapacityFactor &&
			c.Route != config.RouteSkew
	})
}

func (s Selection) describe(extra string, cards []string) string {
	d := fmt.Sprintf("H=%d I=%d k=%d %s %s", s.Hidden, s.FFNHidden, s.TopK, s.FFN, s.DType)
	if s.CapacityFactor != 0 {
		d += fmt.Sprintf(" cf=%g", s.CapacityFactor)
	}
	if extra != "" {
		d += " " + extra
	}
	if len(cards) > 0 {
		d += " - " + strings.Join(cards, ", ")
	}
	return d
}

// toolName is the legend's name of a tool.
func toolName(tool string) string {
	if tool == ToolBaseline {
		return "PyTorch"
	}
	return tool
}

// group is the points of one line before they become a plot.Series.
type group struct {
	tool  string
	key   int // W or T: what the line stands for
	label string
	pts   []plot.Point
}

// lines groups records into one line per (tool, key), x and y from the
// record, colour by key (the same for both tools), the baseline dashed;
// moerun first, then by key.
func lines(recs []Record, key func(Record) int, label func(int) string, x func(Record) float64) []plot.Series {
	byKey := map[[2]any]*group{}
	var gs []*group
	for _, r := range recs {
		k := [2]any{r.Tool, key(r)}
		g, ok := byKey[k]
		if !ok {
			g = &group{tool: r.Tool, key: key(r), label: label(key(r))}
			byKey[k] = g
			gs = append(gs, g)
		}
		g.pts = append(g.pts, plot.Point{X: x(r), Y: r.P50})
	}
	return toSeries(gs)
}

func toSeries(gs []*group) []plot.Series {
	slices.SortFunc(gs, func(a, b *group) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(toolRank(a.tool), toolRank(b.tool))
	})
	var keys []int
	for _, g := range gs {
		if !slices.Contains(keys, g.key) {
			keys = append(keys, g.key)
		}
	}
	out := make([]plot.Series, 0, len(gs))
	for _, g := range gs {
		slices.SortFunc(g.pts, func(a, b plot.Point) int { return cmp.Compare(a.X, b.X) })
		i := slices.Index(keys, g.key)
		out = append(out, plot.Series{
			Name:   toolName(g.tool) + " " + g.label,
			Points: g.pts,
			Color:  plot.Palette[i%len(plot.Palette)],
			Dashed: g.tool == ToolBaseline,
			Marker: plot.Marker(int(plot.MarkerCircle) + i%4),
		})
	}
	return out
}

func toolRank(t string) int {
	if t == ToolMoerun {
		return 0
	}
	return 1
}

// distinct returns the sorted distinct values of f over recs.
func distinct(recs []Record, f func(Record) float64) []float64 {
	var out []float64
	for _, r := range recs {
		if v := f(r); !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

func tokensOf(r Record) float64  { return float64(r.Cfg.Tokens) }
func expertsOf(r Record) float64 { return float64(r.Cfg.Experts) }
func worldOf(r Record) float64   { return float64(r.World) }

// LatencyVsTokens: p50 latency over T per GPU, one line per (tool, W), at
// the selection's E.
func LatencyVsTokens(recs []Record, s Selection) plot.Chart {
	rs := filter(s.base(recs), func(r Record) bool { return r.Cfg.Experts == s.Experts })
	return plot.Chart{
		Title:    "MoE layer latency vs tokens per GPU",
		Subtitle: s.describe(fmt.Sprintf("E=%d", s.Experts), Cards(rs)),
		XLabel:   "tokens per GPU (T)", YLabel: "latency p50 (us)",
		LogX: true, LogY: true, XTicks: distinct(rs, tokensOf),
		Series: lines(rs, func(r Record) int { return r.World }, func(w int) string { return fmt.Sprintf("W=%d", w) }, tokensOf),
	}
}

// LatencyVsExperts: p50 latency over E, one line per (tool, W), at the
// selection's T.
func LatencyVsExperts(recs []Record, s Selection) plot.Chart {
	rs := filter(s.base(recs), func(r Record) bool { return r.Cfg.Tokens == s.Tokens })
	return plot.Chart{
		Title:    "MoE layer latency vs number of experts",
		Subtitle: s.describe(fmt.Sprintf("T=%d per GPU", s.Tokens), Cards(rs)),
		XLabel:   "experts (E)", YLabel: "latency p50 (us)",
		LogX: true, LogY: true, XTicks: distinct(rs, expertsOf),
		Series: lines(rs, func(r Record) int { return r.World }, func(w int) string { return fmt.Sprintf("W=%d", w) }, expertsOf),
	}
}

// WeakScaling: p50 latency over W with T per GPU fixed, one line per
// (tool, T), at the selection's E.
func WeakScaling(recs []Record, s Selection) plot.Chart {
	rs := filter(s.base(recs), func(r Record) bool { return r.Cfg.Experts == s.Experts })
	return plot.Chart{
		Title:    "Weak scaling: latency vs GPUs, T per GPU fixed",
		Subtitle: s.describe(fmt.Sprintf("E=%d", s.Experts), Cards(rs)),
		XLabel:   "GPUs (W)", YLabel: "latency p50 (us)",
		LogX: true, LogY: true, XTicks: distinct(rs, worldOf),
		Series: lines(rs, func(r Record) int { return r.Cfg.Tokens }, func(t int) string { return fmt.Sprintf("T=%d", t) }, worldOf),
	}
}

// Efficiency is the overlap efficiency of DESIGN.md section 4: latency at
// W = 2 over latency at W, same T per GPU and E; one line per (tool, T)
// that has a W = 2 point.
func Efficiency(recs []Record, s Selection) plot.Chart {
	rs := filter(s.base(recs), func(r Record) bool { return r.Cfg.Experts == s.Experts })
	at2 := map[[2]any]float64{}
	for _, r := range rs {
		if r.World == 2 {
			at2[[2]any{r.Tool, r.Cfg.Tokens}] = r.P50
		}
	}
	byKey := map[[2]any]*group{}
	var gs []*group
	for _, r := range rs {
		k := [2]any{r.Tool, r.Cfg.Tokens}
		l2, ok := at2[k]
		if !ok {
			continue
		}
		g, ok := byKey[k]
		if !ok {
			g = &group{tool: r.Tool, key: r.Cfg.Tokens, label: fmt.Sprintf("T=%d", r.Cfg.Tokens)}
			byKey[k] = g
			gs = append(gs, g)
		}
		g.pts = append(g.pts, plot.Point{X: float64(r.World), Y: l2 / r.P50})
	}
	return plot.Chart{
		Title:    "Overlap efficiency: latency(W=2) / latency(W)",
		Subtitle: s.describe(fmt.Sprintf("E=%d", s.Experts), Cards(rs)),
		XLabel:   "GPUs (W)", YLabel: "latency at W=2 / latency at W",
		LogX: true, XTicks: distinct(rs, worldOf), YFromZero: true,
		Series:   toSeries(gs),
		RefLines: []plot.RefLine{{Y: 1}, {Y: 0.97, Label: "target 0.97 (W=4)"}},
	}
}

// Charts are the pictures `moerun-plot draw` writes, by file name.
func Charts(recs []Record, s Selection) []NamedChart {
	return []NamedChart{
		{"latency_vs_tokens.png", LatencyVsTokens(recs, s)},
		{"latency_vs_experts.png", LatencyVsExperts(recs, s)},
		{"weak_scaling.png", WeakScaling(recs, s)},
		{"overlap_efficiency.png", Efficiency(recs, s)},
	}
}

// NamedChart is a chart and the file it goes to.
type NamedChart struct {
	File  string
	Chart plot.Chart
}
