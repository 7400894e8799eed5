package tokencheck_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/scrape"
)

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func dial(t *testing.T, addresses string) *grpc.ClientConn {
	t.Helper()
	conn, err := tokencheck.Dial(addresses, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitState waits for conn to reach want (the bound stops a hang).
func waitState(t *testing.T, conn *grpc.ClientConn, want connectivity.State) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for s := conn.GetState(); s != want; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("connection state: still %v, want %v", s, want)
		}
	}
}

// TestCheckSortsAnswers: each of consoleauth's answers is one reason.
func TestCheckSortsAnswers(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("good", "novnc", "inst", "127.0.0.1:5900", "")
	auth.Add("moved", "novnc", "inst", "127.0.0.1:5900", "")
	auth.Fail("moved", codes.FailedPrecondition)
	c := tokencheck.New(dial(t, auth.Addr), time.Second)
	ctx := context.Background()

	info, err := c.Check(ctx, "good", "novnc")
	if err != nil || info.GetHost() != "127.0.0.1" || info.GetPort() != 5900 {
		t.Fatalf("good token: got %v, %v; want 127.0.0.1:5900", info, err)
	}
	for _, tc := range []struct {
		name, token, consoleType string
		want                     error
	}{
		{"no token", "", "novnc", tokencheck.ErrInvalid},
		{"unknown token", "nope", "novnc", tokencheck.ErrInvalid},
		{"another console type", "good", "xvpvnc", tokencheck.ErrWrongType},
		{"moved", "moved", "novnc", tokencheck.ErrMoved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Check(ctx, tc.token, tc.consoleType); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	auth.SetUnavailable(true)
	if _, err := c.Check(ctx, "good", "novnc"); !errors.Is(err, tokencheck.ErrUnavailable) {
		t.Errorf("consoleauth unavailable: got %v, want ErrUnavailable", err)
	}
}

// TestDialAList: a comma-separated consoleauth_address whose first entry
// is dead checks tokens through the second (this list used to fail every
// check with "too many colons").
func TestDialAList(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("good", "novnc", "inst", "127.0.0.1:5900", "")
	_, port, _ := net.SplitHostPort(auth.Addr)
	c := tokencheck.New(dial(t, deadAddr(t)+", localhost:"+port), 5*time.Second)
	for i := range 20 {
		if _, err := c.Check(context.Background(), "good", "novnc"); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
}

func TestDialRefusesABadList(t *testing.T) {
	_, err := tokencheck.Dial("127.0.0.1:6090,,127.0.0.2:6090", nil)
	if err == nil || !strings.Contains(err.Error(), "consoleauth_address: entry 2 of 3 is empty") {
		t.Errorf("got %v, want an error naming the empty entry", err)
	}
}

// TestWriteUnreachable: readiness is red (503 consoleauth unreachable)
// while no replica answers, and left to the proxy once one does.
func TestWriteUnreachable(t *testing.T) {
	health := func(conn *grpc.ClientConn) (bool, int, map[string]any) {
		rec := httptest.NewRecorder()
		wrote := tokencheck.WriteUnreachable(rec, conn, 3)
		var body map[string]any
		if wrote {
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
		}
		return wrote, rec.Code, body
	}

	down := dial(t, deadAddr(t)+","+deadAddr(t))
	waitState(t, down, connectivity.TransientFailure)
	wrote, code, body := health(down)
	if !wrote || code != http.StatusServiceUnavailable || body["status"] != "consoleauth unreachable" || body["sessions"] != 3.0 {
		t.Errorf("no replica up: got wrote=%v %d %v, want 503 consoleauth unreachable with 3 sessions", wrote, code, body)
	}

	auth := fakeconsoleauth.Start(t)
	up := dial(t, deadAddr(t)+","+auth.Addr)
	waitState(t, up, connectivity.Ready)
	if wrote, _, _ := health(up); wrote || !grpcclient.Ready(up) {
		t.Errorf("one replica up: WriteUnreachable wrote an answer, want none")
	}
}

// TestCheckWaitsForTheCallersDeadline: a check whose context has a
// deadline (a proxy's handshake) waits for consoleauth up to it, past the
// Checker's own timeout: in a burst a console queues instead of failing.
// Without a deadline the Checker's timeout bounds the check.
func TestCheckWaitsForTheCallersDeadline(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("good", "xvpvnc", "inst", "127.0.0.1:5900", "")
	const timeout, slow = 50 * time.Millisecond, 300 * time.Millisecond
	c := tokencheck.New(dial(t, auth.Addr), timeout)
	auth.SetDelay(slow)

	// The deadline only bounds a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Check(ctx, "good", "xvpvnc"); err != nil {
		t.Errorf("a check within its context's deadline, consoleauth answering after %v (more than the Checker's %v): got %v, want it to wait",
			slow, timeout, err)
	}
	if _, err := c.Check(context.Background(), "good", "xvpvnc"); !errors.Is(err, tokencheck.ErrUnavailable) {
		t.Errorf("a check without a deadline, consoleauth answering after %v: got %v, want ErrUnavailable after the Checker's %v",
			slow, err, timeout)
	}
}

// gate is a consoleauth whose CheckToken answers only once open is
// closed; it counts the checks it holds and their peak.
type gate struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	open            chan struct{}
	mu              sync.Mutex
	in, peak, calls int
}

func startGate(t *testing.T) (*gate, string) {
	t.Helper()
	g := &gate{open: make(chan struct{})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, g)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return g, l.Addr().String()
}

func (g *gate) CheckToken(ctx context.Context, _ *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	g.mu.Lock()
	g.in++
	g.calls++
	g.peak = max(g.peak, g.in)
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.in--
		g.mu.Unlock()
	}()
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &consoleauthv1.CheckTokenResponse{ConnectInfo: &consoleauthv1.ConnectInfo{Host: "127.0.0.1", Port: 5900}}, nil
}

func (g *gate) counts() (in, peak, calls int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.in, g.peak, g.calls
}

// waitHeld waits until g holds n checks (the bound only stops a hang).
func (g *gate) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for in, _, _ := g.counts(); in != n; in, _, _ = g.counts() {
		if time.Now().After(deadline) {
			t.Fatalf("consoleauth holds %d checks, want %d", in, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestChecksQueueBeyondMaxInFlight: a burst of checks reaches consoleauth
// MaxInFlight at a time; the others wait for their turn (not failing) and
// all succeed once consoleauth answers. A check whose context ends while it
// waits fails with ErrUnavailable and never reaches consoleauth.
func TestChecksQueueBeyondMaxInFlight(t *testing.T) {
	g, addr := startGate(t)
	c := tokencheck.New(dial(t, addr), time.Second) // the contexts' deadlines win
	reg := prometheus.NewRegistry()
	c.Register(reg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gauges := func() (inFlight, waiting float64) {
		return scrape.Value(t, reg, "vncgate_proxy_token_checks_in_flight"), scrape.Value(t, reg, "vncgate_proxy_token_checks_waiting")
	}

	const burst = 3 * tokencheck.MaxInFlight
	errs := make(chan error, burst)
	var wg sync.WaitGroup
	for range burst {
		wg.Go(func() {
			_, err := c.Check(ctx, "t", "xvpvnc")
			errs <- err
		})
	}
	g.waitHeld(t, tokencheck.MaxInFlight)
	for {
		inFlight, waiting := gauges()
		if inFlight == tokencheck.MaxInFlight && waiting == burst-tokencheck.MaxInFlight {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("gauges with the burst held: %v in flight, %v waiting; want %d and %d",
				inFlight, waiting, tokencheck.MaxInFlight, burst-tokencheck.MaxInFlight)
		}
		time.Sleep(time.Millisecond)
	}

	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShort()
	if _, err := c.Check(short, "t", "xvpvnc"); !errors.Is(err, tokencheck.ErrUnavailable) {
		t.Errorf("a check whose context ends while it waits its turn: got %v, want ErrUnavailable", err)
	}
	if _, _, calls := g.counts(); calls != tokencheck.MaxInFlight {
		t.Errorf("consoleauth got %d checks while %d were held, want %d: the others wait in the proxy",
			calls, tokencheck.MaxInFlight, tokencheck.MaxInFlight)
	}

	close(g.open)
	wg.Wait()
	if inFlight, waiting := gauges(); inFlight != 0 || waiting != 0 {
		t.Errorf("gauges after the burst: %v in flight, %v waiting; want 0 and 0", inFlight, waiting)
	}
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			if failed++; failed <= 3 {
				t.Errorf("a check of the burst: %v", err)
			}
		}
	}
	if _, peak, calls := g.counts(); failed > 0 || peak != tokencheck.MaxInFlight || calls != burst {
		t.Errorf("burst of %d: %d failed, at most %d at consoleauth at once, %d calls; want 0 failed, %d at once, %d calls",
			burst, failed, peak, calls, tokencheck.MaxInFlight, burst)
	}
}
