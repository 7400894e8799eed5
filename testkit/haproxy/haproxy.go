// Package haproxy runs a real HAProxy (Debian's haproxy package) in front of
// vncgate's services, as operators put it there.
//
// Start gives a test one TCP frontend before one xvp-proxy: every
// connection to the backend, health checks included, starts with a PROXY
// protocol header (send-proxy-v2 by default), and the backend is
// health-checked (a check opens a connection, sends a PROXY v2 LOCAL header
// and closes). Without the haproxy binary the test is skipped, or fails
// when CI=true.
//
// Run starts any number of frontends, each balancing round robin over
// several servers, in HTTP mode (WebSocket tunnels, a 503 of HAProxy's own
// when no server is up) or TCP mode (optionally with a PROXY header), with
// HTTP health checks on each server's admin port (/readyz) when the
// frontend names a check path: deploy/devstack's world with replicas uses
// it, outside a test.
package haproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options say how Start's HAProxy fronts its backend.
type Options struct {
	// Backend is the backend's host:port.
	Backend string
	// SendProxy is the server option for the PROXY header: "send-proxy-v2"
	// (the default) or "send-proxy" (v1).
	SendProxy string
	// CheckInterval is the health checks' period; 0: 200 ms.
	CheckInterval time.Duration
}

// Frontend is one listening address of Run's HAProxy and the servers it
// balances over.
type Frontend struct {
	// Name names the frontend and its backend in HAProxy's log
	// ("Server NAME/SERVER is DOWN"): letters, digits, '-', '_'.
	Name string
	// Bind is the address HAProxy listens on, host:port.
	Bind string
	// HTTP selects mode http (requests and WebSocket upgrades go to the
	// next server that is up; HAProxy answers 503 itself when none is);
	// otherwise mode tcp.
	HTTP bool
	// SendProxy is a TCP frontend's PROXY header to its servers:
	// "send-proxy-v2", "send-proxy" or empty for none.
	SendProxy string
	// CheckPath, when set, health-checks each server with an HTTP GET of
	// this path on the server's CheckAddr (e.g. /readyz on its admin
	// listener), up on 200; otherwise a check opens a connection to Addr.
	CheckPath string
	// Unavailable, for an HTTP frontend, is the body of HAProxy's own 503
	// when no server is up (text/plain), instead of HAProxy's page: the
	// words the services use for the same condition.
	Unavailable string
	// FailOpen sends connections to every server anyway when none is up
	// (each server again as a backup without checks), so that when every
	// replica is unready for the same reason (consoleauth without etcd's
	// quorum) the client gets the service's own refusal, which names the
	// condition, rather than a connection HAProxy closes (TCP) or its 503.
	FailOpen bool
	// Servers are the backend's servers.
	Servers []Server
}

// Server is one backend server of a Frontend.
type Server struct {
	// Name names the server in HAProxy's log.
	Name string
	// Addr is where HAProxy sends connections, host:port.
	Addr string
	// CheckAddr is where the HTTP health check goes (with CheckPath), on
	// the same host as Addr: its port is used.
	CheckAddr string
}

// Config is everything Run needs.
type Config struct {
	Frontends []Frontend
	// CheckInterval is every health check's period; 0: 200 ms. A server is
	// down after 2 failed checks and up after 2 good ones.
	CheckInterval time.Duration
	// Dir holds haproxy.cfg, the 503 pages and the runtime API's socket
	// (ServerState).
	Dir string
	// Log, when set, receives HAProxy's output too (its log goes to
	// stderr), as it comes.
	Log io.Writer
}

// HAProxy is a running HAProxy.
type HAProxy struct {
	// Addr is Start's frontend's address, 127.0.0.1:port.
	Addr string

	cmd    *exec.Cmd
	exited chan struct{}
	tee    io.Writer
	sock   string // the runtime API's socket

	mu  sync.Mutex
	out strings.Builder
}

// logWriter collects HAProxy's output.
type logWriter struct{ h *HAProxy }

func (w logWriter) Write(p []byte) (int, error) {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	if w.h.tee != nil {
		w.h.tee.Write(p)
	}
	return w.h.out.Write(p)
}

// Log is what HAProxy printed so far (its log goes to stderr).
func (h *HAProxy) Log() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.out.String()
}

// Count is how often s occurs in Log, e.g. "Server novnc/n1 is UP".
func (h *HAProxy) Count(s string) int { return strings.Count(h.Log(), s) }

// Exited is closed once HAProxy has exited.
func (h *HAProxy) Exited() <-chan struct{} { return h.exited }

// Close kills HAProxy and returns once it has exited.
func (h *HAProxy) Close() {
	select {
	case <-h.exited:
		return
	default:
	}
	h.cmd.Process.Kill()
	<-h.exited
}

// Start runs HAProxy in the foreground until t ends, and returns once its
// frontend accepts connections.
func Start(t testing.TB, opts Options) *HAProxy {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("haproxy missing (CI=true): %v; install Debian package haproxy (make deps)", err)
		}
		t.Skipf("haproxy missing: %v (make deps installs Debian package haproxy)", err)
	}
	if opts.SendProxy == "" {
		opts.SendProxy = "send-proxy-v2"
	}
	front, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	h, err := Run(Config{
		Frontends: []Frontend{{
			Name: "console", Bind: front, SendProxy: opts.SendProxy,
			Servers: []Server{{Name: "xvp1", Addr: opts.Backend}},
		}},
		CheckInterval: opts.CheckInterval,
		Dir:           t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			t.Logf("haproxy log:\n%s", h.Log())
		}
	})
	h.Addr = front
	return h
}

// Run checks the configuration (haproxy -c), runs HAProxy in the
// foreground and returns once it listens; Close ends it. It also ends when
// this process does.
func Run(cfg Config) (*HAProxy, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, fmt.Errorf("haproxy: %w (make deps installs Debian package haproxy)", err)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 200 * time.Millisecond
	}
	// A frontend that rejects every connection tells when HAProxy listens,
	// without a connection to a backend.
	ready, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(cfg.Dir, "admin.sock")
	text, err := configText(cfg, ready, sock)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haproxy -c: %v\n%s", err, out)
	}
	h := &HAProxy{exited: make(chan struct{}), tee: cfg.Log, sock: sock}
	h.cmd = exec.Command(bin, "-f", path, "-db")
	h.cmd.Stdout, h.cmd.Stderr = logWriter{h}, logWriter{h}
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // ends with this process
	if err := h.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { h.cmd.Wait(); close(h.exited) }()
	deadline := time.Now().Add(10 * time.Second) // a safety net: HAProxy listens in milliseconds
	for {
		c, err := net.DialTimeout("tcp", ready, time.Second)
		if err == nil {
			c.Close()
			return h, nil
		}
		select {
		case <-h.exited:
			return nil, fmt.Errorf("haproxy exited: %s", h.Log())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			h.Close()
			return nil, fmt.Errorf("haproxy not listening on %s after 10s: %v\n%s", ready, err, h.Log())
		}
	}
}

// configText is haproxy.cfg for cfg, with the readiness frontend on ready
// and the runtime API on sock; it writes the 503 pages into cfg.Dir.
func configText(cfg Config, ready, sock string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, `global
	log stderr format raw local0 info
	stats socket %s mode 600 level admin

defaults
	log global
	timeout connect 2s
	timeout client 60s
	timeout server 60s
	timeout tunnel 1h
	retries 2
	option redispatch

frontend ready
	mode tcp
	bind %s
	tcp-request connection reject
`, sock, ready)
	for _, f := range cfg.Frontends {
		if f.Name == "" || strings.ContainsFunc(f.Name, func(r rune) bool {
			return !(r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) {
			return "", fmt.Errorf("haproxy frontend name %q: want letters, digits, '-' and '_'", f.Name)
		}
		if len(f.Servers) == 0 {
			return "", fmt.Errorf("haproxy frontend %s: no servers", f.Name)
		}
		mode, logOpt := "tcp", "option tcplog"
		if f.HTTP {
			mode, logOpt = "http", "option httplog"
		}
		fmt.Fprintf(&b, "\nfrontend %s\n\tmode %s\n\t%s\n\tbind %s\n\tdefault_backend %s\n", f.Name, mode, logOpt, f.Bind, f.Name)
		fmt.Fprintf(&b, "\nbackend %s\n\tmode %s\n\tbalance roundrobin\n", f.Name, mode)
		if f.HTTP {
			// A request that a replica's crash cut (no answer at all) goes
			// to another: a mint retried may leave an unused token behind,
			// which expires.
			b.WriteString("\toption forwardfor\n\tretry-on conn-failure empty-response response-timeout\n")
			if f.Unavailable != "" {
				page := filepath.Join(cfg.Dir, f.Name+"-503.http")
				body := f.Unavailable + "\n"
				resp := "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n" +
					fmt.Sprintf("Content-Length: %d\r\nConnection: close\r\n\r\n", len(body)) + body
				if err := os.WriteFile(page, []byte(resp), 0o600); err != nil {
					return "", err
				}
				fmt.Fprintf(&b, "\terrorfile 503 %s\n", page)
			}
		}
		if f.CheckPath != "" {
			fmt.Fprintf(&b, "\toption httpchk GET %s\n\thttp-check expect status 200\n", f.CheckPath)
		}
		def := fmt.Sprintf("check inter %dms fall 2 rise 2", cfg.CheckInterval.Milliseconds())
		if f.SendProxy != "" {
			def = f.SendProxy + " " + def
		}
		fmt.Fprintf(&b, "\tdefault-server %s\n", def)
		for _, s := range f.Servers {
			line := fmt.Sprintf("\tserver %s %s", s.Name, s.Addr)
			if f.CheckPath != "" {
				// A check on another port carries no PROXY header.
				_, port, err := net.SplitHostPort(s.CheckAddr)
				if err != nil {
					return "", fmt.Errorf("haproxy server %s/%s check address: %w", f.Name, s.Name, err)
				}
				line += " port " + port
			}
			b.WriteString(line + "\n")
		}
		if f.FailOpen {
			for _, s := range f.Servers {
				fmt.Fprintf(&b, "\tserver %s-failopen %s backup no-check\n", s.Name, s.Addr)
			}
			b.WriteString("\toption allbackups\n")
		}
	}
	return b.String(), nil
}

// ServerState is a server's state as HAProxy's runtime API reports it
// ("show stat"): "UP", "DOWN", "UP 1/2" (going down), "DOWN 1/2" (going
// up), "MAINT", "no check".
func (h *HAProxy) ServerState(frontend, server string) (string, error) {
	c, err := net.DialTimeout("unix", h.sock, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return "", err
	}
	out, err := io.ReadAll(io.LimitReader(c, 1<<20))
	if err != nil {
		return "", err
	}
	// CSV: pxname, svname, ..., with status the 18th field.
	for line := range strings.Lines(string(out)) {
		f := strings.Split(line, ",")
		if len(f) > 17 && f[0] == frontend && f[1] == server {
			return f[17], nil
		}
	}
	return "", fmt.Errorf("haproxy: no server %s/%s", frontend, server)
}

// FreeAddr is a loopback address whose port is free now, for a frontend
// (another taker in between is rare on loopback).
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", errors.Join(errors.New("free loopback port"), err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
