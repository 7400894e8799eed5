package tokenstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// ErrClaimChanged: MintFromClaim found the instance's claim or its host's
// registration changed since Locate read them; locate it afresh.
var ErrClaimChanged = errors.New("the instance's location changed while minting")

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

	// Vouched says that Console (or NoConsole) is what the agent
	// published in its claim under its live registration (see
	// registry.Location), read from the index while it follows etcd: it
	// stands for the agent's own answer. Otherwise the agent is to be
	// asked.
	Vouched bool
	// Console is the instance's VNC server, when Vouched and NoConsole is
	// empty.
	Console registry.LocationConsole
	// NoConsole, when Vouched, says why the instance has no console (not
	// running, not on this host, no VNC).
	NoConsole string

	claimRev int64 // the claim's ModRevision, when Vouched: MintFromClaim's guard
}

// Locate finds the agent of an instance: the host whose claim
// registry.ComputeInstanceKey(host, uuid) is the oldest (see package
// registry), and that host's registry.ComputeKey, present only while its
// agent keeps its lease alive.
//
// While the index follows etcd and the winning claim vouches for the
// console under its agent's live registration, the answer comes from
// memory, Vouched, without an etcd call: the claim is at most as old as
// the watch's delivery (milliseconds), and the agent rewrites a claim
// before it revokes the instance's tokens for the change, so a check
// answered from a claim an instant too old is followed by a revocation
// with a higher etcd revision than the token's, which ends the session it
// let in (the proxies order revocations and tokens by revision). A mint
// from a claim is guarded in etcd itself (MintFromClaim). Otherwise (the
// watch down or resyncing, no claim in memory, a claim of an older format
// or another registration's, the host without a live agent) it is
// LocateFresh.
func (s *Store) Locate(ctx context.Context, uuid string) (Agent, error) {
	if a, ok := s.locations.vouched(uuid); ok && s.health.current().Err() == nil {
		return a, nil
	}
	return s.LocateFresh(ctx, uuid)
}

// LocateFresh is Locate confirmed in etcd: the winning claim the index
// knows still exists with the revision it knows, read in one transaction
// with its host's registration. Its answer is never Vouched.
func (s *Store) LocateFresh(ctx context.Context, uuid string) (Agent, error) {
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

// index keeps every claim of registry.ComputeInstancesRoot and every
// registration of registry.ComputesPrefix in memory, from one read and
// watches on one stream, so that finding an instance's host does not scan
// etcd; the same read and stream keep token records (tokencache.go). For LocateFresh it is only a hint: every answer is confirmed
// in etcd (the winning claim still exists with the revision the index
// knows), and a miss is answered only once the index has caught up with
// etcd's revision at the time of the miss. For Locate, a claim that
// vouches for its console (vouched) is answered from memory while the
// watches run; between watches (after an error, a compaction, a member
// that lost its leader: the watches require one) nothing is.
//
// The watches start on first use and run until the etcd client is closed.
type index struct {
	cli     *clientv3.Client
	timeout time.Duration
	log     *slog.Logger

	start sync.Once

	mu       sync.Mutex
	claims   map[string][]claim // by instance, oldest first
	computes map[string]compute // by host
	tokens   tokenCache
	// Every change of a family up to revs[family] is applied; rev is the
	// lowest (0 before the first read).
	revs    [families]int64
	rev     int64
	loadErr error           // why the first read failed
	advance chan struct{}   // closed and replaced whenever rev or loadErr changes
	wctx    context.Context // the watches' context, to ask for progress; nil between watches

	// heard is when etcd last spoke on the watches (UnixNano): an event
	// or a progress report, asked for every heartbeatEvery. clientv3
	// resumes a broken watch stream by itself, silently; a watch not
	// heard from within heardWithin is taken for one.
	heard atomic.Int64
}

// claim is one host's claim on an instance.
type claim struct {
	host    string
	created int64             // CreateRevision of the claim's key
	mod     int64             // ModRevision of the claim's key
	loc     registry.Location // its value; zero when it does not decode
}

// compute is a host's registration: its agent's address on its lease.
type compute struct {
	address string
	lease   int64
	mod     int64
}

// maxNoConsole bounds the reason a claim gives for having no console, as
// the index keeps it (a token check may repeat it to a proxy).
const maxNoConsole = 200

// Waits between attempts to follow the claims again after the watch failed.
const (
	indexMinRetry = 100 * time.Millisecond
	indexMaxRetry = 5 * time.Second
	// progressEvery re-asks etcd for the watch's progress while a miss
	// waits (a request sent before the watch exists is lost).
	progressEvery = 25 * time.Millisecond
	// heartbeatEvery asks for the watches' progress while they run, so
	// that a live watch is heard from within heardWithin even when no
	// claim changes.
	heartbeatEvery = 250 * time.Millisecond
	heardWithin    = time.Second
)

// The key families the index follows, in the order of its read.
const (
	familyClaims = iota
	familyComputes
	familyTokens
	families
)

func newIndex(cli *clientv3.Client, timeout time.Duration, tokenCap int, log *slog.Logger) *index {
	return &index{cli: cli, timeout: timeout, log: log, claims: map[string][]claim{},
		computes: map[string]compute{}, tokens: tokenCache{cap: tokenCap},
		advance: make(chan struct{})}
}

// vouched answers Locate from memory: the winning claim on uuid when the
// watches run, its host has a registration, and the claim was written
// under that registration's lease (registry.Location.Lease).
func (x *index) vouched(uuid string) (Agent, bool) {
	if !x.current() {
		return Agent{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	cs := x.claims[uuid]
	if len(cs) == 0 {
		return Agent{}, false
	}
	c := cs[0]
	comp, ok := x.computes[c.host]
	if !ok || comp.address == "" || c.loc.Lease == 0 || c.loc.Lease != comp.lease {
		return Agent{}, false
	}
	a := Agent{ComputeHost: c.host, Address: comp.address, Registration: comp.mod,
		Vouched: true, NoConsole: c.loc.NoConsole, claimRev: c.mod}
	switch {
	case c.loc.Console != nil:
		a.Console = *c.loc.Console
	case a.NoConsole == "":
		return Agent{}, false // a console or why not: anything else vouches for nothing
	}
	return a, true
}

// current reports whether the watches run and were heard from within
// heardWithin: what the index holds is then at most a delivery old. It
// starts them on first use.
func (x *index) current() bool {
	x.start.Do(func() { go x.run(x.cli.Ctx()) })
	if time.Now().UnixNano()-x.heard.Load() > int64(heardWithin) {
		return false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.wctx != nil && x.wctx.Err() == nil
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

// follow reads every claim and registration at one revision, then applies
// the watches' changes until one fails. It reports whether it got as far
// as watching.
func (x *index) follow(ctx context.Context) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, x.timeout)
	resp, err := x.cli.Txn(rctx).Then(
		clientv3.OpGet(registry.ComputeInstancesRoot, clientv3.WithPrefix()),
		clientv3.OpGet(registry.ComputesPrefix, clientv3.WithPrefix()),
		x.tokens.read(),
	).Commit()
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
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		if host, uuid, ok := registry.ParseComputeInstanceKey(string(kv.Key)); ok {
			claims[uuid] = put(claims[uuid], claimOf(host, kv))
		}
	}
	computes := map[string]compute{}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		if host, ok := parseComputeKey(string(kv.Key)); ok {
			computes[host] = computeOf(kv)
		}
	}
	tokens, moreTokens := x.tokens.load(resp.Responses[2].GetResponseRange())
	rev := resp.Header.Revision
	wctx, stop := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer stop()
	// One context: the watches share one gRPC stream, so a progress
	// request reaches all. They start at rev, not after it: etcd answers
	// no progress request of a watch that starts beyond its revision (an
	// idle etcd would leave the index unheard), and the changes of rev
	// itself, which the read holds already, apply again to the same state.
	var watches [families]clientv3.WatchChan
	for f, prefix := range [families]string{registry.ComputeInstancesRoot, registry.ComputesPrefix, registry.TokensPrefix} {
		if f == familyTokens && x.tokens.off() {
			continue // a nil channel: never ready
		}
		watches[f] = x.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	}
	x.mu.Lock()
	x.claims, x.computes, x.loadErr, x.wctx = claims, computes, nil, wctx
	x.tokens.reset(tokens, moreTokens, x.log)
	for f := range x.revs {
		x.revs[f] = rev
	}
	x.rev = rev
	x.broadcast()
	x.mu.Unlock()
	x.heard.Store(time.Now().UnixNano())
	defer func() {
		x.mu.Lock()
		x.wctx = nil
		x.mu.Unlock()
	}()
	go x.heartbeat(wctx)

	for {
		var wr clientv3.WatchResponse
		var ok bool
		var family int
		select {
		case wr, ok = <-watches[familyClaims]:
			family = familyClaims
		case wr, ok = <-watches[familyComputes]:
			family = familyComputes
		case wr, ok = <-watches[familyTokens]:
			family = familyTokens
		}
		if !ok {
			return true, errors.New("watch closed")
		}
		if err := wr.Err(); err != nil {
			return true, err // a compaction too: read everything again
		}
		if wr.Canceled {
			return true, fmt.Errorf("watch canceled: %s", wr.CancelReason)
		}
		x.apply(wr, family)
	}
}

// heartbeat asks etcd for the watches' progress every heartbeatEvery until
// ctx (the watches') ends.
func (x *index) heartbeat(ctx context.Context) {
	tick := time.NewTicker(heartbeatEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			_ = x.cli.RequestProgress(ctx) // a lost request shows as silence
		}
	}
}

// apply records one watch response. Events come in revision order and a
// response never splits a revision, so after it every change up to its last
// event's revision is known; a progress report (no events) vouches for its
// header's revision.
func (x *index) apply(wr clientv3.WatchResponse, family int) {
	x.heard.Store(time.Now().UnixNano())
	x.mu.Lock()
	defer x.mu.Unlock()
	rev := x.revs[family]
	if wr.IsProgressNotify() {
		rev = max(rev, wr.Header.Revision)
	}
	for _, ev := range wr.Events {
		rev = max(rev, ev.Kv.ModRevision)
		switch family {
		case familyClaims:
			x.applyClaim(ev)
		case familyComputes:
			x.applyCompute(ev)
		case familyTokens:
			x.tokens.apply(ev, x.log)
		}
	}
	x.revs[family] = rev
	low := rev
	for f, r := range x.revs {
		if f != familyTokens || !x.tokens.off() {
			low = min(low, r)
		}
	}
	if low != x.rev {
		x.rev = low
		x.broadcast()
	}
}

// applyClaim records one change of a claim. Called with x.mu held.
func (x *index) applyClaim(ev *clientv3.Event) {
	host, uuid, ok := registry.ParseComputeInstanceKey(string(ev.Kv.Key))
	if !ok {
		return
	}
	if ev.Type == clientv3.EventTypeDelete {
		x.claims[uuid] = slices.DeleteFunc(x.claims[uuid], func(c claim) bool { return c.host == host })
		if len(x.claims[uuid]) == 0 {
			delete(x.claims, uuid)
		}
		return
	}
	x.claims[uuid] = put(x.claims[uuid], claimOf(host, ev.Kv))
}

// applyCompute records one change of a registration. Called with x.mu held.
func (x *index) applyCompute(ev *clientv3.Event) {
	host, ok := parseComputeKey(string(ev.Kv.Key))
	if !ok {
		return
	}
	if ev.Type == clientv3.EventTypeDelete {
		delete(x.computes, host)
		return
	}
	x.computes[host] = computeOf(ev.Kv)
}

// claimOf is the claim a key holds. A value that does not decode vouches
// for nothing (Locate then asks etcd and the agent, as for an old claim).
func claimOf(host string, kv *mvccpb.KeyValue) claim {
	c := claim{host: host, created: kv.CreateRevision, mod: kv.ModRevision}
	if err := json.Unmarshal(kv.Value, &c.loc); err != nil {
		c.loc = registry.Location{}
	}
	if len(c.loc.NoConsole) > maxNoConsole {
		c.loc.NoConsole = strings.ToValidUTF8(c.loc.NoConsole[:maxNoConsole], "")
	}
	return c
}

// computeOf is the registration a key holds: an address is kept only on
// a lease (the agent's), as the agent writes it.
func computeOf(kv *mvccpb.KeyValue) compute {
	var c registry.Compute
	if kv.Lease == 0 || json.Unmarshal(kv.Value, &c) != nil {
		return compute{mod: kv.ModRevision}
	}
	return compute{address: c.Address, lease: kv.Lease, mod: kv.ModRevision}
}

// parseComputeKey returns the host of a registration's key.
func parseComputeKey(key string) (string, bool) {
	host, ok := strings.CutPrefix(key, registry.ComputesPrefix)
	return host, ok && host != "" && !strings.Contains(host, "/")
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
