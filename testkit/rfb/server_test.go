package rfb

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// startServer serves a new Server on a loopback port until the test ends.
func startServer(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(o)
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s, l.Addr().String()
}

// dial connects to addr with a 10 s deadline on every exchange.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// connect dials and runs the client handshake.
func connect(t *testing.T, addr string) (net.Conn, ServerInit) {
	t.Helper()
	c := dial(t, addr)
	si, err := Handshake(c)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c, si
}

func fullUpdate(t *testing.T, c net.Conn, si ServerInit) Rect {
	t.Helper()
	if err := RequestUpdate(c, si, false); err != nil {
		t.Fatal(err)
	}
	u, err := ReadUpdate(c, si)
	if err != nil {
		t.Fatalf("read update: %v", err)
	}
	if len(u.Rects) != 1 {
		t.Fatalf("got %d rectangles, want 1", len(u.Rects))
	}
	return u.Rects[0]
}

func TestHandshakeAndFullUpdate(t *testing.T) {
	_, addr := startServer(t, Options{Width: 320, Height: 200, Name: "demo-vm"})
	c, si := connect(t, addr)
	want := ServerInit{Version: "3.8", Width: 320, Height: 200, PixelFormat: PixelFormat32, Name: "demo-vm"}
	if si != want {
		t.Fatalf("server init: got %+v, want %+v", si, want)
	}
	r := fullUpdate(t, c, si)
	if r.X != 0 || r.Y != 0 || r.Width != 320 || r.Height != 200 || len(r.Pixels) != 320*200*4 {
		t.Fatalf("rectangle: got %d,%d %dx%d with %d bytes, want 0,0 320x200 with %d", r.X, r.Y, r.Width, r.Height, len(r.Pixels), 320*200*4)
	}
	// Eight bars, the band, the digits and the block.
	if n := r.DistinctColours(); n < 10 {
		t.Errorf("distinct colours: got %d, want at least 10 (a test pattern, not a flat screen)", n)
	}
}

func TestIncrementalUpdateShowsChange(t *testing.T) {
	_, addr := startServer(t, Options{Width: 160, Height: 120, FrameInterval: 20 * time.Millisecond})
	c, si := connect(t, addr)
	prev := fullUpdate(t, c, si)
	for i := range 3 {
		if err := RequestUpdate(c, si, true); err != nil {
			t.Fatal(err)
		}
		u, err := ReadUpdate(c, si)
		if err != nil {
			t.Fatalf("incremental update %d: %v", i, err)
		}
		if len(u.Rects) != 1 {
			t.Fatalf("incremental update %d: got %d rectangles, want 1", i, len(u.Rects))
		}
		if bytes.Equal(u.Rects[0].Pixels, prev.Pixels) {
			t.Fatalf("incremental update %d: got the same picture as before, want a changed one", i)
		}
		prev = u.Rects[0]
	}
}

func TestPartialUpdateRequest(t *testing.T) {
	_, addr := startServer(t, Options{Width: 100, Height: 80})
	c, si := connect(t, addr)
	msg := []byte{msgFramebufferUpdateRequest, 0, 0, 90, 0, 70, 0, 50, 0, 50} // clipped to 10x10
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	u, err := ReadUpdate(c, si)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Rects) != 1 {
		t.Fatalf("got %d rectangles, want 1", len(u.Rects))
	}
	r := u.Rects[0]
	if r.X != 90 || r.Y != 70 || r.Width != 10 || r.Height != 10 {
		t.Errorf("got %d,%d %dx%d, want 90,70 10x10 (clipped to the screen)", r.X, r.Y, r.Width, r.Height)
	}
}

func TestPixelFormats(t *testing.T) {
	// A frame interval of an hour keeps frame 0: white bar at x=0, red at
	// bar 5, blue at bar 6.
	const width = 160
	tests := []struct {
		name string
		pf   PixelFormat
	}{
		{"32-bit as noVNC asks", PixelFormat{BitsPerPixel: 32, Depth: 24, TrueColour: true, RedMax: 255, GreenMax: 255, BlueMax: 255, RedShift: 0, GreenShift: 8, BlueShift: 16}},
		{"32-bit big-endian", PixelFormat{BitsPerPixel: 32, Depth: 24, BigEndian: true, TrueColour: true, RedMax: 255, GreenMax: 255, BlueMax: 255, RedShift: 16, GreenShift: 8, BlueShift: 0}},
		{"16-bit RGB565", PixelFormat16},
		{"16-bit RGB565 big-endian", PixelFormat{BitsPerPixel: 16, Depth: 16, BigEndian: true, TrueColour: true, RedMax: 31, GreenMax: 63, BlueMax: 31, RedShift: 11, GreenShift: 5, BlueShift: 0}},
		{"15-bit RGB555", PixelFormat{BitsPerPixel: 16, Depth: 15, TrueColour: true, RedMax: 31, GreenMax: 31, BlueMax: 31, RedShift: 10, GreenShift: 5, BlueShift: 0}},
		{"8-bit BGR233", PixelFormat{BitsPerPixel: 8, Depth: 8, TrueColour: true, RedMax: 7, GreenMax: 7, BlueMax: 3, RedShift: 0, GreenShift: 3, BlueShift: 6}},
	}
	_, addr := startServer(t, Options{Width: width, Height: 40, FrameInterval: time.Hour})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, si := connect(t, addr)
			if err := SetPixelFormat(c, tt.pf); err != nil {
				t.Fatal(err)
			}
			si.PixelFormat = tt.pf
			r := fullUpdate(t, c, si)
			if got, want := len(r.Pixels), width*40*tt.pf.BytesPerPixel(); got != want {
				t.Fatalf("pixel bytes: got %d, want %d", got, want)
			}
			for _, p := range []struct {
				x       int
				r, g, b uint8
			}{{1, 255, 255, 255}, {width/8*5 + 1, 255, 0, 0}, {width/8*6 + 1, 0, 0, 255}} {
				if r, g, b := r.RGB(p.x, 1); r != p.r || g != p.g || b != p.b {
					t.Errorf("pixel at x=%d: got rgb(%d,%d,%d), want rgb(%d,%d,%d)", p.x, r, g, b, p.r, p.g, p.b)
				}
			}
		})
	}
}

func TestBadPixelFormatClosesConnection(t *testing.T) {
	s, addr := startServer(t, Options{})
	c, _ := connect(t, addr)
	bad := PixelFormat32
	bad.TrueColour = false
	if err := SetPixelFormat(c, bad); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	waitConns(t, s, 0)
}

func TestEventsRecorded(t *testing.T) {
	s, addr := startServer(t, Options{})
	c, _ := connect(t, addr)
	const keysymA = 0x61
	for _, err := range []error{
		SendKey(c, keysymA, true),
		SendKey(c, keysymA, false),
		SendPointer(c, 1, 100, 200),
		SendPointer(c, 0, 101, 201),
		SendCutText(c, "héllo"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k, err := s.WaitKey(ctx, keysymA)
	if err != nil {
		t.Fatalf("wait key: %v", err)
	}
	if k != (KeyEvent{Conn: 1, Down: true, Keysym: keysymA}) {
		t.Errorf("first key: got %+v, want a press of 'a' on conn 1", k)
	}
	p, err := s.WaitPointer(ctx, func(p PointerEvent) bool { return p.Buttons == 0 })
	if err != nil {
		t.Fatalf("wait pointer: %v", err)
	}
	if p.X != 101 || p.Y != 201 {
		t.Errorf("pointer release: got %+v, want at 101,201", p)
	}
	if _, err := s.WaitCutText(ctx, "héllo"); err != nil {
		t.Fatalf("wait cut text: %v", err)
	}
	keys := s.Keys()
	if len(keys) != 2 || !keys[0].Down || keys[1].Down {
		t.Errorf("keys: got %+v, want press then release", keys)
	}
	if got := s.Pointers(); len(got) != 2 || got[0].Buttons != 1 {
		t.Errorf("pointers: got %+v, want a left press then a release", got)
	}

	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := s.WaitKey(short, 0x62); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait for a key never sent: got %v, want context.DeadlineExceeded", err)
	}
}

func TestEventLimits(t *testing.T) {
	s, addr := startServer(t, Options{MaxEvents: 3, MaxCutText: 4})
	c, _ := connect(t, addr)
	for k := uint32(1); k <= 5; k++ {
		if err := SendKey(c, k, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := SendCutText(c, "abcdefgh"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.WaitCutText(ctx, "abcd"); err != nil {
		t.Fatalf("wait for the cut text cut to 4 bytes: %v", err)
	}
	var got []uint32
	for _, k := range s.Keys() {
		got = append(got, k.Keysym)
	}
	if want := []uint32{3, 4, 5}; !equal(got, want) {
		t.Errorf("keys kept: got %v, want %v (the latest 3)", got, want)
	}
	// The session goes on after the discarded text.
	if err := SendKey(c, 9, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitKey(ctx, 9); err != nil {
		t.Errorf("key after a long cut text: %v", err)
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestOlderClientVersions speaks the handshake by hand as 3.3 and 3.7
// clients (and odd versions the RFC maps onto them) would.
func TestOlderClientVersions(t *testing.T) {
	tests := []struct {
		name    string
		version string
		// the bytes the server sends after the version, before ServerInit
		security []byte
		choose   bool // the client answers with a security type
	}{
		{"3.3", "RFB 003.003\n", []byte{0, 0, 0, 1}, false},
		{"3.5 is 3.3", "RFB 003.005\n", []byte{0, 0, 0, 1}, false},
		{"3.7", "RFB 003.007\n", []byte{1, 1}, true},
		{"3.8", "RFB 003.008\n", []byte{1, 1}, true},
		{"Apple 3.889 is 3.8", "RFB 003.889\n", []byte{1, 1}, true},
	}
	_, addr := startServer(t, Options{Width: 64, Height: 32, Name: "x"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			greeting := make([]byte, 12)
			if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "RFB 003.008\n" {
				t.Fatalf("greeting: got %q, %v, want RFB 003.008", greeting, err)
			}
			if _, err := io.WriteString(c, tt.version); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(tt.security))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, tt.security) {
				t.Fatalf("security: got %v, %v, want %v", got, err, tt.security)
			}
			if tt.choose {
				if _, err := c.Write([]byte{1}); err != nil {
					t.Fatal(err)
				}
				if tt.version != "RFB 003.007\n" {
					result := make([]byte, 4)
					if _, err := io.ReadFull(c, result); err != nil || !bytes.Equal(result, []byte{0, 0, 0, 0}) {
						t.Fatalf("security result: got %v, %v, want OK (0)", result, err)
					}
				}
			}
			if _, err := c.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			init := make([]byte, 25)
			if _, err := io.ReadFull(c, init); err != nil {
				t.Fatalf("server init: %v", err)
			}
			if w, h := binary.BigEndian.Uint16(init), binary.BigEndian.Uint16(init[2:]); w != 64 || h != 32 || init[24] != 'x' {
				t.Errorf("server init: got %dx%d name %q, want 64x32 name x", w, h, init[24:])
			}
		})
	}
}

func TestBadClientVersionCloses(t *testing.T) {
	tests := []struct{ name, version string }{
		{"http", "GET / HTTP/1.1\r\n"},
		{"version 4", "RFB 004.000\n"},
		{"not digits", "RFB 003.00x\n"},
		{"no newline", "RFB 003.008 "},
	}
	s, addr := startServer(t, Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, tt.version); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c)
		})
	}
	waitConns(t, s, 0)
}

func TestSecurityTypeOtherThanNoneRefused(t *testing.T) {
	_, addr := startServer(t, Options{})
	c := dial(t, addr)
	if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte{securityVNCAuth}); err != nil {
		t.Fatal(err)
	}
	result := make([]byte, 4)
	if _, err := io.ReadFull(c, result); err != nil || binary.BigEndian.Uint32(result) != 1 {
		t.Fatalf("security result: got %v, %v, want failed (1)", result, err)
	}
	reason, err := readString(c, 1024)
	if err != nil || reason == "" {
		t.Fatalf("reason: got %q, %v, want a reason", reason, err)
	}
	expectClosed(t, c)
}

func TestHandshakeTimeout(t *testing.T) {
	s, addr := startServer(t, Options{HandshakeTimeout: 100 * time.Millisecond})
	c := dial(t, addr)
	if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c) // the client never answers
	waitConns(t, s, 0)
}

func TestUnknownMessageCloses(t *testing.T) {
	_, addr := startServer(t, Options{})
	c, _ := connect(t, addr)
	if _, err := c.Write([]byte{200}); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
}

func TestCloseEndsSessions(t *testing.T) {
	before := runtime.NumGoroutine()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(Options{FrameInterval: time.Hour})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	var conns []net.Conn
	for range 3 {
		c, si := connect(t, l.Addr().String())
		// Leave an incremental request waiting for the next frame.
		if err := RequestUpdate(c, si, false); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadUpdate(c, si); err != nil {
			t.Fatal(err)
		}
		if err := RequestUpdate(c, si, true); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitConns(t, s, 3)
	s.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: got %v, want ErrServerClosed", err)
	}
	for _, c := range conns {
		expectClosed(t, c)
		c.Close()
	}
	if got := s.ActiveConns(); got != 0 {
		t.Errorf("active conns after Close: got %d, want 0", got)
	}
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close: got %v, want ErrServerClosed", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > before {
		t.Errorf("goroutines after Close: got %d, want at most %d", got, before)
	}
}

// expectClosed reads until the server closes c, failing on a timeout.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after 5s, want it closed")
	}
}

func waitConns(t *testing.T, s *Server, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.ActiveConns() != want {
		if time.Now().After(deadline) {
			t.Fatalf("active conns: got %d, want %d", s.ActiveConns(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkFullUpdate measures one 640x480 32-bit full update, request to
// last pixel, over loopback TCP.
func BenchmarkFullUpdate(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(Options{})
	go func() { _ = s.Serve(l) }()
	defer s.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	si, err := Handshake(c)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(si.Width) * int64(si.Height) * 4)
	for b.Loop() {
		if err := RequestUpdate(c, si, false); err != nil {
			b.Fatal(err)
		}
		if _, err := ReadUpdate(c, si); err != nil {
			b.Fatal(err)
		}
	}
}
