package tokenstore

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// A probe that times out while etcd answers the store's calls means etcd is
// slow (a burst of sessions), not gone: it must not turn every console
// request into a 503. Once etcd has answered nothing for a probe's timeout,
// the same failure does.
func TestSlowProbeWhileCallsAreAnsweredKeepsEtcdHealthy(t *testing.T) {
	var logs testlog.Buffer
	h := newHealth(nil, time.Hour, time.Minute, slog.New(slog.NewJSONHandler(&logs, nil)))
	h.answered()
	h.report(1, context.DeadlineExceeded, members{})
	if ok, _ := h.state(); !ok || h.current().Err() != nil {
		t.Fatalf("probe timed out right after an answered call: healthy %v, calls cut %v; want healthy and not cut", ok, h.current().Err())
	}

	h.timeout = time.Nanosecond // the last answer is now older than a probe's timeout
	h.report(2, context.DeadlineExceeded, members{})
	if ok, _ := h.state(); ok || h.current().Err() == nil {
		t.Fatalf("probe timed out with no recent answer: healthy %v; want unhealthy and calls cut", ok)
	}
	if n := strings.Count(logs.String(), "etcd unavailable"); n != 1 {
		t.Errorf("got %d 'etcd unavailable' lines, want 1: %s", n, logs.String())
	}
}

// Most members refusing outright is decisive: etcd is declared unavailable
// even right after an answered call, and from a single probe. Most members
// answering Status is an election, not an outage; a timeout from most of
// them says nothing either way.
func TestMembersRefusingOutrightIsAnOutage(t *testing.T) {
	cases := []struct {
		name    string
		m       members
		healthy bool
	}{
		{"two of three refused", members{listed: 3, up: 1, refused: 2}, false},
		{"the only member refused", members{listed: 1, refused: 1}, false},
		{"one of three refused, two up (election)", members{listed: 3, up: 2, refused: 1}, true},
		{"two of three timed out (busy)", members{listed: 3, up: 1}, true},
		{"two of four refused (not most)", members{listed: 4, up: 1, refused: 2}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs testlog.Buffer
			h := newHealth(nil, time.Hour, time.Minute, slog.New(slog.NewJSONHandler(&logs, nil)))
			h.answered() // a call was just answered: "slow, not gone" unless decisive
			h.report(1, c.m.blame(context.DeadlineExceeded), c.m)
			if ok, _ := h.state(); ok != c.healthy || (h.current().Err() == nil) != c.healthy {
				t.Fatalf("got healthy %v (calls cut: %v), want healthy %v", ok, h.current().Err(), c.healthy)
			}
			if c.healthy {
				return
			}
			if err := context.Cause(h.current()); !errors.Is(err, errMembersGone) {
				t.Errorf("calls cut with %v, want errMembersGone", err)
			}
			if n := strings.Count(logs.String(), "etcd unavailable"); n != 1 {
				t.Errorf("got %d 'etcd unavailable' lines, want 1: %s", n, logs.String())
			}
		})
	}
}

// A probe that etcd does not answer ends as soon as Status says most
// members refused, not at its timeout; one etcd answers is never overruled
// by the members' answers.
func TestProbeEndsWhenMostMembersRefuse(t *testing.T) {
	gone := members{listed: 3, up: 1, refused: 2}
	cut := make(chan error, 1)
	h := newHealth(func(ctx context.Context) error {
		<-ctx.Done() // no quorum to answer
		cut <- ctx.Err()
		return ctx.Err()
	}, time.Hour, time.Minute, slog.New(slog.DiscardHandler))
	h.quorate = func(context.Context) members { return gone }
	h.timeout = 2 * time.Second // Status is asked a tenth of it in
	m, err := h.probeOnce(t.Context())
	if !errors.Is(err, errMembersGone) || m != gone {
		t.Fatalf("probe with most members refusing: got %+v, %v; want %+v, errMembersGone", m, err, gone)
	}
	if err := <-cut; !errors.Is(err, context.Canceled) {
		t.Errorf("the probe's read ended with %v, want canceled before its timeout", err)
	}

	h.probe = func(context.Context) error { return nil }
	if m, err := h.probeOnce(t.Context()); err != nil || m != (members{}) {
		t.Errorf("probe answered: got %+v, %v; want no error and members not asked", m, err)
	}
}

// A call that fails as an outage would starts a probe at once, not at the
// next tick; a burst of failures asks for one.
func TestFailedCallStartsAProbe(t *testing.T) {
	probed := make(chan struct{}, 10)
	h := newHealth(func(context.Context) error {
		probed <- struct{}{}
		return nil
	}, time.Hour, time.Millisecond, slog.New(slog.DiscardHandler))
	bound := testworld.Ctx(t)
	ctx, cancel := context.WithCancel(bound)
	done := make(chan struct{})
	go func() { h.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	wait := func(what string) {
		t.Helper()
		select {
		case <-probed:
		case <-bound.Done():
			t.Fatalf("no probe %s", what)
		}
	}
	wait("at start")
	for range 5 {
		h.kickProbe()
	}
	wait("after failed calls") // no tick for an hour: only the kick starts it
}

// A write that fails Unavailable while etcd is healthy (its member died
// under it, or lost its leader) is one its caller sends again, as after a
// new term: during an election it waits rather than becoming a 503. A read
// is not (etcd's client retries those itself), nor any other failure.
func TestUnavailableWriteIsSentAgain(t *testing.T) {
	s := &Store{timeout: time.Minute, health: newHealth(nil, time.Hour, time.Minute, slog.New(slog.DiscardHandler))}
	closed := status.Error(codes.Unavailable, "error reading from server: EOF")
	cases := []struct {
		name   string
		call   func(context.Context) (context.Context, func(error) error)
		err    error
		resend bool
	}{
		{"write, connection closed", s.callWrite, closed, true},
		{"write, leader changed", s.callWrite, rpctypes.ErrLeaderChanged, true},
		{"write, no leader", s.callWrite, rpctypes.ErrNoLeader, true},
		{"write, permission denied", s.callWrite, rpctypes.ErrPermissionDenied, false},
		{"read, connection closed", s.call, closed, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, done := c.call(t.Context())
			if err := done(c.err); errors.Is(err, errNewTerm) != c.resend {
				t.Errorf("got %v, want errNewTerm %v", err, c.resend)
			}
		})
	}
}
