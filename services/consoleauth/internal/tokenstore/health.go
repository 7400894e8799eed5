package tokenstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Defaults of the health probe (Options.ProbeInterval, ProbeTimeout): etcd
// that has lost its quorum is found within ProbeInterval + ProbeTimeout,
// so that every call in flight or arriving then is answered within a
// second, and one that is back is used again within ProbeInterval.
const (
	DefaultProbeInterval = 300 * time.Millisecond
	DefaultProbeTimeout  = 500 * time.Millisecond
	// DefaultElectionGrace (Options.ElectionGrace) is how long etcd may
	// answer no read while most of its members are up (electing a leader,
	// which takes one to three seconds with etcd's default timing) before
	// it is declared unavailable.
	DefaultElectionGrace = 3 * time.Second
)

// health follows whether etcd answers a linearizable read, from probes
// started every interval (each bounded by timeout, so a slow one does not
// delay the next). A member without a quorum is reachable but answers no
// linearizable read, so the client's connection state would not do.
//
// While etcd answers, up is a context that is canceled, with the probe's
// error as its cause, the moment a probe fails: every etcd call of the store
// runs under it (Store.call), so calls in flight end then rather than after
// the store's timeout. While etcd does not answer, up is already canceled
// and calls end before they start. The state is logged once per change.
//
// A probe that times out while the store's own calls are being answered
// only says etcd is slow (a burst of sessions, a busy machine), not that it
// lost its quorum: every call of the store needs the quorum, so an answer
// newer than the probe's timeout keeps etcd healthy. Otherwise a burst
// would turn into 503s for everyone.
//
// Nor does a probe that fails while most members are up (quorate: a
// majority of the client's endpoints answer etcd's Status, which a member
// serves alone): they are electing a leader, after the old one died, and
// will answer again within an election or two. For up to grace from the
// first failure, calls wait for that rather than fail at once; a quorum
// that is really gone (most members down) is declared at the first failed
// probe, as before. The grace assumes the client lists every member (with
// a single endpoint, a quorum loss behind it is found after grace).
//
// A new leader also strands writes: a proposal forwarded to a leader that
// died is never answered, and its caller waits for its whole timeout. The
// raft term of every answer is followed (sawTerm); writes that may be
// safely repeated run under newTerm, canceled when a higher term is seen,
// and are sent again.
type health struct {
	probe    func(context.Context) error
	quorate  func(context.Context) bool // nil: never
	interval time.Duration
	timeout  time.Duration
	grace    time.Duration
	log      *slog.Logger

	mu       sync.Mutex
	up       context.Context
	cancelUp context.CancelCauseFunc
	healthy  bool
	since    time.Time     // when the current state began
	applied  uint64        // the newest probe whose answer is applied
	changed  chan struct{} // closed and replaced on every change
	failing  time.Time     // first of the failed probes in a row; zero after an answer
	electing bool          // logged that etcd is electing, during this failure

	lastAnswer atomic.Int64 // UnixNano of etcd's latest answer to a call or probe

	term      atomic.Uint64 // the highest raft term seen in an answer
	termMu    sync.Mutex
	termCtx   context.Context // canceled (errNewTerm) when a higher term is seen
	cancelTrm context.CancelCauseFunc
}

// errNewTerm cuts a write sent before etcd elected a new leader.
var errNewTerm = errors.New("etcd elected a new leader while the write was in flight")

// sawTerm records the raft term of an answer.
func (h *health) sawTerm(t uint64) {
	if t <= h.term.Load() {
		return
	}
	h.termMu.Lock()
	defer h.termMu.Unlock()
	old := h.term.Load()
	if t <= old {
		return
	}
	h.term.Store(t)
	if old != 0 { // the first answer only says where we are
		h.cancelTrm(errNewTerm)
		h.termCtx, h.cancelTrm = context.WithCancelCause(context.Background())
	}
}

// newTerm returns a context canceled, with errNewTerm, when a term higher
// than the one known now is seen.
func (h *health) newTerm() context.Context {
	h.termMu.Lock()
	defer h.termMu.Unlock()
	return h.termCtx
}

// answered records that etcd just answered a call of the store.
func (h *health) answered() { h.lastAnswer.Store(time.Now().UnixNano()) }

func newHealth(probe func(context.Context) error, interval, timeout time.Duration, log *slog.Logger) *health {
	h := &health{probe: probe, interval: interval, timeout: timeout, grace: DefaultElectionGrace, log: log,
		healthy: true, since: time.Now(), changed: make(chan struct{})}
	// Until the first probe says otherwise, etcd is taken to answer: calls
	// try it, and are cut if that probe fails.
	h.up, h.cancelUp = context.WithCancelCause(context.Background())
	h.termCtx, h.cancelTrm = context.WithCancelCause(context.Background())
	return h
}

// run probes until ctx (the etcd client's) ends.
func (h *health) run(ctx context.Context) {
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	var seq uint64
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		seq++
		n := seq
		wg.Go(func() {
			quorate, err := h.probeOnce(ctx)
			if err == nil {
				h.answered()
			}
			if ctx.Err() == nil {
				h.report(n, err, quorate)
			}
		})
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probeOnce runs one probe, within timeout; when it fails, it also says
// whether most members were up (quorate). That question is asked, with a
// timeout of its own, alongside a probe still unanswered after a tenth of
// its timeout (an etcd read takes milliseconds), so that an outage is
// found at most a tenth of a timeout later than without it.
func (h *health) probeOnce(ctx context.Context) (quorate bool, err error) {
	pctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if h.quorate == nil {
		return false, h.probe(pctx)
	}
	qctx, cancelQ := context.WithCancel(ctx)
	defer cancelQ()
	answer := make(chan bool, 1)
	ask := func() bool {
		c, cancel := context.WithTimeout(qctx, h.timeout)
		defer cancel()
		return h.quorate(c)
	}
	early := time.AfterFunc(h.timeout/10, func() { answer <- ask() })
	err = h.probe(pctx)
	switch {
	case early.Stop(): // not asked yet
		if err != nil {
			quorate = ask()
		}
	case err == nil:
		cancelQ()
		<-answer
	default:
		quorate = <-answer
	}
	return quorate, err
}

// report applies the answer of probe seq, unless a later probe answered
// first (it knows better); quorate says whether most members were up when
// it failed.
func (h *health) report(seq uint64, err error, quorate bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq <= h.applied {
		return
	}
	h.applied = seq
	if err == nil {
		h.failing, h.electing = time.Time{}, false
	} else if h.failing.IsZero() {
		h.failing = time.Now()
	}
	if err != nil && time.Since(time.Unix(0, h.lastAnswer.Load())) < h.timeout {
		return // slow, not gone: calls are still answered
	}
	if err != nil && h.healthy && quorate && time.Since(h.failing) < h.grace {
		// Electing: calls wait for the new leader.
		if !h.electing {
			h.electing = true
			h.log.Info("etcd answers no read while most members are up: waiting for a leader election",
				"error", err, "grace", h.grace)
		}
		return
	}
	switch {
	case err != nil && h.healthy:
		h.healthy = false
		cause := fmt.Errorf("etcd failed its health probe (a read within %v): %w", h.timeout, err)
		h.cancelUp(cause)
		h.log.Warn("etcd unavailable: console requests are answered 503 until it is back",
			"error", err, "probe_timeout", h.timeout)
		h.change()
	case err == nil && !h.healthy:
		h.healthy = true
		h.up, h.cancelUp = context.WithCancelCause(context.Background())
		h.log.Info("etcd available again: console requests are served",
			"unavailable_for", time.Since(h.since).Round(time.Millisecond))
		h.change()
	}
}

// change records a new state. Called with h.mu held.
func (h *health) change() {
	h.since = time.Now()
	close(h.changed)
	h.changed = make(chan struct{})
}

// current returns the context etcd calls run under: canceled as soon as
// etcd is found unavailable (already, while it is).
func (h *health) current() context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.up
}

func (h *health) state() (bool, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.healthy, h.changed
}

// Healthy reports whether etcd answered the latest probe: while it does
// not, every method fails at once with ErrStoreUnavailable. For a health
// service (grpc.health.v1) or a readiness check that must not wait on etcd.
func (s *Store) Healthy() bool {
	ok, _ := s.health.state()
	return ok
}

// Health reports what Healthy does, with a channel closed at the next
// change, to follow the state without polling.
func (s *Store) Health() (healthy bool, changed <-chan struct{}) {
	return s.health.state()
}

// WatchHealth calls fn with Healthy's answer now and at every change, in
// order, from the calling goroutine, until ctx ends: to drive a health
// service (grpc.health.v1) in step with what the store answers.
func (s *Store) WatchHealth(ctx context.Context, fn func(healthy bool)) {
	for {
		healthy, changed := s.health.state()
		fn(healthy)
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// probe is the health probe: a linearizable read of one key inside
// consoleauth's own etcd role (so that it works under etcd authentication),
// which needs a leader and a quorum behind it.
func (s *Store) probe(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, registry.TokensPrefix, clientv3.WithCountOnly())
	if err == nil {
		s.health.sawTerm(resp.Header.RaftTerm)
	}
	return err
}

// quorate reports whether most of the client's endpoints answer etcd's
// Status (a member answers it alone, leader or not): enough members are up
// to elect a leader.
func (s *Store) quorate(ctx context.Context) bool {
	eps := s.cli.Endpoints()
	var up atomic.Int32
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Go(func() {
			if resp, err := s.cli.Status(ctx, ep); err == nil {
				up.Add(1)
				s.health.sawTerm(resp.RaftTerm)
			}
		})
	}
	wg.Wait()
	return int(up.Load()) > len(eps)/2
}

// call returns the context of one etcd call under ctx: bounded by the
// store's timeout and cut the moment the probe finds etcd unavailable
// (canceled already while it is). done ends it and returns the call's
// error, or why it was cut.
func (s *Store) call(ctx context.Context) (cctx context.Context, done func(error) error) {
	return s.callUnder(ctx, true, nil)
}

// callLocal is call for a serializable read, which the member answers
// without its quorum: its answer says nothing of etcd's health.
func (s *Store) callLocal(ctx context.Context) (cctx context.Context, done func(error) error) {
	return s.callUnder(ctx, false, nil)
}

// callWrite is call for a write the caller may send again: it is also cut,
// with an error wrapping errNewTerm, when etcd elects a new leader (the
// write may have been lost with the old one).
func (s *Store) callWrite(ctx context.Context) (cctx context.Context, done func(error) error) {
	return s.callUnder(ctx, true, s.health.newTerm())
}

func (s *Store) callUnder(ctx context.Context, quorum bool, term context.Context) (cctx context.Context, done func(error) error) {
	up := s.health.current()
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	if up.Err() != nil {
		cancel() // fail before reaching etcd
		return cctx, func(error) error { return context.Cause(up) }
	}
	stop := context.AfterFunc(up, cancel)
	stopTerm := func() bool { return true }
	if term != nil {
		stopTerm = context.AfterFunc(term, cancel)
	}
	return cctx, func(err error) error {
		stop()
		stopTerm()
		cancel()
		if err == nil && quorum {
			s.health.answered()
		}
		switch {
		case err != nil && ctx.Err() == nil && up.Err() != nil:
			return context.Cause(up)
		case err != nil && ctx.Err() == nil && term != nil && term.Err() != nil:
			return fmt.Errorf("%w: %v", errNewTerm, err)
		}
		return err
	}
}

// outage reports whether err says etcd cannot be reached or did not answer
// in time: the probe reports those, once per outage.
func outage(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, rpctypes.ErrNoLeader) ||
		strings.Contains(err.Error(), rpctypes.ErrNoLeader.Error()) { // a canceled watch's reason is text
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}
