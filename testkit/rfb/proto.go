package rfb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Client-to-server message types.
const (
	msgSetPixelFormat           = 0
	msgSetEncodings             = 2
	msgFramebufferUpdateRequest = 3
	msgKeyEvent                 = 4
	msgPointerEvent             = 5
	msgClientCutText            = 6
)

// Server-to-client message types.
const (
	msgFramebufferUpdate   = 0
	msgSetColourMapEntries = 1
	msgBell                = 2
	msgServerCutText       = 3
)

// Encodings and pseudo-encodings the client understands.
const (
	// EncodingRaw is the one encoding this package sends and asks for.
	EncodingRaw                 int32 = 0
	encodingCursor              int32 = -239
	encodingDesktopSize         int32 = -223
	encodingLastRect            int32 = -224
	encodingExtendedDesktopSize int32 = -308
)

const (
	securityInvalid = 0
	securityNone    = 1
	securityVNCAuth = 2
)

// PixelFormat is how a pixel is laid out on the wire (RFC 6143 7.4).
type PixelFormat struct {
	BitsPerPixel uint8
	Depth        uint8
	BigEndian    bool
	TrueColour   bool
	RedMax       uint16
	GreenMax     uint16
	BlueMax      uint16
	RedShift     uint8
	GreenShift   uint8
	BlueShift    uint8
}

// PixelFormat32 is 32 bits per pixel, depth 24, little-endian: what the demo
// server and QEMU offer and what noVNC asks for (with other shifts).
var PixelFormat32 = PixelFormat{
	BitsPerPixel: 32, Depth: 24, TrueColour: true,
	RedMax: 255, GreenMax: 255, BlueMax: 255,
	RedShift: 16, GreenShift: 8, BlueShift: 0,
}

// PixelFormat16 is RGB565, little-endian.
var PixelFormat16 = PixelFormat{
	BitsPerPixel: 16, Depth: 16, TrueColour: true,
	RedMax: 31, GreenMax: 63, BlueMax: 31,
	RedShift: 11, GreenShift: 5, BlueShift: 0,
}

// BytesPerPixel is the size of one pixel on the wire.
func (pf PixelFormat) BytesPerPixel() int { return int(pf.BitsPerPixel) / 8 }

// Validate reports whether the server can send pixels in pf: true colour of
// 8, 16 or 32 bits whose channels fit in the pixel.
func (pf PixelFormat) Validate() error {
	switch pf.BitsPerPixel {
	case 8, 16, 32:
	default:
		return fmt.Errorf("bits per pixel %d not supported, want 8, 16 or 32", pf.BitsPerPixel)
	}
	if !pf.TrueColour {
		return errors.New("colour-map pixel formats not supported")
	}
	if pf.Depth == 0 || pf.Depth > pf.BitsPerPixel {
		return fmt.Errorf("depth %d not valid for %d bits per pixel", pf.Depth, pf.BitsPerPixel)
	}
	for _, c := range []struct {
		name  string
		max   uint16
		shift uint8
	}{{"red", pf.RedMax, pf.RedShift}, {"green", pf.GreenMax, pf.GreenShift}, {"blue", pf.BlueMax, pf.BlueShift}} {
		if c.max == 0 {
			return fmt.Errorf("%s max is 0", c.name)
		}
		if uint64(c.max)<<c.shift >= 1<<uint64(pf.BitsPerPixel) {
			return fmt.Errorf("%s channel (max %d, shift %d) does not fit in %d bits", c.name, c.max, c.shift, pf.BitsPerPixel)
		}
	}
	return nil
}

func (pf PixelFormat) marshal(b []byte) {
	b[0] = pf.BitsPerPixel
	b[1] = pf.Depth
	b[2] = boolByte(pf.BigEndian)
	b[3] = boolByte(pf.TrueColour)
	binary.BigEndian.PutUint16(b[4:], pf.RedMax)
	binary.BigEndian.PutUint16(b[6:], pf.GreenMax)
	binary.BigEndian.PutUint16(b[8:], pf.BlueMax)
	b[10] = pf.RedShift
	b[11] = pf.GreenShift
	b[12] = pf.BlueShift
	b[13], b[14], b[15] = 0, 0, 0
}

func unmarshalPixelFormat(b []byte) PixelFormat {
	return PixelFormat{
		BitsPerPixel: b[0],
		Depth:        b[1],
		BigEndian:    b[2] != 0,
		TrueColour:   b[3] != 0,
		RedMax:       binary.BigEndian.Uint16(b[4:]),
		GreenMax:     binary.BigEndian.Uint16(b[6:]),
		BlueMax:      binary.BigEndian.Uint16(b[8:]),
		RedShift:     b[10],
		GreenShift:   b[11],
		BlueShift:    b[12],
	}
}

// pixel packs an 8-bit-per-channel colour into pf's pixel value.
func (pf PixelFormat) pixel(c rgb) uint32 {
	scale := func(v uint8, max uint16) uint32 { return (uint32(v)*uint32(max) + 127) / 255 }
	v := scale(c.r, pf.RedMax)<<pf.RedShift |
		scale(c.g, pf.GreenMax)<<pf.GreenShift |
		scale(c.b, pf.BlueMax)<<pf.BlueShift
	// Unused bits are set, as QEMU does: noVNC <= 1.3's Raw decoder reads the
	// padding byte of 32-bit pixels as alpha and draws nothing where it is 0.
	used := uint32(pf.RedMax)<<pf.RedShift | uint32(pf.GreenMax)<<pf.GreenShift | uint32(pf.BlueMax)<<pf.BlueShift
	all := uint32(uint64(1)<<pf.BitsPerPixel - 1)
	return v | (all &^ used)
}

// put writes a pixel value into b (BytesPerPixel bytes).
func (pf PixelFormat) put(b []byte, v uint32) {
	switch pf.BitsPerPixel {
	case 8:
		b[0] = byte(v)
	case 16:
		if pf.BigEndian {
			binary.BigEndian.PutUint16(b, uint16(v))
		} else {
			binary.LittleEndian.PutUint16(b, uint16(v))
		}
	case 32:
		if pf.BigEndian {
			binary.BigEndian.PutUint32(b, v)
		} else {
			binary.LittleEndian.PutUint32(b, v)
		}
	}
}

// RGB decodes one pixel (BytesPerPixel bytes) into 8-bit channels.
func (pf PixelFormat) RGB(b []byte) (r, g, bl uint8) {
	var v uint32
	switch pf.BitsPerPixel {
	case 8:
		v = uint32(b[0])
	case 16:
		if pf.BigEndian {
			v = uint32(binary.BigEndian.Uint16(b))
		} else {
			v = uint32(binary.LittleEndian.Uint16(b))
		}
	case 32:
		if pf.BigEndian {
			v = binary.BigEndian.Uint32(b)
		} else {
			v = binary.LittleEndian.Uint32(b)
		}
	}
	ch := func(shift uint8, max uint16) uint8 {
		if max == 0 {
			return 0
		}
		return uint8((v >> shift & uint32(max)) * 255 / uint32(max))
	}
	return ch(pf.RedShift, pf.RedMax), ch(pf.GreenShift, pf.GreenMax), ch(pf.BlueShift, pf.BlueMax)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// parseVersion reads "RFB xxx.yyy\n".
func parseVersion(b []byte) (major, minor int, err error) {
	if len(b) != 12 || string(b[:4]) != "RFB " || b[7] != '.' || b[11] != '\n' {
		return 0, 0, fmt.Errorf("bad protocol version %q", b)
	}
	num := func(d []byte) (int, error) {
		n := 0
		for _, c := range d {
			if c < '0' || c > '9' {
				return 0, fmt.Errorf("bad protocol version %q", b)
			}
			n = n*10 + int(c-'0')
		}
		return n, nil
	}
	if major, err = num(b[4:7]); err != nil {
		return 0, 0, err
	}
	if minor, err = num(b[8:11]); err != nil {
		return 0, 0, err
	}
	return major, minor, nil
}

// readString reads a u32 length and that many bytes, refusing more than max.
func readString(r io.Reader, max int) (string, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	size := binary.BigEndian.Uint32(n[:])
	if uint64(size) > uint64(max) {
		return "", fmt.Errorf("string of %d bytes exceeds %d", size, max)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// latin1 turns ISO 8859-1 bytes (RFB's cut text charset) into a string.
func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}
