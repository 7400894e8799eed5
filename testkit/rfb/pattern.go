package rfb

// The demo picture: eight colour bars that slide right by barStep pixels a
// frame over the top three quarters, and under them a dark band showing the
// frame number in large digits next to a white block that moves with it.

type rgb struct{ r, g, b uint8 }

var bars = [8]rgb{
	{255, 255, 255}, {255, 255, 0}, {0, 255, 255}, {0, 255, 0},
	{255, 0, 255}, {255, 0, 0}, {0, 0, 255}, {0, 0, 0},
}

var (
	bandColour  = rgb{32, 32, 48}
	digitColour = rgb{255, 200, 0}
	blockColour = rgb{255, 255, 255}
)

// font3x5 draws the digits 0-9, three bits per row, the top row first.
var font3x5 = [10][5]uint8{
	{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1},
	{7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 2, 2, 2}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
}

const (
	barStep       = 8 // pixels the bars move per frame
	counterDigits = 6
)

// pattern renders frames of a width x height picture.
type pattern struct {
	width, height int
	bandTop       int // first row of the counter band
	scale         int // size of one font dot
	digitsLeft    int
	digitsTop     int
}

func newPattern(width, height int) pattern {
	p := pattern{width: width, height: height, bandTop: height * 3 / 4}
	band := height - p.bandTop
	p.scale = max(1, min(band/7, width/(counterDigits*4+2)/2))
	p.digitsLeft = p.scale
	p.digitsTop = p.bandTop + (band-5*p.scale)/2
	return p
}

// at is the colour of pixel (x, y) in frame f, whose digits are given.
func (p *pattern) at(f int64, digits *[counterDigits]uint8, x, y int) rgb {
	if y < p.bandTop {
		shift := int(f * barStep % int64(p.width))
		i := (x - shift + p.width) % p.width * len(bars) / p.width
		return bars[i]
	}
	// The digits.
	dx, dy := x-p.digitsLeft, y-p.digitsTop
	cell := 4 * p.scale
	if dx >= 0 && dy >= 0 && dx < counterDigits*cell && dy < 5*p.scale {
		col := dx % cell / p.scale
		if col < 3 && font3x5[digits[dx/cell]][dy/p.scale]>>(2-col)&1 == 1 {
			return digitColour
		}
		return bandColour
	}
	// The moving block, right of the digits.
	left := p.digitsLeft + counterDigits*cell + p.scale
	span := p.width - left - 5*p.scale
	if span > 0 && dy >= 0 && dy < 5*p.scale {
		bx := left + int(f*int64(p.scale)%int64(span))
		if x >= bx && x < bx+5*p.scale {
			return blockColour
		}
	}
	return bandColour
}

// counter returns the last counterDigits decimal digits of f.
func counter(f int64) [counterDigits]uint8 {
	var d [counterDigits]uint8
	for i := counterDigits - 1; i >= 0; i-- {
		d[i] = uint8(f % 10)
		f /= 10
	}
	return d
}
