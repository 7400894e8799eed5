package rfb

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/qemu"
)

// scriptedServer accepts one connection on loopback, writes script to it,
// ends its side of the stream and then reads until the client closes.
func scriptedServer(t *testing.T, script []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(script); err != nil {
			return
		}
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	}()
	return l.Addr().String()
}

func withReason(prefix []byte, reason string) []byte {
	b := binary.BigEndian.AppendUint32(prefix, uint32(len(reason)))
	return append(b, reason...)
}

func serverInit(w, h uint16, pf PixelFormat, name string) []byte {
	b := binary.BigEndian.AppendUint16(nil, w)
	b = binary.BigEndian.AppendUint16(b, h)
	p := make([]byte, 16)
	pf.marshal(p)
	return withReason(append(b, p...), name)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestHandshakeRefusals(t *testing.T) {
	tests := []struct {
		name    string
		script  []byte
		wantErr string
	}{
		{"not rfb", []byte("SSH-2.0-Open\n"), "bad protocol version"},
		{"version 4", []byte("RFB 004.001\n"), "server version 4.1 not supported"},
		{"3.3 refused with reason", cat([]byte("RFB 003.003\n"), withReason([]byte{0, 0, 0, 0}, "too many clients")), "connection refused: too many clients"},
		{"3.3 vnc auth", cat([]byte("RFB 003.003\n"), []byte{0, 0, 0, 2}), "security type 2"},
		{"3.8 no types", cat([]byte("RFB 003.008\n"), withReason([]byte{0}, "blocked")), "connection refused: blocked"},
		{"3.8 vnc auth only", cat([]byte("RFB 003.008\n"), []byte{1, 2}), "only none (1) is supported"},
		{"3.8 security failed", cat([]byte("RFB 003.008\n"), []byte{1, 1}, withReason([]byte{0, 0, 0, 1}, "denied")), "security failed: denied"},
		{"cut short", []byte("RFB 003.008\n\x01"), "read security types"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, scriptedServer(t, tt.script))
			_, err := Handshake(c)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestHandshakeOlderServers(t *testing.T) {
	pf := PixelFormat16
	tests := []struct {
		name        string
		script      []byte
		wantVersion string
	}{
		{"3.3", cat([]byte("RFB 003.003\n"), []byte{0, 0, 0, 1}, serverInit(8, 4, pf, "old")), "3.3"},
		{"3.7", cat([]byte("RFB 003.007\n"), []byte{2, 2, 1}, serverInit(8, 4, pf, "old")), "3.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, scriptedServer(t, tt.script))
			si, err := Handshake(c)
			if err != nil {
				t.Fatal(err)
			}
			want := ServerInit{Version: tt.wantVersion, Width: 8, Height: 4, PixelFormat: pf, Name: "old"}
			if si != want {
				t.Errorf("got %+v, want %+v", si, want)
			}
		})
	}
}

// TestReadUpdateSkips feeds ReadUpdate the messages and pseudo-encodings a
// server may send though not asked for.
func TestReadUpdateSkips(t *testing.T) {
	pf := PixelFormat32
	rectHeader := func(x, y, w, h uint16, enc int32) []byte {
		b := binary.BigEndian.AppendUint16(nil, x)
		b = binary.BigEndian.AppendUint16(b, y)
		b = binary.BigEndian.AppendUint16(b, w)
		b = binary.BigEndian.AppendUint16(b, h)
		return binary.BigEndian.AppendUint32(b, uint32(enc))
	}
	raw := bytes.Repeat([]byte{1, 2, 3, 0}, 2*2)
	stream := cat(
		[]byte{msgBell},
		[]byte{msgSetColourMapEntries, 0, 0, 0, 0, 1}, make([]byte, 6),
		withReason([]byte{msgServerCutText, 0, 0, 0}, "clip"),
		[]byte{msgFramebufferUpdate, 0, 0, 5},
		rectHeader(0, 0, 800, 600, encodingDesktopSize),
		rectHeader(0, 0, 2, 2, encodingCursor), make([]byte, 2*2*4+2),
		rectHeader(0, 0, 800, 600, encodingExtendedDesktopSize), []byte{1, 0, 0, 0}, make([]byte, 16),
		rectHeader(4, 4, 2, 2, EncodingRaw), raw,
		rectHeader(0, 0, 0, 0, encodingLastRect),
	)
	u, err := ReadUpdate(bytes.NewReader(stream), ServerInit{PixelFormat: pf})
	if err != nil {
		t.Fatal(err)
	}
	if !u.Resized || u.Width != 800 || u.Height != 600 {
		t.Errorf("resize: got %v %dx%d, want 800x600", u.Resized, u.Width, u.Height)
	}
	if len(u.Rects) != 1 || !bytes.Equal(u.Rects[0].Pixels, raw) || u.Rects[0].X != 4 {
		t.Errorf("rects: got %+v, want the one raw 2x2 rectangle at 4,4", u.Rects)
	}

	hextile := cat([]byte{msgFramebufferUpdate, 0, 0, 1}, rectHeader(0, 0, 2, 2, 5))
	if _, err := ReadUpdate(bytes.NewReader(hextile), ServerInit{PixelFormat: pf}); err == nil || !strings.Contains(err.Error(), "encoding 5") {
		t.Errorf("hextile rectangle: got %v, want an error naming encoding 5", err)
	}
}

// TestClientAgainstQEMU runs the client against a real QEMU VNC server
// (no disk, no guest): the handshake, a full update, input events, and the
// session still answering afterwards.
func TestClientAgainstQEMU(t *testing.T) {
	c := dial(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(qemu.StartVNC(t))))
	si, err := Handshake(c)
	if err != nil {
		t.Fatalf("handshake with qemu: %v", err)
	}
	if si.Version != "3.8" || si.Width == 0 || si.Height == 0 {
		t.Fatalf("server init: got %+v, want version 3.8 and a screen size", si)
	}
	if err := si.PixelFormat.Validate(); err != nil {
		t.Fatalf("qemu pixel format %+v: %v", si.PixelFormat, err)
	}
	for i := range 2 {
		if err := RequestUpdate(c, si, false); err != nil {
			t.Fatal(err)
		}
		u, err := ReadUpdate(c, si)
		if err != nil {
			t.Fatalf("update %d from qemu: %v", i, err)
		}
		if u.Resized {
			si.Width, si.Height = u.Width, u.Height
		}
		area := 0
		for _, r := range u.Rects {
			area += int(r.Width) * int(r.Height)
			if len(r.Pixels) != int(r.Width)*int(r.Height)*si.PixelFormat.BytesPerPixel() {
				t.Fatalf("rectangle %+v: %d pixel bytes", r, len(r.Pixels))
			}
		}
		if want := int(si.Width) * int(si.Height); area != want {
			t.Errorf("update %d: rectangles cover %d pixels, want the whole %dx%d screen", i, area, si.Width, si.Height)
		}
		// Input must not upset the server.
		if err := SendKey(c, 0x61, true); err != nil {
			t.Fatal(err)
		}
		if err := SendKey(c, 0x61, false); err != nil {
			t.Fatal(err)
		}
		if err := SendPointer(c, 0, 10, 10); err != nil {
			t.Fatal(err)
		}
	}
}
