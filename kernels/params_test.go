package kernels

import (
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/moerun/moerun/kernels/internal/cparams"
)

// mirrors pairs each C struct of params.h with its Go mirror.
var mirrors = map[string]reflect.Type{
	"MoeParams":     reflect.TypeOf(Params{}),
	"MoeStatus":     reflect.TypeOf(Status{}),
	"MoeRowTile":    reflect.TypeOf(RowTile{}),
	"MoeSched":      reflect.TypeOf(Sched{}),
	"MoeTileTest":   reflect.TypeOf(TileTest{}),
	"MoeConvert":    reflect.TypeOf(Convert{}),
	"MoeGemmBench":  reflect.TypeOf(GemmBench{}),
	"MoeTraceEvent": reflect.TypeOf(TraceEvent{}),
}

// cFields lists the fields of each struct declared in params.h, in order,
// read from the header's text.
func cFields(t *testing.T) map[string][]string {
	t.Helper()
	src, err := os.ReadFile("params.h")
	if err != nil {
		t.Fatal(err)
	}
	comments := regexp.MustCompile(`(?s)/\*.*?\*/`)
	text := comments.ReplaceAllString(string(src), "")
	structRe := regexp.MustCompile(`(?s)typedef struct (\w+) \{(.*?)\} (\w+);`)
	fieldRe := regexp.MustCompile(`(?m)^\s*(u?int\d+_t)\s+(\w+)(\[[^\]]*\])?;`)
	out := map[string][]string{}
	for _, m := range structRe.FindAllStringSubmatch(text, -1) {
		if m[1] != m[3] {
			t.Fatalf("params.h: typedef struct %s ... } %s: names differ", m[1], m[3])
		}
		for _, f := range fieldRe.FindAllStringSubmatch(m[2], -1) {
			out[m[1]] = append(out[m[1]], f[2])
		}
		if len(out[m[1]]) == 0 {
			t.Fatalf("params.h: struct %s: no fields parsed", m[1])
		}
	}
	return out
}

func TestLayoutMatchesParamsH(t *testing.T) {
	requireFreshCparams(t)
	sizes, offsets := cparams.Sizes(), cparams.Offsets()
	fields := cFields(t)
	if len(fields) != len(mirrors) {
		t.Errorf("params.h declares %d structs, the Go side mirrors %d: %v", len(fields), len(mirrors), fields)
	}
	for cname, gt := range mirrors {
		if got, want := uint64(gt.Size()), sizes[cname]; got != want {
			t.Errorf("sizeof(%s) = %d in C, Go %s is %d bytes", cname, want, gt.Name(), got)
		}
		names := fields[cname]
		if gt.NumField() != len(names) {
			t.Errorf("%s has %d fields in params.h, Go %s has %d", cname, len(names), gt.Name(), gt.NumField())
		}
		for i := 0; i < gt.NumField(); i++ {
			f := gt.Field(i)
			tag := f.Tag.Get("c")
			if i < len(names) && tag != names[i] {
				t.Errorf("%s field %d: params.h has %q, Go %s.%s is tagged %q", cname, i, names[i], gt.Name(), f.Name, tag)
			}
			want, ok := offsets[cname+"."+tag]
			if !ok {
				t.Errorf("%s.%s: not in cparams' generated table (regenerate it from params.h)", cname, tag)
				continue
			}
			if uint64(f.Offset) != want {
				t.Errorf("offsetof(%s, %s) = %d in C, Go %s.%s is at %d", cname, tag, want, gt.Name(), f.Name, f.Offset)
			}
			if f.Type.Kind() == reflect.Uint64 && f.Offset%8 != 0 {
				t.Errorf("%s.%s: 64-bit field at offset %d, not 8-byte aligned", cname, tag, f.Offset)
			}
		}
	}
	for key := range offsets {
		s, f, _ := strings.Cut(key, ".")
		found := false
		for _, n := range fields[s] {
			found = found || n == f
		}
		if !found {
			t.Errorf("cparams lists %s, which params.h no longer declares", key)
		}
	}
}

// literalDefines reads the `#define MOE_NAME <integer>` lines of params.h's
// text, for the constants whose value is a plain decimal literal.
func literalDefines(t *testing.T) map[string]uint64 {
	t.Helper()
	src, err := os.ReadFile("params.h")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^#define (MOE_\w+)\s+(\d+)\s*(?:/\*.*)?$`)
	out := map[string]uint64{}
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		v, err := strconv.ParseUint(m[2], 10, 64)
		if err != nil {
			t.Fatalf("params.h: %s: %v", m[1], err)
		}
		out[m[1]] = v
	}
	return out
}

// requireFreshCparams skips without cgo and fails, with the cause, unless
// cparams was compiled from the params.h on disk. Go's build cache keys a cgo
// package on the files of its own directory only, so after an edit of
// params.h a plain `go test` may reuse cparams compiled from the old header
// (the Makefile puts a digest of params.h in CGO_CPPFLAGS, which is part of
// the key); unchecked, the stale table would read as a wrong Go mirror.
func requireFreshCparams(t *testing.T) {
	t.Helper()
	if !cparams.Available {
		t.Skip("no cgo: cannot compile params.h")
	}
	lit := literalDefines(t)
	if len(lit) < 20 {
		t.Fatalf("params.h: only %d literal #defines parsed; the pattern no longer matches the header", len(lit))
	}
	c := cparams.Consts()
	for name, v := range lit {
		if got, ok := c[name]; ok && got != v {
			t.Fatalf("cparams was compiled from an older params.h (%s = %d there, %d in the file): "+
				"Go's build cache does not see headers outside a package's directory; run `make test`, "+
				"or `go clean -cache` and test again", name, got, v)
		}
	}
}

func TestConstantsMatchParamsH(t *testing.T) {
	requireFreshCparams(t)
	goConsts := map[string]uint64{
		"MOE_ABI_VERSION": ABIVersion, "MOE_THREADS": Threads, "MOE_TILE_M": TileM, "MOE_TILE_N": TileN,
		"MOE_TILE_K":    TileK,
		"MOE_TC_TILE_M": TCTileM, "MOE_TC_TILE_N": TCTileN, "MOE_TC_K_BYTES": TCKBytes, "MOE_TC_STAGES": TCStages,
		"MOE_PHASE_ALIGN": PhaseAlign, "MOE_PHASE_BYTES": PhaseBytes, "MOE_SIMT_PHASE_BYTES": SIMTPhaseBytes, "MOE_MAX_WORLD": MaxWorld, "MOE_MAX_TOPK": MaxTopK,
		"MOE_GATE_MAX_SPLIT": GateMaxSplit, "MOE_MAX_EXPERTS": MaxExperts, "MOE_SHAPE_MULTIPLE": ShapeMultiple,
		"MOE_FFN_RELU": FFNReLU, "MOE_FFN_GELU": FFNGeLU, "MOE_FFN_SWIGLU": FFNSwiGLU,
		"MOE_DTYPE_FP32": DTypeFP32, "MOE_DTYPE_TF32": DTypeTF32, "MOE_DTYPE_BF16": DTypeBF16,
		"MOE_ROUTE_SOFTMAX": RouteSoftmax, "MOE_ROUTE_SKEW": RouteSkew,
		"MOE_STATUS_OK": StatusOK, "MOE_STATUS_WATCHDOG": StatusWatchdog, "MOE_STATUS_NOT_P2P": StatusNotP2P,
		"MOE_STATUS_BAD_PARAMS": StatusBadParams,
		"MOE_WAIT_NONE":         WaitNone, "MOE_WAIT_DISPATCH": WaitDispatch, "MOE_WAIT_RETURN": WaitReturn,
		"MOE_WAIT_BARRIER": WaitBarrier, "MOE_WAIT_TASK": WaitTask, "MOE_WAIT_SLOT": WaitSlot,
		"MOE_FLAG_GATE_TC": FlagGateTC, "MOE_FLAG_LOCAL_GATHER": FlagLocalGather, "MOE_FLAGS_DEFAULT": FlagsDefault,
		"MOE_FLAG_TMA": FlagTMA, "MOE_TMAP_WORDS": TMapWords, "MOE_TMAP_RECV": TMapRecv, "MOE_TMAP_INTER": TMapInter,
		"MOE_TMAP_W1": TMapW1, "MOE_TMAP_WU": TMapWu, "MOE_TMAP_W2": TMapW2, "MOE_TMAPS": TMaps,
		"MOE_TMAP_SWIGLU_ROWS": TMapSwiGLURows, "MOE_TILE_TMAPS": TileTMaps,
		"MOE_WS_THREADS": WSThreads, "MOE_WS_TILE_N": WSTileN, "MOE_WS_STAGES": WSStages, "MOE_WS_MIN_DIM": WSMinDim, "MOE_MERGE_ROWS": MergeRows, "MOE_WS_SMEM_BYTES": WSSmemBytes,
		"MOE_GATE_TC_GROUP": GateTCGroup, "MOE_GATE_TC_ROWS": GateTCRows,
		"MOE_EV_SETUP": EvSetup, "MOE_EV_GATE": EvGate, "MOE_EV_TOPK": EvTopK, "MOE_EV_ROUTE": EvRoute,
		"MOE_EV_DISPATCH": EvDispatch, "MOE_EV_GEMM0": EvGEMM0, "MOE_EV_GEMM1": EvGEMM1, "MOE_EV_COMBINE": EvCombine,
		"MOE_EV_BARRIER": EvBarrier, "MOE_EV_WAIT_DISPATCH": EvWaitDispatch, "MOE_EV_WAIT_RETURN": EvWaitReturn,
		"MOE_EV_DECODE": EvDecode, "MOE_EV_WAIT_TASK": EvWaitTask, "MOE_EV_KINDS": EvKinds,
	}
	c := cparams.Consts()
	for name, v := range c {
		g, ok := goConsts[name]
		if !ok {
			t.Errorf("params.h defines %s = %d; package kernels has no mirror of it", name, v)
			continue
		}
		if g != v {
			t.Errorf("%s = %d in params.h, %d in Go", name, v, g)
		}
	}
	for name := range goConsts {
		if _, ok := c[name]; !ok {
			t.Errorf("Go mirrors %s, which params.h does not define", name)
		}
	}
}

func TestParamsBytes(t *testing.T) {
	p := Params{Tokens: 7, WatchdogNs: 0x0102030405060708, G1List: 42}
	b := p.Bytes()
	if len(b) != int(ParamsSize) {
		t.Fatalf("Bytes: %d bytes, want %d", len(b), ParamsSize)
	}
	if b[0] != 7 {
		t.Errorf("tokens: first byte %d, want 7 (little-endian)", b[0])
	}
	wf, _ := reflect.TypeOf(p).FieldByName("WatchdogNs")
	off := wf.Offset
	if b[off] != 8 || b[off+7] != 1 {
		t.Errorf("watchdog_ns bytes % x", b[off:off+8])
	}
	var s Status
	s.Code, s.Peer, s.BytesPut = 1, 3, 99
	got := StatusFromBytes(structBytes(&s))
	if got != s {
		t.Errorf("StatusFromBytes round trip: %+v, want %+v", got, s)
	}
}

func TestLocate(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/k.cubin"
	if err := os.WriteFile(good, []byte("cubin"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, from, err := locate(good, "", nil, ""); err != nil || string(b) != "cubin" || from != good {
		t.Errorf("flag: %q %q %v", b, from, err)
	}
	if _, _, err := locate(dir+"/missing", "", []byte("emb"), ""); err == nil {
		t.Error("a named but missing --cubin must be an error, not a fallback")
	}
	if b, from, err := locate("", good, []byte("emb"), ""); err != nil || string(b) != "cubin" || from != good {
		t.Errorf("env: %q %q %v", b, from, err)
	}
	if b, from, err := locate("", "", []byte("emb"), dir); err != nil || string(b) != "emb" || from != "embedded" {
		t.Errorf("embedded: %q %q %v", b, from, err)
	}
	if err := os.WriteFile(dir+"/"+CubinName, []byte("next"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _, err := locate("", "", nil, dir); err != nil || string(b) != "next" {
		t.Errorf("next to executable: %q %v", b, err)
	}
	_, _, err := locate("", "", nil, t.TempDir())
	if err == nil {
		t.Fatal("nothing anywhere: want an error")
	}
	for _, want := range []string{"--cubin", EnvCubin, "embedded", CubinName} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestLocateWS(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/ws.cubin"
	if err := os.WriteFile(good, []byte("ws"), 0o644); err != nil {
		t.Fatal(err)
	}
	emb := []byte("emb-ws")
	cases := []struct {
		name, mainFrom, env string
		emb                 []byte
		want, from          string
		err                 bool
	}{
		{"embedded pairs with embedded", "embedded", "", emb, "emb-ws", "embedded", false},
		{"a named main cubin runs alone", "/x/moerun.cubin", "", emb, "", "", false},
		{"none embedded", "embedded", "", nil, "", "", false},
		{"off", "embedded", "off", emb, "", "", false},
		{"env path", "/x/moerun.cubin", good, emb, "ws", good, false},
		{"env path missing", "embedded", dir + "/missing", emb, "", "", true},
	}
	for _, c := range cases {
		b, from, err := locateWS(c.mainFrom, c.env, c.emb)
		if (err != nil) != c.err || string(b) != c.want || from != c.from {
			t.Errorf("%s: got %q from %q (err %v), want %q from %q (err %v)", c.name, b, from, err, c.want, c.from, c.err)
		}
	}
}

func structBytes(s *Status) []byte {
	b := make([]byte, StatusSize)
	copy(b, unsafeBytes(s))
	return b
}
