package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/rfb"
)

// xvpQEMUUUID is the QEMU instance added to the stack's inventory.
const xvpQEMUUUID = "0b8e6a52-3c1f-4d7a-9e2b-5f4a3c2d1e0f"

// TestXVPProxy runs the whole stack as separate processes and goes through
// xvp-proxy as Nova's Java viewer does: REST get-console-URL of type xvpvnc,
// TCP to the proxy, "CONNECT {path}?token=T HTTP/1.1", exactly "HTTP/1.1 200
// OK\r\n\r\n", then RFB to the demo VM and to a real QEMU. Then refusals, a
// revocation through consoleauth, and throttling last (it bans 127.0.0.1
// for the rest of the window).
func TestXVPProxy(t *testing.T) {
	qemuPort := xvpStartQEMU(t) // 0 when qemu is missing outside CI
	opts := devstack.Options{
		Skip: map[string]bool{devstack.NoVNCProxy: true},
		Args: map[string][]string{devstack.XVPProxy: {"--failed_token_limit=3", "--failed_token_window=1m"}},
	}
	if qemuPort != 0 {
		opts.Instances = []devstack.Instance{{UUID: xvpQEMUUUID, VNCHost: "127.0.0.1", VNCPort: qemuPort, State: "running"}}
	}
	w := devstacktest.Start(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	consoleURL := func(t *testing.T, uuid, consoleType string) string {
		t.Helper()
		u, err := w.ConsoleURL(ctx, uuid, consoleType)
		if err != nil {
			t.Fatalf("REST get-console-URL %s: %v", consoleType, err)
		}
		return u
	}

	t.Run("demo VM", func(t *testing.T) {
		u := consoleURL(t, devstack.DemoUUID, "xvpvnc")
		if want := w.XVPBaseURL() + "?token="; !strings.HasPrefix(u, want) {
			t.Fatalf("got URL %s, want prefix %s", u, want)
		}
		c := xvpSession(t, w, u)
		si, _ := xvpView(t, c)
		if si.Width != 800 || si.Height != 600 || si.Name != "vncgate demo VM" {
			t.Errorf("ServerInit: got %dx%d %q, want the demo VM's 800x600", si.Width, si.Height, si.Name)
		}
		if err := rfb.SendKey(c, 0x0061, true); err != nil {
			t.Fatal(err)
		}
		kctx, kcancel := context.WithTimeout(ctx, 5*time.Second)
		defer kcancel()
		if _, err := w.Demo.WaitKey(kctx, 0x0061); err != nil {
			t.Fatalf("key event through xvp-proxy: %v", err)
		}
	})

	t.Run("QEMU", func(t *testing.T) {
		if qemuPort == 0 {
			t.Skip("qemu-system-x86_64 not installed")
		}
		c := xvpSession(t, w, consoleURL(t, xvpQEMUUUID, "xvpvnc"))
		si, u := xvpView(t, c)
		t.Logf("QEMU through xvp-proxy: RFB %s %dx%d %q, %d rectangles", si.Version, si.Width, si.Height, si.Name, len(u.Rects))
	})

	t.Run("refusals", func(t *testing.T) {
		novncToken, err := devstack.TokenOf(consoleURL(t, devstack.DemoUUID, "novnc"))
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct{ name, request, want string }{
			{"no token", "CONNECT /console HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Invalid Request"},
			{"garbage", "\x00\x01\x02garbage\r\n\r\n", "HTTP/1.1 400 Invalid Request"},
			{"POST", "POST /console?token=x HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
			// Not counted as a guess by the throttle: only 401s are.
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if got := xvpRaw(t, w, tc.request); !strings.HasPrefix(got, tc.want+"\r\n") {
					t.Fatalf("got %q, want %s", got, tc.want)
				}
			})
		}
		t.Run("novnc token", func(t *testing.T) { // one failed token of the 3 allowed
			got := xvpRaw(t, w, "CONNECT /console?token="+url.QueryEscape(novncToken)+" HTTP/1.1\r\n\r\n")
			if !strings.HasPrefix(got, "HTTP/1.1 401 Not Authorized\r\n") {
				t.Fatalf("got %q, want 401", got)
			}
		})
	})

	t.Run("revocation ends the session", func(t *testing.T) {
		c := xvpSession(t, w, consoleURL(t, devstack.DemoUUID, "xvpvnc"))
		xvpView(t, c)
		time.Sleep(10 * time.Millisecond) // the revocation is stamped after the session started
		start := time.Now()
		_, err := consoleAuthClient(t, w).RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{
			InstanceUuid: devstack.DemoUUID, Reason: "the instance was deleted",
		})
		if err != nil {
			t.Fatalf("RevokeInstanceTokens: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("session still open 2s after the revocation: %v", err)
		}
		t.Logf("session closed %v after RevokeInstanceTokens", time.Since(start).Round(time.Millisecond))
	})

	t.Run("throttled after failed tokens", func(t *testing.T) {
		// One failure so far (the novnc token); two more reach the limit of 3.
		for i := range 2 {
			got := xvpRaw(t, w, fmt.Sprintf("CONNECT /console?token=guess-%d HTTP/1.1\r\n\r\n", i))
			if !strings.HasPrefix(got, "HTTP/1.1 401 Not Authorized\r\n") {
				t.Fatalf("guess %d: got %q, want 401", i, got)
			}
		}
		token, err := devstack.TokenOf(consoleURL(t, devstack.DemoUUID, "xvpvnc"))
		if err != nil {
			t.Fatal(err)
		}
		got := xvpRaw(t, w, "CONNECT /console?token="+url.QueryEscape(token)+" HTTP/1.1\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: ") {
			t.Fatalf("valid token after 3 failures: got %q, want 429", got)
		}
	})
}

// xvpSession connects to the proxy named by an xvpvnc console URL as the
// Java viewer does, requires the exact 200 and returns the conn, reading
// through the buffer so no RFB byte is lost.
func xvpSession(t *testing.T, w *devstack.World, consoleURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatalf("dial xvp-proxy at %s: %v", u.Host, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
	br := bufio.NewReader(c)
	ok := make([]byte, len("HTTP/1.1 200 OK\r\n\r\n"))
	if _, err := io.ReadFull(br, ok); err != nil || string(ok) != "HTTP/1.1 200 OK\r\n\r\n" {
		rest, _ := io.ReadAll(br)
		t.Fatalf("xvp answer: got %q%q (%v), want exactly HTTP/1.1 200 OK", ok, rest, err)
	}
	return &xvpConn{Conn: c, r: br}
}

type xvpConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *xvpConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// xvpView runs the RFB handshake and reads one full framebuffer update.
func xvpView(t *testing.T, c net.Conn) (rfb.ServerInit, rfb.Update) {
	t.Helper()
	si, err := rfb.Handshake(c)
	if err != nil {
		t.Fatalf("RFB handshake through xvp-proxy: %v", err)
	}
	if err := rfb.RequestUpdate(c, si, false); err != nil {
		t.Fatal(err)
	}
	u, err := rfb.ReadUpdate(c, si)
	if err != nil {
		t.Fatalf("framebuffer update through xvp-proxy: %v", err)
	}
	if len(u.Rects) == 0 {
		t.Fatal("framebuffer update without rectangles")
	}
	return si, u
}

// xvpRaw sends request to the proxy and returns its whole answer.
func xvpRaw(t *testing.T, w *devstack.World, request string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.Addr(w.Ports.XVP), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(c, request)
	got, _ := io.ReadAll(c)
	return string(got)
}

// xvpStartQEMU runs a diskless QEMU with a VNC server on a free loopback
// port until the test ends, and returns the port. Without qemu it fails when
// CI=true and returns 0 otherwise.
func xvpStartQEMU(t *testing.T) int {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 not found (CI=true): %v", err)
		}
		return 0
	}
	for attempt := 0; attempt < 5; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port <= 5900 {
			continue
		}
		cmd := exec.Command(qemu, "-display", "none", "-vnc", fmt.Sprintf("127.0.0.1:%d", port-5900),
			"-machine", "none", "-nodefaults", "-no-user-config")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			select {
			case <-exited:
				deadline = time.Time{}
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
				c.Close()
				return port
			}
		}
	}
	t.Fatal("could not start QEMU with a VNC server")
	return 0
}
