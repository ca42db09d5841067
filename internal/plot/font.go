package plot

import (
	"image"
	"image/color"
	"strings"
)

// The built-in font: 5×8 bitmap glyphs (7 rows above the baseline, one for
// descenders) for printable ASCII, drawn at an integer scale. A glyph is
// eight rows of five cells, '#' set; missing rows are blank.
const (
	glyphW   = 5
	glyphH   = 8
	advanceW = glyphW + 1 // one blank column between letters
	lineH    = glyphH + 2
)

// glyphRows holds the glyphs of runes 32 (space) to 126 (~), in order.
var glyphRows = [95]string{
	"", // space
	"..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",       // !
	".#.#. .#.#. .#.#.",                               // "
	".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",       // #
	"..#.. .#### #.#.. .###. ..#.# ####. ..#..",       // $
	"##... ##..# ...#. ..#.. .#... #..## ...##",       // %
	".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",       // &
	"..#.. ..#.. .#...",                               // '
	"...#. ..#.. .#... .#... .#... ..#.. ...#.",       // (
	".#... ..#.. ...#. ...#. ...#. ..#.. .#...",       // )
	"..... ..#.. #.#.# .###. #.#.# ..#.. .....",       // *
	"..... ..#.. ..#.. ##### ..#.. ..#.. .....",       // +
	"..... ..... ..... ..... .##.. ..#.. .#...",       // ,
	"..... ..... ..... ##### ..... ..... .....",       // -
	"..... ..... ..... ..... ..... .##.. .##..",       // .
	"..... ....# ...#. ..#.. .#... #.... .....",       // /
	".###. #...# #..## #.#.# ##..# #...# .###.",       // 0
	"..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",       // 1
	".###. #...# ....# ...#. ..#.. .#... #####",       // 2
	"##### ...#. ..#.. ...#. ....# #...# .###.",       // 3
	"...#. ..##. .#.#. #..#. ##### ...#. ...#.",       // 4
	"##### #.... ####. ....# ....# #...# .###.",       // 5
	"..##. .#... #.... ####. #...# #...# .###.",       // 6
	"##### ....# ...#. ..#.. .#... .#... .#...",       // 7
	".###. #...# #...# .###. #...# #...# .###.",       // 8
	".###. #...# #...# .#### ....# ...#. .##..",       // 9
	"..... .##.. .##.. ..... .##.. .##.. .....",       // :
	"..... .##.. .##.. ..... .##.. ..#.. .#...",       // ;
	"...#. ..#.. .#... #.... .#... ..#.. ...#.",       // <
	"..... ..... ##### ..... ##### ..... .....",       // =
	".#... ..#.. ...#. ....# ...#. ..#.. .#...",       // >
	".###. #...# ....# ...#. ..#.. ..... ..#..",       // ?
	".###. #...# ....# .##.# #.#.# #.#.# .###.",       // @
	".###. #...# #...# ##### #...# #...# #...#",       // A
	"####. #...# #...# ####. #...# #...# ####.",       // B
	".###. #...# #.... #.... #.... #...# .###.",       // C
	"###.. #..#. #...# #...# #...# #..#. ###..",       // D
	"##### #.... #.... ####. #.... #.... #####",       // E
	"##### #.... #.... ####. #.... #.... #....",       // F
	".###. #...# #.... #.### #...# #...# .####",       // G
	"#...# #...# #...# ##### #...# #...# #...#",       // H
	".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",       // I
	"..### ...#. ...#. ...#. ...#. #..#. .##..",       // J
	"#...# #..#. #.#.. ##... #.#.. #..#. #...#",       // K
	"#.... #.... #.... #.... #.... #.... #####",       // L
	"#...# ##.## #.#.# #.#.# #...# #...# #...#",       // M
	"#...# #...# ##..# #.#.# #..## #...# #...#",       // N
	".###. #...# #...# #...# #...# #...# .###.",       // O
	"####. #...# #...# ####. #.... #.... #....",       // P
	".###. #...# #...# #...# #.#.# #..#. .##.#",       // Q
	"####. #...# #...# ####. #.#.. #..#. #...#",       // R
	".#### #.... #.... .###. ....# ....# ####.",       // S
	"##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",       // T
	"#...# #...# #...# #...# #...# #...# .###.",       // U
	"#...# #...# #...# #...# #...# .#.#. ..#..",       // V
	"#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",       // W
	"#...# #...# .#.#. ..#.. .#.#. #...# #...#",       // X
	"#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",       // Y
	"##### ....# ...#. ..#.. .#... #.... #####",       // Z
	".###. .#... .#... .#... .#... .#... .###.",       // [
	"..... #.... .#... ..#.. ...#. ....# .....",       // backslash
	".###. ...#. ...#. ...#. ...#. ...#. .###.",       // ]
	"..#.. .#.#. #...#",                               // ^
	"..... ..... ..... ..... ..... ..... #####",       // _
	".#... ..#.. ...#.",                               // `
	"..... ..... .###. ....# .#### #...# .####",       // a
	"#.... #.... #.##. ##..# #...# #...# ####.",       // b
	"..... ..... .###. #.... #.... #...# .###.",       // c
	"....# ....# .##.# #..## #...# #...# .####",       // d
	"..... ..... .###. #...# ##### #.... .###.",       // e
	"..##. .#..# .#... ###.. .#... .#... .#...",       // f
	"..... ..... .#### #...# #...# .#### ....# .###.", // g
	"#.... #.... #.##. ##..# #...# #...# #...#",       // h
	"..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",       // i
	"...#. ..... ..##. ...#. ...#. ...#. #..#. .##..", // j
	"#.... #.... #..#. #.#.. ##... #.#.. #..#.",       // k
	".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",       // l
	"..... ..... ##.#. #.#.# #.#.# #...# #...#",       // m
	"..... ..... #.##. ##..# #...# #...# #...#",       // n
	"..... ..... .###. #...# #...# #...# .###.",       // o
	"..... ..... ####. #...# #...# ####. #.... #....", // p
	"..... ..... .#### #...# #...# .#### ....# ....#", // q
	"..... ..... #.##. ##..# #.... #.... #....",       // r
	"..... ..... .###. #.... .###. ....# ####.",       // s
	".#... .#... ###.. .#... .#... .#..# ..##.",       // t
	"..... ..... #...# #...# #...# #..## .##.#",       // u
	"..... ..... #...# #...# #...# .#.#. ..#..",       // v
	"..... ..... #...# #...# #.#.# #.#.# .#.#.",       // w
	"..... ..... #...# .#.#. ..#.. .#.#. #...#",       // x
	"..... ..... #...# #...# #...# .#### ....# .###.", // y
	"..... ..... ##### ...#. ..#.. .#... #####",       // z
	"...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.",       // {
	"..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",       // |
	".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...",       // }
	"..... ..... .#... #.#.# ...#.",                   // ~
}

// glyphs are the parsed rows: bit 4 is the leftmost cell.
var glyphs = func() (g [95][glyphH]uint8) {
	for i, s := range glyphRows {
		for r, row := range strings.Fields(s) {
			for c := 0; c < len(row) && c < glyphW; c++ {
				if row[c] == '#' {
					g[i][r] |= 1 << (glyphW - 1 - c)
				}
			}
		}
	}
	return g
}()

// replacement is drawn for runes outside printable ASCII: a hollow box.
var replacement = [glyphH]uint8{0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f, 0}

func glyph(r rune) [glyphH]uint8 {
	if r >= 32 && r <= 126 {
		return glyphs[r-32]
	}
	return replacement
}

// TextWidth is the width in pixels of s drawn at scale (no trailing gap).
func TextWidth(s string, scale int) int {
	n := len([]rune(s))
	if n == 0 {
		return 0
	}
	return (n*advanceW - 1) * scale
}

// TextHeight is the height in pixels of one line of text at scale,
// descenders included.
func TextHeight(scale int) int { return glyphH * scale }

// Anchor says which point of the text's box (x, y) names.
type Anchor int

// Horizontal and vertical anchors, combined with |.
const (
	Left   Anchor = 0
	Center Anchor = 1
	Right  Anchor = 2
	Top    Anchor = 0
	Middle Anchor = 4
	Bottom Anchor = 8
)

// DrawText draws s with its anchor point at (x, y), at an integer scale.
// Pixels outside the image are skipped.
func DrawText(img *image.RGBA, x, y int, s string, scale int, col color.RGBA, a Anchor) {
	drawText(img, x, y, s, scale, col, a, false)
}

// DrawTextUp draws s rotated a quarter turn counter-clockwise (reading
// bottom to top), with the anchor taken in the rotated frame: Center|Middle
// puts the middle of the text at (x, y).
func DrawTextUp(img *image.RGBA, x, y int, s string, scale int, col color.RGBA, a Anchor) {
	drawText(img, x, y, s, scale, col, a, true)
}

func drawText(img *image.RGBA, x, y int, s string, scale int, col color.RGBA, a Anchor, up bool) {
	if scale < 1 {
		scale = 1
	}
	w, h := TextWidth(s, scale), TextHeight(scale)
	// Offsets along the text (u) and across it (v) from the anchor.
	u0, v0 := 0, 0
	switch a & 3 {
	case Center:
		u0 = -w / 2
	case Right:
		u0 = -w
	}
	switch a & 12 {
	case Middle:
		v0 = -h / 2
	case Bottom:
		v0 = -h
	}
	b := img.Bounds()
	pen := u0
	for _, r := range s {
		g := glyph(r)
		for gy := range glyphH {
			bits := g[gy]
			for gx := range glyphW {
				if bits&(1<<(glyphW-1-gx)) == 0 {
					continue
				}
				for sy := range scale {
					for sx := range scale {
						u, v := pen+gx*scale+sx, v0+gy*scale+sy
						px, py := x+u, y+v
						if up {
							px, py = x+v, y-u
						}
						if (image.Point{px, py}).In(b) {
							img.SetRGBA(px, py, col)
						}
					}
				}
			}
		}
		pen += advanceW * scale
	}
}
