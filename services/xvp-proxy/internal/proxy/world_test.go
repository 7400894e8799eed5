package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// fakeAuth adapts fakeconsoleauth.Server to the proxy's console type.
type fakeAuth struct{ *fakeconsoleauth.Server }

func (f fakeAuth) add(token, instance, addr string) { f.Add(token, ConsoleType, instance, addr, "") }
func (f fakeAuth) addPath(token, instance, addr, path string) {
	f.Add(token, ConsoleType, instance, addr, path)
}
func (f fakeAuth) addType(token, instance, addr, consoleType string) {
	f.Add(token, consoleType, instance, addr, "")
}
func (f fakeAuth) fail(token string, code codes.Code) { f.Fail(token, code) }

// world is a proxy under test with its consoleauth, and its metrics in its
// own registry.
type world struct {
	auth    fakeAuth
	srv     *Server
	core    *sessions.Core
	addr    string // the proxy's listening address
	metrics *prometheus.Registry
	logs    *testlog.Buffer
	stop    func() // ends Serve and waits for it
}

// worldConfig is what a worldOption may change: the session core's and the
// edge's settings.
type worldConfig struct {
	core  sessions.Config
	proxy Config
}

type worldOption func(*worldConfig)

// newWorld starts a fake consoleauth and a proxy on loopback. The proxy is
// stopped in t.Cleanup.
func newWorld(t *testing.T, opts ...worldOption) *world {
	t.Helper()
	auth := fakeAuth{fakeconsoleauth.Start(t)}
	conn, err := tokencheck.Dial(auth.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	cfg := worldConfig{
		core: sessions.Config{
			ConsoleType:      ConsoleType,
			Metrics:          proxymetrics.New(reg),
			Log:              log,
			HandshakeTimeout: 3 * time.Second,
		},
		proxy: Config{Log: log, HandshakeTimeout: 3 * time.Second, DrainTimeout: 2 * time.Second},
	}
	for _, o := range opts {
		o(&cfg)
	}
	// The handshake's limit bounds its steps too.
	cfg.core.Checker = tokencheck.New(conn, cfg.proxy.HandshakeTimeout)
	cfg.core.Dialer = backend.Dialer{Timeout: cfg.proxy.HandshakeTimeout}
	cfg.core.HandshakeTimeout = cfg.proxy.HandshakeTimeout
	cfg.proxy.Core = sessions.New(cfg.core)
	w := &world{auth: auth, srv: New(cfg.proxy), core: cfg.proxy.Core, metrics: reg, logs: logs}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.srv.Serve(ctx, l) }()
	var once sync.Once
	w.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: got %v, want nil after shutdown", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("Serve did not return 15s after shutdown")
			}
		})
	}
	t.Cleanup(w.stop)
	return w
}

// dial opens a TCP connection to the proxy with a deadline.
func (w *world) dial(t *testing.T) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

// connect sends a CONNECT head for token and returns the conn and the
// proxy's status line; the rest of the answer is left unread.
func (w *world) connect(t *testing.T, token string) (*net.TCPConn, *bufio.Reader, string) {
	t.Helper()
	c := w.dial(t)
	if _, err := io.WriteString(c, "CONNECT /console?token="+token+" HTTP/1.1\r\nHost: proxy\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the status line: %v", err)
	}
	return c, br, strings.TrimRight(line, "\r\n")
}

// session connects with token and requires the exact 200 answer.
func (w *world) session(t *testing.T, token string) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, br, line := w.connect(t, token)
	if line != "HTTP/1.1 200 OK" {
		t.Fatalf("status: got %q, want HTTP/1.1 200 OK", line)
	}
	if l2, err := br.ReadString('\n'); err != nil || l2 != "\r\n" {
		t.Fatalf("after the status line: got %q (%v), want the empty line", l2, err)
	}
	return c, br
}

// waitSessions waits until the proxy has n live sessions.
func (w *world) waitSessions(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.core.Len() != n {
		if time.Now().After(deadline) {
			t.Fatalf("live sessions: got %d, want %d", w.core.Len(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listen returns a loopback listener closed in t.Cleanup.
func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// echoServer echoes every byte and half-closes after EOF.
func echoServer(t *testing.T) string {
	t.Helper()
	return loopback.Serve(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// echo writes msg on c and requires it back.
func echo(t *testing.T, c net.Conn, r io.Reader, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q (%v), want %q", got, err, msg)
	}
}

// readAnswer reads everything the proxy sends until it closes.
func readAnswer(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil && !isReset(err) {
		t.Fatalf("reading the answer: %v", err)
	}
	return string(b)
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}
