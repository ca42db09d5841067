// Package plot draws line charts as PNG images with the standard library
// only (image, image/draw, image/png) and a built-in bitmap font: linear or
// logarithmic axes, several series with markers, solid or dashed lines, a
// legend placed where it hides the fewest points, and horizontal reference
// lines. It is what moerun's benchmark pictures are made with.
package plot

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Point is one data point. A NaN or infinite coordinate (or a non-positive
// one on a log axis) is skipped and breaks the line.
type Point struct{ X, Y float64 }

// Series is one line of the chart.
type Series struct {
	Name   string
	Points []Point
	Color  color.RGBA // zero: the palette colour of the series' index
	Dashed bool
	Marker Marker // MarkerAuto: by the series' index
}

// RefLine is a horizontal reference line (a target, a bound) with a label.
type RefLine struct {
	Y     float64
	Label string
}

// Chart is one line chart. The zero value of every field is usable.
type Chart struct {
	Title, Subtitle string
	XLabel, YLabel  string
	Width, Height   int  // pixels; 0: 960 × 600
	LogX, LogY      bool // log10 axes
	// XTicks, when set, are the only x ticks (for example the swept values).
	XTicks []float64
	// YFromZero makes a linear y axis include 0.
	YFromZero bool
	// YMin and YMax fix the ends of the y axis where FixYMin and FixYMax
	// are set (ignored on a log axis unless positive).
	YMin, YMax       float64
	FixYMin, FixYMax bool
	Series           []Series
	RefLines         []RefLine
}

// Palette is the colour of series i (mod its length) when Series.Color is zero.
var Palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, // blue
	{0xd6, 0x27, 0x28, 0xff}, // red
	{0x2c, 0xa0, 0x2c, 0xff}, // green
	{0xff, 0x7f, 0x0e, 0xff}, // orange
	{0x94, 0x67, 0xbd, 0xff}, // purple
	{0x8c, 0x56, 0x4b, 0xff}, // brown
	{0xe3, 0x77, 0xc2, 0xff}, // pink
	{0x17, 0xbe, 0xcf, 0xff}, // cyan
	{0xbc, 0xbd, 0x22, 0xff}, // olive
	{0x7f, 0x7f, 0x7f, 0xff}, // grey
}

var (
	white     = color.RGBA{0xff, 0xff, 0xff, 0xff}
	ink       = color.RGBA{0x20, 0x20, 0x20, 0xff}
	axisGrey  = color.RGBA{0x60, 0x60, 0x60, 0xff}
	gridGrey  = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	refGrey   = color.RGBA{0x70, 0x70, 0x70, 0xff}
	frameGrey = color.RGBA{0xb0, 0xb0, 0xb0, 0xff}
)

// Text scales of the built-in font.
const (
	titleScale = 3
	textScale  = 2
)

// SeriesColor is the colour series i is drawn with.
func (c *Chart) SeriesColor(i int) color.RGBA {
	if col := c.Series[i].Color; col != (color.RGBA{}) {
		return col
	}
	return Palette[i%len(Palette)]
}

func (c *Chart) seriesMarker(i int) Marker {
	if m := c.Series[i].Marker; m != MarkerAuto {
		return m
	}
	return Marker(int(MarkerCircle) + i%4)
}

// Axis maps data values to pixels along one direction.
type Axis struct {
	Min, Max float64 // the data range shown
	Log      bool
	Lo, Hi   float64 // pixel coordinates of Min and Max (Hi < Lo for y)
}

func (a Axis) scale(v float64) float64 {
	if a.Log {
		return math.Log10(v)
	}
	return v
}

// Valid reports whether v can be drawn on this axis (finite; positive on a
// log axis).
func (a Axis) Valid(v float64) bool {
	return !math.IsNaN(v) && !math.IsInf(v, 0) && (!a.Log || v > 0)
}

// Pixel maps v to a pixel coordinate; values outside [Min, Max] map outside
// [Lo, Hi] in proportion.
func (a Axis) Pixel(v float64) float64 {
	lo, hi := a.scale(a.Min), a.scale(a.Max)
	if hi == lo || math.IsNaN(hi-lo) {
		return (a.Lo + a.Hi) / 2
	}
	return a.Lo + (a.scale(v)-lo)/(hi-lo)*(a.Hi-a.Lo)
}

// Contains reports whether v lies in [Min, Max] (with a little slack).
func (a Axis) Contains(v float64) bool {
	if !a.Valid(v) {
		return false
	}
	lo, hi, s := a.scale(a.Min), a.scale(a.Max), a.scale(v)
	eps := (hi - lo) * 1e-9
	return s >= lo-eps && s <= hi+eps
}

// dataRange picks the range of an axis for values vs.
func dataRange(vs []float64, log, fromZero bool) (lo, hi float64) {
	var ok []float64
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) && (!log || v > 0) {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		if log {
			return 1, 10
		}
		return 0, 1
	}
	lo, hi = slices.Min(ok), slices.Max(ok)
	if log {
		if lo == hi {
			return lo / 2, hi * 2
		}
		pad := math.Pow(hi/lo, 0.05)
		return lo / pad, hi * pad
	}
	if fromZero {
		lo, hi = min(lo, 0), max(hi, 0)
	}
	if lo == hi {
		d := math.Abs(lo) * 0.1
		if d == 0 {
			d = 1
		}
		return lo - d, hi + d
	}
	pad := (hi - lo) * 0.06
	if !(fromZero && lo == 0) {
		lo -= pad
	}
	if !(fromZero && hi == 0) {
		hi += pad
	}
	return lo, hi
}

// niceStep is the 1, 2, 2.5 or 5 × 10^n step nearest above span/n.
func niceStep(span float64, n int) float64 {
	raw := span / float64(n)
	if raw <= 0 || math.IsNaN(raw) || math.IsInf(raw, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= raw*0.999 {
			return m * p
		}
	}
	return 10 * p
}

// Ticks returns tick values inside [lo, hi] for a linear or log axis.
func Ticks(lo, hi float64, log bool) []float64 {
	if !(hi > lo) {
		return []float64{lo}
	}
	if !log {
		step := niceStep(hi-lo, 6)
		var t []float64
		for k := math.Ceil(lo/step - 1e-9); k*step <= hi+step*1e-9; k++ {
			v := k * step
			if math.Abs(v) < step*1e-9 {
				v = 0
			}
			t = append(t, v)
		}
		return t
	}
	if lo <= 0 {
		lo = math.SmallestNonzeroFloat64
	}
	d0, d1 := int(math.Floor(math.Log10(lo))), int(math.Ceil(math.Log10(hi)))
	decades := math.Log10(hi / lo)
	var mant []float64
	switch {
	case decades > 6:
		var t []float64
		every := int(math.Ceil(decades / 6))
		for d := d0; d <= d1; d++ {
			if v := math.Pow(10, float64(d)); v >= lo && v <= hi && d%every == 0 {
				t = append(t, v)
			}
		}
		return t
	case decades >= 2.5:
		mant = []float64{1}
	case decades >= 1:
		mant = []float64{1, 2, 5}
	default:
		mant = []float64{1, 2, 3, 4, 5, 6, 7, 8, 9}
	}
	var t []float64
	for d := d0; d <= d1; d++ {
		for _, m := range mant {
			v := m * math.Pow(10, float64(d))
			if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				t = append(t, v)
			}
		}
	}
	if len(t) > 10 { // a decade or so: 1, 2, 5 are enough
		var f []float64
		for _, v := range t {
			m := v / math.Pow(10, math.Floor(math.Log10(v)+1e-9))
			if r := math.Round(m); r == 1 || r == 2 || r == 5 {
				f = append(f, v)
			}
		}
		t = f
	}
	if len(t) < 3 { // a narrow range: linear steps inside it
		t = t[:0]
		for _, v := range Ticks(lo, hi, false) {
			if v > 0 && v >= lo && v <= hi {
				t = append(t, v)
			}
		}
	}
	return t
}

// FormatTick writes a tick value compactly: integers in full, others with
// up to four significant digits, very large or small ones in e-notation.
func FormatTick(v float64) string {
	av := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case av >= 1e7 || av < 1e-3:
		s := strconv.FormatFloat(v, 'e', 2, 64)
		mant, exp, _ := strings.Cut(s, "e")
		mant = strings.TrimRight(strings.TrimRight(mant, "0"), ".")
		exp = strings.TrimLeft(strings.TrimPrefix(exp, "+"), "0")
		if strings.HasPrefix(exp, "-") {
			exp = "-" + strings.TrimLeft(exp[1:], "0")
		}
		return mant + "e" + exp
	case v == math.Round(v):
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
}

// layout is where everything goes for one rendering.
type layout struct {
	w, h   int
	plot   image.Rectangle
	x, y   Axis
	xTicks []float64
	yTicks []float64
}

func (c *Chart) size() (int, int) {
	w, h := c.Width, c.Height
	if w <= 0 {
		w = 960
	}
	if h <= 0 {
		h = 600
	}
	return w, h
}

// layout places the plot; reserve > 0 keeps that many pixels free on the
// right (for a legend outside the plot).
func (c *Chart) layout(reserve int) layout {
	w, h := c.size()
	var xs, ys []float64
	for _, s := range c.Series {
		for _, p := range s.Points {
			if (!c.LogX || p.X > 0) && (!c.LogY || p.Y > 0) {
				xs = append(xs, p.X)
				ys = append(ys, p.Y)
			}
		}
	}
	for _, r := range c.RefLines {
		ys = append(ys, r.Y)
	}
	xlo, xhi := dataRange(xs, c.LogX, false)
	if len(c.XTicks) > 0 {
		// The given ticks bound the axis too, so that every one shows.
		tlo, thi := dataRange(append(slices.Clone(xs), c.XTicks...), c.LogX, false)
		xlo, xhi = min(xlo, tlo), max(xhi, thi)
	}
	ylo, yhi := dataRange(ys, c.LogY, c.YFromZero)
	if c.FixYMin && (!c.LogY || c.YMin > 0) {
		ylo = c.YMin
	}
	if c.FixYMax && (!c.LogY || c.YMax > 0) {
		yhi = c.YMax
	}
	if !(yhi > ylo) {
		yhi = ylo + 1
		if c.LogY {
			yhi = ylo * 10
		}
	}
	var xt []float64
	if len(c.XTicks) > 0 {
		for _, v := range c.XTicks {
			if (Axis{Min: xlo, Max: xhi, Log: c.LogX}).Contains(v) {
				xt = append(xt, v)
			}
		}
	} else {
		xt = Ticks(xlo, xhi, c.LogX)
	}
	yt := Ticks(ylo, yhi, c.LogY)
	if !c.LogY && !c.FixYMin && !c.FixYMax && len(yt) > 1 {
		// Snap a linear y axis to its outer ticks' step.
		step := yt[1] - yt[0]
		ylo = math.Min(ylo, math.Floor(ylo/step+1e-9)*step)
		yhi = math.Max(yhi, math.Ceil(yhi/step-1e-9)*step)
		yt = Ticks(ylo, yhi, false)
	}

	// Margins from the text that goes around the plot.
	th := TextHeight(textScale)
	maxTick := 0
	for _, v := range yt {
		maxTick = max(maxTick, TextWidth(FormatTick(v), textScale))
	}
	left := 14 + maxTick + 10
	if c.YLabel != "" {
		left += th + 14
	}
	top := 16
	if c.Title != "" {
		top += TextHeight(titleScale) + 10
	}
	if c.Subtitle != "" {
		top += th + 8
	}
	top += 8
	bottom := 10 + th + 12
	if c.XLabel != "" {
		bottom += th + 12
	}
	right := 30
	if reserve > 0 {
		right = reserve + 20
	}
	pr := image.Rect(left, top, w-right, h-bottom)
	if w-right-left < 1 || h-bottom-top < 1 { // too small for text: the plot takes what there is
		pr = image.Rect(0, 0, w, h)
	}
	return layout{
		w: w, h: h, plot: pr,
		x:      Axis{Min: xlo, Max: xhi, Log: c.LogX, Lo: float64(pr.Min.X), Hi: float64(pr.Max.X - 1)},
		y:      Axis{Min: ylo, Max: yhi, Log: c.LogY, Lo: float64(pr.Max.Y - 1), Hi: float64(pr.Min.Y)},
		xTicks: xt, yTicks: yt,
	}
}

// Axes returns the mapping from data to pixels that Render uses.
func (c *Chart) Axes() (x, y Axis) {
	l, _ := c.place()
	return l.x, l.y
}

// Render draws the chart.
func (c *Chart) Render() *image.RGBA {
	l, leg := c.place()
	img := image.NewRGBA(image.Rect(0, 0, l.w, l.h))
	full := &canvas{img: img, clip: img.Bounds()}
	full.fillRect(img.Bounds(), white)
	pr := l.plot
	in := &canvas{img: img, clip: pr.Intersect(img.Bounds())}

	// Grid, ticks and their labels.
	for _, v := range l.xTicks {
		x := int(math.Round(l.x.Pixel(v)))
		in.vline(x, pr.Min.Y, pr.Max.Y-1, gridGrey)
		full.vline(x, pr.Max.Y, pr.Max.Y+5, axisGrey)
		DrawText(img, x, pr.Max.Y+10, FormatTick(v), textScale, ink, Center|Top)
	}
	for _, v := range l.yTicks {
		y := int(math.Round(l.y.Pixel(v)))
		in.hline(pr.Min.X, pr.Max.X-1, y, gridGrey)
		full.hline(pr.Min.X-6, pr.Min.X-1, y, axisGrey)
		DrawText(img, pr.Min.X-10, y, FormatTick(v), textScale, ink, Right|Middle)
	}
	full.rectOutline(pr.Inset(-1), axisGrey)

	// Reference lines, dashed, labelled under their right end.
	for _, r := range c.RefLines {
		if !l.y.Contains(r.Y) {
			continue
		}
		y := l.y.Pixel(r.Y)
		in.polyline([]fpoint{{float64(pr.Min.X), y}, {float64(pr.Max.X), y}}, 1.5, refGrey, 6)
		if r.Label != "" {
			DrawText(img, pr.Max.X-6, int(y)+5, r.Label, textScale, refGrey, Right|Top)
		}
	}

	// Series: lines, then markers on top.
	pix := make([][]fpoint, len(c.Series))
	for i, s := range c.Series {
		pts := sortedByX(s.Points)
		col := c.SeriesColor(i)
		dash := 0.0
		if s.Dashed {
			dash = 10
		}
		var run []fpoint
		flush := func() {
			if len(run) > 1 {
				in.polyline(run, 2.5, col, dash)
			}
			run = run[:0]
		}
		for _, p := range pts {
			if !l.x.Valid(p.X) || !l.y.Valid(p.Y) {
				flush()
				continue
			}
			fp := fpoint{l.x.Pixel(p.X), l.y.Pixel(p.Y)}
			run = append(run, fp)
			pix[i] = append(pix[i], fp)
		}
		flush()
	}
	for i := range c.Series {
		if m := c.seriesMarker(i); m != MarkerNone {
			for _, p := range pix[i] {
				in.marker(m, p, 4.5, c.SeriesColor(i))
				if c.Series[i].Dashed { // hollow markers tell dashed series apart
					in.marker(m, p, 2.2, white)
				}
			}
		}
	}
	c.drawLegend(full, leg)

	// Titles and axis labels.
	y := 16
	if c.Title != "" {
		DrawText(img, l.w/2, y, c.Title, titleScale, ink, Center|Top)
		y += TextHeight(titleScale) + 10
	}
	if c.Subtitle != "" {
		DrawText(img, l.w/2, y, c.Subtitle, textScale, axisGrey, Center|Top)
	}
	th := TextHeight(textScale)
	if c.XLabel != "" {
		DrawText(img, (pr.Min.X+pr.Max.X)/2, pr.Max.Y+10+th+12, c.XLabel, textScale, ink, Center|Top)
	}
	if c.YLabel != "" {
		DrawTextUp(img, 14, (pr.Min.Y+pr.Max.Y)/2, c.YLabel, textScale, ink, Center|Top)
	}
	return img
}

// legend is the legend's box and its entries (series indices).
type legend struct {
	box   image.Rectangle
	items []int
}

const (
	legendPad    = 10
	legendSample = 40
	legendGap    = 10
)

// legendSize is the size of the legend box for the named series.
func (c *Chart) legendSize() (items []int, w, h int) {
	for i, s := range c.Series {
		if s.Name != "" {
			items = append(items, i)
		}
	}
	if len(items) == 0 {
		return nil, 0, 0
	}
	tw := 0
	for _, i := range items {
		tw = max(tw, TextWidth(c.Series[i].Name, textScale))
	}
	rowH := TextHeight(textScale) + 10
	return items, legendPad + legendSample + legendGap + tw + legendPad, legendPad + len(items)*rowH - 10 + legendPad
}

// pixels maps every series' drawable points to pixels, in x order.
func (c *Chart) pixels(l layout) [][]fpoint {
	pix := make([][]fpoint, len(c.Series))
	for i, s := range c.Series {
		for _, p := range sortedByX(s.Points) {
			if l.x.Valid(p.X) && l.y.Valid(p.Y) {
				pix[i] = append(pix[i], fpoint{l.x.Pixel(p.X), l.y.Pixel(p.Y)})
			}
		}
	}
	return pix
}

// place lays the chart out and puts the legend in the corner of the plot
// where it covers no data; where every corner would, the plot narrows and
// the legend goes to its right.
func (c *Chart) place() (layout, legend) {
	l := c.layout(0)
	items, bw, bh := c.legendSize()
	if len(items) == 0 {
		return l, legend{}
	}
	pix := c.pixels(l)
	pr := l.plot
	corners := []image.Point{
		{pr.Max.X - 12 - bw, pr.Min.Y + 12}, // top right
		{pr.Min.X + 12, pr.Min.Y + 12},      // top left
		{pr.Max.X - 12 - bw, pr.Max.Y - 12 - bh},
		{pr.Min.X + 12, pr.Max.Y - 12 - bh},
	}
	for _, p := range corners {
		box := image.Rect(p.X, p.Y, p.X+bw, p.Y+bh)
		if box.In(pr) && !covers(box.Inset(-6), pix) {
			return l, legend{box: box, items: items}
		}
	}
	w, _ := c.size()
	if bw+20 < w/2 { // room beside the plot
		l = c.layout(bw + 12)
		box := image.Rect(l.plot.Max.X+16, l.plot.Min.Y, l.plot.Max.X+16+bw, l.plot.Min.Y+bh)
		return l, legend{box: box, items: items}
	}
	// No room anywhere: the corner that hides least.
	best, bestHits := corners[0], math.MaxInt
	for _, p := range corners {
		if h := hits(image.Rect(p.X, p.Y, p.X+bw, p.Y+bh).Inset(-6), pix); h < bestHits {
			best, bestHits = p, h
		}
	}
	return l, legend{box: image.Rect(best.X, best.Y, best.X+bw, best.Y+bh), items: items}
}

func covers(box image.Rectangle, pix [][]fpoint) bool { return hits(box, pix) > 0 }

// hits counts the data points (weight 4) and line samples inside box.
func hits(box image.Rectangle, pix [][]fpoint) int {
	n := 0
	for _, pts := range pix {
		for j, q := range pts {
			if (image.Point{int(q.x), int(q.y)}).In(box) {
				n += 4
			}
			if j > 0 {
				for s := 1; s < 16; s++ {
					m := lerp(pts[j-1], q, float64(s)/16)
					if (image.Point{int(m.x), int(m.y)}).In(box) {
						n++
					}
				}
			}
		}
	}
	return n
}

func (c *Chart) drawLegend(cv *canvas, leg legend) {
	if len(leg.items) == 0 {
		return
	}
	box := leg.box
	th := TextHeight(textScale)
	rowH := th + 10
	cv.fillRect(box, white)
	cv.rectOutline(box, frameGrey)
	for r, i := range leg.items {
		cy := float64(box.Min.Y + legendPad + r*rowH + th/2)
		x0 := float64(box.Min.X + legendPad)
		col := c.SeriesColor(i)
		dash := 0.0
		if c.Series[i].Dashed {
			dash = 10
		}
		cv.polyline([]fpoint{{x0, cy}, {x0 + legendSample, cy}}, 2.5, col, dash)
		if m := c.seriesMarker(i); m != MarkerNone {
			cv.marker(m, fpoint{x0 + legendSample/2, cy}, 4.5, col)
			if c.Series[i].Dashed {
				cv.marker(m, fpoint{x0 + legendSample/2, cy}, 2.2, white)
			}
		}
		DrawText(cv.img, box.Min.X+legendPad+legendSample+legendGap, int(cy), c.Series[i].Name, textScale, ink, Left|Middle)
	}
}

// WritePNG renders the chart and encodes it as PNG.
func (c *Chart) WritePNG(w io.Writer) error {
	return png.Encode(w, c.Render())
}

// SavePNG renders the chart into a PNG file.
func (c *Chart) SavePNG(path string) error {
	var b bytes.Buffer
	if err := c.WritePNG(&b); err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func sortedByX(pts []Point) []Point {
	out := slices.Clone(pts)
	slices.SortStableFunc(out, func(a, b Point) int {
		switch {
		case a.X < b.X:
			return -1
		case a.X > b.X:
			return 1
		}
		return 0
	})
	return out
}
