package main

import (
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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/pkg/livesessions"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/novaconf"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

const instance = "0b7d2f40-1c7e-4b55-9a3e-5f1e2d3c4b5a"

// fakeNoVNC is a directory shaped like the @novnc/novnc package.
func fakeNoVNC(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "core"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "core", "rfb.js"), []byte("export default class RFB {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// testConfig is a loopback configuration; consoleauth is the stand-in.
func testConfig(t *testing.T, auth *fakeconsoleauth.Server) Config {
	t.Helper()
	cfg, _, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host, cfg.Port = "127.0.0.1", 0
	cfg.NoVNCDir = fakeNoVNC(t)
	cfg.ConsoleAuthAddress = auth.Addr
	cfg.DrainTimeout = 2 * time.Second
	cfg.ShutdownDelay = 0   // the drain tests set their own
	cfg.EtcdEndpoints = nil // tests that watch revocations start an etcd
	cfg.AdminListen = "127.0.0.1:0"
	return cfg
}

// started is a run in progress.
type started struct {
	addr   string
	admin  string // the admin listener's address
	cancel context.CancelFunc
	done   chan error
}

// startRun runs the proxy until the test ends (or stop is called).
func startRun(t *testing.T, cfg Config) *started {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan net.Addr, 1)
	s := &started{cancel: cancel, done: make(chan error, 1)}
	adminAddr := func(a net.Addr) {
		if a != nil {
			s.admin = a.String() // before the public port opens
		}
	}
	go func() { s.done <- runAdmin(ctx, cfg, log, func(a net.Addr) { addrs <- a }, adminAddr) }()
	select {
	case a := <-addrs:
		s.addr = a.String()
	case err := <-s.done:
		cancel()
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	return s
}

// stop cancels the run and returns its error.
func (s *started) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
		return nil
	}
}

// startDemoVNC serves the demo RFB server on loopback.
func startDemoVNC(t *testing.T) (*rfb.Server, string, int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := rfb.NewServer(rfb.Options{Width: 320, Height: 200})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s, "127.0.0.1", int32(l.Addr().(*net.TCPAddr).Port)
}

// openConsole dials the proxy and runs the RFB handshake; it returns the
// WebSocket (for close codes) and its byte stream.
func openConsole(t *testing.T, dialURL string, opts *websocket.DialOptions) (*websocket.Conn, net.Conn, rfb.ServerInit) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if opts == nil {
		opts = &websocket.DialOptions{}
	}
	if opts.HTTPHeader == nil {
		opts.HTTPHeader = http.Header{}
	}
	c, _, err := websocket.Dial(ctx, dialURL, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", dialURL, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	si, err := rfb.Handshake(nc)
	if err != nil {
		t.Fatalf("rfb handshake through the proxy: %v", err)
	}
	return c, nc, si
}

func TestRunServesPageAndConsoleAndEndsRevokedSessions(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)

	auth := fakeconsoleauth.Start(t)
	vnc, host, port := startDemoVNC(t)
	cfg := testConfig(t, auth)
	cfg.EtcdEndpoints = []string{etcdSrv.Endpoint}
	s := startRun(t, cfg)

	resp, err := http.Get("http://" + s.addr + "/vnc_lite.html?path=%3Ftoken%3Dx")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "vncgate/app.js") {
		t.Fatalf("console page: got %d, want our page", resp.StatusCode)
	}

	opts := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://127.0.0.1:" + strconv.Itoa(6080)}}}
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	c, nc, si := openConsole(t, "ws://"+s.addr+"/websockify?token="+tok, opts)
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	up, err := rfb.ReadUpdate(nc, si)
	if err != nil || len(up.Rects) == 0 || up.Rects[0].DistinctColours() < 2 {
		t.Fatalf("framebuffer update: %v", err)
	}
	if err := rfb.SendKey(nc, 0xff0d, true); err != nil { // Return
		t.Fatal(err)
	}
	kctx, kcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer kcancel()
	if _, err := vnc.WaitKey(kctx, 0xff0d); err != nil {
		t.Fatalf("key did not reach the VNC server: %v", err)
	}

	// consoleauth revokes the instance's tokens: the proxy sees it in etcd.
	// The watch may start a moment after the port opened, so publish until
	// the session ends.
	start := time.Now()
	published := make(chan struct{})
	defer close(published)
	go func() {
		for {
			rec, _ := json.Marshal(registry.Revocation{Reason: "the instance was deleted", RevokedAt: time.Now()})
			cli.Put(context.Background(), registry.RevocationKey(instance), string(rec))
			select {
			case <-published:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	ce := wsclose.Read(t, c)
	if ce.Code != websocket.StatusCode(closecode.Revoked) || ce.Reason != "the instance was deleted" {
		t.Fatalf("got close %d %q, want %d with the revocation's reason", ce.Code, ce.Reason, closecode.Revoked)
	}
	t.Logf("the revocation ended the session after %s", time.Since(start))

	// The metrics, on the admin listener, counted the session and its end.
	var text string
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(text, `vncgate_proxy_session_ended_total{reason="revoked"} 1`) {
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics: got\n%s\nwant the revoked session counted", text)
		}
		time.Sleep(20 * time.Millisecond)
		resp, err := http.Get("http://" + s.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text = string(b)
	}
	for _, want := range []string{`vncgate_proxy_sessions_total{result="relayed"} 1`, "vncgate_proxy_sessions_active 0", "go_goroutines "} {
		if !strings.Contains(text, want) {
			t.Errorf("GET /metrics: missing %q", want)
		}
	}
}

func TestRunRelaysARealQEMUVNCServer(t *testing.T) {
	port := qemu.StartVNC(t)
	auth := fakeconsoleauth.Start(t)
	s := startRun(t, testConfig(t, auth))
	tok := auth.Mint(instance, "novnc", "127.0.0.1", int32(port), time.Minute)
	_, nc, si := openConsole(t, "ws://"+s.addr+"/?token="+tok, &websocket.DialOptions{Subprotocols: []string{"binary"}})
	if si.Width == 0 || si.Height == 0 || !strings.Contains(si.Name, "QEMU") {
		t.Fatalf("got ServerInit %+v, want QEMU's", si)
	}
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	up, err := rfb.ReadUpdate(nc, si)
	if err != nil {
		t.Fatalf("framebuffer update from QEMU: %v", err)
	}
	pixels := 0
	for _, r := range up.Rects {
		pixels += int(r.Width) * int(r.Height)
	}
	if pixels == 0 {
		t.Fatalf("got an update of %d rects and no pixels, want QEMU's screen", len(up.Rects))
	}
	t.Logf("QEMU %dx%d %q: first update %d rects, %d pixels", si.Width, si.Height, si.Name, len(up.Rects), pixels)
}

func TestRunTLS(t *testing.T) {
	files, pool := certs.TestFiles(t, "127.0.0.1")
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	for _, tc := range []struct {
		name       string
		sslOnly    bool
		minVersion string
		plainOK    bool
		tls12OK    bool
	}{
		{"TLS and plain on one port", false, "default", true, true},
		{"ssl_only", true, "default", false, true},
		{"minimum TLS 1.3", true, "tlsv1_3", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, auth)
			cfg.Cert, cfg.Key, cfg.SSLOnly, cfg.SSLMinimumVersion = files.Cert, files.Key, tc.sslOnly, tc.minVersion
			cfg.BaseURL = "https://127.0.0.1/vnc_lite.html"
			s := startRun(t, cfg)

			// A wss console from an https page.
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			tok := auth.Mint(instance, "novnc", host, port, time.Minute)
			openConsole(t, "wss://"+s.addr+"/?token="+tok, &websocket.DialOptions{
				HTTPClient: client,
				HTTPHeader: http.Header{"Origin": {"https://127.0.0.1"}},
			})

			resp, err := http.Get("http://" + s.addr + "/healthz")
			plainOK := err == nil && resp.StatusCode == http.StatusOK
			if resp != nil {
				resp.Body.Close()
			}
			if plainOK != tc.plainOK {
				t.Errorf("plain HTTP: got ok=%v (%v), want ok=%v", plainOK, err, tc.plainOK)
			}

			tls11 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}}
			if resp, err := tls11.Get("https://" + s.addr + "/healthz"); err == nil {
				resp.Body.Close()
				t.Errorf("TLS 1.1 client: got %d, want a failed handshake", resp.StatusCode)
			}

			tls12 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}}}
			resp, err = tls12.Get("https://" + s.addr + "/healthz")
			if resp != nil {
				resp.Body.Close()
			}
			if (err == nil) != tc.tls12OK {
				t.Errorf("TLS 1.2 client: got %v, want ok=%v", err, tc.tls12OK)
			}
		})
	}
}

func TestRunRefusesToStartWithoutTheNoVNCLibrary(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	cfg := testConfig(t, auth)
	cfg.NoVNCDir = t.TempDir()
	err := run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "npm ci") {
		t.Fatalf("got %v, want a startup error telling how to install noVNC", err)
	}
}

// defaults is the configuration without any option set.
func defaults() Config {
	return Config{
		Host: "0.0.0.0", Port: 6080, BaseURL: "http://127.0.0.1:6080/vnc_lite.html", VNCEnabled: true,
		MaxConnections: 16384, MaxConnectionsPerClient: 100, EtcdEndpoints: []string{"127.0.0.1:2379"},
		SSLMinimumVersion: "default", ConsoleAuthAddress: "127.0.0.1:6090",
		HandshakeTimeout: 10 * time.Second, DialTimeout: 5 * time.Second, ServerGreetingTimeout: 2 * time.Second, PingInterval: 20 * time.Second,
		RevocationGrace: 3 * time.Second, FailedTokenLimit: 10, FailedTokenWindow: time.Minute, DrainTimeout: 30 * time.Second,
		ShutdownDelay: 5 * time.Second, RFB: rfbproxy.Options{VerifyHostname: true}, AdminListen: "127.0.0.1:6180",
		Log:  logging.Options{Level: slog.LevelInfo, Format: "json"},
		Live: livesessions.Settings{TTL: livesessions.DefaultTTL, Refresh: livesessions.DefaultRefresh},
	}
}

// TestOptions: every option, read from the section Nova (or vncgate) puts
// it in, with its meaning.
func TestOptions(t *testing.T) {
	novaconf.RunCases(t, []novaconf.Case[Config]{
		{Name: "defaults", Want: func(*Config) {}},
		{Name: "[vnc] listener and base URL", File: "[vnc]\nnovncproxy_host = ::\nnovncproxy_port = 7080\nnovncproxy_base_url = https://c.example/vnc_lite.html\n",
			Want: func(c *Config) { c.Host, c.Port, c.BaseURL = "::", 7080, "https://c.example/vnc_lite.html" }},
		{Name: "[vnc] enabled = false refuses to start", File: "[vnc]\nenabled = false\n", Err: "[vnc] enabled is false"},
		{Name: "[vnc] auth_schemes, [vncgate] vencrypt_verify_hostname", File: "[vnc]\nauth_schemes = none\n[vncgate]\nvencrypt_verify_hostname = false\n",
			Want: func(c *Config) { c.RFB = rfbproxy.Options{AuthSchemes: []string{"none"}} }},
		{Name: "[vnc] auth_schemes = vencrypt needs vencrypt_ca_certs", File: "[vnc]\nauth_schemes = vencrypt\n", Err: "vencrypt_ca_certs is required"},
		{Name: "[vnc] auth_schemes of a scheme vncgate does not speak", File: "[vnc]\nauth_schemes = vnc\n", Err: `"vnc" is not a scheme`},
		{Name: "[console] allowed_origins, ssl_minimum_version, ssl_ciphers", File: "[console]\nallowed_origins = a.example,\n  b.example\nssl_minimum_version = tlsv1_3\nssl_ciphers = ECDHE-RSA-AES128-GCM-SHA256\n",
			Want: func(c *Config) {
				c.AllowedOrigins, c.SSLMinimumVersion, c.SSLCiphers = []string{"a.example", "b.example"}, "tlsv1_3", "ECDHE-RSA-AES128-GCM-SHA256"
			}},
		{Name: "[DEFAULT] TLS, a cert holding its key", File: "[DEFAULT]\ncert = /etc/nova/self.pem\nssl_only = true\n",
			Want: func(c *Config) { c.Cert, c.SSLOnly = "/etc/nova/self.pem", true }},
		{Name: "[DEFAULT] cert and key, source_is_ipv6, web", File: "[DEFAULT]\ncert = c.pem\nkey = k.pem\nsource_is_ipv6 = yes\nweb = /usr/share/novnc\n",
			Want: func(c *Config) { c.Cert, c.Key, c.SourceIsIPv6, c.Web = "c.pem", "k.pem", true, "/usr/share/novnc" }},
		{Name: "[consoleauth] enforce_session_timeout", File: "[consoleauth]\nenforce_session_timeout = on\n",
			Want: func(c *Config) { c.EnforceSessionTimeout = true }},
		{Name: "[vncgate] durations in whole seconds (idle_timeout = 300)", File: "[vncgate]\nidle_timeout = 300\nmax_session_length = 1h\nping_interval = 500ms\n" +
			"handshake_timeout = 7\ndial_timeout = 3\nrevocation_grace = 0\nfailed_token_window = 120\ndrain_timeout = 5\nshutdown_delay = 2\n",
			Want: func(c *Config) {
				c.IdleTimeout, c.MaxSessionLength, c.PingInterval = 300*time.Second, time.Hour, 500*time.Millisecond
				c.HandshakeTimeout, c.DialTimeout, c.RevocationGrace = 7*time.Second, 3*time.Second, 0
				c.FailedTokenWindow, c.DrainTimeout, c.ShutdownDelay = 2*time.Minute, 5*time.Second, 2*time.Second
			}},
		{Name: "server_greeting_timeout as long as handshake_timeout", Args: []string{"-handshake_timeout=3", "-server_greeting_timeout=3"},
			Err: "server_greeting_timeout 3s: want less than handshake_timeout (3s)"},
		{Name: "[vncgate] server_greeting_timeout = 0 turns the wait off", File: "[vncgate]\nserver_greeting_timeout = 0\n",
			Want: func(c *Config) { c.ServerGreetingTimeout = 0 }},
		{Name: "[vncgate] the rest", File: "[vncgate]\ntrusted_proxies = 10.0.0.0/8, 192.0.2.1\nnovnc_core_dir = /opt/novnc\nconsoleauth_address = ca:6090\n" +
			"grpc_cert = g.pem\ngrpc_ca = ca.pem\netcd_endpoints = e:2379\netcd_ca = eca.pem\nmax_sessions_per_instance = 2\nfailed_token_limit = 0\nlog_format = text\n",
			Want: func(c *Config) {
				c.TrustedProxies, c.NoVNCDir, c.ConsoleAuthAddress = []string{"10.0.0.0/8", "192.0.2.1"}, "/opt/novnc", "ca:6090"
				c.GRPC, c.EtcdEndpoints, c.Etcd = tlsconfig.Files{Cert: "g.pem", CA: "ca.pem"}, []string{"e:2379"}, tlsconfig.Files{CA: "eca.pem"}
				c.MaxSessionsPerInstance, c.FailedTokenLimit, c.Log.Format = 2, 0, "text"
			}},
		{Name: "[vncgate] allow_plaintext, connection caps", File: "[vncgate]\nallow_plaintext = true\nmax_connections = 500\nmax_connections_per_client = 0\n",
			Want: func(c *Config) { c.AllowPlaintext, c.MaxConnections, c.MaxConnectionsPerClient = true, 500, 0 }},
		{Name: "[vncgate] etcd_endpoints empty turns the revocation watch off", File: "[vncgate]\netcd_endpoints =\n",
			Want: func(c *Config) { c.EtcdEndpoints = nil }},
		{Name: "negative connection cap", Args: []string{"--max_connections_per_client=-1"}, Err: "max_connections_per_client must not be negative"},
		{Name: "TLS 1.1 refused", File: "[console]\nssl_minimum_version = tlsv1_1\n", Err: "ssl_minimum_version tlsv1_1: TLS 1.1 is refused"},
		{Name: "environment and flags over files", File: "[vnc]\nnovncproxy_port = 7000\n[vncgate]\nidle_timeout = 60\n",
			Env: map[string]string{"VNCGATE_NOVNCPROXY_PORT": "7080", "VNCGATE_LOG_LEVEL": "debug"}, Args: []string{"--idle_timeout=1m30s"},
			Want: func(c *Config) { c.Port, c.Log.Level, c.IdleTimeout = 7080, slog.LevelDebug, 90*time.Second }},
		{Name: "misspelt option", File: "[vnc]\n\nnovncproxy_prot = 6080\n",
			Err: "site.conf:3: unknown option [vnc] novncproxy_prot (neither Nova's nor vncgate's); did you mean novncproxy_port?"},
		{Name: "idle_timeout in [vnc]", File: "[vnc]\nidle_timeout = 300\n", Err: "site.conf:2: [vnc] idle_timeout: idle_timeout is an option of [vncgate], not [vnc]"},
		{Name: "ssl_only without cert", Args: []string{"--ssl_only"}, Err: "ssl_only needs cert"},
		{Name: "key without cert", Args: []string{"--key=k.pem"}, Err: "key is set but cert is not"},
		{Name: "bad TLS version", Args: []string{"--ssl_minimum_version=sslv3"}, Err: "ssl_minimum_version"},
		{Name: "ciphers Go lacks", Args: []string{"--ssl_ciphers=DHE-RSA-AES128-SHA"}, Err: "selects no cipher suite"},
		{Name: "negative timeout", Args: []string{"--idle_timeout=-1"}, Err: "idle_timeout"},
		{Name: "fractional seconds", File: "[vncgate]\nping_interval = 0.5\n", Err: `site.conf:2: [vncgate] ping_interval = "0.5": want whole seconds`},
		{Name: "bad log level", Args: []string{"--log_level=loud"}, Err: "log_level"},
	}, defaults, func(args []string) (Config, error) {
		c, _, err := loadConfig(args)
		return c, err
	})
}

// siteConf is what an operator adds to Nova's sample nova.conf for
// novnc-proxy: TLS only, with one PEM holding the certificate and its key
// as Nova allows, and a public base URL on another name.
const siteConf = `[DEFAULT]
cert = %s
ssl_only = true

[vnc]
novncproxy_host = 127.0.0.1
novncproxy_port = 0
novncproxy_base_url = "https://console.example.com/vnc_lite.html"

[console]
allowed_origins = portal.example.com
ssl_minimum_version = tlsv1_2

[vncgate]
consoleauth_address = %s
novnc_core_dir = %s
drain_timeout = 2
shutdown_delay = 0
`

// TestNovaConf starts novnc-proxy from Debian's nova.conf (Nova's own
// generated sample) and a site file, and opens a console through it: TLS
// from the combined PEM, Origins from the base URL and allowed_origins.
func TestNovaConf(t *testing.T) {
	sample := novaconf.Sample(t)
	combined, pool := certs.TestCombined(t, "127.0.0.1")
	auth := fakeconsoleauth.Start(t)
	core := fakeNoVNC(t)
	site := filepath.Join(t.TempDir(), "site.conf")
	if err := os.WriteFile(site, []byte(fmt.Sprintf(siteConf, combined, auth.Addr, core)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, notes, err := loadConfig([]string{"--config-file", sample, "--config-file", site})
	if err != nil {
		t.Fatal(err)
	}
	want := defaults()
	want.Cert, want.SSLOnly, want.Host, want.Port, want.BaseURL = combined, true, "127.0.0.1", 0, "https://console.example.com/vnc_lite.html"
	want.AllowedOrigins, want.SSLMinimumVersion = []string{"portal.example.com"}, "tlsv1_2"
	want.ConsoleAuthAddress, want.NoVNCDir, want.DrainTimeout, want.ShutdownDelay = auth.Addr, core, 2*time.Second, 0
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config:\ngot  %+v\nwant %+v", cfg, want)
	}
	if len(notes.Files) != 2 || len(notes.Unsupported) != 0 {
		t.Errorf("notes: got %+v", notes)
	}

	// Nova's sample alone listens on 0.0.0.0 without a cert: plain HTTP
	// off loopback, refused unless allow_plaintext says so.
	alone, _, err := loadConfig([]string{"--config-file", sample, "--novnc_core_dir", core})
	if err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), alone, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "novncproxy_host 0.0.0.0:6080: plaintext off loopback") {
		t.Fatalf("Nova's sample nova.conf alone: got %v, want a refusal of plain HTTP on 0.0.0.0", err)
	}

	cfg.AdminListen = "127.0.0.1:0"
	s := startRun(t, cfg)
	_, host, port := startDemoVNC(t)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, origin := range []string{"https://console.example.com", "https://portal.example.com"} {
		tok := auth.Mint(instance, "novnc", host, port, time.Minute)
		openConsole(t, "wss://"+s.addr+"/?token="+tok, &websocket.DialOptions{
			HTTPClient: client,
			HTTPHeader: http.Header{"Origin": {origin}},
		})
	}
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "wss://"+s.addr+"/?token="+tok, &websocket.DialOptions{
		HTTPClient: client,
		HTTPHeader: http.Header{"Origin": {"https://127.0.0.1"}},
	})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("an Origin that is neither the base URL's nor allowed: got %v, want 403", err)
	}
	if resp, err := http.Get("http://" + s.addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP served with ssl_only = true")
		}
	}
}
