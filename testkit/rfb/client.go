package rfb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// ServerInit is what a server says about itself once the handshake is done.
type ServerInit struct {
	// Version is the protocol version agreed: "3.8", "3.7" or "3.3".
	Version     string
	Width       uint16
	Height      uint16
	PixelFormat PixelFormat
	Name        string
}

// Update is one FramebufferUpdate, Raw rectangles only.
type Update struct {
	Rects []Rect
	// Resized is set when the server sent a DesktopSize or
	// ExtendedDesktopSize rectangle; Width and Height are then the new size.
	Resized       bool
	Width, Height uint16
}

// Rect is one Raw rectangle of an update.
type Rect struct {
	X, Y, Width, Height uint16
	// Format is the pixel format Pixels are in.
	Format PixelFormat
	// Pixels holds Width*Height pixels, row by row.
	Pixels []byte
}

// RGB returns the colour of the pixel at (x, y) inside the rectangle.
func (r Rect) RGB(x, y int) (red, green, blue uint8) {
	bpp := r.Format.BytesPerPixel()
	i := (y*int(r.Width) + x) * bpp
	return r.Format.RGB(r.Pixels[i : i+bpp])
}

// DistinctColours counts the different pixel values in the rectangle: a
// blank or single-colour screen gives 1.
func (r Rect) DistinctColours() int {
	bpp := r.Format.BytesPerPixel()
	seen := map[string]struct{}{}
	for i := 0; i+bpp <= len(r.Pixels); i += bpp {
		seen[string(r.Pixels[i:i+bpp])] = struct{}{}
	}
	return len(seen)
}

const (
	maxReasonLen = 64 << 10
	maxNameLen   = 64 << 10
	maxRectBytes = 64 << 20
)

// Handshake runs the client side of the RFB handshake on conn: version
// (3.8, 3.7 or 3.3, whichever the server offers up to 3.8), security type
// None, a shared ClientInit, the ServerInit; it then asks for Raw encoding
// only. It sets no deadline: set one on conn first.
func Handshake(conn io.ReadWriter) (ServerInit, error) {
	return HandshakeAs(conn, "3.8")
}

// HandshakeAs is Handshake by a client that speaks RFB up to version
// ("3.3", "3.7" or "3.8"): it answers the lower of that and the server's.
func HandshakeAs(conn io.ReadWriter, version string) (ServerInit, error) {
	most := map[string]int{"3.3": 3, "3.7": 7, "3.8": 8}[version]
	if most == 0 {
		return ServerInit{}, fmt.Errorf("rfb: client version %q not supported, want 3.3, 3.7 or 3.8", version)
	}
	var b [24]byte
	if _, err := io.ReadFull(conn, b[:12]); err != nil {
		return ServerInit{}, fmt.Errorf("rfb: read server version: %w", err)
	}
	major, minor, err := parseVersion(b[:12])
	if err != nil {
		return ServerInit{}, fmt.Errorf("rfb: %w", err)
	}
	if major != 3 || minor < 3 {
		return ServerInit{}, fmt.Errorf("rfb: server version %d.%d not supported", major, minor)
	}
	switch {
	case minor >= 8:
		minor = 8
	case minor == 7:
	default:
		minor = 3
	}
	minor = min(minor, most)
	if _, err := fmt.Fprintf(conn, "RFB 003.%03d\n", minor); err != nil {
		return ServerInit{}, fmt.Errorf("rfb: write version: %w", err)
	}
	if err := clientSecurity(conn, minor); err != nil {
		return ServerInit{}, err
	}
	if _, err := conn.Write([]byte{1}); err != nil { // ClientInit: shared
		return ServerInit{}, fmt.Errorf("rfb: write client init: %w", err)
	}
	if _, err := io.ReadFull(conn, b[:20]); err != nil {
		return ServerInit{}, fmt.Errorf("rfb: read server init: %w", err)
	}
	si := ServerInit{
		Version:     fmt.Sprintf("3.%d", minor),
		Width:       binary.BigEndian.Uint16(b[0:]),
		Height:      binary.BigEndian.Uint16(b[2:]),
		PixelFormat: unmarshalPixelFormat(b[4:20]),
	}
	if si.Name, err = readString(conn, maxNameLen); err != nil {
		return ServerInit{}, fmt.Errorf("rfb: read server name: %w", err)
	}
	if err := si.PixelFormat.Validate(); err != nil {
		// A colour-map server: ask for the common true-colour format.
		if err := SetPixelFormat(conn, PixelFormat32); err != nil {
			return ServerInit{}, err
		}
		si.PixelFormat = PixelFormat32
	}
	msg := []byte{msgSetEncodings, 0, 0, 1}
	msg = binary.BigEndian.AppendUint32(msg, uint32(EncodingRaw))
	if _, err := conn.Write(msg); err != nil {
		return ServerInit{}, fmt.Errorf("rfb: write set encodings: %w", err)
	}
	return si, nil
}

func clientSecurity(conn io.ReadWriter, minor int) error {
	var b [4]byte
	if minor == 3 {
		if _, err := io.ReadFull(conn, b[:4]); err != nil {
			return fmt.Errorf("rfb: read security type: %w", err)
		}
		switch t := binary.BigEndian.Uint32(b[:]); t {
		case securityNone:
			return nil
		case securityInvalid:
			return serverRefusal(conn, "connection refused")
		default:
			return fmt.Errorf("rfb: server wants security type %d, only none is supported", t)
		}
	}
	if _, err := io.ReadFull(conn, b[:1]); err != nil {
		return fmt.Errorf("rfb: read security types: %w", err)
	}
	if b[0] == 0 {
		return serverRefusal(conn, "connection refused")
	}
	types := make([]byte, b[0])
	if _, err := io.ReadFull(conn, types); err != nil {
		return fmt.Errorf("rfb: read security types: %w", err)
	}
	if !slices.Contains(types, securityNone) {
		return fmt.Errorf("rfb: server offers security types %v, only none (1) is supported", types)
	}
	if _, err := conn.Write([]byte{securityNone}); err != nil {
		return fmt.Errorf("rfb: write security type: %w", err)
	}
	if minor == 7 {
		return nil
	}
	if _, err := io.ReadFull(conn, b[:4]); err != nil {
		return fmt.Errorf("rfb: read security result: %w", err)
	}
	if binary.BigEndian.Uint32(b[:]) != 0 {
		return serverRefusal(conn, "security failed")
	}
	return nil
}

// serverRefusal reads the reason a server gives for ending the handshake.
func serverRefusal(r io.Reader, what string) error {
	reason, err := readString(r, maxReasonLen)
	if err != nil {
		return fmt.Errorf("rfb: %s, no reason given", what)
	}
	return fmt.Errorf("rfb: %s: %s", what, reason)
}

// SetPixelFormat asks the server to send pixels in pf. Pass pf in the
// ServerInit given to ReadUpdate afterwards.
func SetPixelFormat(w io.Writer, pf PixelFormat) error {
	msg := make([]byte, 20)
	msg[0] = msgSetPixelFormat
	pf.marshal(msg[4:])
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("rfb: write set pixel format: %w", err)
	}
	return nil
}

// RequestUpdate asks for the whole screen: all of it, or with incremental
// only what changed since the last update.
func RequestUpdate(w io.Writer, si ServerInit, incremental bool) error {
	msg := []byte{msgFramebufferUpdateRequest, boolByte(incremental), 0, 0, 0, 0}
	msg = binary.BigEndian.AppendUint16(msg, si.Width)
	msg = binary.BigEndian.AppendUint16(msg, si.Height)
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("rfb: write update request: %w", err)
	}
	return nil
}

// ReadUpdate reads server messages until a FramebufferUpdate has been read
// whole and returns it. Bell, SetColourMapEntries and ServerCutText are
// skipped, as are Cursor and LastRect rectangles; DesktopSize sets Resized.
// Any other encoding is an error: the client asked for Raw only.
func ReadUpdate(r io.Reader, si ServerInit) (Update, error) {
	var b [16]byte
	for {
		if _, err := io.ReadFull(r, b[:1]); err != nil {
			return Update{}, fmt.Errorf("rfb: read message type: %w", err)
		}
		switch b[0] {
		case msgFramebufferUpdate:
			return readFramebufferUpdate(r, si.PixelFormat)
		case msgSetColourMapEntries:
			if _, err := io.ReadFull(r, b[:5]); err != nil {
				return Update{}, fmt.Errorf("rfb: read colour map: %w", err)
			}
			if _, err := io.CopyN(io.Discard, r, 6*int64(binary.BigEndian.Uint16(b[3:]))); err != nil {
				return Update{}, fmt.Errorf("rfb: read colour map: %w", err)
			}
		case msgBell:
		case msgServerCutText:
			if _, err := io.ReadFull(r, b[:7]); err != nil {
				return Update{}, fmt.Errorf("rfb: read server cut text: %w", err)
			}
			n := int64(binary.BigEndian.Uint32(b[3:]) &^ (1 << 31)) // extended clipboard: same framing
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				return Update{}, fmt.Errorf("rfb: read server cut text: %w", err)
			}
		default:
			return Update{}, fmt.Errorf("rfb: unexpected server message type %d", b[0])
		}
	}
}

func readFramebufferUpdate(r io.Reader, pf PixelFormat) (Update, error) {
	var b [12]byte
	if _, err := io.ReadFull(r, b[:3]); err != nil {
		return Update{}, fmt.Errorf("rfb: read update: %w", err)
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	var u Update
	bpp := pf.BytesPerPixel()
	if bpp == 0 {
		return Update{}, errors.New("rfb: pixel format has 0 bits per pixel")
	}
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(r, b[:12]); err != nil {
			return Update{}, fmt.Errorf("rfb: read rectangle %d: %w", i, err)
		}
		x, y := binary.BigEndian.Uint16(b[0:]), binary.BigEndian.Uint16(b[2:])
		w, h := binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:])
		enc := int32(binary.BigEndian.Uint32(b[8:]))
		switch enc {
		case EncodingRaw:
			size := int64(w) * int64(h) * int64(bpp)
			if size > maxRectBytes {
				return Update{}, fmt.Errorf("rfb: rectangle %dx%d too large", w, h)
			}
			px := make([]byte, size)
			if _, err := io.ReadFull(r, px); err != nil {
				return Update{}, fmt.Errorf("rfb: read rectangle %d pixels: %w", i, err)
			}
			u.Rects = append(u.Rects, Rect{X: x, Y: y, Width: w, Height: h, Format: pf, Pixels: px})
		case encodingDesktopSize:
			u.Resized, u.Width, u.Height = true, w, h
		case encodingExtendedDesktopSize:
			if _, err := io.ReadFull(r, b[:4]); err != nil {
				return Update{}, fmt.Errorf("rfb: read desktop size: %w", err)
			}
			if _, err := io.CopyN(io.Discard, r, 16*int64(b[0])); err != nil {
				return Update{}, fmt.Errorf("rfb: read desktop size: %w", err)
			}
			u.Resized, u.Width, u.Height = true, w, h
		case encodingCursor:
			size := int64(w)*int64(h)*int64(bpp) + int64((int(w)+7)/8)*int64(h)
			if _, err := io.CopyN(io.Discard, r, size); err != nil {
				return Update{}, fmt.Errorf("rfb: read cursor: %w", err)
			}
		case encodingLastRect:
			return u, nil
		default:
			return Update{}, fmt.Errorf("rfb: rectangle %d in encoding %d, asked for raw only", i, enc)
		}
	}
	return u, nil
}

// SendKey sends a KeyEvent: keysym pressed (down) or released.
func SendKey(w io.Writer, keysym uint32, down bool) error {
	msg := binary.BigEndian.AppendUint32([]byte{msgKeyEvent, boolByte(down), 0, 0}, keysym)
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("rfb: write key event: %w", err)
	}
	return nil
}

// SendPointer sends a PointerEvent: the button mask (bit 0 left) at x, y.
func SendPointer(w io.Writer, buttons uint8, x, y uint16) error {
	msg := []byte{msgPointerEvent, buttons}
	msg = binary.BigEndian.AppendUint16(msg, x)
	msg = binary.BigEndian.AppendUint16(msg, y)
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("rfb: write pointer event: %w", err)
	}
	return nil
}

// SendCutText sends a ClientCutText. RFB carries ISO 8859-1: runes above
// U+00FF are sent as '?'.
func SendCutText(w io.Writer, text string) error {
	var body []byte
	for _, r := range text {
		if r > 0xff {
			r = '?'
		}
		body = append(body, byte(r))
	}
	msg := binary.BigEndian.AppendUint32([]byte{msgClientCutText, 0, 0, 0}, uint32(len(body)))
	if _, err := w.Write(append(msg, body...)); err != nil {
		return fmt.Errorf("rfb: write cut text: %w", err)
	}
	return nil
}
