package tokenstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Errors of Locate, wrapped by errors whose message names the instance.
var (
	// ErrUnknownInstance: no agent published the instance.
	ErrUnknownInstance = errors.New("instance not found")
	// ErrComputeDown: the instance's compute host has no live agent.
	ErrComputeDown = errors.New("compute host down")
)

// Agent is the compute agent that runs an instance.
type Agent struct {
	// ComputeHost is the hypervisor host's name.
	ComputeHost string
	// Address is the agent's gRPC address, host:port.
	Address string
	// Registration is the etcd revision of the agent's registration
	// (registry.ComputeKey's ModRevision): it grows when the agent
	// registers again, after a restart.
	Registration int64
}

// Locate finds the agent of an instance: the host whose claim
// registry.ComputeInstanceKey(host, uuid) is the oldest (see package
// registry), and that host's registry.ComputeKey, present only while its
// agent keeps its lease alive.
func (s *Store) Locate(ctx context.Context, uuid string) (Agent, error) {
	host, compute, err := s.locate(ctx, uuid)
	if err != nil {
		return Agent{}, s.locateError(ctx, uuid, err)
	}
	var c registry.Compute
	if compute != nil {
		if err := json.Unmarshal(compute.Value, &c); err != nil {
			// Named by host, not by key: the message may reach a caller.
			return Agent{}, fmt.Errorf("decode the registration of compute host %s: %w", host, err)
		}
	}
	if c.Address == "" {
		return Agent{}, &detailError{kind: ErrComputeDown,
			msg: fmt.Sprintf("compute host %s of instance %s is down", host, uuid)}
	}
	return Agent{ComputeHost: host, Address: c.Address, Registration: compute.ModRevision}, nil
}

// Owner returns the compute host whose claim on the instance wins, alive or
// not: the host that may act for the instance.
func (s *Store) Owner(ctx context.Context, uuid string) (string, error) {
	host, _, err := s.locate(ctx, uuid)
	if err != nil {
		return "", s.locateError(ctx, uuid, err)
	}
	return host, nil
}

// locate asks the index, under the store's health (Store.call).
func (s *Store) locate(ctx context.Context, uuid string) (string, *mvccpb.KeyValue, error) {
	cctx, done := s.call(ctx)
	host, compute, err := s.locations.locate(cctx, uuid)
	return host, compute, done(err)
}

func (s *Store) locateError(ctx context.Context, uuid string, err error) error {
	if errors.Is(err, ErrUnknownInstance) {
		return &detailError{kind: ErrUnknownInstance, msg: fmt.Sprintf("instance %s not found", uuid)}
	}
	return s.fail(ctx, "locate instance "+uuid, err)
}

// index keeps every claim of registry.ComputeInstancesRoot in memory, from
// one read and a watch, so that finding an instance's host does not scan
// etcd. It is only a hint: every answer is confirmed in etcd (the winning
// claim still exists with the revision the index knows), and a miss is
// answered only once the index has caught up with etcd's revision at the
// time of the miss. Claims are keys only; their values are not read.
//
// The watch starts on first use and runs until the etcd client is closed.
type index struct {
	cli     *clientv3.Client
	timeout time.Duration
	log     *slog.Logger

	start sync.Once

	mu      sync.Mutex
	claims  map[string][]claim // by instance, oldest first
	rev     int64              // every change up to rev is applied; 0 before the first read
	loadErr error              // why the first read failed
	advance chan struct{}      // closed and replaced whenever rev or loadErr changes
	wctx    context.Context    // the watch's context, to ask for progress; nil between watches
}

// claim is one host's claim on an instance.
type claim struct {
	host    string
	created int64 // CreateRevision of the claim's key
}

// Waits between attempts to follow the claims again after the watch failed.
const (
	indexMinRetry = 100 * time.Millisecond
	indexMaxRetry = 5 * time.Second
	// progressEvery re-asks etcd for the watch's progress while a miss
	// waits (a request sent before the watch exists is lost).
	progressEvery = 25 * time.Millisecond
)

func newIndex(cli *clientv3.Client, timeout time.Duration, log *slog.Logger) *index {
	return &index{cli: cli, timeout: timeout, log: log, claims: map[string][]claim{}, advance: make(chan struct{})}
}

// locate returns the winning claim's host and that host's compute record
// (nil when absent), both read in one etcd transaction, or an error
// wrapping ErrUnknownInstance.
func (x *index) locate(ctx context.Context, uuid string) (string, *mvccpb.KeyValue, error) {
	x.start.Do(func() { go x.run(x.cli.Ctx()) })
	ctx, cancel := context.WithTimeout(ctx, x.timeout)
	defer cancel()
	if err := x.loaded(ctx); err != nil {
		return "", nil, err
	}
	// Two rounds: a stale index is caught up after the first.
	for range 2 {
		c, ok := x.oldest(uuid)
		if !ok {
			rev, err := x.currentRevision(ctx)
			if err != nil {
				return "", nil, err
			}
			if err := x.caughtUp(ctx, rev); err != nil {
				return "", nil, err
			}
			if c, ok = x.oldest(uuid); !ok {
				return "", nil, ErrUnknownInstance
			}
		}
		key := registry.ComputeInstanceKey(c.host, uuid)
		resp, err := x.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", c.created)).
			Then(clientv3.OpGet(registry.ComputeKey(c.host))).
			Commit()
		if err != nil {
			return "", nil, err
		}
		if resp.Succeeded {
			var compute *mvccpb.KeyValue
			if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
				compute = kvs[0]
			}
			return c.host, compute, nil
		}
		// The claim went, or was made again, after the index saw it.
		if err := x.caughtUp(ctx, resp.Header.Revision); err != nil {
			return "", nil, err
		}
	}
	return "", nil, errors.New("the instance's claims changed while being read")
}

// oldest returns the winning claim the index knows for uuid.
func (x *index) oldest(uuid string) (claim, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	cs := x.claims[uuid]
	if len(cs) == 0 {
		return claim{}, false
	}
	return cs[0], true
}

// loaded waits for the first read of the claims.
func (x *index) loaded(ctx context.Context) error {
	for {
		x.mu.Lock()
		rev, err, advance := x.rev, x.loadErr, x.advance
		x.mu.Unlock()
		switch {
		case rev > 0:
			return nil
		case err != nil:
			return err
		}
		select {
		case <-advance:
		case <-ctx.Done():
			return fmt.Errorf("read instance claims: %w", ctx.Err())
		}
	}
}

// currentRevision is etcd's revision now, from a linearizable read of a
// key consoleauth may read.
func (x *index) currentRevision(ctx context.Context) (int64, error) {
	resp, err := x.cli.Get(ctx, registry.ComputeInstancesRoot, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// caughtUp waits until the index reflects every change up to rev, asking
// the watch to report its progress when no claim changes.
func (x *index) caughtUp(ctx context.Context, rev int64) error {
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		x.mu.Lock()
		cur, advance, wctx := x.rev, x.advance, x.wctx
		x.mu.Unlock()
		if cur >= rev {
			return nil
		}
		if wctx != nil {
			_ = x.cli.RequestProgress(wctx) // best effort: the tick asks again
		}
		select {
		case <-advance:
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("instance claims not caught up with etcd revision %d (at %d): %w", rev, cur, ctx.Err())
		}
	}
}

// run follows the claims until ctx (the etcd client's) ends.
func (x *index) run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		followed, err := x.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if followed {
			failures = 0
		}
		delay := min(indexMinRetry<<min(failures, 10), indexMaxRetry)
		failures++
		// An outage is the health probe's to log, once; a failure of
		// another kind, once per run of failures.
		level := slog.LevelDebug
		if !outage(err) && failures == 1 {
			level = slog.LevelWarn
		}
		x.log.Log(ctx, level, "instance location index: watch ended, reading the claims again", "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
}

// follow reads every claim, then applies the watch's changes until it
// fails. It reports whether it got as far as watching.
func (x *index) follow(ctx context.Context) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, x.timeout)
	resp, err := x.cli.Get(rctx, registry.ComputeInstancesRoot, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		x.mu.Lock()
		if x.rev == 0 {
			x.loadErr = err
			x.broadcast()
		}
		x.mu.Unlock()
		return false, fmt.Errorf("read instance claims: %w", err)
	}
	claims := map[string][]claim{}
	for _, kv := range resp.Kvs {
		if host, uuid, ok := registry.ParseComputeInstanceKey(string(kv.Key)); ok {
			claims[uuid] = put(claims[uuid], claim{host: host, created: kv.CreateRevision})
		}
	}
	wctx, stop := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer stop()
	x.mu.Lock()
	x.claims, x.rev, x.loadErr, x.wctx = claims, resp.Header.Revision, nil, wctx
	x.broadcast()
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		x.wctx = nil
		x.mu.Unlock()
	}()

	for wr := range x.cli.Watch(wctx, registry.ComputeInstancesRoot, clientv3.WithPrefix(),
		clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return true, err // a compaction too: read everything again
		}
		if wr.Canceled {
			return true, fmt.Errorf("watch canceled: %s", wr.CancelReason)
		}
		x.apply(wr)
	}
	return true, errors.New("watch closed")
}

// apply records one watch response. Events come in revision order and a
// response never splits a revision, so after it every change up to its last
// event's revision is known; a progress report (no events) vouches for its
// header's revision.
func (x *index) apply(wr clientv3.WatchResponse) {
	x.mu.Lock()
	defer x.mu.Unlock()
	rev := x.rev
	if wr.IsProgressNotify() {
		rev = max(rev, wr.Header.Revision)
	}
	for _, ev := range wr.Events {
		rev = max(rev, ev.Kv.ModRevision)
		host, uuid, ok := registry.ParseComputeInstanceKey(string(ev.Kv.Key))
		if !ok {
			continue
		}
		if ev.Type == clientv3.EventTypeDelete {
			x.claims[uuid] = slices.DeleteFunc(x.claims[uuid], func(c claim) bool { return c.host == host })
			if len(x.claims[uuid]) == 0 {
				delete(x.claims, uuid)
			}
			continue
		}
		x.claims[uuid] = put(x.claims[uuid], claim{host: host, created: ev.Kv.CreateRevision})
	}
	if rev != x.rev {
		x.rev = rev
		x.broadcast()
	}
}

// broadcast wakes the waiters. Called with x.mu held.
func (x *index) broadcast() {
	close(x.advance)
	x.advance = make(chan struct{})
}

// put sets host's claim in cs, kept oldest first.
func put(cs []claim, c claim) []claim {
	cs = slices.DeleteFunc(cs, func(old claim) bool { return old.host == c.host })
	i, _ := slices.BinarySearchFunc(cs, c.created, func(e claim, rev int64) int {
		switch {
		case e.created < rev:
			return -1
		case e.created > rev:
			return 1
		}
		return 0
	})
	return slices.Insert(cs, i, c)
}

// detailError carries a sentinel for errors.Is and a message of its own, so
// callers see "compute host h1 of instance X is down" rather than the
// sentinel's text twice.
type detailError struct {
	kind error
	msg  string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.kind }
