package main

// The listener under abuse and behind HAProxy: file descriptors run out,
// connections pile up, a load balancer speaks the PROXY protocol and
// health-checks, plaintext is configured off loopback.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/haproxy"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/reexec"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// childEnv makes the test binary run xvp-proxy's main (package reexec).
const childEnv = "VNCGATE_TEST_XVP_PROXY_MAIN"

func TestMain(m *testing.M) {
	reexec.Main(childEnv, main)
	os.Exit(m.Run())
}

// dialFrom connects to addr from a loopback source address (all of 127/8
// is loopback), so one test can be many clients.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// holdIdle opens n connections from src that never send a byte, closed by
// the returned function or when the test ends.
func holdIdle(t *testing.T, addr, src string, n int) (closeAll func()) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		conns = append(conns, dialFrom(t, src, addr))
	}
	return func() {
		for _, c := range conns {
			c.Close()
		}
	}
}

// xvpSession sends the XVP head for token over c and reads the answer's
// status line; with the 200 it checks an echo through the session.
func xvpSession(c net.Conn, token string) (string, error) {
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "CONNECT /console?token="+token+" HTTP/1.1\r\n\r\n"); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || status != "HTTP/1.1 200 OK\r\n" {
		rest, _ := io.ReadAll(io.LimitReader(br, 512))
		return status + string(rest), err
	}
	if _, err := br.ReadString('\n'); err != nil {
		return status, err
	}
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		return status, io.ErrUnexpectedEOF
	}
	return strings.TrimSpace(status), nil
}

// TestListenerSurvivesFDExhaustion runs the real xvp-proxy in a child
// process with 32 open files: idle connections exhaust its descriptors,
// accept fails (logged once for the episode, not per error), and once they
// are closed a user waiting in the backlog is served.
func TestListenerSurvivesFDExhaustion(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	child := reexec.Start(t, childEnv, 32,
		"-xvpvncproxy_host=127.0.0.1", "-xvpvncproxy_port=0", "-consoleauth_address="+auth.Addr,
		"-etcd_endpoints=", "-handshake_timeout=60", "-drain_timeout=1", "-shutdown_delay=0", "-admin_listen=127.0.0.1:0",
		"-server_greeting_timeout=0") // the echo back end never speaks first
	addr, _ := child.WaitLog(t, "listening", 30*time.Second)["addr"].(string)

	closeIdle := holdIdle(t, addr, "127.0.0.2", 60)
	child.WaitLog(t, "accept failing: retrying with backoff until it works", 30*time.Second)

	user := dialFrom(t, "127.0.0.3", addr) // waits in the backlog
	served := make(chan error, 1)
	go func() {
		status, err := xvpSession(user, "tok")
		if err == nil && status != "HTTP/1.1 200 OK" {
			err = io.ErrUnexpectedEOF
		}
		served <- err
	}()
	closeIdle()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("the user after the descriptors were freed: %v, want a session", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the user was not served 60s after the descriptors were freed")
	}
	child.WaitLog(t, "accept working again", 30*time.Second)
	if n := child.Count("accept failing: retrying with backoff until it works"); n != 1 {
		t.Errorf("got %d episode-start lines, want 1 (a line per episode, not per error)", n)
	}
	if err := child.Stop(t, 30*time.Second); err != nil {
		t.Errorf("xvp-proxy exit: %v", err)
	}
}

func TestConnectionCaps(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")

	t.Run("2,000 idle connections from one address do not stop another", func(t *testing.T) {
		cfg := testConfig(t, auth.Addr)
		cfg.HandshakeTimeout = 60 * time.Second
		cfg.AdminListen = "127.0.0.1:0"
		addr, metrics := startRunAddrs(t, cfg, slog.New(slog.DiscardHandler))
		holdIdle(t, addr, "127.0.0.2", 100)
		if got := answer(t, writeTo(t, dialFrom(t, "127.0.0.2", addr), connectTok)); !strings.Contains(got, "HTTP/1.1 503 Service Unavailable") ||
			!strings.HasSuffix(got, "too many connections from this address: retry later\n") {
			t.Fatalf("the 101st connection: got %q, want the 503 too-many-from reply", got)
		}
		holdIdle(t, addr, "127.0.0.2", 1900)
		if status, err := xvpSession(dialFrom(t, "127.0.0.3", addr), "tok"); err != nil {
			t.Fatalf("a user on another address beside 2,000 idle connections: %q %v", status, err)
		}
		if v := metricValue(t, metrics, `vncgate_proxy_connections_refused_total{reason="max_connections_per_client"}`); v < 1900 {
			t.Errorf("connections_refused_total{reason=max_connections_per_client}: got %v, want at least 1900", v)
		}
	})

	t.Run("max_connections", func(t *testing.T) {
		cfg := testConfig(t, auth.Addr)
		cfg.HandshakeTimeout = 60 * time.Second
		cfg.MaxConnections, cfg.MaxConnectionsPerClient = 20, 0
		addr := startRun(t, cfg, slog.New(slog.DiscardHandler))
		closeIdle := holdIdle(t, addr, "127.0.0.2", 20)
		if got := answer(t, writeTo(t, dialFrom(t, "127.0.0.3", addr), connectTok)); !strings.HasSuffix(got, "\r\n\r\ntoo many connections: retry later\n") {
			t.Fatalf("past max_connections: got %q, want the 503 too-many-conns reply", got)
		}
		closeIdle()
		deadline := time.Now().Add(10 * time.Second) // the proxy sees the closes a moment later
		for {
			status, err := xvpSession(dialFrom(t, "127.0.0.3", addr), "tok")
			if err == nil {
				break
			}
			if !strings.Contains(status, "503") || time.Now().After(deadline) {
				t.Fatalf("once the idle connections closed: %q %v, want a session", status, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// connectTok is an XVP head with a valid token.
const connectTok = "CONNECT /console?token=tok HTTP/1.1\r\n\r\n"

// answer reads what the proxy sends on c until it closes.
func answer(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// metricValue is the value of a sample line of the metrics listener.
func metricValue(t *testing.T, metricsAddr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}

// TestBehindHAProxy puts a real HAProxy in front of xvp-proxy, with PROXY
// v2 on every connection and health checks (PROXY v2 LOCAL). Sessions
// through it are logged, capped and throttled under the client's address
// from the header; health checks are neither refusals nor sessions; a
// direct client cannot claim an address; the trusted proxy must send the
// header. Plain TCP and TLS (the header comes before the handshake).
func TestBehindHAProxy(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	files, pool := certs.TestFiles(t, "127.0.0.1")
	for _, withTLS := range []bool{false, true} {
		name := "plain"
		if withTLS {
			name = "TLS"
		}
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t, auth.Addr)
			cfg.TrustedProxies = []string{"127.0.0.1"}
			cfg.MaxConnectionsPerClient = 2
			cfg.AdminListen = "127.0.0.1:0"
			if withTLS {
				cfg.Cert, cfg.Key = files.Cert, files.Key
			}
			logs := &testlog.Buffer{}
			addr, metrics := startRunAddrs(t, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			_, port, _ := net.SplitHostPort(addr)
			// HAProxy connects from 127.0.0.1, the trusted proxy.
			hap := haproxy.Start(t, haproxy.Options{Backend: "127.0.0.1:" + port})
			waitFor(t, "two health checks", func() bool { return strings.Count(logs.String(), `msg="health check"`) >= 2 })

			dial := func(src string) net.Conn {
				c := dialFrom(t, src, hap.Addr)
				if !withTLS {
					return c
				}
				tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
				t.Cleanup(func() { tc.Close() })
				return tc
			}
			if status, err := xvpSession(dial("127.0.0.3"), "tok"); err != nil {
				t.Fatalf("a session through HAProxy: %q %v", status, err)
			}
			if !strings.Contains(logs.String(), `msg="session started" client=127.0.0.3`) {
				t.Errorf("the session is not logged under the PROXY header's client 127.0.0.3:\n%s", logs)
			}

			// The per-client cap counts the header's address, not HAProxy's.
			for range 2 {
				c := dial("127.0.0.4")
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.WriteString(c, "CONNECT /console?token=tok HTTP/1.1\r\n\r\n")
				if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "HTTP/1.1 200 OK\r\n" {
					t.Fatalf("held session from 127.0.0.4: %q %v", line, err)
				}
			}
			if got := answer(t, writeTo(t, dial("127.0.0.4"), connectTok)); !strings.HasSuffix(got, "too many connections from this address: retry later\n") {
				t.Fatalf("a third connection from 127.0.0.4 through HAProxy: got %q, want the 503 too-many-from reply", got)
			}
			if status, err := xvpSession(dial("127.0.0.5"), "tok"); err != nil {
				t.Fatalf("another client through the same HAProxy: %q %v", status, err)
			}

			// Health checks: no refusal, no session.
			for _, result := range []string{"client_gone", "bad_request"} {
				if v := metricValue(t, metrics, `vncgate_proxy_sessions_total{result="`+result+`"}`); v != 0 {
					t.Errorf("sessions_total{result=%s}: got %v, want 0 (health checks are not refusals)", result, v)
				}
			}

			// The trusted proxy must send a header; a direct client's header
			// is not believed.
			if !withTLS {
				if got := answer(t, writeTo(t, dialFrom(t, "127.0.0.1", addr), "CONNECT /console?token=tok HTTP/1.1\r\n\r\n")); got != "" {
					t.Errorf("the trusted proxy without a PROXY header: got %q, want the connection closed", got)
				}
				spoof := "PROXY TCP4 192.0.2.9 127.0.0.1 5000 6081\r\nCONNECT /console?token=tok HTTP/1.1\r\n\r\n"
				if got := answer(t, writeTo(t, dialFrom(t, "127.0.0.6", addr), spoof)); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
					t.Errorf("a direct client's PROXY header: got %q, want 400", got)
				}
			}
		})
	}
}

func writeTo(t *testing.T, c net.Conn, s string) net.Conn {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRunRefusesPlaintextOffLoopback(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	files, _ := certs.TestFiles(t, "127.0.0.1")
	for _, tc := range []struct {
		name   string
		adjust func(*Config)
		err    string // "": starts
	}{
		{"plaintext on all interfaces", func(c *Config) { c.Host = "0.0.0.0" }, "xvpvncproxy_host 0.0.0.0:0: plaintext off loopback"},
		{"plaintext on all interfaces, allowed", func(c *Config) { c.Host, c.AllowPlaintext = "0.0.0.0", true }, ""},
		{"TLS on all interfaces", func(c *Config) { c.Host, c.Cert, c.Key = "0.0.0.0", files.Cert, files.Key }, ""},
		{"plaintext consoleauth off loopback", func(c *Config) { c.ConsoleAuthAddress = "192.0.2.1:6090" }, "consoleauth_address 192.0.2.1:6090: plaintext off loopback"},
		{"plaintext etcd off loopback", func(c *Config) { c.EtcdEndpoints = []string{"192.0.2.1:2379"} }, "etcd_endpoints 192.0.2.1:2379: plaintext off loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, auth.Addr)
			tc.adjust(&cfg)
			if tc.err == "" {
				startRun(t, cfg, slog.New(slog.DiscardHandler))
				return
			}
			err := run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "allow_plaintext") {
				t.Fatalf("got %v, want a refusal to start containing %q and naming allow_plaintext", err, tc.err)
			}
		})
	}
}

// waitFor polls cond until it holds, or fails after 30 s (a bound for a hang).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
