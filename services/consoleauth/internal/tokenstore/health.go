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
type health struct {
	probe    func(context.Context) error
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger

	mu       sync.Mutex
	up       context.Context
	cancelUp context.CancelCauseFunc
	healthy  bool
	since    time.Time     // when the current state began
	applied  uint64        // the newest probe whose answer is applied
	changed  chan struct{} // closed and replaced on every change

	lastAnswer atomic.Int64 // UnixNano of etcd's latest answer to a call or probe
}

// answered records that etcd just answered a call of the store.
func (h *health) answered() { h.lastAnswer.Store(time.Now().UnixNano()) }

func newHealth(probe func(context.Context) error, interval, timeout time.Duration, log *slog.Logger) *health {
	h := &health{probe: probe, interval: interval, timeout: timeout, log: log,
		healthy: true, since: time.Now(), changed: make(chan struct{})}
	// Until the first probe says otherwise, etcd is taken to answer: calls
	// try it, and are cut if that probe fails.
	h.up, h.cancelUp = context.WithCancelCause(context.Background())
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
			pctx, cancel := context.WithTimeout(ctx, h.timeout)
			err := h.probe(pctx)
			cancel()
			if err == nil {
				h.answered()
			}
			if ctx.Err() == nil {
				h.report(n, err)
			}
		})
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// report applies the answer of probe seq, unless a later probe answered
// first (it knows better).
func (h *health) report(seq uint64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq <= h.applied {
		return
	}
	h.applied = seq
	if err != nil && time.Since(time.Unix(0, h.lastAnswer.Load())) < h.timeout {
		return // slow, not gone: calls are still answered
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
	_, err := s.cli.Get(ctx, registry.TokensPrefix, clientv3.WithCountOnly())
	return err
}

// call returns the context of one etcd call under ctx: bounded by the
// store's timeout and cut the moment the probe finds etcd unavailable
// (canceled already while it is). done ends it and returns the call's
// error, or why it was cut.
func (s *Store) call(ctx context.Context) (cctx context.Context, done func(error) error) {
	up := s.health.current()
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	if up.Err() != nil {
		cancel() // fail before reaching etcd
		return cctx, func(error) error { return context.Cause(up) }
	}
	stop := context.AfterFunc(up, cancel)
	return cctx, func(err error) error {
		stop()
		cancel()
		if err == nil {
			s.health.answered()
		}
		if err != nil && ctx.Err() == nil && up.Err() != nil {
			return context.Cause(up)
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
