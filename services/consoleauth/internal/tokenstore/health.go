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

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Defaults of the health probe (Options.ProbeInterval, ProbeTimeout): etcd
// that has lost its quorum is found within ProbeInterval + ProbeTimeout
// (ProbeInterval + ProbeTimeout/10 when most members are down, refusing
// connections), so that every call in flight or arriving then is answered
// within a second, and one that is back is used again within
// ProbeInterval.
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
// Most members refusing outright (connection refused, Unavailable: no
// process behind the port) is decisive, unlike a timeout, which a busy
// member also gives: no quorum can answer, so etcd is declared unavailable
// as soon as the Status answers say so (a tenth of a timeout into an
// unanswered probe), without waiting for the probe's timeout and whatever
// a call got just before. That too assumes the client lists every member;
// a probe answered in time is never overruled, so the refusals only count
// while etcd does not answer.
//
// A call that fails as an outage would (outage) starts a probe at once
// rather than at the next tick: the first sign of a dead member is often a
// call whose connection it closed.
//
// A new leader also strands writes: a proposal forwarded to a leader that
// died is never answered, and its caller waits for its whole timeout. The
// raft term of every answer is followed (sawTerm); writes that may be
// safely repeated run under newTerm, canceled when a higher term is seen,
// and are sent again. So is such a write that failed Unavailable while etcd
// is healthy (its connection to the member that died closed under it, or
// the member lost its leader): sent again, it waits for the election with
// the other calls instead of becoming a 503, and if the quorum is gone the
// probe cuts it.
type health struct {
	probe    func(context.Context) error
	quorate  func(context.Context) members // nil: members unknown
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

	lastAnswer atomic.Int64  // UnixNano of etcd's latest answer to a call or probe
	kick       chan struct{} // a call failed: probe now (run)

	term      atomic.Uint64 // the highest raft term seen in an answer
	termMu    sync.Mutex
	termCtx   context.Context // canceled (errNewTerm) when a higher term is seen
	cancelTrm context.CancelCauseFunc
}

// errNewTerm cuts a write sent before etcd elected a new leader, or failed
// by a member going away: either may have lost it, and it is sent again.
var errNewTerm = errors.New("etcd may have lost the write: a new leader was elected or its member went away")

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
		healthy: true, since: time.Now(), changed: make(chan struct{}), kick: make(chan struct{}, 1)}
	// Until the first probe says otherwise, etcd is taken to answer: calls
	// try it, and are cut if that probe fails.
	h.up, h.cancelUp = context.WithCancelCause(context.Background())
	h.termCtx, h.cancelTrm = context.WithCancelCause(context.Background())
	return h
}

// run probes until ctx (the etcd client's) ends: every interval, and at
// once when a call fails (kickProbe), though never less than a tenth of a
// timeout after the previous probe, so that a burst of failed calls starts
// one probe.
func (h *health) run(ctx context.Context) {
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	var seq uint64
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		seq++
		n := seq
		started := time.Now()
		wg.Go(func() {
			m, err := h.probeOnce(ctx)
			if err == nil {
				h.answered()
			}
			if ctx.Err() == nil {
				h.report(n, err, m)
			}
		})
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-h.kick:
			if !sleep(ctx, h.timeout/10-time.Since(started)) {
				return
			}
			tick.Reset(h.interval)
		}
	}
}

// kickProbe asks run for a probe now.
func (h *health) kickProbe() {
	select {
	case h.kick <- struct{}{}:
	default: // one is asked for already
	}
}

// sleep waits for d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// probeOnce runs one probe, within timeout; when it fails, it also says
// what the members answered to Status (members). That question is asked,
// with a timeout of its own, alongside a probe still unanswered after a
// tenth of its timeout (an etcd read takes milliseconds), so that an outage
// is found at most a tenth of a timeout later than without it; and if most
// members refused it, the probe ends there (errMembersGone), since it
// cannot be answered.
func (h *health) probeOnce(ctx context.Context) (m members, err error) {
	pctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if h.quorate == nil {
		return members{}, h.probe(pctx)
	}
	ask := func(ctx context.Context) members {
		c, cancel := context.WithTimeout(ctx, h.timeout)
		defer cancel()
		return h.quorate(c)
	}
	probed := make(chan error, 1)
	go func() { probed <- h.probe(pctx) }()
	early := time.NewTimer(h.timeout / 10)
	defer early.Stop()
	select {
	case err := <-probed:
		if err != nil {
			m = ask(ctx)
		}
		return m, m.blame(err)
	case <-early.C:
	}
	qctx, cancelQ := context.WithCancel(ctx)
	defer cancelQ()
	asked := make(chan members, 1)
	go func() { asked <- ask(qctx) }()
	select {
	case err := <-probed:
		if err == nil {
			cancelQ()
			<-asked
			return members{}, nil
		}
		m = <-asked
		return m, m.blame(err)
	case m = <-asked:
		if m.gone() {
			cancel()
		}
		return m, m.blame(<-probed)
	}
}

// errMembersGone: most members refused the connection or the call.
var errMembersGone = errors.New("most etcd members are down")

// members is what the client's endpoints answered to etcd's Status.
type members struct {
	listed  int // endpoints asked
	up      int // answered
	refused int // refused before the deadline (codes.Unavailable)
}

// quorate reports whether most members are up: enough to elect a leader.
func (m members) quorate() bool { return m.up > m.listed/2 }

// gone reports whether most members refused outright: no quorum is left
// to answer.
func (m members) gone() bool { return m.refused > m.listed/2 }

// blame returns the error of a failed probe, saying so when most members
// refused (errMembersGone).
func (m members) blame(err error) error {
	if err == nil || !m.gone() {
		return err
	}
	return fmt.Errorf("%w: %d of %d refused (the read: %v)", errMembersGone, m.refused, m.listed, err)
}

// report applies the answer of probe seq, unless a later probe answered
// first (it knows better); m is what the members answered to Status when it
// failed.
func (h *health) report(seq uint64, err error, m members) {
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
	if err != nil && !m.gone() && time.Since(time.Unix(0, h.lastAnswer.Load())) < h.timeout {
		return // slow, not gone: calls are still answered
	}
	if err != nil && h.healthy && m.quorate() && time.Since(h.failing) < h.grace {
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

// quorate asks each of the client's endpoints for etcd's Status (a member
// answers it alone, leader or not), at once: how many answered (most: enough
// members are up to elect a leader), and how many refused outright (most:
// the quorum is gone).
func (s *Store) quorate(ctx context.Context) members {
	eps := s.cli.Endpoints()
	var up, refused atomic.Int32
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Go(func() {
			resp, err := s.status(ctx, ep)
			switch {
			case err == nil:
				up.Add(1)
				s.health.sawTerm(resp.RaftTerm)
			case ctx.Err() == nil && status.Code(err) == codes.Unavailable:
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	return members{listed: len(eps), up: int(up.Load()), refused: int(refused.Load())}
}

// status asks the member at ep for its Status, on a connection of its own
// (as the client's Status does), but failing fast: the client's Status waits
// for a connection until ctx ends and retries Unavailable, so a member that
// is down would look like a slow one. Unavailable before the deadline means
// the connection was refused or closed.
func (s *Store) status(ctx context.Context, ep string) (*etcdserverpb.StatusResponse, error) {
	conn, err := s.cli.Dial(ep)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return etcdserverpb.NewMaintenanceClient(conn).Status(ctx, &etcdserverpb.StatusRequest{}, grpc.WaitForReady(false))
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
// write may have been lost with the old one), and its Unavailable failures
// wrap errNewTerm too.
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
		if err != nil && ctx.Err() == nil && up.Err() == nil && outage(err) {
			s.health.kickProbe() // a member may have died: ask now
		}
		switch {
		case err != nil && ctx.Err() == nil && up.Err() != nil:
			return context.Cause(up)
		case err != nil && ctx.Err() == nil && term != nil && (term.Err() != nil || unavailable(err)):
			return fmt.Errorf("%w: %v", errNewTerm, err)
		}
		return err
	}
}

// unavailable reports whether etcd's answer was Unavailable, as gRPC's
// status or as etcd's own error (leader changed, no leader).
func unavailable(err error) bool {
	var e rpctypes.EtcdError
	return status.Code(err) == codes.Unavailable || errors.As(err, &e) && e.Code() == codes.Unavailable
}

// outage reports whether err says etcd cannot be reached or did not answer
// in time: the probe reports those, once per outage.
func outage(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, errMembersGone) || errors.Is(err, errNewTerm) || errors.Is(err, rpctypes.ErrNoLeader) ||
		strings.Contains(err.Error(), rpctypes.ErrNoLeader.Error()) { // a canceled watch's reason is text
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}
