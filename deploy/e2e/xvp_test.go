package e2e

import (
	"context"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// xvpQEMUUUID is the QEMU instance added to the stack's inventory.
const xvpQEMUUUID = "0b8e6a52-3c1f-4d7a-9e2b-5f4a3c2d1e0f"

// TestXVPProxy runs the whole stack as separate processes and goes through
// xvp-proxy as Nova's Java viewer does: REST get-console-URL of type xvpvnc,
// TCP to the proxy, "CONNECT {path}?token=T HTTP/1.1", exactly "HTTP/1.1 200
// OK\r\n\r\n", then RFB to the demo VM and to a real QEMU. Then refusals, a
// revocation through consoleauth, and throttling last: it refuses guesses
// from 127.0.0.1 for the rest of the window, never a valid token.
func TestXVPProxy(t *testing.T) {
	qemuPort := 0 // stays 0 when qemu is missing outside CI
	if qemu.Installed(t) {
		qemuPort = qemu.StartVNC(t)
	}
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

	t.Run("demo VM", func(t *testing.T) {
		u := consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc")
		if want := w.XVPBaseURL() + "?token="; !strings.HasPrefix(u, want) {
			t.Fatalf("got URL %s, want prefix %s", u, want)
		}
		c := xvpSession(t, u)
		si, _ := rfbView(t, "demo VM through xvp-proxy", c)
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
		rfbView(t, "QEMU through xvp-proxy", xvpSession(t, consoleURLOf(t, w, xvpQEMUUUID, "xvpvnc")))
	})

	t.Run("refusals", func(t *testing.T) {
		novncToken := tokenOf(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
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
		c := xvpSession(t, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc"))
		rfbView(t, "xvp-proxy before the revocation", c)
		start := time.Now()
		_, err := consoleAuthAPI(t, w).RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{
			InstanceUuid: devstack.DemoUUID, Reason: "deleted",
		})
		if err != nil {
			t.Fatalf("RevokeInstanceTokens: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound for a hang; the log says how long
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("session still open 30s after the revocation: %v", err)
		}
		t.Logf("session closed %v after RevokeInstanceTokens", time.Since(start).Round(time.Millisecond))
	})

	t.Run("guesses throttled, a valid token still served", func(t *testing.T) {
		// One guess, repeated past the limit of 3: however failures are
		// counted (per client, or per client and token prefix), its key is
		// throttled (the checks slowed, or refused with 429).
		for i := range 4 {
			got := xvpRaw(t, w, "CONNECT /console?token=guessguessguessguess HTTP/1.1\r\n\r\n")
			if !strings.HasPrefix(got, "HTTP/1.1 401 Not Authorized\r\n") && !strings.HasPrefix(got, "HTTP/1.1 429 Too Many Requests\r\n") {
				t.Fatalf("guess %d: got %q, want 401 or 429", i, got)
			}
		}
		rfbView(t, "valid token from a throttled address", xvpSession(t, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc")))
	})
}
