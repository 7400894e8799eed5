package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/etcdembed/etcdtest"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/xvp-proxy/internal/fakeconsoleauth"
)

// testConfig is the default configuration on loopback, port 0.
func testConfig(t *testing.T, authAddr string) Config {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg := registerFlags(fs)
	if err := config.Load(fs, []string{"-xvpvncproxy_host=127.0.0.1", "-xvpvncproxy_port=0", "-consoleauth_address=" + authAddr, "-drain_timeout=1s"}); err != nil {
		t.Fatal(err)
	}
	return *cfg
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

// echoServer echoes on loopback until t's cleanup.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(c, c); c.Close() })
		}
	})
	return l.Addr().String()
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

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRevocationInEtcdEndsSessions wires the real pieces: run with
// etcd_endpoints on an embedded etcd; a revocation record written the way
// consoleauth writes it ends the instance's live sessions within 2 s.
func TestRevocationInEtcdEndsSessions(t *testing.T) {
	etcd, cli := etcdtest.Start(t)
	auth := fakeconsoleauth.Start(t)
	echoAddr := echoServer(t)
	auth.Add("tok-a", "xvpvnc", "inst-a", echoAddr, "")
	auth.Add("tok-b", "xvpvnc", "inst-b", echoAddr, "")

	cfg := testConfig(t, auth.Addr)
	cfg.EtcdEndpoints = etcd.Endpoint
	logs := &syncBuffer{}
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
	a.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.Copy(io.Discard, ar); err != nil {
		t.Fatalf("session of the revoked instance still open after 2s: %v", err)
	}
	t.Logf("session ended %v after the revocation was written", time.Since(start).Round(time.Millisecond))
	echoOver(t, b, br, "other instance still served")
	if !strings.Contains(logs.String(), `reason="revoked: the instance was deleted"`) {
		t.Errorf("no log line with the revocation reason:\n%s", logs)
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xvp-proxy test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLSListener(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", echoServer(t), "")
	certFile, keyFile, pool := writeCert(t)
	cfg := testConfig(t, auth.Addr)
	cfg.Cert, cfg.Key, cfg.SSLMinimumVersion = certFile, keyFile, "tlsv1_3"
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

func TestConfig(t *testing.T) {
	t.Run("defaults are Nova's", func(t *testing.T) {
		cfg := registerFlags(flag.NewFlagSet("t", flag.ContinueOnError))
		if cfg.Host != "0.0.0.0" || cfg.Port != 6081 || cfg.ConsoleauthAddress != "127.0.0.1:6090" || cfg.HandshakeTimeout != 10*time.Second {
			t.Errorf("got %+v", cfg)
		}
		if err := cfg.validate(); err != nil {
			t.Errorf("defaults: got %v, want valid", err)
		}
		if cfg.MetricsListen != "" {
			t.Errorf("metrics_listen: got %q, want off by default", cfg.MetricsListen)
		}
	})
	t.Run("environment", func(t *testing.T) {
		t.Setenv("VNCGATE_XVPVNCPROXY_PORT", "7081")
		t.Setenv("VNCGATE_IDLE_TIMEOUT", "5m")
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		cfg := registerFlags(fs)
		if err := config.Load(fs, nil); err != nil {
			t.Fatal(err)
		}
		if cfg.Port != 7081 || cfg.IdleTimeout != 5*time.Minute {
			t.Errorf("got port %d idle %v, want 7081 and 5m", cfg.Port, cfg.IdleTimeout)
		}
	})
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"-cert=x.pem"}, "cert and key"},
		{"old tls", []string{"-ssl_minimum_version=tlsv1_1"}, "ssl_minimum_version"},
		{"zero handshake timeout", []string{"-handshake_timeout=0"}, "handshake_timeout"},
		{"bad port", []string{"-xvpvncproxy_port=70000"}, "xvpvncproxy_port"},
		{"limit without window", []string{"-failed_token_window=0"}, "failed_token_window"},
		{"metrics address without port", []string{"-metrics_listen=127.0.0.1"}, "metrics_listen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			cfg := registerFlags(fs)
			if err := config.Load(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error about %s", err, tc.want)
			}
		})
	}
}

// TestMetricsListener runs the service with metrics_listen: /metrics counts
// a relayed session, /healthz says ok, then 503 while the session drains,
// and the listener closes when run returns.
func TestMetricsListener(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", echoServer(t), "")
	cfg := testConfig(t, auth.Addr)
	cfg.MetricsListen = "127.0.0.1:0"
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
