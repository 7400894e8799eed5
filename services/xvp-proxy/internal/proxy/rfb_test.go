package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// rfbOver reads what follows the 200 (some may already be buffered in br)
// and writes to c.
func rfbOver(c net.Conn, br *bufio.Reader) io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{br, c}
}

// viewFramebuffer runs an RFB client through the proxy session: handshake,
// a full update, and returns what it saw.
func viewFramebuffer(t *testing.T, rw io.ReadWriter) (rfb.ServerInit, rfb.Update) {
	t.Helper()
	si, err := rfb.Handshake(rw)
	if err != nil {
		t.Fatalf("RFB handshake through the proxy: %v", err)
	}
	if err := rfb.RequestUpdate(rw, si, false); err != nil {
		t.Fatal(err)
	}
	u, err := rfb.ReadUpdate(rw, si)
	if err != nil {
		t.Fatalf("reading a framebuffer update through the proxy: %v", err)
	}
	if len(u.Rects) == 0 {
		t.Fatalf("update has no rectangles")
	}
	return si, u
}

func TestDemoVNCServerThroughProxy(t *testing.T) {
	l := listen(t)
	vnc := rfb.NewServer(rfb.Options{Width: 320, Height: 240, Name: "xvp test"})
	go vnc.Serve(l)
	t.Cleanup(func() { vnc.Close() })
	w := newWorld(t)
	w.auth.add("tok", "inst-demo", l.Addr().String())

	c, br := w.session(t, "tok")
	rw := rfbOver(c, br)
	si, u := viewFramebuffer(t, rw)
	if si.Width != 320 || si.Height != 240 || si.Name != "xvp test" {
		t.Errorf("ServerInit: got %dx%d %q, want 320x240 \"xvp test\"", si.Width, si.Height, si.Name)
	}
	if n := u.Rects[0].DistinctColours(); n < 2 {
		t.Errorf("first rectangle has %d colours, want the test pattern", n)
	}
	// Input reaches the VNC server too.
	if err := rfb.SendKey(rw, 0xff0d, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := vnc.WaitKey(ctx, 0xff0d); err != nil {
		t.Fatalf("key event through the proxy: %v", err)
	}
}

func TestQEMUThroughProxy(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(qemu.StartVNC(t)))
	w := newWorld(t)
	w.auth.add("tok", "inst-qemu", addr)
	c, br := w.session(t, "tok")
	si, u := viewFramebuffer(t, rfbOver(c, br))
	if si.Width == 0 || si.Height == 0 {
		t.Errorf("ServerInit: got %dx%d, want a framebuffer", si.Width, si.Height)
	}
	t.Logf("QEMU %s: %dx%d %q, first update %d rectangles", si.Version, si.Width, si.Height, si.Name, len(u.Rects))
}
