// Package livesessions is a console proxy's side of the live-session layout
// in etcd (package registry, sessions.go): it announces the proxy
// (registry.Proxy), publishes each live session (registry.LiveSession),
// takes the per-instance session slots that cap an instance's sessions
// across every proxy, and watches the kills and the drain consoleauth writes
// for this proxy.
//
// It promises:
//   - Everything it writes is on one lease, kept alive while the proxy runs
//     and revoked by Close, so a proxy's records vanish when it stops or dies
//     (after the lease's TTL).
//   - Publishing never blocks or fails a session: Publish and the removal it
//     returns only queue a change; one goroutine writes the queue in
//     transactions of up to maxOps operations, at most once per flushEvery,
//     and refreshes the byte counts of sessions whose counts changed once
//     per Refresh, so 10,000 idle sessions cost no write at all. A session
//     is written once it is PublishAfter old: one that ends sooner (a
//     failed or probing client) costs etcd nothing, and a burst of
//     sequential short sessions sends no write at all.
//   - A lost lease (etcd away longer than its TTL) is granted again and
//     everything re-published, slots included (a slot another proxy took
//     meanwhile is logged and the session goes on). One log line per change
//     of state, not per attempt.
//   - TakeSlot is the one call that waits for etcd, bounded by its context;
//     its caller decides what an unreachable etcd means (the proxies fail
//     open to their local cap).
//   - A kill (registry.SessionKill under ProxyKillsPrefix) is handed to
//     OnKill as soon as the watch sees it, then its key is deleted; kills
//     written while the watch was down are read when it is back. A drain
//     (registry.ProxyDrain at ProxyDrainKey) is handed to OnDrain the same
//     way; deleting it does not undo it.
//
// Under etcd authentication the proxy's user (its certificate's common
// name) must be the proxy's name: pkg/etcdclient's Roles grant a proxy
// user only its own keys, and /vncgate/instance-sessions/ for the slots.
package livesessions

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Defaults and bounds.
const (
	// DefaultTTL is the lease's TTL: how long a dead proxy's records outlive it.
	DefaultTTL = 15 * time.Second
	// DefaultRefresh is how often changed byte counts are written.
	DefaultRefresh = 10 * time.Second
	// maxOps bounds a transaction's operations (etcd's --max-txn-ops is 128).
	maxOps = 64
	// flushEvery is the least time between two writes of the queue.
	flushEvery = 100 * time.Millisecond
	// PublishAfter is how old a session is when it is first written.
	PublishAfter = time.Second
	// callTimeout bounds each etcd call of the background goroutines.
	callTimeout = 5 * time.Second
	// minRetry and maxRetry bound the waits between failed attempts.
	minRetry = 250 * time.Millisecond
	maxRetry = 2 * time.Second
	// maxRecord bounds a kill or drain value read from etcd.
	maxRecord = 4 << 10
	// MaxSlots bounds a per-instance cap.
	MaxSlots = 1000
)

// Options configure a Publisher.
type Options struct {
	Client *clientv3.Client
	// Proxy is the announcement; Name is required (registry.CheckProxyName).
	Proxy registry.Proxy
	// TTL of the lease, whole seconds (at least 2 s); 0: DefaultTTL.
	TTL time.Duration
	// Refresh is how often changed byte counts are written; 0: DefaultRefresh.
	Refresh time.Duration
	Log     *slog.Logger
}

// Publisher keeps a proxy's records in etcd; safe for concurrent use.
type Publisher struct {
	opts   Options
	cli    *clientv3.Client
	log    *slog.Logger
	name   string
	ctx    context.Context
	cancel context.CancelFunc
	done   sync.WaitGroup
	kick   chan struct{}
	watch1 sync.Once

	mu       sync.Mutex
	lease    clientv3.LeaseID // 0 while none is held
	proxy    registry.Proxy
	proxyOut bool                        // the announcement needs writing
	sessions map[string]*session         // by id
	dirty    map[string]struct{}         // session ids to put
	gone     map[string]struct{}         // session ids to delete
	slots    map[string]string           // slot key -> value, held by this proxy
	slotsOut map[string]struct{}         // slot keys to re-take on a new lease
	freed    map[string]clientv3.LeaseID // slot keys to delete if still on that lease
	failing  bool                        // the last flush failed (logged once)
	due      time.Time                   // when serve next writes young sessions unasked (zero: none waits)
}

type session struct {
	rec    registry.LiveSession
	bytes  func() (toClient, toServer int64)
	queued time.Time // when published: written from queued+PublishAfter on
	sent   bool      // a write of it went to etcd: its removal must delete it
}

// Start checks opts and starts keeping the proxy's records; Close stops.
func Start(opts Options) (*Publisher, error) {
	if opts.Client == nil {
		return nil, errors.New("livesessions: no etcd client")
	}
	if err := registry.CheckProxyName(opts.Proxy.Name); err != nil {
		return nil, err
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.TTL < 2*time.Second {
		return nil, fmt.Errorf("livesessions: lease ttl %s: want at least 2s", opts.TTL)
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Proxy.Started.IsZero() {
		opts.Proxy.Started = time.Now()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{
		opts: opts, cli: opts.Client, log: opts.Log.With("proxy", opts.Proxy.Name), name: opts.Proxy.Name,
		ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1),
		proxy: opts.Proxy, proxyOut: true,
		sessions: map[string]*session{}, dirty: map[string]struct{}{}, gone: map[string]struct{}{},
		slots: map[string]string{}, slotsOut: map[string]struct{}{}, freed: map[string]clientv3.LeaseID{},
	}
	p.done.Go(func() { p.keep(ctx) })
	return p, nil
}

// Watch starts watching this proxy's kills and drain: onKill gets a
// session id and its kill (the session must end; an id not live here is
// the caller's to ignore), onDrain each drain. Only the first call acts.
func (p *Publisher) Watch(onKill func(id string, k registry.SessionKill), onDrain func(d registry.ProxyDrain)) {
	p.watch1.Do(func() {
		p.done.Go(func() {
			p.watch(p.ctx, "kill", registry.ProxyKillsPrefix(p.name), true, func(ctx context.Context, kv keyValue) { p.killed(ctx, kv, onKill) })
		})
		p.done.Go(func() {
			p.watch(p.ctx, "drain", registry.ProxyDrainKey(p.name), false, func(ctx context.Context, kv keyValue) { p.drained(kv, onDrain) })
		})
	})
}

// SetAddress sets the announcement's public address (once the port is open).
func (p *Publisher) SetAddress(addr string) {
	p.mu.Lock()
	p.proxy.Address = addr
	p.proxyOut = true
	p.mu.Unlock()
	p.wake()
}

// Name is the proxy's name.
func (p *Publisher) Name() string { return p.name }

// Close stops the goroutines and revokes the lease, so the proxy's records
// vanish at once (bounded by a call timeout when etcd is away: the lease's
// TTL then does it). p may be nil.
func (p *Publisher) Close() {
	if p == nil {
		return
	}
	p.cancel()
	p.done.Wait()
	p.mu.Lock()
	lease := p.lease
	p.lease = 0
	p.mu.Unlock()
	if lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if _, err := p.cli.Revoke(ctx, lease); err != nil {
			p.log.Warn("live sessions: could not revoke the lease; records vanish with its ttl", "error", err, "ttl", p.opts.TTL.String())
		}
	}
}

// Publish queues rec (a session that started) for etcd and returns the
// function that removes it when the session ends. bytes reports its
// counts so far, read every Refresh.
func (p *Publisher) Publish(rec registry.LiveSession, bytes func() (toClient, toServer int64)) (remove func()) {
	if registry.CheckSessionID(rec.ID) != nil {
		return func() {}
	}
	rec.Proxy = p.name
	now := time.Now()
	p.mu.Lock()
	p.sessions[rec.ID] = &session{rec: rec, bytes: bytes, queued: now}
	p.dirty[rec.ID] = struct{}{}
	delete(p.gone, rec.ID)
	// Waking the writer for every new session would cost each a goroutine
	// switch on its way to the first byte; it only needs to know of one
	// that is due before the write it has planned.
	wake := p.due.IsZero() || p.due.After(now.Add(PublishAfter))
	p.mu.Unlock()
	if wake {
		p.wake()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			s := p.sessions[rec.ID]
			delete(p.sessions, rec.ID)
			delete(p.dirty, rec.ID)
			sent := s != nil && s.sent
			if sent {
				p.gone[rec.ID] = struct{}{}
			}
			p.mu.Unlock()
			if sent {
				p.wake()
			}
		})
	}
}

// SetDraining marks the announcement draining until deadline. p may be
// nil (no etcd).
func (p *Publisher) SetDraining(deadline time.Time) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.proxy.Draining, p.proxy.DrainDeadline = true, deadline
	p.proxyOut = true
	p.mu.Unlock()
	p.wake()
}

// ErrNoLease is TakeSlot's error while the proxy holds no lease (etcd away).
var ErrNoLease = errors.New("no etcd lease: etcd unreachable")

// TakeSlot takes a free one of instance's slots 0..max-1 for session,
// on the lease. It returns ok false (and no error) when every slot is
// taken, an error when etcd could not answer. release frees the slot
// (queued, like Publish's removal).
func (p *Publisher) TakeSlot(ctx context.Context, instance string, max int, session string) (release func(), ok bool, err error) {
	if max <= 0 || max > MaxSlots {
		return nil, false, fmt.Errorf("slot cap %d: want 1-%d", max, MaxSlots)
	}
	if err := registry.CheckSessionID(instance); err != nil { // one key segment
		return nil, false, fmt.Errorf("instance: %w", err)
	}
	p.mu.Lock()
	lease := p.lease
	p.mu.Unlock()
	if lease == 0 {
		return nil, false, ErrNoLease
	}
	value := p.name + "/" + session
	prefix := registry.InstanceSlotsPrefix(instance)
	resp, err := p.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, false, err
	}
	taken := make(map[int]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if n, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), prefix)); err == nil {
			taken[n] = true
		}
	}
	for n := range max {
		if taken[n] {
			continue
		}
		key := registry.InstanceSlotKey(instance, n)
		tr, err := p.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(lease))).Commit()
		if err != nil {
			return nil, false, err
		}
		if !tr.Succeeded {
			continue // another proxy took it since the read
		}
		p.mu.Lock()
		p.slots[key] = value
		p.mu.Unlock()
		var once sync.Once
		return func() {
			once.Do(func() {
				p.mu.Lock()
				delete(p.slots, key)
				delete(p.slotsOut, key)
				p.freed[key] = lease
				p.mu.Unlock()
				p.wake()
			})
		}, true, nil
	}
	return nil, false, nil
}

func (p *Publisher) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// keep holds a lease and writes the queue on it, granting a new one when
// it is lost.
func (p *Publisher) keep(ctx context.Context) {
	failures := 0
	lost := time.Time{} // since when no lease is held (zero: held, or never)
	first := true
	for ctx.Err() == nil {
		lease, alive, err := p.grant(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if lost.IsZero() {
				lost = time.Now()
				p.log.Warn("live sessions: etcd unreachable; sessions go on unpublished until it is back", "error", err)
			}
			failures++
			sleep(ctx, min(minRetry<<min(failures, 4), maxRetry))
			continue
		}
		failures = 0
		p.mu.Lock()
		p.lease = lease
		p.proxyOut = true
		for id := range p.sessions {
			p.dirty[id] = struct{}{}
		}
		for key := range p.slots {
			p.slotsOut[key] = struct{}{}
		}
		n := len(p.sessions)
		p.mu.Unlock()
		switch {
		case first:
			p.log.Info("live sessions: publishing in etcd", "lease_ttl", p.opts.TTL.String())
		case !lost.IsZero():
			p.log.Info("live sessions: etcd back, lease granted again; re-publishing", "sessions", n, "lost_for", time.Since(lost).Round(time.Millisecond).String())
		}
		first, lost = false, time.Time{}
		p.serve(ctx, alive)
		if ctx.Err() != nil {
			return // Close revokes the lease
		}
		p.mu.Lock()
		p.lease = 0
		p.mu.Unlock()
		lost = time.Now()
		p.log.Warn("live sessions: lease lost (etcd away longer than its ttl); granting a new one", "lease_ttl", p.opts.TTL.String())
	}
}

// grant grants a lease and starts keeping it alive; alive is closed when
// the lease is lost.
func (p *Publisher) grant(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	g, err := p.cli.Grant(cctx, int64(p.opts.TTL/time.Second))
	if err != nil {
		return 0, nil, err
	}
	alive, err := p.cli.KeepAlive(ctx, g.ID)
	if err != nil {
		return 0, nil, err
	}
	return g.ID, alive, nil
}

// serve writes the queue until the lease is lost or ctx ends.
func (p *Publisher) serve(ctx context.Context, alive <-chan *clientv3.LeaseKeepAliveResponse) {
	refresh := time.NewTicker(p.opts.Refresh)
	defer refresh.Stop()
	retry := time.NewTimer(0) // write what is queued at once
	defer retry.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-alive:
			if !ok {
				return
			}
			continue
		case <-p.kick:
		case <-refresh.C:
			p.refreshBytes()
		case <-retry.C:
		}
		if wait := flushEvery - time.Since(last); wait > 0 {
			// Coalesce: changes arriving meanwhile go in the same write.
			retry.Reset(wait)
			continue
		}
		last = time.Now()
		due, err := p.flush(ctx)
		switch {
		case err == nil:
			if !due.IsZero() {
				retry.Reset(max(time.Until(due), 0))
			}
		case rpctypes.Error(err) == rpctypes.ErrLeaseNotFound:
			return // expired before the keep-alive noticed
		case ctx.Err() != nil:
			return
		default:
			retry.Reset(maxRetry)
		}
	}
}

// refreshBytes queues the sessions whose byte counts changed.
func (p *Publisher) refreshBytes() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, s := range p.sessions {
		if s.bytes == nil {
			continue
		}
		toClient, toServer := s.bytes()
		if toClient != s.rec.BytesToClient || toServer != s.rec.BytesToServer {
			s.rec.BytesToClient, s.rec.BytesToServer = toClient, toServer
			p.dirty[id] = struct{}{}
		}
	}
}

// flush writes the queued changes in transactions of up to maxOps. A
// session younger than PublishAfter stays queued: due is when the first
// of them is (zero when none waits).
func (p *Publisher) flush(ctx context.Context) (due time.Time, err error) {
	p.mu.Lock()
	lease := p.lease
	if lease == 0 {
		p.due = time.Time{}
		p.mu.Unlock()
		return time.Time{}, nil
	}
	var ops []clientv3.Op
	var undo []func() // re-queue what a failed write did not write
	now := time.Now()
	if p.proxyOut {
		p.proxyOut = false
		b, _ := json.Marshal(p.proxy)
		ops = append(ops, clientv3.OpPut(registry.ProxyKey(p.name), string(b), clientv3.WithLease(lease)))
		undo = append(undo, func() { p.proxyOut = true })
	}
	for id := range p.dirty {
		s := p.sessions[id]
		if at := s.queued.Add(PublishAfter); !s.sent && at.After(now) {
			if due.IsZero() || at.Before(due) {
				due = at
			}
			continue // stays dirty
		}
		delete(p.dirty, id)
		s.sent = true
		s.rec.Updated = now
		b, _ := json.Marshal(s.rec)
		ops = append(ops, clientv3.OpPut(registry.SessionKey(p.name, id), string(b), clientv3.WithLease(lease)))
		undo = append(undo, func() {
			if _, ok := p.sessions[id]; ok {
				p.dirty[id] = struct{}{}
			}
		})
	}
	for id := range p.gone {
		ops = append(ops, clientv3.OpDelete(registry.SessionKey(p.name, id)))
		undo = append(undo, func() {
			if _, ok := p.sessions[id]; !ok {
				p.gone[id] = struct{}{}
			}
		})
	}
	clear(p.gone)
	for key, l := range p.freed {
		// Only while still ours: after a lost lease another proxy may hold it.
		ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", l)},
			[]clientv3.Op{clientv3.OpDelete(key)}, nil))
		undo = append(undo, func() { p.freed[key] = l })
	}
	clear(p.freed)
	var retake []string
	for key := range p.slotsOut {
		retake = append(retake, key)
	}
	clear(p.slotsOut)
	slotValues := maps.Clone(p.slots)
	p.due = due
	p.mu.Unlock()

	var failed error
	for chunk := range slices.Chunk(ops, maxOps) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		_, err := p.cli.Txn(cctx).Then(chunk...).Commit()
		cancel()
		if err != nil {
			failed = err
			break
		}
	}
	for _, key := range retake {
		if failed != nil {
			break
		}
		value, ok := slotValues[key]
		if !ok {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		tr, err := p.cli.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(lease))).Commit()
		cancel()
		if err != nil {
			failed = err
			break
		}
		if !tr.Succeeded {
			p.log.Warn("live sessions: a session's instance slot was taken by another proxy while etcd was away; the session goes on", "slot", key, "holder", value)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if failed != nil {
		// Re-queue everything: a put or delete done twice is harmless.
		for _, u := range undo {
			u()
		}
		for _, key := range retake {
			if _, ok := p.slots[key]; ok {
				p.slotsOut[key] = struct{}{}
			}
		}
		if !p.failing && ctx.Err() == nil { // not a stop cutting a write short
			p.failing = true
			p.log.Warn("live sessions: etcd write failed; retrying", "error", failed)
		}
		return due, failed
	}
	if p.failing {
		p.failing = false
		p.log.Info("live sessions: etcd writes resumed")
	}
	return due, nil
}

// killed acts on a kill record.
func (p *Publisher) killed(ctx context.Context, kv keyValue, onKill func(string, registry.SessionKill)) {
	id := strings.TrimPrefix(kv.key, registry.ProxyKillsPrefix(p.name))
	var k registry.SessionKill
	if err := registry.CheckSessionID(id); err != nil {
		p.log.Warn("live sessions: ignoring a malformed kill key", "key", kv.key, "error", err)
	} else if err := decode(kv.value, &k); err != nil {
		p.log.Warn("live sessions: ignoring a malformed kill", "session", id, "error", err)
	} else {
		onKill(id, k)
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	// Only this write of it: a newer kill of the same id is acted on too.
	if _, err := p.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(kv.key), "=", kv.rev)).
		Then(clientv3.OpDelete(kv.key)).Commit(); err != nil {
		p.log.Warn("live sessions: could not delete a handled kill (its lease removes it)", "session", id, "error", err)
	}
}

// drained acts on a drain record.
func (p *Publisher) drained(kv keyValue, onDrain func(registry.ProxyDrain)) {
	var d registry.ProxyDrain
	if err := decode(kv.value, &d); err != nil {
		p.log.Warn("live sessions: ignoring a malformed drain", "error", err)
		return
	}
	onDrain(d)
}

func decode(b []byte, v any) error {
	if len(b) > maxRecord {
		return fmt.Errorf("record of %d bytes: want at most %d", len(b), maxRecord)
	}
	return json.Unmarshal(b, v)
}

type keyValue struct {
	key   string
	value []byte
	rev   int64
}

// watch hands every put of key (or under it, with prefix) to fn: those in
// etcd when it starts (or resumes), then the watch's.
func (p *Publisher) watch(ctx context.Context, what, key string, prefix bool, fn func(context.Context, keyValue)) {
	var opts []clientv3.OpOption
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	seen := map[string]int64{} // key -> mod revision handed to fn
	hand := func(k string, v []byte, rev int64) {
		if seen[k] >= rev {
			return
		}
		seen[k] = rev
		fn(ctx, keyValue{k, v, rev})
	}
	failures := 0
	var down time.Time
	for ctx.Err() == nil {
		err := func() error {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			resp, err := p.cli.Get(cctx, key, opts...)
			cancel()
			if err != nil {
				return err
			}
			if !down.IsZero() {
				p.log.Info("live sessions: "+what+" watch resumed", "lost_for", time.Since(down).Round(time.Millisecond).String())
				down = time.Time{}
			}
			failures = 0
			for _, kv := range resp.Kvs {
				hand(string(kv.Key), kv.Value, kv.ModRevision)
			}
			wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			defer wcancel()
			wopts := append(slices.Clone(opts), clientv3.WithRev(resp.Header.Revision+1), clientv3.WithFilterDelete())
			for wr := range p.cli.Watch(wctx, key, wopts...) {
				if err := wr.Err(); err != nil {
					return err
				}
				for _, ev := range wr.Events {
					hand(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision)
				}
				if len(seen) > 4096 { // bounded; a kill's key is deleted once handled
					clear(seen)
				}
			}
			return ctx.Err()
		}()
		if ctx.Err() != nil {
			return
		}
		if down.IsZero() {
			down = time.Now()
			level := slog.LevelWarn
			if rpctypes.Error(err) == rpctypes.ErrPermissionDenied {
				level = slog.LevelError
			}
			p.log.Log(ctx, level, "live sessions: "+what+" watch lost; retrying until etcd is back", "error", err, "key", key)
		}
		failures++
		sleep(ctx, min(minRetry<<min(failures, 4), maxRetry))
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// DefaultName is a proxy's name when proxy_name is empty: the host name,
// the console type and the port ("host1-novnc-6080"), so two proxies on
// one host differ. Port 0 (any free port) gets a random suffix instead of
// the port ("host1-novnc-0-5f3a9c"). Characters a name may not hold become
// '-'.
func DefaultName(consoleType string, port int) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	host, _, _ = strings.Cut(host, ".")
	name := badChars.ReplaceAllString(host, "-") + "-" + consoleType + "-" + strconv.Itoa(port)
	if port == 0 {
		var b [3]byte
		rand.Read(b[:])
		name += "-" + hex.EncodeToString(b[:])
	}
	if len(name) > 128 {
		name = name[len(name)-128:]
	}
	return name
}

var badChars = regexp.MustCompile(`[^A-Za-z0-9._:-]`)
