package sessions

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/audit"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/requestid"
	"github.com/vncgate/vncgate/testkit/loopback"
)

// fakeLive is an in-memory Live: slots per instance and published records.
// (The etcd one, package livesessions, is tested against etcd there and
// through the proxies.)
type fakeLive struct {
	mu        sync.Mutex
	slots     map[string]int
	records   map[string]registry.LiveSession
	bytes     map[string]func() (int64, int64)
	down      bool
	published chan string
}

func newFakeLive() *fakeLive {
	return &fakeLive{slots: map[string]int{}, records: map[string]registry.LiveSession{}, bytes: map[string]func() (int64, int64){}, published: make(chan string, 10)}
}

func (f *fakeLive) TakeSlot(_ context.Context, instance string, max int, _ string) (func(), bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, false, errors.New("etcd unreachable")
	}
	if f.slots[instance] >= max {
		return nil, false, nil
	}
	f.slots[instance]++
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.slots[instance]--
			f.mu.Unlock()
		})
	}, true, nil
}

func (f *fakeLive) Publish(rec registry.LiveSession, bytes func() (int64, int64)) func() {
	f.mu.Lock()
	f.records[rec.ID], f.bytes[rec.ID] = rec, bytes
	f.mu.Unlock()
	f.published <- rec.ID
	return func() {
		f.mu.Lock()
		delete(f.records, rec.ID)
		f.mu.Unlock()
	}
}

func (f *fakeLive) taken(instance string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slots[instance]
}

// runWithMessage runs s and reports the goodbye's message.
func runWithMessage(t *testing.T, s *Session) (*running, chan string) {
	t.Helper()
	msgs := make(chan string, 1)
	user, client := loopback.Pair(t)
	r := &running{user: user, goodbye: make(chan proxymetrics.EndReason, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		s.Run(client, func(why proxymetrics.EndReason, msg string) { r.goodbye <- why; msgs <- msg })
	}()
	return r, msgs
}

func TestKillEndsTheSessionWithTheReasonsSentence(t *testing.T) {
	for _, tt := range []struct{ code, want string }{
		{"stopped", "the instance was stopped"},
		{"", "an administrator closed the console"},
		{"no such code", "an administrator closed the console"},
	} {
		t.Run(tt.code, func(t *testing.T) {
			w := newCoreWorld(t, nil)
			s, ref := w.admit(w.token("t1", "i1"))
			if ref != nil {
				t.Fatal(ref)
			}
			r, msgs := runWithMessage(t, s)
			r.echo(t, "hello")
			if w.core.Kill("not-live", tt.code, "op") {
				t.Error("Kill of an unknown id: got true")
			}
			if !w.core.Kill(s.ID, tt.code, "op") {
				t.Fatal("Kill: got false, want the live session found")
			}
			if why := r.ended(t); why != proxymetrics.EndRevoked {
				t.Errorf("reason: got %v, want revoked", why)
			}
			if got := <-msgs; got != tt.want {
				t.Errorf("message: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestClusterCapAndLiveRecords(t *testing.T) {
	live := newFakeLive()
	w := newCoreWorld(t, func(c *Config) { c.Live, c.MaxPerInstance, c.ProxyName = live, 2, "p1" })
	// Another proxy holds one of the instance's two slots.
	other, _, _ := live.TakeSlot(context.Background(), "i1", 2, "elsewhere")
	s, ref := w.admit(w.token("t1", "i1"))
	if ref != nil {
		t.Fatal(ref)
	}
	if _, ref := w.admit("t1"); ref == nil || ref.Why != proxymetrics.RefusedTooManySessions || ref.Message != ErrTooMany.Error() {
		t.Fatalf("third session across the proxies: got %v, want too many sessions", ref)
	}
	r := run(t, s)
	if id := <-live.published; id != s.ID {
		t.Fatalf("published %q, want %q", id, s.ID)
	}
	r.echo(t, "twelve bytes")
	live.mu.Lock()
	rec, bytes := live.records[s.ID], live.bytes[s.ID]
	live.mu.Unlock()
	if rec.InstanceUUID != "i1" || rec.Proxy != "p1" || rec.ConsoleType != "novnc" || rec.Client != "192.0.2.1" || rec.Started.IsZero() {
		t.Errorf("record: got %+v", rec)
	}
	// Counted once each write returned: the echo may be read just before.
	deadline := time.Now().Add(10 * time.Second)
	for toClient, toServer := bytes(); toClient != 12 || toServer != 12; toClient, toServer = bytes() {
		if time.Now().After(deadline) {
			t.Fatalf("bytes so far: got %d to the client, %d to the server, want 12 and 12", toClient, toServer)
		}
		time.Sleep(time.Millisecond)
	}
	r.user.Close()
	r.ended(t)
	if n := live.taken("i1"); n != 1 {
		t.Errorf("slots after the session ended: got %d, want 1 (the other proxy's)", n)
	}
	live.mu.Lock()
	_, still := live.records[s.ID]
	live.mu.Unlock()
	if still {
		t.Error("record still published after the session ended")
	}
	other()
}

// TestClusterCapFailsOpen: with the store unreachable, sessions are
// admitted under the local cap alone, with one log line.
func TestClusterCapFailsOpen(t *testing.T) {
	live := newFakeLive()
	live.down = true
	w := newCoreWorld(t, func(c *Config) { c.Live, c.MaxPerInstance = live, 2 })
	for range 2 {
		s, ref := w.admit(w.token("t1", "i1"))
		if ref != nil {
			t.Fatalf("etcd down: got %v, want admitted", ref)
		}
		s.Abort(proxymetrics.RefusedClientGone, errors.New("test"))
	}
	if n := strings.Count(w.logs.String(), "cluster-wide session cap unavailable"); n != 1 {
		t.Errorf("log lines about the outage: got %d, want 1", n)
	}
	s1, _ := w.admit("t1")
	s2, _ := w.admit("t1")
	if _, ref := w.admit("t1"); ref == nil || ref.Why != proxymetrics.RefusedTooManySessions {
		t.Errorf("over the local cap while etcd is down: got %v, want too many sessions", ref)
	}
	s1.Abort(proxymetrics.RefusedClientGone, nil)
	s2.Abort(proxymetrics.RefusedClientGone, nil)
}

// idChecker records the request id each check carried in its metadata.
type idChecker struct {
	*checker
	ids chan string
}

func (c idChecker) Check(ctx context.Context, token, consoleType string) (*consoleauthv1.ConnectInfo, error) {
	md, _ := metadata.FromOutgoingContext(ctx)
	c.ids <- strings.Join(md.Get(requestid.MetadataKey), ",")
	return c.checker.Check(ctx, token, consoleType)
}

// TestAuditEvents: one event per refusal and per session end, every field
// filled where it applies, never the token; the session id is the request
// id of the token check.
func TestAuditEvents(t *testing.T) {
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	ids := make(chan string, 10)
	var log *audit.Logger
	w := newCoreWorld(t, func(c *Config) {
		c.Checker = idChecker{c.Checker.(*checker), ids}
		var err error
		if log, err = audit.Open(audit.Options{File: file, Log: c.Log}); err != nil {
			t.Fatal(err)
		}
		c.Audit, c.ProxyName = log, "p1"
		c.EndCode = func(proxymetrics.EndReason) int { return 4001 }
		c.RefusalCode = func(proxymetrics.Refusal) int { return 4002 }
	})
	token := "secret-token-0123456789"
	w.token(token, "i1")
	w.auth.set(token, &consoleauthv1.ConnectInfo{InstanceUuid: "i1", Host: strings.Split(w.vnc, ":")[0], Port: port(w.vnc), MintedBy: "alice"})
	if _, ref := w.admit("wrong-token"); ref == nil {
		t.Fatal("wrong token admitted")
	}
	<-ids
	s, ref := w.admit(token)
	if ref != nil {
		t.Fatal(ref)
	}
	if id := <-ids; id != s.ID {
		t.Errorf("request id of the check: got %q, want the session id %q", id, s.ID)
	}
	r := run(t, s)
	r.echo(t, "abc")
	w.core.Kill(s.ID, "stopped", "op")
	r.ended(t)
	w.core.Refuse(nil, &Refusal{Why: proxymetrics.RefusedBadRequest, Message: "no token", Client: "198.51.100.2"})
	log.Close()

	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), token) || strings.Contains(w.logs.String(), token) {
		t.Fatal("the token is in the audit file or the log")
	}
	var events []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		events = append(events, e)
	}
	if len(events) != 3 {
		t.Fatalf("events: got %d, want 3:\n%s", len(events), b)
	}
	fields := []string{"event", "time", "session", "request_id", "instance", "console_type", "proxy", "client", "minted_by",
		"token_hash", "started", "duration_seconds", "bytes_to_client", "bytes_to_server", "reason", "ended_by", "message", "code"}
	for i, e := range events {
		for _, f := range fields {
			if _, ok := e[f]; !ok {
				t.Errorf("event %d lacks %q: %v", i, f, e)
			}
		}
	}
	want := []map[string]any{
		{"event": "refusal", "reason": "token_invalid", "client": "192.0.2.1", "proxy": "p1", "console_type": "novnc", "code": 4002.0,
			"token_hash": registry.HashPrefix(registry.TokenHash("wrong-token")), "instance": ""},
		{"event": "session_end", "reason": "revoked", "session": s.ID, "request_id": s.ID, "instance": "i1", "minted_by": "alice",
			"ended_by": "proxy", "message": "the instance was stopped", "code": 4001.0, "bytes_to_client": 3.0, "bytes_to_server": 3.0,
			"token_hash": registry.HashPrefix(registry.TokenHash(token)), "client": "192.0.2.1"},
		{"event": "refusal", "reason": "bad_request", "client": "198.51.100.2", "message": "no token", "session": ""},
	}
	for i, w := range want {
		for k, v := range w {
			if events[i][k] != v {
				t.Errorf("event %d %s: got %v, want %v", i, k, events[i][k], v)
			}
		}
	}
	if d, _ := events[1]["duration_seconds"].(float64); d <= 0 {
		t.Errorf("session_end duration: got %v, want > 0", events[1]["duration_seconds"])
	}
	if !strings.Contains(w.logs.String(), "audit=true event=session_end") {
		t.Errorf("the log lacks the audit event:\n%s", w.logs.String())
	}
}

func port(hostport string) int32 {
	var p int32
	_, after, _ := strings.Cut(hostport, ":")
	for _, c := range after {
		p = p*10 + int32(c-'0')
	}
	return p
}

// TestDrainUntil: an operator's drain turns readiness red, refuses new
// sessions after the delay, and ends live ones at the deadline as a
// shutdown does.
func TestDrainUntil(t *testing.T) {
	w := newCoreWorld(t, nil)
	s, ref := w.admit(w.token("t1", "i1"))
	if ref != nil {
		t.Fatal(ref)
	}
	r := run(t, s)
	r.echo(t, "x")
	w.core.DrainUntil(0, time.Now().Add(200*time.Millisecond))
	if !w.core.Draining() {
		t.Error("readiness still green after the drain")
	}
	if why := r.ended(t); why != proxymetrics.EndShutdown {
		t.Errorf("live session at the deadline: got %v, want shutdown", why)
	}
	if _, ref := w.admit("t1"); ref == nil || ref.Why != proxymetrics.RefusedShutdown {
		t.Errorf("new session after the drain: got %v, want refused (shutdown)", ref)
	}
}
