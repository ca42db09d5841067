package plot

import (
	"image"
	"image/color"
	"image/draw"
	"math"
)

// canvas draws anti-aliased shapes onto an image, clipped to a rectangle.
type canvas struct {
	img  *image.RGBA
	clip image.Rectangle
}

// blend mixes col into pixel (x, y) with coverage a in [0, 1].
func (c *canvas) blend(x, y int, col color.RGBA, a float64) {
	if a <= 0 || !(image.Point{x, y}).In(c.clip) {
		return
	}
	if a > 1 {
		a = 1
	}
	a *= float64(col.A) / 255
	i := c.img.PixOffset(x, y)
	p := c.img.Pix[i : i+4 : i+4]
	mix := func(dst uint8, src uint8) uint8 { return uint8(float64(dst)*(1-a) + float64(src)*a + 0.5) }
	p[0], p[1], p[2] = mix(p[0], col.R), mix(p[1], col.G), mix(p[2], col.B)
	p[3] = 255
}

func (c *canvas) fillRect(r image.Rectangle, col color.RGBA) {
	draw.Draw(c.img, r.Intersect(c.clip), &image.Uniform{col}, image.Point{}, draw.Src)
}

// hline and vline draw one-pixel lines (axes, ticks, grid).
func (c *canvas) hline(x0, x1, y int, col color.RGBA) {
	c.fillRect(image.Rect(min(x0, x1), y, max(x0, x1)+1, y+1), col)
}

func (c *canvas) vline(x, y0, y1 int, col color.RGBA) {
	c.fillRect(image.Rect(x, min(y0, y1), x+1, max(y0, y1)+1), col)
}

func (c *canvas) rectOutline(r image.Rectangle, col color.RGBA) {
	c.hline(r.Min.X, r.Max.X-1, r.Min.Y, col)
	c.hline(r.Min.X, r.Max.X-1, r.Max.Y-1, col)
	c.vline(r.Min.X, r.Min.Y, r.Max.Y-1, col)
	c.vline(r.Max.X-1, r.Min.Y, r.Max.Y-1, col)
}

// fpoint is a point in pixel coordinates (pixel centres at +0.5).
type fpoint struct{ x, y float64 }

// stroke accumulates the coverage of a polyline of width w, so that the
// joints of its segments are not blended twice.
type stroke struct {
	w   float64
	cov map[image.Point]float64
}

func newStroke(w float64) *stroke { return &stroke{w: w, cov: map[image.Point]float64{}} }

// segment adds the segment a-b: each pixel near it gets the coverage
// clamp(w/2 + 0.5 - distance) of its centre.
func (s *stroke) segment(a, b fpoint) {
	r := s.w/2 + 1
	x0, x1 := int(math.Floor(min(a.x, b.x)-r)), int(math.Ceil(max(a.x, b.x)+r))
	y0, y1 := int(math.Floor(min(a.y, b.y)-r)), int(math.Ceil(max(a.y, b.y)+r))
	dx, dy := b.x-a.x, b.y-a.y
	l2 := dx*dx + dy*dy
	steep := math.Abs(dy) > math.Abs(dx)
	// Walk the major axis; on each line only the pixels within r of the
	// segment are visited.
	if !steep {
		for x := x0; x <= x1; x++ {
			cx := float64(x) + 0.5
			yc := a.y
			if dx != 0 {
				yc = a.y + (min(max(cx, min(a.x, b.x)), max(a.x, b.x))-a.x)*dy/dx
			}
			for y := max(y0, int(math.Floor(yc-r-1))); y <= min(y1, int(math.Ceil(yc+r+1))); y++ {
				s.add(x, y, a, b, dx, dy, l2)
			}
		}
		return
	}
	for y := y0; y <= y1; y++ {
		cy := float64(y) + 0.5
		xc := a.x + (min(max(cy, min(a.y, b.y)), max(a.y, b.y))-a.y)*dx/dy
		for x := max(x0, int(math.Floor(xc-r-1))); x <= min(x1, int(math.Ceil(xc+r+1))); x++ {
			s.add(x, y, a, b, dx, dy, l2)
		}
	}
}

func (s *stroke) add(x, y int, a, b fpoint, dx, dy, l2 float64) {
	px, py := float64(x)+0.5, float64(y)+0.5
	t := 0.0
	if l2 > 0 {
		t = min(max(((px-a.x)*dx+(py-a.y)*dy)/l2, 0), 1)
	}
	qx, qy := a.x+t*dx-px, a.y+t*dy-py
	cov := s.w/2 + 0.5 - math.Sqrt(qx*qx+qy*qy)
	if cov <= 0 {
		return
	}
	p := image.Point{x, y}
	if cov > s.cov[p] {
		s.cov[p] = min(cov, 1)
	}
}

func (s *stroke) paint(c *canvas, col color.RGBA) {
	for p, a := range s.cov {
		c.blend(p.X, p.Y, col, a)
	}
}

// polyline strokes the points in order; dash > 0 draws dashes of that
// length with gaps of dash/1.6, the pattern running on across joints.
func (c *canvas) polyline(pts []fpoint, w float64, col color.RGBA, dash float64) {
	s := newStroke(w)
	if len(pts) == 1 {
		s.segment(pts[0], pts[0])
	}
	gap, phase, on := dash/1.6, 0.0, true
	for i := 1; i < len(pts); i++ {
		a, b := pts[i-1], pts[i]
		if dash <= 0 {
			s.segment(a, b)
			continue
		}
		l := math.Hypot(b.x-a.x, b.y-a.y)
		for pos := 0.0; pos < l; {
			seg := dash - phase
			if !on {
				seg = gap - phase
			}
			end := min(pos+seg, l)
			if on {
				s.segment(lerp(a, b, pos/l), lerp(a, b, end/l))
			}
			phase += end - pos
			pos = end
			limit := dash
			if !on {
				limit = gap
			}
			if phase >= limit-1e-9 {
				phase, on = 0, !on
			}
		}
	}
	s.paint(c, col)
}

func lerp(a, b fpoint, t float64) fpoint { return fpoint{a.x + (b.x-a.x)*t, a.y + (b.y-a.y)*t} }

// Marker is the shape drawn at each data point.
type Marker int

// Markers. MarkerAuto picks one by the series' index.
const (
	MarkerAuto Marker = iota
	MarkerNone
	MarkerCircle
	MarkerSquare
	MarkerTriangle
	MarkerDiamond
)

// marker fills a shape of radius r centred at p, anti-aliased by 4×4
// supersampling.
func (c *canvas) marker(m Marker, p fpoint, r float64, col color.RGBA) {
	inside := func(x, y float64) bool {
		dx, dy := x-p.x, y-p.y
		switch m {
		case MarkerSquare:
			return math.Abs(dx) <= r*0.85 && math.Abs(dy) <= r*0.85
		case MarkerTriangle: // apex up
			return inTriangle(dx, dy, fpoint{0, -r * 1.2}, fpoint{r * 1.1, r * 0.8}, fpoint{-r * 1.1, r * 0.8})
		case MarkerDiamond:
			return math.Abs(dx)+math.Abs(dy) <= r*1.15
		default:
			return dx*dx+dy*dy <= r*r
		}
	}
	x0, x1 := int(math.Floor(p.x-r-2)), int(math.Ceil(p.x+r+2))
	y0, y1 := int(math.Floor(p.y-r-2)), int(math.Ceil(p.y+r+2))
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			n := 0
			for sy := range 4 {
				for sx := range 4 {
					if inside(float64(x)+(float64(sx)+0.5)/4, float64(y)+(float64(sy)+0.5)/4) {
						n++
					}
				}
			}
			c.blend(x, y, col, float64(n)/16)
		}
	}
}

// inTriangle reports whether (x, y) lies inside the triangle abc.
func inTriangle(x, y float64, a, b, c fpoint) bool {
	side := func(p, q fpoint) float64 { return (q.x-p.x)*(y-p.y) - (q.y-p.y)*(x-p.x) }
	d1, d2, d3 := side(a, b), side(b, c), side(c, a)
	neg := d1 < 0 || d2 < 0 || d3 < 0
	pos := d1 > 0 || d2 > 0 || d3 > 0
	return !(neg && pos)
}
