package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/testlog"
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
	f, err := ca.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: "xvp-1", Role: "proxy"})
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert},
		tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// consoleThrough opens one console through the proxy at addr and echoes
// through it (xvpSession); it returns the first error, for use in a
// goroutine.
func consoleThrough(addr, token string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	status, err := xvpSession(c, token)
	if err != nil || status != "HTTP/1.1 200 OK" {
		return fmt.Errorf("answer %q (%v), want the 200 and an echo", status, err)
	}
	return nil
}

// sessionsUnder opens total sessions from 4 clients and calls fault once,
// a quarter of the way in; it fails the test for every failed session.
func sessionsUnder(t *testing.T, addr, token string, total int, fault func()) {
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
				if err := consoleThrough(addr, token); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d of %d sessions failed, want 0; first: %v", failed.Load(), total, first.Load())
	}
}

// healthz is GET /healthz on the metrics listener: status and JSON body.
func healthz(t *testing.T, metrics string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	return resp.StatusCode, body
}

// waitHealth polls /healthz until it answers code with status; the bound
// only stops a hang.
func waitHealth(t *testing.T, metrics string, code int, status string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, body := healthz(t, metrics)
		if got == code && body["status"] == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /healthz: still %d %v, want %d %q", got, body, code, status)
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
// sessions: none fails. It restarts and serves again; the other is killed
// during 200 more: none fails. Both down: /healthz answers 503
// "consoleauth unreachable" and a client gets a 503; one back: 200 again.
func TestConsoleAuthFailover(t *testing.T) {
	replicaTLS, proxyFiles := consoleAuthPKI(t)
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	a, b := auth.StartReplica(t, replicaTLS), auth.StartReplica(t, replicaTLS)
	_, bPort, _ := net.SplitHostPort(b.Addr)

	cfg := testConfig(t, a.Addr+", localhost:"+bPort)
	cfg.GRPC = proxyFiles
	cfg.AdminListen = "127.0.0.1:0"
	logs := &testlog.Buffer{}
	addr, metrics := startRunAddrs(t, cfg, slog.New(slog.NewTextHandler(logs, nil)))
	waitHealth(t, metrics, http.StatusOK, "ok")
	waitUntil(t, "both replicas checking tokens", func() bool {
		return consoleThrough(addr, "tok") == nil && a.Checks() > 0 && b.Checks() > 0
	})

	sessionsUnder(t, addr, "tok", 200, a.Kill)
	a.Restart(t)
	before := a.Checks()
	waitUntil(t, "the restarted replica checking tokens", func() bool {
		return consoleThrough(addr, "tok") == nil && a.Checks() > before
	})
	sessionsUnder(t, addr, "tok", 200, b.Kill)
	waitHealth(t, metrics, http.StatusOK, "ok")

	a.Kill()
	waitHealth(t, metrics, http.StatusServiceUnavailable, "consoleauth unreachable")
	if err := consoleThrough(addr, "tok"); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("session with no consoleauth: got %v, want a 503", err)
	}
	b.Restart(t)
	waitHealth(t, metrics, http.StatusOK, "ok")
	if err := consoleThrough(addr, "tok"); err != nil {
		t.Errorf("session after a replica came back: %v", err)
	}
	if n := strings.Count(logs.String(), "consoleauth unreachable"); n != 1 {
		t.Errorf("unreachable logged %d times, want once (when both were down):\n%s", n, logs)
	}
}

// TestConsoleAuthNotServing: a replica whose health says NOT_SERVING (its
// etcd is gone) gets no check; with the other down too, readiness is red.
func TestConsoleAuthNotServing(t *testing.T) {
	replicaTLS, proxyFiles := consoleAuthPKI(t)
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	a, b := auth.StartReplica(t, replicaTLS), auth.StartReplica(t, replicaTLS)
	cfg := testConfig(t, a.Addr+","+b.Addr)
	cfg.GRPC = proxyFiles
	cfg.AdminListen = "127.0.0.1:0"
	addr, metrics := startRunAddrs(t, cfg, slog.New(slog.DiscardHandler))
	waitHealth(t, metrics, http.StatusOK, "ok")

	a.SetServing(false)
	waitUntil(t, "the NOT_SERVING replica out of the rotation", func() bool {
		before := a.Checks()
		for range 10 { // round robin: one in two would reach a
			if consoleThrough(addr, "tok") != nil {
				return false
			}
		}
		return a.Checks() == before
	})
	before := a.Checks()
	sessionsUnder(t, addr, "tok", 40, func() {})
	if a.Checks() != before {
		t.Errorf("the NOT_SERVING replica got %d checks, want 0", a.Checks()-before)
	}
	b.Kill()
	waitHealth(t, metrics, http.StatusServiceUnavailable, "consoleauth unreachable")
	a.SetServing(true)
	waitHealth(t, metrics, http.StatusOK, "ok")
}

// TestConsoleAuthAddressList: the list is validated at start, naming the
// entry at fault; a plaintext replica off loopback is refused by name.
func TestConsoleAuthAddressList(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"127.0.0.1:6090,,127.0.0.2:6090", "consoleauth_address: entry 2 of 3 is empty"},
		{"127.0.0.1:6090,::1:6090", `consoleauth_address: entry "::1:6090": want host:port, with an IPv6 address in brackets`},
		{"127.0.0.1:70000", `consoleauth_address: entry "127.0.0.1:70000": port 70000 out of range`},
		{"", "consoleauth_address is empty"},
	} {
		_, _, err := loadConfig([]string{"-xvpvncproxy_host=127.0.0.1", "-consoleauth_address=" + tc.value})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("consoleauth_address=%q: got %v, want %q", tc.value, err, tc.want)
		}
	}
	cfg := testConfig(t, "127.0.0.1:6090, 192.0.2.1:6090")
	if err := cfg.checkPlaintext(); err == nil || !strings.Contains(err.Error(), "consoleauth_address 192.0.2.1:6090: plaintext off loopback") {
		t.Errorf("plaintext replica off loopback: got %v, want it refused by name", err)
	}
}
