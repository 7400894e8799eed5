package main

// The public port under abuse: file descriptors run out, connections pile
// up, plaintext is configured off loopback.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/reexec"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// childEnv makes the test binary run novnc-proxy's main (package reexec).
const childEnv = "VNCGATE_TEST_NOVNC_PROXY_MAIN"

func TestMain(m *testing.M) {
	reexec.Main(childEnv, main)
	os.Exit(m.Run())
}

// dialerFrom connects from a loopback source address (all of 127/8 is
// loopback), so one test can be many clients.
func dialerFrom(src string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
}

// httpFrom is an HTTP client whose connections come from src.
func httpFrom(src string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: dialerFrom(src).DialContext, DisableKeepAlives: true}, Timeout: 30 * time.Second}
}

// consoleFrom opens a console from src and runs the RFB handshake through
// it; it returns the first error, for use in a goroutine.
func consoleFrom(src, wsURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: httpFrom(src)})
	if err != nil {
		return err
	}
	defer c.CloseNow()
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	_, err = rfb.Handshake(nc)
	return err
}

// holdIdle opens n connections from src that never send a byte, closed
// when the test ends (or by the returned function).
func holdIdle(t *testing.T, addr, src string, n int) (closeAll func()) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	closeAll = func() {
		for _, c := range conns {
			c.Close()
		}
		conns = conns[:0]
	}
	t.Cleanup(closeAll)
	d := dialerFrom(src)
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	return closeAll
}

// TestListenerSurvivesFDExhaustion runs the real novnc-proxy in a child
// process with 40 open files and the combined TLS/plain port (a cert
// without ssl_only): idle connections exhaust its descriptors, accept
// fails (logged once), and once they are closed a user waiting in the
// backlog gets a console.
func TestListenerSurvivesFDExhaustion(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	files, _ := certs.TestFiles(t, "127.0.0.1")
	child := reexec.Start(t, childEnv, 40,
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=0", "--cert="+files.Cert, "--key="+files.Key,
		"--consoleauth_address="+auth.Addr, "--etcd_endpoints=", "--novnc_core_dir="+fakeNoVNC(t),
		"--handshake_timeout=60", "--drain_timeout=1", "--shutdown_delay=0", "--admin_listen=127.0.0.1:0")
	addr, _ := child.WaitLog(t, "novnc-proxy listening", 30*time.Second)["addr"].(string)

	closeIdle := holdIdle(t, addr, "127.0.0.2", 60)
	child.WaitLog(t, "accept failing: retrying with backoff until it works", 30*time.Second)

	// A user arrives while the port cannot accept: it waits in the backlog.
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	served := make(chan error, 1)
	go func() { served <- consoleFrom("127.0.0.3", "ws://"+addr+"/?token="+tok) }()
	closeIdle()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("the user after the descriptors were freed: %v, want a console", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the user was not served 60s after the descriptors were freed")
	}
	recovered := child.WaitLog(t, "accept working again", 30*time.Second)
	if n := child.Count("accept failing: retrying with backoff until it works"); n != 1 {
		t.Errorf("got %d episode-start lines, want 1 (a line per episode, not per error)", n)
	}
	t.Logf("accept recovered after %v failed accepts in %v", recovered["failed_accepts"], recovered["after"])
	if err := child.Stop(t, 30*time.Second); err != nil {
		t.Errorf("novnc-proxy exit: %v", err)
	}
}

func TestConnectionCaps(t *testing.T) {
	t.Run("2,000 idle connections from one address do not stop another", func(t *testing.T) {
		auth := fakeconsoleauth.Start(t)
		_, host, port := startDemoVNC(t)
		cfg := testConfig(t, auth)
		cfg.HandshakeTimeout = 60 * time.Second // idle connections stay as long as the test
		s := startRun(t, cfg)

		holdIdle(t, s.addr, "127.0.0.2", 100)
		resp, err := httpFrom("127.0.0.2").Get("http://" + s.addr + "/healthz")
		if err != nil {
			t.Fatalf("the 101st connection: %v, want a 503", err)
		}
		if msg := jsonError(t, resp, http.StatusServiceUnavailable); msg != "too many connections from this address" {
			t.Errorf("the 101st connection: got %q, want too many connections from this address", msg)
		}
		holdIdle(t, s.addr, "127.0.0.2", 1900)

		tok := auth.Mint(instance, "novnc", host, port, time.Minute)
		if err := consoleFrom("127.0.0.3", "ws://"+s.addr+"/?token="+tok); err != nil {
			t.Fatalf("a user on another address beside 2,000 idle connections: %v", err)
		}
		resp, err = http.Get("http://" + s.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if v := metricValue(string(b), `vncgate_proxy_connections_refused_total{reason="max_connections_per_client"}`); v < 1900 {
			t.Errorf("connections_refused_total{reason=max_connections_per_client}: got %v, want at least 1900", v)
		}
	})

	t.Run("max_connections", func(t *testing.T) {
		auth := fakeconsoleauth.Start(t)
		_, host, port := startDemoVNC(t)
		cfg := testConfig(t, auth)
		cfg.HandshakeTimeout = 60 * time.Second
		cfg.MaxConnections, cfg.MaxConnectionsPerClient = 50, 0
		s := startRun(t, cfg)
		closeIdle := holdIdle(t, s.addr, "127.0.0.2", 50)
		tok := auth.Mint(instance, "novnc", host, port, time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, "ws://"+s.addr+"/?token="+tok, &websocket.DialOptions{HTTPClient: httpFrom("127.0.0.3")})
		if err == nil {
			t.Fatal("a console past max_connections: got one, want 503")
		}
		if msg := jsonError(t, resp, http.StatusServiceUnavailable); msg != "too many connections" {
			t.Errorf("past max_connections: got %q, want too many connections", msg)
		}
		closeIdle()
		// The proxy sees the closes a moment later: a 503 until then.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := consoleFrom("127.0.0.3", "ws://"+s.addr+"/?token="+tok)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "503") || time.Now().After(deadline) {
				t.Fatalf("once the idle connections closed: %v, want a console", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// jsonError checks an HTTP refusal's status and returns its JSON error.
func jsonError(t *testing.T, resp *http.Response, status int) string {
	t.Helper()
	if resp == nil {
		t.Fatalf("got no HTTP response, want %d", status)
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != status || body.Code != status {
		t.Fatalf("got %d %+v (%v), want %d with a JSON error", resp.StatusCode, body, err, status)
	}
	return body.Error
}

// metricValue is the value of the sample line starting with series in a
// Prometheus text exposition, -1 when absent.
func metricValue(text, series string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			if err := json.Unmarshal([]byte(v), &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func TestRunRefusesPlaintextOffLoopback(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	files, _ := certs.TestFiles(t, "127.0.0.1")
	for _, tc := range []struct {
		name   string
		adjust func(*Config)
		err    string // "" : starts
	}{
		{"plain HTTP on all interfaces", func(c *Config) { c.Host = "0.0.0.0" }, "novncproxy_host 0.0.0.0:0: plaintext off loopback"},
		{"plain HTTP on all interfaces, allowed", func(c *Config) { c.Host, c.AllowPlaintext = "0.0.0.0", true }, ""},
		{"TLS on all interfaces", func(c *Config) { c.Host, c.Cert, c.Key, c.SSLOnly = "0.0.0.0", files.Cert, files.Key, true }, ""},
		{"plaintext consoleauth off loopback", func(c *Config) { c.ConsoleAuthAddress = "192.0.2.1:6090" }, "consoleauth_address 192.0.2.1:6090: plaintext off loopback"},
		{"plaintext etcd off loopback", func(c *Config) { c.EtcdEndpoints = []string{"http://192.0.2.1:2379"} }, "etcd_endpoints 192.0.2.1:2379: plaintext off loopback"},
		{"plaintext etcd on loopback (the default)", func(c *Config) { c.EtcdEndpoints = []string{"127.0.0.1:2379"} }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, auth)
			tc.adjust(&cfg)
			if tc.err == "" {
				startRun(t, cfg).stop(t)
				return
			}
			err := run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "allow_plaintext") {
				t.Fatalf("got %v, want a refusal to start containing %q and naming allow_plaintext", err, tc.err)
			}
		})
	}
}

func TestRunWarnsOfWhatIsOff(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	files, _ := certs.TestFiles(t, "127.0.0.1")
	cfg := testConfig(t, auth)
	cfg.Cert, cfg.Key = files.Cert, files.Key // without ssl_only
	logs := &testlog.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	up := make(chan net.Addr, 1)
	go func() {
		done <- run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)), func(a net.Addr) { up <- a })
	}()
	select {
	case <-up:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start")
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v", err)
	}
	for _, want := range []string{
		`level=WARN msg="cert is set but ssl_only is not: plain HTTP is served on the same port, so console tokens may travel unencrypted`,
		`level=WARN msg="etcd_endpoints is empty: revocations will not end live sessions"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no warning %q in:\n%s", want, logs)
		}
	}
}
