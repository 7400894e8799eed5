package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// TestTLS runs the whole stack with TLS on (devstack Options.TLS): https
// console URLs, wss:// through novnc-proxy (ssl_only) and TLS through
// xvp-proxy to the demo VM, every gRPC link on mutual TLS. It checks that
// plaintext clients of the proxies and gRPC clients without a certificate
// are refused, and that a revocation through REST still ends live sessions
// (so the proxies' consoleauth and etcd clients work under TLS).
func TestTLS(t *testing.T) {
	requireNoVNCLibrary(t)
	w := devstacktest.Start(t, devstack.Options{TLS: true})
	novncAddr, xvpAddr := w.Addr(w.Ports.NoVNC), w.Addr(w.Ports.XVP)

	t.Run("console URLs are https", func(t *testing.T) {
		for _, tc := range []struct{ consoleType, base string }{
			{"novnc", "https://" + novncAddr + "/vnc_lite.html?"},
			{"xvpvnc", "https://" + xvpAddr + "/console?token="},
		} {
			if u := consoleURLOf(t, w, devstack.DemoUUID, tc.consoleType); !strings.HasPrefix(u, tc.base) {
				t.Errorf("%s: got URL %s, want prefix %s", tc.consoleType, u, tc.base)
			}
		}
		u := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
		resp, err := w.HTTPClient().Get(u)
		if err != nil {
			t.Fatalf("GET console page: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "vncgate/app.js") || resp.TLS == nil {
			t.Fatalf("GET %s: got %d (TLS %v), want the console page over TLS", u, resp.StatusCode, resp.TLS != nil)
		}
	})

	t.Run("wss through novnc-proxy", func(t *testing.T) {
		c := novncTLSDial(t, w, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		rfbView(t, "demo VM through novnc-proxy over wss", websocket.NetConn(context.Background(), c, websocket.MessageBinary))
	})

	t.Run("TLS through xvp-proxy", func(t *testing.T) {
		rfbView(t, "demo VM through xvp-proxy over TLS", xvpTLSSession(t, w, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc")))
	})

	t.Run("plaintext ws refused by ssl_only novnc-proxy", func(t *testing.T) {
		token := tokenOf(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, "ws://"+novncAddr+"/websockify?token="+url.QueryEscape(token),
			&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://" + novncAddr}}})
		if err == nil {
			c.CloseNow()
			t.Fatal("plaintext WebSocket upgrade accepted, want it refused")
		}
		// net/http answers a plaintext request on a TLS port with a 400.
		if resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("got %v (%v), want HTTP 400 and no upgrade", resp, err)
		}
	})

	t.Run("plaintext CONNECT refused by xvp-proxy", func(t *testing.T) {
		token := tokenOf(t, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc"))
		got := xvpRaw(t, w, "CONNECT /console?token="+url.QueryEscape(token)+" HTTP/1.1\r\n\r\n")
		if strings.HasPrefix(got, "HTTP/") {
			t.Fatalf("plaintext CONNECT: got %q, want no HTTP answer", got)
		}
		t.Logf("plaintext CONNECT answered %q", got)
	})

	t.Run("gRPC needs a client certificate", func(t *testing.T) {
		token := tokenOf(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		api, err := w.ClientTLS(authn.RoleAPI, "tls-test-api")
		if err != nil {
			t.Fatal(err)
		}
		consoleauth, err := w.ClientTLS(authn.RoleConsoleAuth, "tls-test-consoleauth")
		if err != nil {
			t.Fatal(err)
		}
		noCert := credentials.NewTLS(&tls.Config{RootCAs: w.CAPool(), MinVersion: tls.VersionTLS12})
		// The positive case shows the refusals are about the certificate:
		// introspection is the API layer's, GetConsole consoleauth's.
		tests := []struct {
			name               string
			consoleauth, agent credentials.TransportCredentials
			wantOK             bool
		}{
			{"client certificate of the caller's role", credentials.NewTLS(api), credentials.NewTLS(consoleauth), true},
			{"no client certificate", noCert, noCert, false},
			{"plaintext", insecure.NewCredentials(), insecure.NewCredentials(), false},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, err := consoleauthv1.NewConsoleAuthServiceClient(grpcConn(t, w.Addr(w.Ports.ConsoleAuthGRPC), tc.consoleauth)).
					GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
				checkGRPC(t, "consoleauth", err, tc.wantOK)
				_, err = computeagentv1.NewComputeAgentServiceClient(grpcConn(t, w.Addr(w.Ports.ComputeAgent), tc.agent)).
					GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: devstack.DemoUUID, ConsoleType: "novnc"})
				checkGRPC(t, "compute-agent", err, tc.wantOK)
			})
		}
	})

	t.Run("REST refuses callers without credentials", func(t *testing.T) {
		u := w.RESTURL() + "/v2.1/servers/" + devstack.DemoUUID + "/remote-consoles"
		body := `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
		// Neither key nor certificate: refused at the handshake (the REST
		// API asks for a certificate) or with 401.
		if resp, err := w.HTTPClient().Post(u, "application/json", strings.NewReader(body)); err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("REST without credentials: got %s, want the TLS handshake refused or 401", resp.Status)
			}
		}
		if resp, err := http.Post(strings.Replace(u, "https://", "http://", 1), "application/json", strings.NewReader(body)); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatal("plaintext REST: got 200, want a refusal")
			}
		}
	})

	t.Run("revocation through REST ends wss and TLS sessions", func(t *testing.T) {
		live := novncTLSDial(t, w, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		rfbView(t, "novnc-proxy before the revocation", websocket.NetConn(context.Background(), live, websocket.MessageBinary))
		xvp := xvpTLSSession(t, w, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc"))
		rfbView(t, "xvp-proxy before the revocation", xvp)
		start := time.Now()
		revokeREST(t, w, devstack.DemoUUID, "stopped")
		if ce := wsclose.Read(t, live); ce.Code != novncRevoked || !strings.Contains(ce.Reason, "stopped") {
			t.Fatalf("wss session: got close %d %q, want %d with the reason", ce.Code, ce.Reason, novncRevoked)
		}
		xvp.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, xvp); err != nil {
			t.Fatalf("xvp TLS session still open after the revocation: %v", err)
		}
		t.Logf("both sessions ended %v after the REST revocation", time.Since(start).Round(time.Millisecond))
	})
}

// novncTLSDial opens wss:// to novnc-proxy for a https console URL, with the
// console page's https Origin, trusting the stack's CA as a browser would.
func novncTLSDial(t *testing.T, w *devstack.World, consoleURL string) *websocket.Conn {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "https" {
		t.Fatalf("console URL %s: want https", consoleURL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wsURL := "wss://" + u.Host + "/websockify?token=" + url.QueryEscape(tokenOf(t, consoleURL))
	c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
		HTTPClient: w.HTTPClient(),
		HTTPHeader: http.Header{"Origin": {"https://" + u.Host}},
	})
	if err != nil {
		t.Fatalf("wss to novnc-proxy: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// xvpTLSSession is xvpSession over TLS: it verifies xvp-proxy's certificate
// against the stack's CA, sends the CONNECT and requires exactly the 200.
func xvpTLSSession(t *testing.T, w *devstack.World, consoleURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{RootCAs: w.CAPool(), MinVersion: tls.VersionTLS12}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		t.Fatalf("TLS to xvp-proxy at %s: %v", u.Host, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
	br := bufio.NewReader(c)
	ok := make([]byte, len(xvpOK))
	if _, err := io.ReadFull(br, ok); err != nil || string(ok) != xvpOK {
		t.Fatalf("xvp answer over TLS: got %q (%v), want exactly %q", ok, err, xvpOK)
	}
	c.SetDeadline(time.Time{})
	return &xvpConn{Conn: c, r: br}
}

// checkGRPC requires a call to have succeeded, or to have been refused
// before it reached the service: Unavailable (no TLS session) or
// Unauthenticated (no certificate to say who called).
func checkGRPC(t *testing.T, service string, err error, wantOK bool) {
	t.Helper()
	switch code := status.Code(err); {
	case wantOK && err != nil:
		t.Errorf("%s with a client certificate: %v", service, err)
	case !wantOK && code != codes.Unavailable && code != codes.Unauthenticated:
		t.Errorf("%s: got %v, want Unavailable (refused at the handshake) or Unauthenticated", service, err)
	case !wantOK:
		t.Logf("%s refused: %v", service, err)
	}
}
