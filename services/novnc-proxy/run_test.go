package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/pkg/etcdembed/etcdtest"
	"github.com/vncgate/vncgate/pkg/qemutest"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/rfb"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/consoleauthtest"
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
func testConfig(t *testing.T, auth *consoleauthtest.Server) Config {
	t.Helper()
	cfg, err := parseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host, cfg.Port = "127.0.0.1", 0
	cfg.NoVNCDir = fakeNoVNC(t)
	cfg.ConsoleAuthAddress = auth.Addr
	cfg.DrainTimeout = 2 * time.Second
	return cfg
}

// started is a run in progress.
type started struct {
	addr   string
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
	go func() { s.done <- run(ctx, cfg, log, func(a net.Addr) { addrs <- a }) }()
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

// closeOf reads until the connection fails and returns its close frame.
func closeOf(t *testing.T, c *websocket.Conn) websocket.CloseError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		return ce
	}
}

func TestRunServesPageAndConsoleAndEndsRevokedSessions(t *testing.T) {
	etcd, cli := etcdtest.Start(t)

	auth := consoleauthtest.Start(t)
	vnc, host, port := startDemoVNC(t)
	cfg := testConfig(t, auth)
	cfg.EtcdEndpoints = []string{etcd.Endpoint}
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
	ce := closeOf(t, c)
	if ce.Code != websocket.StatusCode(closecode.Revoked) || ce.Reason != "the instance was deleted" {
		t.Fatalf("got close %d %q, want %d with the revocation's reason", ce.Code, ce.Reason, closecode.Revoked)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("revocation took %s to end the session, want < 2s", took)
	}

	// The metrics, on the same port, counted the session and its end.
	var text string
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(text, `vncgate_proxy_session_ended_total{reason="revoked"} 1`) {
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics: got\n%s\nwant the revoked session counted", text)
		}
		time.Sleep(20 * time.Millisecond)
		resp, err := http.Get("http://" + s.addr + "/metrics")
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
	port := qemutest.StartVNC(t)
	auth := consoleauthtest.Start(t)
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

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool trusting the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestRunTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	auth := consoleauthtest.Start(t)
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
			cfg.Cert, cfg.Key, cfg.SSLOnly, cfg.SSLMinimumVersion = certFile, keyFile, tc.sslOnly, tc.minVersion
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

func TestRunShutdownDrainsThenEndsSessions(t *testing.T) {
	auth := consoleauthtest.Start(t)
	vnc, host, port := startDemoVNC(t)
	cfg := testConfig(t, auth)
	cfg.DrainTimeout = 500 * time.Millisecond
	s := startRun(t, cfg)
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	c, nc, si := openConsole(t, "ws://"+s.addr+"/?token="+tok, nil)

	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- s.stop(t) }()

	// New connections are refused at once; the live session goes on.
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("port still open after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.ReadUpdate(nc, si); err != nil {
		t.Fatalf("live session cut before the drain deadline: %v", err)
	}
	ce := closeOf(t, c)
	if ce.Code != websocket.StatusGoingAway || ce.Reason != "proxy shutting down" {
		t.Fatalf("got close %d %q, want 1001 proxy shutting down", ce.Code, ce.Reason)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Errorf("session ended after %s, want after the 500ms drain", took)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("run: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); vnc.ActiveConns() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("VNC connection still open after shutdown")
		}
	}
}

func TestRunRefusesToStartWithoutTheNoVNCLibrary(t *testing.T) {
	auth := consoleauthtest.Start(t)
	cfg := testConfig(t, auth)
	cfg.NoVNCDir = t.TempDir()
	err := run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), "npm ci") {
		t.Fatalf("got %v, want a startup error telling how to install noVNC", err)
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		check func(Config) error
		bad   string
	}{
		{"defaults", nil, nil, func(c Config) error {
			if c.Host != "0.0.0.0" || c.Port != 6080 || c.PingInterval != 20*time.Second || c.ConsoleAuthAddress != "127.0.0.1:6090" {
				return fmt.Errorf("got %+v", c)
			}
			return nil
		}, ""},
		{"seconds and durations", []string{"--idle_timeout=300", "--max_session_length=1h", "--ping_interval=0.5"}, nil, func(c Config) error {
			if c.IdleTimeout != 5*time.Minute || c.MaxSessionLength != time.Hour || c.PingInterval != 500*time.Millisecond {
				return fmt.Errorf("got %v %v %v", c.IdleTimeout, c.MaxSessionLength, c.PingInterval)
			}
			return nil
		}, ""},
		{"lists", []string{"--allowed_origins=a.example, b.example", "--etcd_endpoints=127.0.0.1:2379"}, nil, func(c Config) error {
			if len(c.AllowedOrigins) != 2 || c.AllowedOrigins[1] != "b.example" || len(c.EtcdEndpoints) != 1 {
				return fmt.Errorf("got %q %q", c.AllowedOrigins, c.EtcdEndpoints)
			}
			return nil
		}, ""},
		{"environment", nil, map[string]string{"VNCGATE_NOVNCPROXY_PORT": "7080", "VNCGATE_LOG_LEVEL": "debug"}, func(c Config) error {
			if c.Port != 7080 || c.LogLevel != slog.LevelDebug {
				return fmt.Errorf("got port %d level %v", c.Port, c.LogLevel)
			}
			return nil
		}, ""},
		{"ssl_only without cert", []string{"--ssl_only"}, nil, nil, "ssl_only needs"},
		{"cert without key", []string{"--cert=a.pem"}, nil, nil, "go together"},
		{"bad TLS version", []string{"--ssl_minimum_version=sslv3"}, nil, nil, "ssl_minimum_version"},
		{"negative timeout", []string{"--idle_timeout=-1"}, nil, nil, "idle_timeout"},
		{"bad log level", []string{"--log_level=loud"}, nil, nil, "log_level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := parseConfig(tc.args)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("got %v, want an error about %s", err, tc.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(c); err != nil {
				t.Error(err)
			}
		})
	}
}
