package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/forwarded"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/origin"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// world is a proxy under test with real parts around it on loopback: the
// stand-in consoleauth (gRPC), the demo VNC server (RFB), and the proxy's
// HTTP server, with its metrics in its own registry.
type world struct {
	t        *testing.T
	auth     *fakeconsoleauth.Server
	vnc      *rfb.Server
	vncHost  string
	vncPort  int32
	srv      *Server
	core     *sessions.Core
	http     *httptest.Server
	base     string // http://127.0.0.1:port
	origin   string // the Origin a page of ours sends
	instance string
	metrics  *prometheus.Registry
	ban      *failban.Limiter
}

// worldConfig adjusts a world before it starts: the session core's and the
// edge's settings.
type worldConfig struct {
	core           sessions.Config
	opts           Options
	allowedOrigins []string
	trusted        []string
	maxPerInstance int
	failLimit      int
	headerTimeout  time.Duration
}

func newWorld(t *testing.T, adjust func(*worldConfig)) *world {
	t.Helper()
	w := &world{t: t, auth: fakeconsoleauth.Start(t), instance: "6d5c8a3e-0000-4000-8000-000000000001", metrics: prometheus.NewRegistry()}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.vnc = rfb.NewServer(rfb.Options{Width: 64, Height: 48, FrameInterval: 20 * time.Millisecond})
	served := make(chan error, 1)
	go func() { served <- w.vnc.Serve(l) }()
	t.Cleanup(func() { w.vnc.Close(); <-served })
	host, port, _ := net.SplitHostPort(l.Addr().String())
	p, _ := strconv.Atoi(port)
	w.vncHost, w.vncPort = host, int32(p)

	w.http = httptest.NewUnstartedServer(nil)
	w.base = "http://" + w.http.Listener.Addr().String()
	w.origin = w.base

	cfg := worldConfig{failLimit: 100, headerTimeout: 2 * time.Second}
	log := testLogger(t)
	cfg.core = sessions.Config{
		ConsoleType:      ConsoleType,
		Dialer:           backend.Dialer{Timeout: 2 * time.Second},
		Log:              log,
		HandshakeTimeout: 5 * time.Second,
		Metrics:          proxymetrics.New(w.metrics),
	}
	cfg.opts = Options{
		Web:              http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "page") }),
		Log:              log,
		HandshakeTimeout: 5 * time.Second,
		MetricsHandler:   proxymetrics.Handler(w.metrics),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	conn, err := tokencheck.Dial(w.auth.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cfg.core.Checker = tokencheck.New(conn, 2*time.Second)
	if cfg.opts.Origin, err = origin.NewPolicy(w.base+"/vnc_lite.html", cfg.allowedOrigins); err != nil {
		t.Fatal(err)
	}
	if cfg.opts.Trust, err = forwarded.ParseTrust(cfg.trusted); err != nil {
		t.Fatal(err)
	}
	cfg.core.MaxPerInstance = cfg.maxPerInstance
	w.ban = failban.New(cfg.failLimit, time.Minute)
	cfg.core.FailBan = w.ban
	w.core = sessions.New(cfg.core)
	cfg.opts.Core = w.core
	w.srv = New(cfg.opts)
	w.http.Config = w.srv.HTTPServer(log) // the run's server, with the test's head timeout
	w.http.Config.ReadHeaderTimeout = cfg.headerTimeout
	w.http.Start()
	t.Cleanup(func() {
		w.srv.EndSessions()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.core.Wait(ctx); err != nil {
			t.Errorf("sessions still live at the end: %d", w.core.Len())
		}
		w.http.Close()
	})
	return w
}

// testLogger writes to the test log when -v, else discards.
func testLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// token mints a novnc token for the demo VNC server.
func (w *world) token() string {
	return w.auth.Mint(w.instance, "novnc", w.vncHost, w.vncPort, time.Minute)
}

// wsURL is the proxy's WebSocket URL for token, on path.
func (w *world) wsURL(path, token string) string {
	u := "ws://" + w.http.Listener.Addr().String() + path
	if token != "" {
		u += "?token=" + token
	}
	return u
}

// dialOpts are the options of a browser page of ours.
func (w *world) dialOpts() *websocket.DialOptions {
	return &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {w.origin}}}
}

// dial opens a WebSocket to the proxy; the caller checks err.
func (w *world) dial(url string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response, error) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if c != nil {
		w.t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// console opens a console session and runs the RFB handshake through it.
func (w *world) console(token string) (net.Conn, rfb.ServerInit) {
	w.t.Helper()
	c, _, err := w.dial(w.wsURL("/websockify", token), w.dialOpts())
	if err != nil {
		w.t.Fatalf("dial: %v", err)
	}
	nc := newClientStream(w.t, c)
	si, err := rfb.Handshake(nc)
	if err != nil {
		w.t.Fatalf("rfb handshake through the proxy: %v", err)
	}
	return nc, si
}

// closeCodeOfNetConn reads from a console's stream until it fails, and
// returns the close frame seen.
func closeCodeOfNetConn(t *testing.T, nc net.Conn) (websocket.StatusCode, string) {
	t.Helper()
	_, err := io.Copy(io.Discard, nc)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("connection ended without a close frame: %v", err)
	}
	return ce.Code, ce.Reason
}

// clientStream is a console's byte stream on the test client's side. Unlike
// websocket.NetConn it keeps every close code as an error (NetConn turns
// 1000 and 1001 into io.EOF). All its reads and writes share one context
// that ends 20 s after it was made (coder/websocket closes the connection
// when a read's context ends, so there are no per-call deadlines).
type clientStream struct {
	c   *websocket.Conn
	ctx context.Context
	r   io.Reader
}

func newClientStream(t *testing.T, c *websocket.Conn) *clientStream {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return &clientStream{c: c, ctx: ctx}
}

func (s *clientStream) Read(p []byte) (int, error) {
	for {
		if s.r == nil {
			_, r, err := s.c.Reader(s.ctx)
			if err != nil {
				return 0, err
			}
			s.r = r
		}
		n, err := s.r.Read(p)
		if err == io.EOF {
			s.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (s *clientStream) Write(p []byte) (int, error) {
	if err := s.c.Write(s.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *clientStream) Close() error                     { return s.c.Close(websocket.StatusNormalClosure, "") }
func (s *clientStream) LocalAddr() net.Addr              { return stringAddr("test-client") }
func (s *clientStream) RemoteAddr() net.Addr             { return stringAddr("proxy") }
func (s *clientStream) SetDeadline(time.Time) error      { return nil }
func (s *clientStream) SetReadDeadline(time.Time) error  { return nil }
func (s *clientStream) SetWriteDeadline(time.Time) error { return nil }

// wantJSONError checks an HTTP refusal's status and JSON body.
func wantJSONError(t *testing.T, resp *http.Response, status int) string {
	t.Helper()
	if resp == nil {
		t.Fatalf("got no HTTP response, want %d", status)
	}
	defer resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatalf("got HTTP %d, want %d", resp.StatusCode, status)
	}
	var body struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if body.Code != status || body.Error == "" {
		t.Fatalf("got body %+v, want code %d and an error", body, status)
	}
	return body.Error
}

// rawRequest sends raw bytes and returns the status line of the answer.
func rawRequest(t *testing.T, addr string, raw []byte) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write(raw) // may fail once the server has answered and closed
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "closed: " + err.Error()
	}
	return strings.TrimSpace(line)
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkNoLeak fails if goroutines started during the test outlive it.
func checkNoLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines: got %d, want <= %d\n%s", runtime.NumGoroutine(), before, buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
