package edge

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/testkit/scrape"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// flaky fails its first fails accepts as a process out of file descriptors
// does, then accepts for real.
type flaky struct {
	net.Listener
	fails atomic.Int32
}

func (f *flaky) Accept() (net.Conn, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return f.Listener.Accept()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestAcceptSurvivesFailuresAndLogsOncePerEpisode(t *testing.T) {
	inner := &flaky{Listener: listen(t)}
	inner.fails.Store(6)
	logs := &testlog.Buffer{}
	reg := prometheus.NewRegistry()
	l := NewListener(inner, Options{Metrics: proxymetrics.New(reg), Log: slog.New(slog.NewTextHandler(logs, nil))})

	go func() {
		if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept after 6 EMFILE failures: got %v, want the connection", err)
	}
	c.Close()
	if got := scrape.Value(t, reg, "vncgate_proxy_accept_errors_total"); got != 6 {
		t.Errorf("accept_errors_total: got %v, want 6", got)
	}
	// The episode ends once accepts have worked for a while.
	waitFor(t, "the episode's end", func() bool { return strings.Contains(logs.String(), "accept working again") })
	text := logs.String()
	if n := strings.Count(text, "accept failing"); n != 1 || !strings.Contains(text, "too many open files") {
		t.Errorf("got %d episode-start lines, want 1 naming the error:\n%s", n, text)
	}
	if n := strings.Count(text, "accept working again"); n != 1 || !strings.Contains(text, "failed_accepts=6") {
		t.Errorf("got %d recovery lines, want 1 counting 6 failures:\n%s", n, text)
	}
}

func TestCloseEndsABackingOffAccept(t *testing.T) {
	inner := &flaky{Listener: listen(t)}
	inner.fails.Store(1 << 30)
	l := NewListener(inner, Options{})
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	for inner.fails.Load() > 1<<30-3 { // let it back off a few times
		time.Sleep(time.Millisecond)
	}
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still backing off 10s after Close")
	}
}

// capped serves l: accepted connections are kept open (and returned), and
// refusals write their reason.
type capped struct {
	l        *Listener
	mu       sync.Mutex
	accepted []net.Conn
}

func serveCapped(t *testing.T, opts Options) *capped {
	t.Helper()
	opts.Refuse = func(c net.Conn, err error) { io.WriteString(c, "refused: "+err.Error()+"\n") }
	s := &capped{l: NewListener(listen(t), opts)}
	go func() {
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted = append(s.accepted, c)
			s.mu.Unlock()
			io.WriteString(c, "accepted\n")
		}
	}()
	t.Cleanup(func() {
		s.l.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.accepted {
			c.Close()
		}
	})
	return s
}

// dialFrom connects from a loopback source address and returns the first
// line the listener sends.
func (s *capped) dialFrom(t *testing.T, src string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 128)
	n, _ := c.Read(b)
	return c, strings.TrimSpace(string(b[:n]))
}

func TestCaps(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := proxymetrics.New(reg)
	trusted, err := ParseTrust([]string{"127.0.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	caps := NewCaps(5, 2, m)
	s := serveCapped(t, Options{Caps: caps, Trusted: trusted, Metrics: m})

	for i, want := range []string{"accepted", "accepted", "refused: too many connections from this address"} {
		if _, got := s.dialFrom(t, "127.0.0.2"); got != want {
			t.Fatalf("connection %d from 127.0.0.2: got %q, want %q", i+1, got, want)
		}
	}
	// A trusted proxy's connections count against the global cap only.
	for i := range 3 {
		if _, got := s.dialFrom(t, "127.0.0.9"); got != "accepted" {
			t.Fatalf("connection %d from the trusted proxy: got %q, want accepted", i+1, got)
		}
	}
	if _, got := s.dialFrom(t, "127.0.0.3"); got != "refused: too many connections" {
		t.Fatalf("sixth connection: got %q, want refused (max_connections)", got)
	}
	if got := caps.Open(); got != 5 {
		t.Errorf("open: got %d, want 5", got)
	}
	// Closing a connection gives its places back.
	s.mu.Lock()
	s.accepted[0].Close()
	s.mu.Unlock()
	waitFor(t, "the place to be given back", func() bool { return caps.Open() == 4 })
	if _, got := s.dialFrom(t, "127.0.0.2"); got != "accepted" {
		t.Fatalf("after a close: got %q, want accepted", got)
	}

	for _, c := range []struct {
		reason string
		want   float64
	}{{"max_connections", 1}, {"max_connections_per_client", 1}} {
		if got := scrape.Value(t, reg, "vncgate_proxy_connections_refused_total", "reason", c.reason); got != c.want {
			t.Errorf("connections_refused_total{reason=%s}: got %v, want %v", c.reason, got, c.want)
		}
	}
	if got := scrape.Value(t, reg, "vncgate_proxy_connections_open"); got != 5 {
		t.Errorf("connections_open: got %v, want 5", got)
	}
}

func TestClientCapsAfterAccept(t *testing.T) {
	caps := NewCaps(0, 2, nil)
	client := netip.MustParseAddr("2001:db8::1")
	neighbour := netip.MustParseAddr("2001:db8::2") // the same /64: the same client
	var releases []func()
	for _, a := range []netip.Addr{client, neighbour} {
		release, err := caps.Client(a)
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
		releases = append(releases, release)
	}
	if _, err := caps.Client(client); !errors.Is(err, ErrTooManyFromClient) {
		t.Fatalf("third from the /64: got %v, want ErrTooManyFromClient", err)
	}
	if _, err := caps.Client(netip.MustParseAddr("2001:db8:0:1::1")); err != nil {
		t.Fatalf("another /64: %v", err)
	}
	releases[0]()
	releases[0]() // a second release gives back nothing more
	if _, err := caps.Client(client); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if _, err := caps.Client(client); !errors.Is(err, ErrTooManyFromClient) {
		t.Fatalf("a double release gave back two places: got %v", err)
	}
}

func TestParseTrust(t *testing.T) {
	tr, err := ParseTrust([]string{" 10.0.0.0/8", "192.0.2.1", "", "::ffff:198.51.100.7"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		want bool
	}{{"10.1.2.3", true}, {"::ffff:10.1.2.3", true}, {"192.0.2.1", true}, {"192.0.2.2", false}, {"198.51.100.7", true}} {
		if got := tr.Contains(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.addr, got, tc.want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "proxy.example"} {
		if _, err := ParseTrust([]string{bad}); err == nil || !strings.Contains(err.Error(), "trusted_proxies entry") {
			t.Errorf("%q: got %v, want an error naming trusted_proxies", bad, err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scripted fails or accepts in the order of its script ('x': EMFILE).
type scripted struct {
	net.Listener
	mu     sync.Mutex
	script string
}

func (s *scripted) Accept() (net.Conn, error) {
	s.mu.Lock()
	step := byte('.')
	if s.script != "" {
		step, s.script = s.script[0], s.script[1:]
	}
	s.mu.Unlock()
	if step == 'x' {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return s.Listener.Accept()
}

// A port hovering at the descriptor limit (failures between successes) is
// one episode, logged once.
func TestAFlappingPortIsOneEpisode(t *testing.T) {
	inner := &scripted{Listener: listen(t), script: "xxx.xxx."}
	logs := &testlog.Buffer{}
	l := NewListener(inner, Options{Log: slog.New(slog.NewTextHandler(logs, nil))})
	t.Cleanup(func() { l.Close() })
	for range 2 {
		go func() {
			if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
				t.Cleanup(func() { c.Close() })
			}
		}()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitFor(t, "the episode's end", func() bool { return strings.Contains(logs.String(), "accept working again") })
	text := logs.String()
	if n := strings.Count(text, "accept failing"); n != 1 {
		t.Errorf("got %d episode-start lines, want 1:\n%s", n, text)
	}
	if !strings.Contains(text, "failed_accepts=6") {
		t.Errorf("want one episode of 6 failures:\n%s", text)
	}
}
