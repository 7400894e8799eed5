package sessions

// Tests of the session core, run once for both proxies: each proxy's tests
// only check how its edge answers the core's reasons.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/scrape"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// checker answers from a map; a token mapped to an error fails with it.
// When gate is set, Check tells entered and waits for gate to close.
type checker struct {
	mu      sync.Mutex
	tokens  map[string]any // *consoleauthv1.ConnectInfo or error
	entered chan struct{}
	gate    chan struct{}
}

func (c *checker) Check(ctx context.Context, token, consoleType string) (*consoleauthv1.ConnectInfo, error) {
	c.mu.Lock()
	v, entered, gate := c.tokens[token], c.entered, c.gate
	c.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		<-gate
	}
	switch v := v.(type) {
	case *consoleauthv1.ConnectInfo:
		return v, nil
	case error:
		return nil, v
	}
	return nil, fmt.Errorf("%w: unknown", tokencheck.ErrInvalid)
}

func (c *checker) set(token string, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens[token] = v
}

// coreWorld is a Core with an echo VNC server, its log and its metrics.
type coreWorld struct {
	core    *Core
	auth    *checker
	vnc     string // the echo server's host:port
	logs    *testlog.Buffer
	metrics *prometheus.Registry
}

func newCoreWorld(t *testing.T, adjust func(*Config)) *coreWorld {
	t.Helper()
	w := &coreWorld{auth: &checker{tokens: map[string]any{}}, logs: &testlog.Buffer{}, metrics: prometheus.NewRegistry()}
	w.vnc = loopback.Echo(t)
	cfg := Config{
		ConsoleType: "novnc",
		Checker:     w.auth,
		Dialer:      backend.Dialer{Timeout: 5 * time.Second},
		Metrics:     proxymetrics.New(w.metrics),
		Log:         slog.New(slog.NewTextHandler(w.logs, nil)),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	w.core = New(cfg)
	t.Cleanup(func() {
		w.core.EndAll()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.core.Wait(ctx); err != nil {
			t.Errorf("%d sessions still live at the end", w.core.Len())
		}
	})
	return w
}

// token registers a token for instance at the echo server.
func (w *coreWorld) token(name, instance string) string {
	host, port, _ := net.SplitHostPort(w.vnc)
	var p int32
	fmt.Sscan(port, &p)
	w.auth.set(name, &consoleauthv1.ConnectInfo{InstanceUuid: instance, Host: host, Port: p})
	return name
}

func (w *coreWorld) admit(token string) (*Session, *Refusal) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return w.core.Admit(ctx, Attempt{Start: time.Now(), ClientIP: "192.0.2.1", Token: token})
}

// counted is a sample of one of the proxies' metrics.
func (w *coreWorld) counted(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := w.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no sample %s{%s=%q}", name, label, value)
	return 0
}

// running is a session being relayed: the user's end of the client
// connection, and how the session ended once it did.
type running struct {
	user    net.Conn
	goodbye chan proxymetrics.EndReason // the reason the core gave the edge
	done    chan struct{}
}

// run starts s on a loopback TCP pair, as an edge does after its answer.
func run(t *testing.T, s *Session) *running {
	t.Helper()
	user, client := loopback.Pair(t)
	r := &running{user: user, goodbye: make(chan proxymetrics.EndReason, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		s.Run(client, func(why proxymetrics.EndReason, _ string) { r.goodbye <- why })
	}()
	return r
}

// ended waits for the session to end and returns the reason the edge was
// given, 0 when the proxy did not end it.
func (r *running) ended(t *testing.T) proxymetrics.EndReason {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("session did not end")
	}
	select {
	case why := <-r.goodbye:
		return why
	default:
		return 0
	}
}

func (r *running) echo(t *testing.T, msg string) {
	t.Helper()
	r.user.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(r.user, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r.user, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q (%v), want %q", got, err, msg)
	}
}

func TestAdmitRefusals(t *testing.T) {
	unreachable := func() int32 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return int32(l.Addr().(*net.TCPAddr).Port)
	}()
	const tok = "s3cr3t-t0ken"
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, w *coreWorld) string // returns the token to admit
		want   proxymetrics.Refusal
		counts bool // as a failed token of the client's
	}{
		{"unknown token", func(*testing.T, *coreWorld) string { return "nope" }, proxymetrics.RefusedTokenInvalid, true},
		{"no token", func(*testing.T, *coreWorld) string { return "" }, proxymetrics.RefusedTokenInvalid, true},
		{"wrong console type", func(_ *testing.T, w *coreWorld) string {
			w.auth.set(tok, fmt.Errorf("%w: minted for xvpvnc", tokencheck.ErrWrongType))
			return tok
		}, proxymetrics.RefusedWrongType, false},
		{"console moved", func(_ *testing.T, w *coreWorld) string {
			w.auth.set(tok, fmt.Errorf("%w: port changed", tokencheck.ErrMoved))
			return tok
		}, proxymetrics.RefusedConsoleMoved, false},
		{"consoleauth unavailable", func(_ *testing.T, w *coreWorld) string {
			w.auth.set(tok, fmt.Errorf("%w: etcd down at 10.0.0.1:2379", tokencheck.ErrUnavailable))
			return tok
		}, proxymetrics.RefusedUnavailable, false},
		{"vnc server unreachable", func(_ *testing.T, w *coreWorld) string {
			w.auth.set(tok, &consoleauthv1.ConnectInfo{InstanceUuid: "i", Host: "127.0.0.1", Port: unreachable})
			return tok
		}, proxymetrics.RefusedVNCUnreachable, false},
		{"too many sessions of the instance", func(t *testing.T, w *coreWorld) string {
			s, r := w.admit(w.token(tok, "i"))
			if r != nil {
				t.Fatal(r)
			}
			t.Cleanup(func() { s.Abort(proxymetrics.RefusedClientGone, nil) })
			return tok
		}, proxymetrics.RefusedTooManySessions, false},
		{"draining", func(_ *testing.T, w *coreWorld) string { w.core.Drain(); return w.token(tok, "i") }, proxymetrics.RefusedShutdown, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ban := failban.New(1, time.Minute) // one failed token throttles
			w := newCoreWorld(t, func(c *Config) { c.FailBan, c.MaxPerInstance = ban, 1 })
			token := tc.setup(t, w)
			before := w.counted(t, "vncgate_proxy_sessions_total", "result", tc.want.String())
			s, r := w.admit(token)
			if s != nil || r == nil || r.Why != tc.want {
				t.Fatalf("got session %v refusal %v, want refused %s", s, r, tc.want)
			}
			if r.Message == "" || strings.ContainsAny(r.Message, ":0123456789") {
				t.Errorf("message %q: want a sentence without internal details", r.Message)
			}
			if got := w.counted(t, "vncgate_proxy_sessions_total", "result", tc.want.String()); got != before+1 {
				t.Errorf("sessions_total{result=%s}: got %v, want %v", tc.want, got, before+1)
			}
			if got := ban.Throttled("192.0.2.1", token); got != tc.counts {
				t.Errorf("counted as an invalid token: got %v, want %v", got, tc.counts)
			}
			if token != "" && strings.Contains(w.logs.String(), token) {
				t.Errorf("the token reached the log:\n%s", w.logs)
			}
		})
	}
}

// A revocation stamped after the token check but handled before the session
// is registered still ends it: a slow consoleauth answers meanwhile.
func TestRevocationDuringTheHandshake(t *testing.T) {
	w := newCoreWorld(t, nil)
	tok := w.token("t", "inst")
	w.auth.entered, w.auth.gate = make(chan struct{}, 1), make(chan struct{})
	type result struct {
		s *Session
		r *Refusal
	}
	admitted := make(chan result, 1)
	go func() { s, r := w.admit(tok); admitted <- result{s, r} }()
	<-w.auth.entered
	w.core.Revoke("inst", registry.Revocation{Reason: "the instance was deleted", RevokedAt: time.Now()})
	close(w.auth.gate)
	got := <-admitted
	if got.s != nil || got.r == nil || got.r.Why != proxymetrics.RefusedRevoked {
		t.Fatalf("got %v %v, want refused as revoked", got.s, got.r)
	}
	if w.core.Len() != 0 {
		t.Errorf("live sessions: got %d, want 0", w.core.Len())
	}
	// A check after the revocation is not touched by it.
	w.auth.entered, w.auth.gate = nil, nil
	s, r := w.admit(tok)
	if r != nil {
		t.Fatalf("admission after the revocation: %v", r)
	}
	run(t, s).echo(t, "later session unaffected")
}

func TestRevokeEndsOnlyOlderSessionsOfTheInstance(t *testing.T) {
	w := newCoreWorld(t, nil)
	start := func(token, instance string) *running {
		s, r := w.admit(w.token(token, instance))
		if r != nil {
			t.Fatal(r)
		}
		rn := run(t, s)
		rn.echo(t, "hello")
		return rn
	}
	a, b := start("a", "A"), start("b", "B")
	time.Sleep(2 * time.Millisecond) // RevokedAt after a's check, whatever the clock's grain
	w.core.Revoke("A", registry.Revocation{Reason: "stopped", RevokedAt: time.Now()})
	if why := a.ended(t); why != proxymetrics.EndRevoked {
		t.Errorf("A's session: got end %v, want revoked", why)
	}
	b.echo(t, "B's session unaffected")
	later := start("a", "A")
	later.echo(t, "a newer session of A unaffected")
	if got := w.counted(t, "vncgate_proxy_session_ended_total", "reason", "revoked"); got != 1 {
		t.Errorf("session_ended_total{reason=revoked}: got %v, want 1", got)
	}
	if !strings.Contains(w.logs.String(), `message=stopped reason=revoked`) {
		t.Errorf("no session-ended record with the revocation's reason:\n%s", w.logs)
	}
}

// The limits end sessions with their reason, never before their time.
func TestLimits(t *testing.T) {
	const d = 300 * time.Millisecond
	for _, tc := range []struct {
		name   string
		adjust func(*Config)
		expiry time.Duration // of the token; 0: none
		want   proxymetrics.EndReason
	}{
		{"idle timeout", func(c *Config) { c.IdleTimeout = d }, 0, proxymetrics.EndIdleTimeout},
		{"maximum length", func(c *Config) { c.MaxSessionLength = d }, 0, proxymetrics.EndMaxLength},
		{"token expiry when enforced", func(c *Config) { c.EnforceSessionTimeout = true }, d, proxymetrics.EndTokenExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newCoreWorld(t, tc.adjust)
			tok := w.token("t", "i")
			if tc.expiry > 0 {
				info := w.auth.tokens[tok].(*consoleauthv1.ConnectInfo)
				info.ExpiresAt = timestamppb.New(time.Now().Add(tc.expiry))
			}
			begin := time.Now()
			s, r := w.admit(tok)
			if r != nil {
				t.Fatal(r)
			}
			rn := run(t, s)
			// Activity postpones only the idle timeout.
			var last time.Time
			for range 3 {
				rn.echo(t, "tick")
				last = time.Now()
			}
			if why := rn.ended(t); why != tc.want {
				t.Fatalf("got end %v, want %v", why, tc.want)
			}
			from := begin
			if tc.want == proxymetrics.EndIdleTimeout {
				from = last
			}
			if took := time.Since(from); took < d-10*time.Millisecond {
				t.Errorf("ended %v after it started (or its last byte), want at least %v", took, d)
			}
			if got := w.counted(t, "vncgate_proxy_session_ended_total", "reason", tc.want.String()); got != 1 {
				t.Errorf("session_ended_total{reason=%s}: got %v, want 1", tc.want, got)
			}
		})
	}
}

// A session ended between Admit and Run (revoked while the edge answered
// its client) ends as soon as Run starts, with the edge's goodbye.
func TestEndBeforeRun(t *testing.T) {
	w := newCoreWorld(t, nil)
	s, r := w.admit(w.token("t", "i"))
	if r != nil {
		t.Fatal(r)
	}
	time.Sleep(2 * time.Millisecond)
	w.core.Revoke("i", registry.Revocation{Reason: "stopped", RevokedAt: time.Now()})
	if why := run(t, s).ended(t); why != proxymetrics.EndRevoked {
		t.Errorf("got end %v, want revoked", why)
	}
}

func TestShutdownEndsSessionsAndRefusesNewOnes(t *testing.T) {
	w := newCoreWorld(t, nil)
	s, r := w.admit(w.token("t", "i"))
	if r != nil {
		t.Fatal(r)
	}
	rn := run(t, s)
	rn.echo(t, "hello")
	w.core.EndAll()
	if why := rn.ended(t); why != proxymetrics.EndShutdown {
		t.Errorf("got end %v, want shutdown", why)
	}
	if _, r := w.admit("t"); r == nil || r.Why != proxymetrics.RefusedShutdown {
		t.Errorf("after EndAll: got %v, want refused for shutdown", r)
	}
}

func TestSessionEndedByEitherSide(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(rn *running, vncSide func())
		want  string
	}{
		{"client", func(rn *running, _ func()) { rn.user.Close() }, "client_closed"},
		{"server", func(rn *running, vnc func()) {
			vnc()
			io.Copy(io.Discard, rn.user) // the half-close reaches the client,
			rn.user.Close()              // which closes in turn
		}, "server_closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newCoreWorld(t, nil)
			vncClosed := make(chan struct{})
			w.vnc = loopback.Serve(t, func(c net.Conn) {
				io.CopyN(c, c, 5)
				clientGone := make(chan struct{})
				go func() { io.Copy(io.Discard, c); close(clientGone) }()
				select { // then it closes, as VNC servers do
				case <-vncClosed:
				case <-clientGone:
				}
			})
			s, r := w.admit(w.token("t", "i"))
			if r != nil {
				t.Fatal(r)
			}
			rn := run(t, s)
			rn.echo(t, "hello")
			tc.close(rn, func() { close(vncClosed) })
			if why := rn.ended(t); why != 0 {
				t.Errorf("the proxy ended it (%v), want the %s", why, tc.name)
			}
			if got := w.counted(t, "vncgate_proxy_session_ended_total", "reason", tc.want); got != 1 {
				t.Errorf("session_ended_total{reason=%s}: got %v, want 1", tc.want, got)
			}
			if n := strings.Count(w.logs.String(), `msg="session ended"`); n != 1 {
				t.Errorf("%d session-ended records, want 1:\n%s", n, w.logs)
			}
		})
	}
}

func TestAbortFreesTheSessionAndCountsIt(t *testing.T) {
	w := newCoreWorld(t, func(c *Config) { c.MaxPerInstance = 1 })
	s, r := w.admit(w.token("t", "i"))
	if r != nil {
		t.Fatal(r)
	}
	s.Abort(proxymetrics.RefusedClientGone, errors.New("client went away before the answer"))
	if got := w.counted(t, "vncgate_proxy_sessions_total", "result", "client_gone"); got != 1 {
		t.Errorf("sessions_total{result=client_gone}: got %v, want 1", got)
	}
	if s, r = w.admit("t"); r != nil {
		t.Fatalf("the aborted session still holds the instance's place: %v", r)
	}
	run(t, s).echo(t, "hello")
}

// An RFB-aware session runs the handshake with both sides before the relay;
// what it cannot settle is a refusal for the edge to answer, counted once.
func TestRFBAwareSessions(t *testing.T) {
	demo := func(t *testing.T) (*rfb.Server, string) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := rfb.NewServer(rfb.Options{Width: 32, Height: 24})
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		return srv, l.Addr().String()
	}
	t.Run("a view-only session drops input and relays the rest", func(t *testing.T) {
		w := newCoreWorld(t, nil)
		srv, addr := demo(t)
		w.vnc = addr
		viewOnly := w.token("view", "i")
		w.auth.tokens[viewOnly].(*consoleauthv1.ConnectInfo).ViewOnly = true
		normal := w.token("normal", "i")
		for _, tok := range []string{viewOnly, normal} {
			s, r := w.admit(tok)
			if r != nil {
				t.Fatal(r)
			}
			rn := run(t, s)
			rn.user.SetDeadline(time.Now().Add(30 * time.Second))
			si, err := rfb.Handshake(rn.user)
			if err != nil {
				t.Fatalf("%s: RFB handshake through the proxy: %v", tok, err)
			}
			key := uint32('v')
			if tok == normal {
				key = 'n'
			}
			if err := rfb.SendKey(rn.user, key, true); err != nil {
				t.Fatal(err)
			}
			if err := rfb.RequestUpdate(rn.user, si, false); err != nil { // relayed: the screen still updates
				t.Fatal(err)
			}
			if _, err := rfb.ReadUpdate(rn.user, si); err != nil {
				t.Fatalf("%s: no screen update: %v", tok, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := srv.WaitKey(ctx, 'n'); err != nil {
			t.Fatalf("the normal session's key did not arrive: %v", err)
		}
		for _, k := range srv.Keys() { // the view-only key was sent first
			if k.Keysym == 'v' {
				t.Errorf("a view-only session's key reached the VM: %+v", k)
			}
		}
		if !strings.Contains(w.logs.String(), "view_only=true") || !strings.Contains(w.logs.String(), "rfb_version=3.8") {
			t.Errorf("the session's log does not say view_only and the RFB version:\n%s", w.logs)
		}
	})
	t.Run("a server that is not VNC", func(t *testing.T) {
		w := newCoreWorld(t, func(c *Config) { c.RFB = &rfbproxy.Config{AuthSchemes: []string{"none"}} })
		w.vnc = loopback.Serve(t, func(c net.Conn) { io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n") })
		s, r := w.admit(w.token("t", "i"))
		if r != nil {
			t.Fatal(r)
		}
		rn := run(t, s)
		rn.user.SetDeadline(time.Now().Add(30 * time.Second))
		_, err := rfb.Handshake(rn.user) // the client is told in RFB
		if err == nil || !strings.Contains(err.Error(), "Unable to negotiate security with server") {
			t.Errorf("client's handshake: got %v, want RFB's failure reason", err)
		}
		if why := rn.ended(t); why != 0 {
			t.Errorf("the relay ran and ended with %v", why)
		}
		if got := w.counted(t, "vncgate_proxy_sessions_total", "result", "not_vnc"); got != 1 {
			t.Errorf("sessions_total{result=not_vnc}: got %v, want 1", got)
		}
		if got := w.counted(t, "vncgate_proxy_sessions_total", "result", "relayed"); got != 0 {
			t.Errorf("sessions_total{result=relayed}: got %v, want 0", got)
		}
	})
}

// A throttled address is slowed down, never refused: a valid token that
// shares the guesser's address and token prefix still connects, within the
// handshake.
func TestThrottledClientIsCheckedNotRefused(t *testing.T) {
	ban := failban.New(1, time.Minute)
	w := newCoreWorld(t, func(c *Config) { c.FailBan = ban })
	if _, r := w.admit("guess"); r == nil || r.Why != proxymetrics.RefusedTokenInvalid {
		t.Fatalf("guess: got %v, want token_invalid", r)
	}
	// A valid token in the guess's key: throttled.
	tok := ""
	for i := 0; tok == ""; i++ {
		if c := fmt.Sprintf("valid-%d", i); ban.Throttled("192.0.2.1", c) {
			tok = c
		}
	}
	w.token(tok, "i")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, r := w.core.Admit(ctx, Attempt{Start: time.Now(), ClientIP: "192.0.2.1", Token: tok})
	if r != nil {
		t.Fatalf("a valid token from a throttled address: got %v, want a session", r)
	}
	run(t, s).echo(t, "connected")
	if got := scrape.Value(t, w.metrics, "vncgate_proxy_token_checks_throttled_total"); got != 1 {
		t.Errorf("token_checks_throttled_total: got %v, want 1", got)
	}
	if !strings.Contains(w.logs.String(), "token check throttled") {
		t.Errorf("no log line for the throttled check:\n%s", w.logs)
	}
	if strings.Contains(w.logs.String(), tok) {
		t.Errorf("the token reached the log:\n%s", w.logs)
	}
}

// Revocations are ordered by etcd revision when both sides have one: a
// handshake in flight whose token is older than the revocation is refused
// even when the revocation's clock says otherwise, and a newer token is not.
func TestRevocationDuringTheHandshakeByRevision(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tokenRev  int64
		revokedAt time.Time
		revoked   bool
	}{
		{"older token, consoleauth's clock behind", 10, time.Now().Add(-time.Hour), true},
		{"newer token, consoleauth's clock ahead", 30, time.Now().Add(time.Hour), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newCoreWorld(t, nil)
			tok := w.token("t", "inst")
			w.auth.tokens[tok].(*consoleauthv1.ConnectInfo).TokenRevision = tc.tokenRev
			w.auth.entered, w.auth.gate = make(chan struct{}, 1), make(chan struct{})
			type result struct {
				s *Session
				r *Refusal
			}
			admitted := make(chan result, 1)
			go func() { s, r := w.admit(tok); admitted <- result{s, r} }()
			<-w.auth.entered
			w.core.Revoke("inst", registry.Revocation{Reason: "the instance was stopped", RevokedAt: tc.revokedAt, Revision: 20})
			close(w.auth.gate)
			got := <-admitted
			if tc.revoked {
				if got.r == nil || got.r.Why != proxymetrics.RefusedRevoked || got.r.Message != "the instance was stopped" {
					t.Fatalf("got %v %v, want refused as revoked with the reason", got.s, got.r)
				}
				return
			}
			if got.r != nil {
				t.Fatalf("got %v, want a session", got.r)
			}
			run(t, got.s).echo(t, "a newer token's session")
		})
	}
}
