// Package haproxy runs a real HAProxy (Debian's haproxy package) in TCP
// mode in front of one backend, as operators put it in front of xvp-proxy:
// every connection to the backend, health checks included, starts with a
// PROXY protocol header (send-proxy-v2 by default), and the backend is
// health-checked (a check opens a connection, sends a PROXY v2 LOCAL header
// and closes). Without the haproxy binary the test is skipped, or fails
// when CI=true.
package haproxy

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options say how HAProxy fronts the backend.
type Options struct {
	// Backend is the backend's host:port.
	Backend string
	// SendProxy is the server option for the PROXY header: "send-proxy-v2"
	// (the default) or "send-proxy" (v1).
	SendProxy string
	// CheckInterval is the health checks' period; 0: 200 ms.
	CheckInterval time.Duration
}

// HAProxy is a running HAProxy.
type HAProxy struct {
	// Addr is the frontend's address, 127.0.0.1:port.
	Addr string

	mu  sync.Mutex
	out strings.Builder
}

// logWriter collects HAProxy's output.
type logWriter struct{ h *HAProxy }

func (w logWriter) Write(p []byte) (int, error) {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	return w.h.out.Write(p)
}

// Log is what HAProxy printed so far (its log goes to stderr).
func (h *HAProxy) Log() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.out.String()
}

// Start runs HAProxy in the foreground until t ends, and returns once its
// frontend accepts connections.
func Start(t testing.TB, opts Options) *HAProxy {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("haproxy missing (CI=true): %v; install Debian package haproxy (make deps)", err)
		}
		t.Skipf("haproxy missing: %v (make deps installs Debian package haproxy)", err)
	}
	if opts.SendProxy == "" {
		opts.SendProxy = "send-proxy-v2"
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = 200 * time.Millisecond
	}
	h := &HAProxy{Addr: freePort(t)}
	// A frontend that rejects every connection tells when HAProxy listens,
	// without a connection to the backend.
	ready := freePort(t)
	cfg := fmt.Sprintf(`global
	log stderr format raw local0 info

defaults
	mode tcp
	log global
	option tcplog
	timeout connect 5s
	timeout client 60s
	timeout server 60s

frontend ready
	bind %s
	tcp-request connection reject

frontend console
	bind %s
	default_backend xvp

backend xvp
	default-server %s check inter %dms fall 2 rise 2
	server xvp1 %s
`, ready, h.Addr, opts.SendProxy, opts.CheckInterval.Milliseconds(), opts.Backend)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = logWriter{h}, logWriter{h}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy log:\n%s", h.Log())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", ready, time.Second)
		if err == nil {
			c.Close()
			return h
		}
		select {
		case err := <-exited:
			t.Fatalf("haproxy exited: %v\n%s", err, h.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy not listening on %s after 10s: %v\n%s", ready, err, h.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort is a loopback address whose port is free now; HAProxy binds it
// (another taker in between is rare on loopback).
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
