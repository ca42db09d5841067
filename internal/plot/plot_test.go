package plot

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func sample() *Chart {
	ts := []float64{128, 1024, 4096, 8192, 16384}
	c := &Chart{Title: "Latency vs T", Subtitle: "test", XLabel: "tokens per GPU", YLabel: "latency (us)",
		LogX: true, LogY: true, XTicks: ts}
	var a, b []Point
	for _, t := range ts {
		a = append(a, Point{t, 50 + t/20})
		b = append(b, Point{t, 1600 + t/10})
	}
	c.Series = []Series{{Name: "moerun", Points: a}, {Name: "PyTorch", Points: b, Dashed: true}}
	return c
}

func decode(t *testing.T, c *Chart) image.Image {
	t.Helper()
	var buf bytes.Buffer
	if err := c.WritePNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	return img
}

func TestRendersPNGOfRequestedSize(t *testing.T) {
	for _, sz := range []image.Point{{960, 600}, {640, 400}, {1200, 800}} {
		c := sample()
		c.Width, c.Height = sz.X, sz.Y
		if got := decode(t, c).Bounds().Size(); got != sz {
			t.Errorf("size %v, want %v", got, sz)
		}
	}
	c := sample()
	c.Width, c.Height = 0, 0
	if got := decode(t, c).Bounds().Size(); got != (image.Point{960, 600}) {
		t.Errorf("default size %v, want 960x600", got)
	}
}

func TestSavePNGWritesAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.png")
	if err := sample().SavePNG(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil || cfg.Width != 960 || cfg.Height != 600 {
		t.Fatalf("config %+v, err %v", cfg, err)
	}
}

func TestAxisMapping(t *testing.T) {
	lin := Axis{Min: 0, Max: 10, Lo: 100, Hi: 200}
	for _, tc := range []struct{ v, want float64 }{{0, 100}, {10, 200}, {5, 150}, {-10, 0}, {20, 300}} {
		if got := lin.Pixel(tc.v); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("linear Pixel(%v) = %v, want %v", tc.v, got, tc.want)
		}
	}
	// y axes run downwards: Lo is the bottom pixel.
	y := Axis{Min: 0, Max: 1, Lo: 500, Hi: 100}
	if got := y.Pixel(0.25); got != 400 {
		t.Errorf("y Pixel(0.25) = %v, want 400", got)
	}
	lg := Axis{Min: 10, Max: 10000, Log: true, Lo: 0, Hi: 300}
	for _, tc := range []struct{ v, want float64 }{{10, 0}, {100, 100}, {1000, 200}, {10000, 300}} {
		if got := lg.Pixel(tc.v); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("log Pixel(%v) = %v, want %v", tc.v, got, tc.want)
		}
	}
	if lg.Valid(0) || lg.Valid(-1) || !lg.Valid(1) || lin.Valid(math.NaN()) || lin.Valid(math.Inf(1)) {
		t.Error("Valid: wrong answer for 0, -1, 1 on a log axis or NaN, Inf on a linear one")
	}
	if !lin.Contains(10) || lin.Contains(10.5) || !lg.Contains(10) || lg.Contains(5) {
		t.Error("Contains: wrong answer at or past the ends")
	}
	// A degenerate axis maps everything to its middle rather than NaN.
	if got := (Axis{Min: 3, Max: 3, Lo: 0, Hi: 10}).Pixel(3); got != 5 {
		t.Errorf("degenerate axis Pixel = %v, want 5", got)
	}
}

func TestChartAxesCoverDataAndMapInsidePlot(t *testing.T) {
	c := sample()
	x, y := c.Axes()
	if !x.Log || !y.Log {
		t.Fatal("log axes expected")
	}
	for _, s := range c.Series {
		for _, p := range s.Points {
			if !x.Contains(p.X) || !y.Contains(p.Y) {
				t.Errorf("point %v outside axes x [%v, %v] y [%v, %v]", p, x.Min, x.Max, y.Min, y.Max)
			}
			px, py := x.Pixel(p.X), y.Pixel(p.Y)
			if px < 0 || px >= 960 || py < 0 || py >= 600 {
				t.Errorf("point %v maps to pixel (%v, %v), off the image", p, px, py)
			}
		}
	}
	// Larger values are further right and higher up (smaller y pixel).
	if !(x.Pixel(8192) > x.Pixel(4096)) || !(y.Pixel(2000) < y.Pixel(100)) {
		t.Error("axis direction is wrong")
	}
}

func TestDataIsDrawnInSeriesColour(t *testing.T) {
	red := color.RGBA{0xff, 0, 0, 0xff}
	c := &Chart{Width: 400, Height: 300, Series: []Series{{Points: []Point{{0, 0}, {1, 1}}, Color: red, Marker: MarkerSquare}}}
	img := c.Render()
	x, y := c.Axes()
	px, py := int(x.Pixel(0.5)), int(y.Pixel(0.5))
	found := false
	for dy := -3; dy <= 3 && !found; dy++ {
		for dx := -3; dx <= 3; dx++ {
			if img.RGBAAt(px+dx, py+dy) == red {
				found = true
				break
			}
		}
	}
	if !found {
		t.Errorf("no line pixel of the series colour near the middle of the segment (%d, %d)", px, py)
	}
	// A marker at the last point, inside the plot.
	if img.RGBAAt(int(math.Round(x.Pixel(1))), int(math.Round(y.Pixel(1)))) != red {
		t.Error("no marker at the last point")
	}
}

func TestNoPanicOnDegenerateInput(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	cases := map[string]*Chart{
		"no series":        {},
		"empty series":     {Series: []Series{{Name: "empty"}}, LogX: true, LogY: true},
		"single point":     {Series: []Series{{Name: "one", Points: []Point{{8192, 345}}}}},
		"single point log": {Series: []Series{{Name: "one", Points: []Point{{8192, 345}}}}, LogX: true, LogY: true},
		"zero point":       {Series: []Series{{Points: []Point{{0, 0}}}}},
		"non-finite":       {Series: []Series{{Points: []Point{{nan, 1}, {1, inf}, {2, 3}, {3, nan}, {4, 5}}}}},
		"non-positive log": {Series: []Series{{Points: []Point{{-1, -1}, {0, 0}, {1, 1}}}}, LogX: true, LogY: true},
		"equal values":     {Series: []Series{{Points: []Point{{1, 7}, {2, 7}, {3, 7}}}}, XTicks: []float64{1, 2, 3}},
		"ref line only":    {RefLines: []RefLine{{Y: 0.97, Label: "target"}}},
		"tiny image":       {Width: 10, Height: 8, Title: "a long title that does not fit", Series: []Series{{Name: "x", Points: []Point{{1, 1}, {2, 2}}}}},
		"fixed y":          {FixYMin: true, YMin: 0, FixYMax: true, YMax: 1.2, Series: []Series{{Points: []Point{{1, 5}}}}},
		"many series":      {Series: make([]Series, 25)},
		"unicode name":     {Series: []Series{{Name: "µs ≥ 3×", Points: []Point{{1, 1}}}}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			img := decode(t, c)
			w, h := c.size()
			if img.Bounds().Dx() != w || img.Bounds().Dy() != h {
				t.Errorf("size %v, want %dx%d", img.Bounds().Size(), w, h)
			}
		})
	}
}

func TestTicks(t *testing.T) {
	lin := Ticks(0, 1, false)
	if len(lin) < 4 || lin[0] != 0 || math.Abs(lin[len(lin)-1]-1) > 1e-12 {
		t.Errorf("linear ticks of [0, 1]: %v", lin)
	}
	for _, tc := range []struct {
		lo, hi float64
		want   []float64
	}{
		{40, 5000, []float64{50, 100, 200, 500, 1000, 2000, 5000}},
		{1, 1e6, []float64{1, 10, 100, 1000, 1e4, 1e5, 1e6}},
	} {
		got := Ticks(tc.lo, tc.hi, true)
		if len(got) != len(tc.want) {
			t.Errorf("log ticks of [%v, %v] = %v, want %v", tc.lo, tc.hi, got, tc.want)
			continue
		}
		for i := range got {
			if math.Abs(got[i]-tc.want[i]) > 1e-9*tc.want[i] {
				t.Errorf("log ticks of [%v, %v] = %v, want %v", tc.lo, tc.hi, got, tc.want)
				break
			}
		}
	}
	// A narrow log range still gets several ticks, all inside it.
	n := Ticks(300, 420, true)
	if len(n) < 3 {
		t.Errorf("narrow log range ticks: %v", n)
	}
	for _, v := range n {
		if v < 300 || v > 420 {
			t.Errorf("tick %v outside [300, 420]", v)
		}
	}
}

func TestFormatTick(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 16384: "16384", 0.97: "0.97", 2.5: "2.5", 1e9: "1e9",
		0.0001: "1e-4", -3: "-3", 0.1 + 0.2: "0.3", 1234567: "1234567"} {
		if got := FormatTick(v); got != want {
			t.Errorf("FormatTick(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestTextMetricsAndDrawing(t *testing.T) {
	if TextWidth("", 2) != 0 || TextWidth("ab", 1) != 11 || TextWidth("ab", 2) != 22 || TextHeight(3) != 24 {
		t.Error("text metrics")
	}
	img := image.NewRGBA(image.Rect(0, 0, 40, 20))
	DrawText(img, 0, 0, "H", 1, color.RGBA{0, 0, 0, 255}, Left|Top)
	// 'H': the left column is set on rows 0..6, the middle of row 0 is not.
	for r := range 7 {
		if img.RGBAAt(0, r).A != 255 {
			t.Errorf("H: pixel (0, %d) not set", r)
		}
	}
	if img.RGBAAt(2, 0).A != 0 || img.RGBAAt(2, 3).A != 255 {
		t.Error("H: wrong bar")
	}
	// Drawing off the image is clipped, not a panic.
	DrawText(img, -100, -100, "clipped", 3, color.RGBA{0, 0, 0, 255}, Center|Middle)
	DrawTextUp(img, 1000, 1000, "clipped", 3, color.RGBA{0, 0, 0, 255}, Center|Middle)
	for r := rune(32); r < 127; r++ {
		if r != ' ' && glyph(r) == [glyphH]uint8{} {
			t.Errorf("glyph %q is empty", r)
		}
	}
}

func TestLegendMovesBesideAPlotFullOfData(t *testing.T) {
	// Lines through every corner of the plot: no corner is free.
	var pts []Point
	for i := range 201 {
		pts = append(pts, Point{float64(i) / 200, float64(i % 2)})
	}
	full := &Chart{Series: []Series{{Name: "a wave", Points: pts}, {Name: "flat", Points: []Point{{0, 0}, {1, 0}, {0.5, 1}}}}}
	l, leg := full.place()
	bare := &Chart{Series: []Series{{Points: pts}}}
	lb, _ := bare.place()
	if !(l.plot.Max.X < lb.plot.Max.X) || leg.box.Min.X < l.plot.Max.X || !leg.box.In(image.Rect(0, 0, 960, 600)) {
		t.Errorf("legend %v should sit right of a narrowed plot %v (unnarrowed %v)", leg.box, l.plot, lb.plot)
	}
	sparse := &Chart{Series: []Series{{Name: "two points", Points: []Point{{0, 0}, {1, 0.1}}}}}
	l, leg = sparse.place()
	if !leg.box.In(l.plot) {
		t.Errorf("with a free corner the legend %v belongs inside the plot %v", leg.box, l.plot)
	}
}
