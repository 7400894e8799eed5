package authserver

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
)

// answer is one call of the load and how it was answered.
type answer struct {
	call       string
	start, end time.Time
	code       codes.Code
	msg        string
}

// load calls the service from one goroutine per call, each every 20 ms
// (one call in flight per goroutine), recording every answer, until stop.
type load struct {
	mu      sync.Mutex
	answers []answer
	changed chan struct{} // closed and replaced on every answer
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

func startLoad(ctx context.Context, calls map[string]func(context.Context) error) *load {
	l := &load{changed: make(chan struct{})}
	lctx, stop := context.WithCancel(ctx)
	l.stop = stop
	for name, call := range calls {
		l.wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for lctx.Err() == nil {
				start := time.Now()
				// ctx, not lctx: stopping the load lets calls finish.
				st := status.Convert(call(ctx))
				l.mu.Lock()
				l.answers = append(l.answers, answer{call: name, start: start, end: time.Now(), code: st.Code(), msg: st.Message()})
				close(l.changed)
				l.changed = make(chan struct{})
				l.mu.Unlock()
				select {
				case <-lctx.Done():
				case <-tick.C:
				}
			}
		})
	}
	return l
}

// await waits until ok holds for the answers so far, or fails t when ctx
// ends first.
func (l *load) await(ctx context.Context, t *testing.T, what string, ok func([]answer) bool) {
	t.Helper()
	for {
		l.mu.Lock()
		done, changed := ok(l.answers), l.changed
		l.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
}

func (l *load) finish() []answer {
	l.stop()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.answers
}

// count returns how many answers match.
func count(as []answer, match func(answer) bool) int {
	n := 0
	for _, a := range as {
		if match(a) {
			n++
		}
	}
	return n
}

// TestQuorumLoss runs consoleauth on a 3-member etcd cluster under a steady
// load of mints, checks, introspections and revocations, and stops two
// members: every call is then answered UNAVAILABLE with one clean sentence
// (no key path, no etcd error), each well before etcd_timeout, calls in
// flight when the quorum went included; the outage is logged once, its end
// once. Once the members are back, mints work again.
func TestQuorumLoss(t *testing.T) {
	t.Parallel()
	cluster, cli := etcd.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	w := newWorldOn(t, cli, tokenstore.Options{Timeout: tokenstore.DefaultTimeout})
	token := w.mint(t, vm1)

	l := startLoad(ctx, map[string]func(context.Context) error{
		"mint": func(ctx context.Context) error {
			_, err := w.client.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{
				ServerId: vm1, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: TypeNoVNC}})
			return err
		},
		"check": func(ctx context.Context) error {
			_, err := w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
			return err
		},
		"introspect": func(ctx context.Context) error {
			_, err := w.client.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
			return err
		},
		"revoke": func(ctx context.Context) error {
			_, err := w.client.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: vm2, Reason: "stopped"})
			return err
		},
	})
	t.Cleanup(func() { l.finish() })
	calls := []string{"mint", "check", "introspect", "revoke"}
	// Per call, how many answers of code came from calls started after from.
	each := func(code codes.Code, from time.Time, n int) func([]answer) bool {
		return func(as []answer) bool {
			for _, c := range calls {
				if count(as, func(a answer) bool { return a.call == c && a.code == code && !a.start.Before(from) }) < n {
					return false
				}
			}
			return true
		}
	}
	l.await(ctx, t, "every call to succeed under load", each(codes.OK, time.Time{}, 3))

	lost := time.Now()
	cluster.Kill(0, 1)
	stopped := time.Now()
	l.await(ctx, t, "every call to be refused after the quorum went", each(codes.Unavailable, stopped, 5))
	if w.store.Healthy() {
		t.Error("store healthy with two members of three down")
	}

	back := time.Now()
	if err := cluster.Start(0, 1); err != nil {
		t.Fatalf("start the members again: %v", err)
	}
	restarted := time.Now()
	l.await(ctx, t, "a mint started after the members came back to succeed", func(as []answer) bool {
		return count(as, func(a answer) bool { return a.call == "mint" && a.code == codes.OK && a.start.After(back) }) > 0
	})
	answers := l.finish()

	var worst, worstInFlight time.Duration
	refused, inFlight := 0, 0
	for _, a := range answers {
		took := a.end.Sub(a.start)
		if a.code == codes.OK {
			continue
		}
		refused++
		if a.code != codes.Unavailable || a.msg != UnavailableMessage {
			t.Errorf("%s at +%v: got %s %q, want Unavailable %q", a.call, a.start.Sub(lost), a.code, a.msg, UnavailableMessage)
		}
		// The fast path: the answer never waited for etcd_timeout.
		if took >= tokenstore.DefaultTimeout {
			t.Errorf("%s at +%v answered after %v, at etcd_timeout (%v) or later", a.call, a.start.Sub(lost), took, tokenstore.DefaultTimeout)
		}
		worst = max(worst, took)
		if a.start.Before(stopped) {
			inFlight++
			worstInFlight = max(worstInFlight, took)
		}
	}
	firstBack := time.Time{}
	for _, a := range answers {
		if a.call == "mint" && a.code == codes.OK && a.start.After(back) && (firstBack.IsZero() || a.end.Before(firstBack)) {
			firstBack = a.end
		}
	}
	t.Logf("%d calls, %d refused; worst refusal %v; %d refused calls were in flight while the members were killed (worst %v); "+
		"killing took %v; the members were back after %v, and a mint succeeded %v after their restart began",
		len(answers), refused, worst, inFlight, worstInFlight, stopped.Sub(lost), restarted.Sub(back), firstBack.Sub(back))

	// One warning for the outage, one note for its end: not one per call
	// or per probe.
	var warns, backs []string
	sc := bufio.NewScanner(strings.NewReader(w.log.String()))
	for sc.Scan() {
		var rec struct{ Level, Msg string }
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		switch {
		case rec.Level == "WARN" || rec.Level == "ERROR":
			warns = append(warns, sc.Text())
		case strings.HasPrefix(rec.Msg, "etcd available again"):
			backs = append(backs, sc.Text())
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "etcd unavailable") {
		t.Errorf("warnings: got %d, want exactly one saying etcd is unavailable:\n%s", len(warns), strings.Join(warns, "\n"))
	}
	if len(backs) != 1 {
		t.Errorf("recoveries logged: got %d, want 1:\n%s", len(backs), strings.Join(backs, "\n"))
	}
	if strings.Contains(w.log.String(), token) {
		t.Error("a token was logged")
	}
}
