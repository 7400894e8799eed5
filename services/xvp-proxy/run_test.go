package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/livesessions"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/novaconf"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// testConfig is the default configuration on loopback, port 0, without
// the wait for the VNC server's greeting: these tests' back ends echo
// (loopback.Echo) and never speak first (greeting_test.go has it on).
func testConfig(t *testing.T, authAddr string) Config {
	t.Helper()
	cfg, _, err := loadConfig([]string{"-xvpvncproxy_host=127.0.0.1", "-xvpvncproxy_port=0", "-consoleauth_address=" + authAddr, "-drain_timeout=1s", "-shutdown_delay=0", "-etcd_endpoints=", "-admin_listen=",
		"-server_greeting_timeout=0"})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startRun runs the service until t's cleanup and returns its address.
func startRun(t *testing.T, cfg Config, log *slog.Logger) string {
	t.Helper()
	clients, _ := startRunAddrs(t, cfg, log)
	return clients
}

// startRunAddrs is startRun returning the metrics address too ("" when off).
func startRunAddrs(t *testing.T, cfg Config, log *slog.Logger) (clients, metrics string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	type ready struct{ clients, metrics net.Addr }
	addrs := make(chan ready, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log, func(c, m net.Addr) { addrs <- ready{c, m} }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: got %v, want nil after shutdown", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("run did not return after shutdown")
		}
	})
	select {
	case a := <-addrs:
		if a.metrics != nil {
			metrics = a.metrics.String()
		}
		return a.clients.String(), metrics
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening")
	}
	return "", ""
}

// openSession sends the XVP head over c and requires the 200.
func openSession(t *testing.T, c net.Conn, token string) *bufio.Reader {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "CONNECT /console?token="+token+" HTTP/1.1\r\n\r\n")
	br := bufio.NewReader(c)
	got := make([]byte, 19)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "HTTP/1.1 200 OK\r\n\r\n" {
		t.Fatalf("answer: got %q (%v), want the 200", got, err)
	}
	return br
}

func echoOver(t *testing.T, c net.Conn, r io.Reader, msg string) {
	t.Helper()
	io.WriteString(c, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q (%v), want %q", got, err, msg)
	}
}

// TestRevocationInEtcdEndsSessions wires the real pieces: run with
// etcd_endpoints on an embedded etcd; a revocation record written the way
// consoleauth writes it ends the instance's live sessions within 2 s.
func TestRevocationInEtcdEndsSessions(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	echoAddr := loopback.Echo(t)
	auth.Add("tok-a", "xvpvnc", "inst-a", echoAddr, "")
	auth.Add("tok-b", "xvpvnc", "inst-b", echoAddr, "")

	cfg := testConfig(t, auth.Addr)
	cfg.EtcdEndpoints = []string{etcdSrv.Endpoint}
	logs := &testlog.Buffer{}
	addr := startRun(t, cfg, slog.New(slog.NewTextHandler(logs, nil)))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	revoke := func(instance, reason string) {
		t.Helper()
		v, _ := json.Marshal(registry.Revocation{Reason: reason, RevokedAt: time.Now()})
		if _, err := cli.Put(ctx, registry.RevocationKey(instance), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	// The watch starts in the background: wait until it sees a revocation.
	for i := 0; !strings.Contains(logs.String(), "instance=warm-up"); i++ {
		if i == 100 {
			t.Fatal("revocation watch not running after 10s")
		}
		revoke("warm-up", "warm-up")
		time.Sleep(100 * time.Millisecond)
	}

	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := dial(), dial()
	ar, br := openSession(t, a, "tok-a"), openSession(t, b, "tok-b")
	echoOver(t, a, ar, "before")
	time.Sleep(5 * time.Millisecond) // RevokedAt after the session started, whatever the clock's grain

	start := time.Now()
	revoke("inst-a", "the instance was deleted")
	a.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, ar); err != nil {
		t.Fatalf("session of the revoked instance still open: %v", err)
	}
	t.Logf("session ended %v after the revocation was written", time.Since(start).Round(time.Millisecond))
	echoOver(t, b, br, "other instance still served")
	if !logs.WaitFor(ctx, `message="the instance was deleted" reason=revoked`) {
		t.Errorf("no log line with the revocation reason:\n%s", logs)
	}
}

func TestTLSListener(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	files, pool := certs.TestFiles(t, "127.0.0.1")
	cfg := testConfig(t, auth.Addr)
	cfg.Cert, cfg.Key, cfg.SSLMinimumVersion = files.Cert, files.Key, "tlsv1_3"
	addr := startRun(t, cfg, slog.New(slog.DiscardHandler))

	t.Run("session over TLS", func(t *testing.T) {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := openSession(t, c, "tok")
		echoOver(t, c, br, "RFB over TLS")
	})
	t.Run("TLS 1.2 refused under tlsv1_3", func(t *testing.T) {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12})
		if err == nil {
			c.Close()
			t.Fatal("TLS 1.2 handshake succeeded, want a refusal")
		}
	})
	t.Run("plaintext client gets no answer", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "CONNECT /console?token=tok HTTP/1.1\r\n\r\n")
		got, _ := io.ReadAll(c)
		if strings.Contains(string(got), "200 OK") {
			t.Fatalf("got %q, want no 200 without TLS", got)
		}
	})
}

// defaults is the configuration without any option set.
func defaults() Config {
	return Config{
		Host: "0.0.0.0", Port: 6081, VNCEnabled: true, SSLMinimumVersion: "default", ConsoleAuthAddress: "127.0.0.1:6090",
		MaxConnections: 16384, MaxConnectionsPerClient: 100, EtcdEndpoints: []string{"127.0.0.1:2379"},
		HandshakeTimeout: 10 * time.Second, ServerGreetingTimeout: 2 * time.Second, TCPKeepAlive: 30 * time.Second, DrainTimeout: 30 * time.Second,
		ShutdownDelay: 5 * time.Second, AdminListen: "127.0.0.1:6181",
		FailedTokenLimit: 10, FailedTokenWindow: time.Minute,
		RFB:  rfbproxy.Options{VerifyHostname: true},
		Log:  logging.Options{Level: slog.LevelInfo, Format: "json"},
		Live: livesessions.Settings{TTL: livesessions.DefaultTTL, Refresh: livesessions.DefaultRefresh},
	}
}

// TestOptions: every option, read from the section Nova (or vncgate) puts
// it in, with its meaning.
func TestOptions(t *testing.T) {
	novaconf.RunCases(t, []novaconf.Case[Config]{
		{Name: "defaults are Nova's", Want: func(*Config) {}},
		{Name: "[vnc] listener", File: "[vnc]\nxvpvncproxy_host = 10.0.0.1\nxvpvncproxy_port = 7081\n",
			Want: func(c *Config) { c.Host, c.Port = "10.0.0.1", 7081 }},
		{Name: "[vnc] enabled = false refuses to start", File: "[vnc]\nenabled = false\n", Err: "[vnc] enabled is false"},
		{Name: "[vnc] auth_schemes, [vncgate] vencrypt_verify_hostname", File: "[vnc]\nauth_schemes = none\n[vncgate]\nvencrypt_verify_hostname = false\n",
			Want: func(c *Config) { c.RFB = rfbproxy.Options{AuthSchemes: []string{"none"}} }},
		{Name: "[vnc] auth_schemes = vencrypt needs vencrypt_ca_certs", File: "[vnc]\nauth_schemes = vencrypt\n", Err: "vencrypt_ca_certs is required"},
		{Name: "[vnc] auth_schemes of a scheme vncgate does not speak", File: "[vnc]\nauth_schemes = vnc\n", Err: `"vnc" is not a scheme`},
		{Name: "[DEFAULT] cert holding its key, source_is_ipv6", File: "[DEFAULT]\ncert = /etc/nova/self.pem\nsource_is_ipv6 = true\n",
			Want: func(c *Config) { c.Cert, c.SourceIsIPv6 = "/etc/nova/self.pem", true }},
		{Name: "[DEFAULT] cert and key, [console] TLS version and ciphers", File: "[DEFAULT]\ncert = c.pem\nkey = k.pem\n[console]\nssl_minimum_version = tlsv1_2\nssl_ciphers = kEECDH+AES\n",
			Want: func(c *Config) {
				c.Cert, c.Key, c.SSLMinimumVersion, c.SSLCiphers = "c.pem", "k.pem", "tlsv1_2", "kEECDH+AES"
			}},
		{Name: "[console] ssl_minimum_version = tlsv1_1 refused", File: "[DEFAULT]\ncert = c.pem\n[console]\nssl_minimum_version = tlsv1_1\n",
			Err: "ssl_minimum_version tlsv1_1: TLS 1.1 is refused"},
		{Name: "[vncgate] trusted_proxies, allow_plaintext, connection caps", File: "[vncgate]\ntrusted_proxies = 10.0.0.0/8, 192.0.2.1\nallow_plaintext = true\nmax_connections = 1000\nmax_connections_per_client = 0\n",
			Want: func(c *Config) {
				c.TrustedProxies, c.AllowPlaintext = []string{"10.0.0.0/8", "192.0.2.1"}, true
				c.MaxConnections, c.MaxConnectionsPerClient = 1000, 0
			}},
		{Name: "[vncgate] etcd_endpoints empty turns the revocation watch off", File: "[vncgate]\netcd_endpoints =\n",
			Want: func(c *Config) { c.EtcdEndpoints = nil }},
		{Name: "bad trusted proxy", Args: []string{"-trusted_proxies=haproxy.example"}, Err: `trusted_proxies entry "haproxy.example"`},
		{Name: "negative connection cap", Args: []string{"-max_connections=-1"}, Err: "max_connections"},
		{Name: "[vncgate] idle_timeout = 300 is five minutes (Nova's unit)", File: "[vncgate]\nidle_timeout = 300\n",
			Want: func(c *Config) { c.IdleTimeout = 5 * time.Minute }},
		{Name: "[vncgate] durations", File: "[vncgate]\nhandshake_timeout = 4\nmax_session_length = 2h\ndrain_timeout = 0\nfailed_token_window = 30\n",
			Want: func(c *Config) {
				c.HandshakeTimeout, c.MaxSessionLength, c.DrainTimeout, c.FailedTokenWindow = 4*time.Second, 2*time.Hour, 0, 30*time.Second
			}},
		{Name: "server_greeting_timeout as long as handshake_timeout", Args: []string{"-handshake_timeout=3", "-server_greeting_timeout=3"},
			Err: "server_greeting_timeout 3s: want less than handshake_timeout (3s)"},
		{Name: "[vncgate] server_greeting_timeout = 0 turns the wait off", File: "[vncgate]\nserver_greeting_timeout = 0\n",
			Want: func(c *Config) { c.ServerGreetingTimeout = 0 }},
		{Name: "[vncgate] tcp_keepalive = 0 turns it off", File: "[vncgate]\ntcp_keepalive = 0\n",
			Want: func(c *Config) { c.TCPKeepAlive = -1 }},
		{Name: "[vncgate] the rest", File: "[vncgate]\nconsoleauth_address = ca:6090\ngrpc_cert = g.pem\ngrpc_key = gk.pem\ngrpc_ca = ca.pem\n" +
			"etcd_endpoints = a:2379,b:2379\netcd_cert = e.pem\nadmin_listen = 127.0.0.1:9181\nfailed_token_limit = 3\nmax_sessions_per_instance = 2\nlog_level = debug\n",
			Want: func(c *Config) {
				c.ConsoleAuthAddress, c.GRPC = "ca:6090", tlsconfig.Files{Cert: "g.pem", Key: "gk.pem", CA: "ca.pem"}
				c.EtcdEndpoints, c.Etcd, c.AdminListen = []string{"a:2379", "b:2379"}, tlsconfig.Files{Cert: "e.pem"}, "127.0.0.1:9181"
				c.FailedTokenLimit, c.MaxSessionsPerInstance, c.Log.Level = 3, 2, slog.LevelDebug
			}},
		{Name: "environment and flags over files", File: "[vnc]\nxvpvncproxy_port = 7000\n[vncgate]\nidle_timeout = 60\n",
			Env: map[string]string{"VNCGATE_XVPVNCPROXY_PORT": "7081", "VNCGATE_IDLE_TIMEOUT": "5m"}, Args: []string{"--idle_timeout=120"},
			Want: func(c *Config) { c.Port, c.IdleTimeout = 7081, 2*time.Minute }},
		{Name: "misspelt option", File: "[vnc]\nxvpvncproxy_prot = 6081\n",
			Err: "site.conf:2: unknown option [vnc] xvpvncproxy_prot (neither Nova's nor vncgate's); did you mean xvpvncproxy_port?"},
		{Name: "key without cert", Args: []string{"-key=x.pem"}, Err: "key is set but cert is not"},
		{Name: "unknown TLS version", Args: []string{"-ssl_minimum_version=tlsv1_0"}, Err: "ssl_minimum_version"},
		{Name: "zero handshake timeout", Args: []string{"-handshake_timeout=0"}, Err: "handshake_timeout"},
		{Name: "negative duration", Args: []string{"-tcp_keepalive=-1"}, Err: "tcp_keepalive"},
		{Name: "bad port", Args: []string{"-xvpvncproxy_port=70000"}, Err: "xvpvncproxy_port"},
		{Name: "limit without window", Args: []string{"-failed_token_window=0"}, Err: "failed_token_window"},
		{Name: "admin address without port", Args: []string{"-admin_listen=127.0.0.1"}, Err: "admin_listen"},
		{Name: "metrics_listen is gone", Args: []string{"-metrics_listen=127.0.0.1:9181"}, Err: "flag provided but not defined"},
	}, defaults, func(args []string) (Config, error) {
		c, _, err := loadConfig(args)
		return c, err
	})
}

// siteConf is what an operator adds to Nova's sample nova.conf for
// xvp-proxy: TLS from one PEM holding certificate and key, as Nova allows.
const siteConf = `[DEFAULT]
cert = %s

[vnc]
xvpvncproxy_host = 127.0.0.1
xvpvncproxy_port = 0

[console]
ssl_minimum_version = tlsv1_3

[vncgate]
consoleauth_address = %s
idle_timeout = 300
drain_timeout = 1
shutdown_delay = 0
`

// TestNovaConf starts xvp-proxy from Debian's nova.conf (Nova's own
// generated sample) and a site file and relays a session over TLS.
func TestNovaConf(t *testing.T) {
	sample := novaconf.Sample(t)
	combined, pool := certs.TestCombined(t, "127.0.0.1")
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	site := filepath.Join(t.TempDir(), "site.conf")
	if err := os.WriteFile(site, []byte(fmt.Sprintf(siteConf, combined, auth.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, notes, err := loadConfig([]string{"--config-file", sample, "--config-file", site})
	if err != nil {
		t.Fatal(err)
	}
	want := defaults()
	want.Cert, want.Host, want.Port, want.SSLMinimumVersion = combined, "127.0.0.1", 0, "tlsv1_3"
	want.ConsoleAuthAddress, want.IdleTimeout, want.DrainTimeout, want.ShutdownDelay = auth.Addr, 5*time.Minute, time.Second, 0
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config:\ngot  %+v\nwant %+v", cfg, want)
	}
	if len(notes.Files) != 2 || len(notes.Unsupported) != 0 {
		t.Errorf("notes: got %+v", notes)
	}

	// Nova's sample alone listens on 0.0.0.0 without a cert: plaintext off
	// loopback, refused unless allow_plaintext says so.
	alone, _, err := loadConfig([]string{"--config-file", sample})
	if err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), alone, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "xvpvncproxy_host 0.0.0.0:6081: plaintext off loopback") {
		t.Fatalf("Nova's sample nova.conf alone: got %v, want a refusal of plaintext on 0.0.0.0", err)
	}

	cfg.AdminListen = "127.0.0.1:0"
	cfg.ServerGreetingTimeout = 0 // the echo back end never speaks first
	addr := startRun(t, cfg, slog.New(slog.DiscardHandler))
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("TLS version: got %x, want 1.3", v)
	}
	echoOver(t, c, openSession(t, c, "tok"), "RFB over TLS from nova.conf")
}

// TestMetricsListener runs the service with admin_listen: /metrics counts
// a relayed session, /healthz says ok, then 503 while the session drains,
// and the listener closes when run returns.
func TestMetricsListener(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	cfg := testConfig(t, auth.Addr)
	cfg.AdminListen = "127.0.0.1:0"
	cfg.DrainTimeout = 10 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan [2]net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, slog.New(slog.DiscardHandler), func(c, m net.Addr) { addrs <- [2]net.Addr{c, m} })
	}()
	var clients, metrics string
	select {
	case a := <-addrs:
		clients, metrics = a[0].String(), a[1].String()
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening")
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	c, err := net.Dial("tcp", clients)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	echoOver(t, c, openSession(t, c, "tok"), "hello")

	code, text := get("/metrics")
	for _, want := range []string{`vncgate_proxy_sessions_total{result="relayed"} 1`, "vncgate_proxy_sessions_active 1", "go_goroutines "} {
		if code != http.StatusOK || !strings.Contains(text, want) {
			t.Errorf("GET /metrics: got %d, want 200 with %q", code, want)
		}
	}
	if code, body := get("/healthz"); code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) || !strings.Contains(body, `"sessions":1`) {
		t.Errorf("GET /healthz: got %d %s, want 200 ok with 1 session", code, body)
	}

	cancel() // drain: the session goes on, readiness goes red
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := get("/healthz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, `"status":"draining"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /healthz while draining: got %d %s, want 503 draining", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: got %v, want nil after shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after the last session ended")
	}
	if _, err := net.DialTimeout("tcp", metrics, time.Second); err == nil {
		t.Error("metrics listener still open after run returned")
	}
}
