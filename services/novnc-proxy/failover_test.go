package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// consoleAuthPKI is a CA, the server configuration of consoleauth replicas
// (mutual TLS, a certificate for 127.0.0.1 and localhost) and the proxy's
// grpc_* files (role proxy).
func consoleAuthPKI(t *testing.T) (replicas *tls.Config, proxy tlsconfig.Files) {
	t.Helper()
	ca := certs.TestCA(t)
	cert, err := ca.IssueIdentity(certs.Identity{Name: "consoleauth", Role: "consoleauth"}, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: "novnc-1", Role: "proxy"})
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert},
		tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// consolesUnder opens total consoles (WebSocket and RFB handshake) from 4
// clients and calls fault once, a quarter of the way in; it fails the test
// for every failed console.
func consolesUnder(t *testing.T, wsURL string, total int, fault func()) {
	t.Helper()
	var next, failed atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for n := next.Add(1); n <= int64(total); n = next.Add(1) {
				if n == int64(total/4) {
					fault()
				}
				if err := consoleFrom("127.0.0.1", wsURL); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d of %d consoles failed, want 0; first: %v", failed.Load(), total, first.Load())
	}
}

// waitHealth polls /healthz until it answers code with status; the bound
// only stops a hang.
func waitHealth(t *testing.T, addr string, code int, status string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatalf("GET /healthz: %v", err)
		}
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == code && body["status"] == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /healthz: still %d %v (%v), want %d %q", resp.StatusCode, body, err, code, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitUntil polls cond; the bound only stops a hang.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConsoleAuthFailover: consoleauth_address lists two replicas (mutual
// TLS; the second by the name localhost). One is killed during 200
// consoles: none fails. It restarts and serves again; the other is killed
// during 200 more: none fails. Both down: /healthz answers 503
// "consoleauth unreachable" and a console is closed with 4503; one back:
// 200 again.
func TestConsoleAuthFailover(t *testing.T) {
	replicaTLS, proxyFiles := consoleAuthPKI(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	wsURL := "ws://%s/?token=" + auth.Mint(instance, "novnc", host, port, time.Hour)
	a, b := auth.StartReplica(t, replicaTLS), auth.StartReplica(t, replicaTLS)
	_, bPort, _ := net.SplitHostPort(b.Addr)

	cfg := testConfig(t, auth)
	cfg.ConsoleAuthAddress = a.Addr + ", localhost:" + bPort
	cfg.GRPC = proxyFiles
	cfg.ShutdownDelay = 3 * time.Second // the window in which draining is seen
	s := startRun(t, cfg)
	wsURL = strings.Replace(wsURL, "%s", s.addr, 1)
	waitHealth(t, s.addr, http.StatusOK, "ok")
	waitUntil(t, "both replicas checking tokens", func() bool {
		return consoleFrom("127.0.0.1", wsURL) == nil && a.Checks() > 0 && b.Checks() > 0
	})

	consolesUnder(t, wsURL, 200, a.Kill)
	a.Restart(t)
	before := a.Checks()
	waitUntil(t, "the restarted replica checking tokens", func() bool {
		return consoleFrom("127.0.0.1", wsURL) == nil && a.Checks() > before
	})
	consolesUnder(t, wsURL, 200, b.Kill)

	a.Kill()
	waitHealth(t, s.addr, http.StatusServiceUnavailable, "consoleauth unreachable")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A browser (it sends an Origin) is told why in the close frame.
	c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://127.0.0.1:6080"}}})
	if err != nil {
		t.Fatalf("console with no consoleauth: %v, want an upgrade, then close 4503", err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.Unavailable) {
		t.Errorf("console with no consoleauth: got close %d %q, want %d", ce.Code, ce.Reason, closecode.Unavailable)
	}
	b.Restart(t)
	waitHealth(t, s.addr, http.StatusOK, "ok")
	if err := consoleFrom("127.0.0.1", wsURL); err != nil {
		t.Errorf("console after a replica came back: %v", err)
	}
	// Draining keeps its own answer, whatever consoleauth's state.
	b.Kill()
	waitHealth(t, s.addr, http.StatusServiceUnavailable, "consoleauth unreachable")
	s.cancel()
	waitHealth(t, s.addr, http.StatusServiceUnavailable, "draining")
}

// TestConsoleAuthAddressList: the list is validated at start, naming the
// entry at fault; a plaintext replica off loopback is refused by name.
func TestConsoleAuthAddressList(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"127.0.0.1:6090,,127.0.0.2:6090", "consoleauth_address: entry 2 of 3 is empty"},
		{"127.0.0.1:6090,::1:6090", `consoleauth_address: entry "::1:6090": want host:port, with an IPv6 address in brackets`},
		{"consoleauth", `consoleauth_address: entry "consoleauth": no port`},
	} {
		_, _, err := loadConfig([]string{"-consoleauth_address=" + tc.value})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("consoleauth_address=%q: got %v, want %q", tc.value, err, tc.want)
		}
	}
	cfg := testConfig(t, fakeconsoleauth.Start(t))
	cfg.ConsoleAuthAddress = "127.0.0.1:6090, 192.0.2.1:6090"
	if err := cfg.checkPlaintext(); err == nil || !strings.Contains(err.Error(), "consoleauth_address 192.0.2.1:6090: plaintext off loopback") {
		t.Errorf("plaintext replica off loopback: got %v, want it refused by name", err)
	}
}
