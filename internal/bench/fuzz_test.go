package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/config"
)

// fuzzSep separates the arguments of one fuzz input: arguments may hold any
// other byte, empty arguments included.
const fuzzSep = "\x00"

// maxFuzzConfigs bounds the cartesian product the fuzz target expands: the
// product of the flag lists is not bounded by ParseFlags, and a few hundred
// bytes of lists can ask for more configs than memory holds (the command
// refuses that before it expands them; see internal/preflight).
const maxFuzzConfigs = 4096

// FuzzParseFlags: ParseFlags, Configs and Validate never panic on any
// argument list, and every rejection names the bad value and what it
// breaks. Valid configurations are rejected exactly when an independent
// reading of the rules (README, DESIGN.md section 1) says they must be.
func FuzzParseFlags(f *testing.F) {
	for _, args := range [][]string{
		{},
		{"--backend", "cpu", "--tokens", "0,1,37,64", "--hidden", "64", "--ffn-hidden", "128", "--experts", "8", "--topk", "2", "--verify"},
		{"--tokens=-1", "--hidden=0", "--ffn-hidden=-1", "--experts=0", "--topk=0"},
		{"--topk", "9", "--experts", "8", "--max-tokens", "4", "--tokens", "5"},
		{"--ffn", "relu,gelu,swiglu,tanh", "--dtype", "fp16", "--route", "random"},
		{"--capacity-factor", "0,1.25,-1,NaN,+Inf,1e300", "--no-renorm", "--route", "skew"},
		{"--iters", "0", "--warmup", "-1", "--watchdog", "0s", "--timeout", "-5s", "--log-level", "loud"},
		{"--watchdog", "5", "--iters", "x", "--seed", "-1"},
		{"--bogus"}, {"stray"}, {"--tokens"}, {"---tokens", "1"}, {"-h"}, {"--verify=maybe"},
		{"--tokens", "1,,2", "--experts", " 8 ", "--hidden", "0x40", "--max-tokens", "1048577"},
		{"--backend", "tpu", "--json", "", "--dump", "/nonexistent/dir", "--cubin", "x.cubin"},
	} {
		f.Add(strings.Join(args, fuzzSep))
	}
	f.Fuzz(func(t *testing.T, joined string) {
		var args []string
		if joined != "" {
			args = strings.Split(joined, fuzzSep)
		}
		o, err := ParseFlags(args, io.Discard)
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if err != nil {
			checkFlagError(t, args, err)
			return
		}
		n := configCount(o)
		if n < 1 {
			t.Fatalf("args %q: accepted with %d configs", args, n)
		}
		if n > maxFuzzConfigs {
			return
		}
		cfgs := o.Configs(config.FP32)
		if len(cfgs) != n {
			t.Fatalf("args %q: %d configs, want the product of the lists %d", args, len(cfgs), n)
		}
		for _, c := range cfgs {
			if c.MaxTokens < c.Tokens && o.MaxTokens == 0 {
				t.Fatalf("args %q: max-tokens %d below tokens %d without --max-tokens", args, c.MaxTokens, c.Tokens)
			}
			for _, w := range []int{0, 1, 2, 3, 4, 8} {
				checkValidate(t, c, w)
			}
		}
	})
}

// configCount is the product of the lengths of the flag lists, saturated.
func configCount(o Options) int {
	n := 1
	dtypes := max(len(o.DType), 1)
	for _, l := range []int{dtypes, len(o.FFN), len(o.Hidden), len(o.FFNHidden), len(o.Experts), len(o.TopK), len(o.CapacityFactor), len(o.Tokens)} {
		if l == 0 {
			return 0
		}
		if n > math.MaxInt32/l {
			return math.MaxInt32
		}
		n *= l
	}
	return n
}

var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// argPieces are the strings a message may quote to name a bad value: each
// argument, the value after '=' and each comma-separated piece of both.
func argPieces(args []string) map[string]bool {
	m := map[string]bool{}
	add := func(s string) {
		m[s] = true
		for _, p := range strings.Split(s, ",") {
			m[p] = true
			m[strings.TrimSpace(p)] = true
		}
	}
	for _, a := range args {
		add(a)
		if _, v, ok := strings.Cut(a, "="); ok {
			add(v)
		}
	}
	return m
}

// flagNames are the flag names the arguments spell (-name, --name, -name=v).
func flagNames(args []string) map[string]bool {
	m := map[string]bool{}
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		name, _, _ = strings.Cut(name, "=")
		m[name] = true
	}
	return m
}

// boolFlags take no separate value argument.
var boolFlags = map[string]bool{"verify": true, "no-renorm": true}

// lastValue is the value the arguments give flag name last (after a
// successful parse every argument is a flag or a flag's value).
func lastValue(args []string, name string) (string, bool) {
	val, found := "", false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") {
			break
		}
		n := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		n, v, hasV := strings.Cut(n, "=")
		if !hasV && !boolFlags[n] && i+1 < len(args) {
			i++
			v = args[i]
		}
		if n == name {
			val, found = v, true
		}
	}
	return val, found
}

// sameValue says whether a message's rendering of a value is the value the
// user typed: equal, or equal once parsed as an integer or a duration.
func sameValue(typed, shown string) bool {
	if typed == shown || strings.TrimSpace(typed) == shown {
		return true
	}
	if a, err := strconv.ParseInt(typed, 0, 64); err == nil {
		if b, err := strconv.ParseInt(shown, 10, 64); err == nil && a == b {
			return true
		}
	}
	if a, err := time.ParseDuration(typed); err == nil {
		if b, err := time.ParseDuration(shown); err == nil && a == b {
			return true
		}
	}
	return false
}

var rePost = regexp.MustCompile(`^([a-z][a-z-]*) (.+?): (must|exceeds) `)

// checkFlagError checks that every line of a rejection names the bad value:
// an option with the value the user gave ("iters 0: must be at least 1"),
// an argument (or a piece of one) quoted, or the flag at fault by name.
func checkFlagError(t *testing.T, args []string, err error) {
	t.Helper()
	pieces, names := argPieces(args), flagNames(args)
	lines := strings.Split(err.Error(), "\n")
	for _, p := range []string{"flag provided but not defined: ", "bad flag syntax: ", "flag needs an argument: ", "invalid "} {
		if strings.HasPrefix(err.Error(), p) {
			// package flag's one error (a name may hold a newline), with
			// ParseFlags' pointer to -h after it
			lines = []string{strings.TrimSuffix(err.Error(), flagHint)}
		}
	}
	for _, line := range lines {
		if line == "" {
			t.Errorf("args %q: empty line in rejection %q", args, err)
			continue
		}
		named := false
		if m := rePost.FindStringSubmatch(line); m != nil {
			if v, ok := lastValue(args, m[1]); ok && sameValue(v, m[2]) {
				named = true
			}
		}
		for _, q := range quoted.FindAllString(line, -1) {
			if s, uerr := strconv.Unquote(q); uerr == nil && pieces[s] {
				named = true
			}
		}
		for _, prefix := range []string{"flag provided but not defined: -", "flag needs an argument: -"} {
			if rest, ok := strings.CutPrefix(line, prefix); ok && names[rest] {
				named = true
			}
		}
		if rest, ok := strings.CutPrefix(line, "bad flag syntax: "); ok && pieces[rest] {
			named = true
		}
		for _, w := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == ':' || r == ',' }) {
			if n, ok := strings.CutPrefix(w, "--"); ok && names[n] {
				named = true // the flag's presence is the fault (a combination refused)
			}
		}
		if !named {
			t.Errorf("args %q: rejection line %q does not name the bad value", args, line)
		}
	}
}

// wantBad is an independent reading of the validity rules: the fields of c
// that are invalid on w ranks.
func wantBad(c config.Layer, w int) map[string]bool {
	bad := map[string]bool{}
	set := func(name string, cond bool) {
		if cond {
			bad[name] = true
		}
	}
	set("world size", w < 1)
	set("hidden", c.Hidden < 1 || c.Hidden > config.MaxHidden)
	set("ffn-hidden", c.FFNHidden < 1 || c.FFNHidden > config.MaxHidden)
	set("experts", c.Experts < 1 || c.Experts > config.MaxExperts || (w >= 1 && c.Experts%w != 0))
	set("topk", c.TopK < 1 || (c.Experts >= 1 && c.TopK > c.Experts))
	set("max-tokens", c.MaxTokens < 0 || c.MaxTokens > config.MaxTokens)
	set("tokens", c.Tokens < 0 || c.Tokens > c.MaxTokens)
	set("capacity-factor", !(c.CapacityFactor >= 0) || math.IsInf(c.CapacityFactor, 1))
	_, ferr := config.ParseFFN(string(c.FFN))
	_, derr := config.ParseDType(string(c.DType))
	_, rerr := config.ParseRoute(string(c.Route))
	set("ffn", ferr != nil)
	set("dtype", derr != nil)
	set("route", rerr != nil)
	return bad
}

// checkValidate checks Validate against wantBad, and that each line of its
// error starts with the field and its value and states the rule.
func checkValidate(t *testing.T, c config.Layer, w int) {
	t.Helper()
	err := c.Validate(w)
	want := wantBad(c, w)
	if err == nil {
		if len(want) > 0 {
			t.Errorf("config %v on %d ranks: accepted, but %v are invalid", c, w, keys(want))
		}
		return
	}
	prefix := map[string]string{
		"world size":      fmt.Sprintf("world size %d: ", w),
		"hidden":          fmt.Sprintf("hidden %d: ", c.Hidden),
		"ffn-hidden":      fmt.Sprintf("ffn-hidden %d: ", c.FFNHidden),
		"experts":         fmt.Sprintf("experts %d: ", c.Experts),
		"topk":            fmt.Sprintf("topk %d: ", c.TopK),
		"max-tokens":      fmt.Sprintf("max-tokens %d: ", c.MaxTokens),
		"tokens":          fmt.Sprintf("tokens %d: ", c.Tokens),
		"capacity-factor": fmt.Sprintf("capacity-factor %v: ", c.CapacityFactor),
		"ffn":             fmt.Sprintf("ffn %q: ", c.FFN),
		"dtype":           fmt.Sprintf("dtype %q: ", c.DType),
		"route":           fmt.Sprintf("route %q: ", c.Route),
	}
	got := map[string]bool{}
	for _, line := range strings.Split(err.Error(), "\n") {
		field := ""
		for name, p := range prefix {
			if strings.HasPrefix(line, p) && len(p) > len(prefix[field]) {
				field = name
			}
		}
		if field == "" {
			t.Errorf("config %v on %d ranks: %q does not start with a field and its value", c, w, line)
			continue
		}
		rule := strings.TrimPrefix(line, prefix[field])
		if !strings.HasPrefix(rule, "must") && !strings.HasPrefix(rule, "exceeds") {
			t.Errorf("config %v on %d ranks: %q does not state the limit", c, w, line)
		}
		got[field] = true
	}
	for name := range want {
		if !got[name] {
			t.Errorf("config %v on %d ranks: %s is invalid but not reported (got %q)", c, w, name, err)
		}
	}
	for name := range got {
		if !want[name] {
			t.Errorf("config %v on %d ranks: %s reported but valid (got %q)", c, w, name, err)
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
