// Package registration keeps one compute agent present in etcd and its
// instances published there, and turns driver lifecycle events into token
// revocations.
//
// It promises:
//   - registry.ComputeKey(host) holds registry.Compute{Address} on a lease
//     of Config.TTL that the agent keeps alive: a dead agent disappears
//     within the TTL; a stopped one (ctx ended) revokes its lease and
//     disappears at once;
//   - every instance the driver lists (by canonical UUID; other ids are
//     skipped with a warning) has this host's claim
//     registry.ComputeInstanceKey(host, uuid) = registry.Location (no
//     lease) naming host and, under the current registration's lease, the
//     instance's console as Config.Console answers it (or why it has none),
//     so that consoleauth can check a token's host and port without asking
//     the agent; an instance this host published before but no longer runs
//     loses its claim. The agent writes nothing else but its own
//     registry.ComputeKey(host), so its etcd role needs no more (see
//     package registry for who wins when two hosts claim an instance);
//   - a claim is rewritten before the agent acts on a driver event: the
//     claim of an instance that stopped, moved its console, migrated or
//     went says so before its revocation is queued, so that no token check
//     answered from the claim after the revocation still vouches for the
//     old console. When the hypervisor cannot say (driver.ErrUnavailable),
//     the claim carries no lease: consoleauth asks the agent;
//   - when the keep-alive stream ends or etcd cannot be reached, the agent
//     registers again with capped, jittered exponential backoff until ctx
//     ends, and publishes everything again once registered, and again every
//     Config.ResyncInterval (writing only what differs);
//   - driver events (when the driver is a driver.Watcher): Started publishes
//     the instance; Stopped and ConsoleChanged revoke its tokens and keep
//     its claim; MigratedAway and Deleted revoke its tokens and then
//     unpublish it (consoleauth lets a compute host revoke only the
//     instances it holds the winning claim on, so the claim stays until the
//     revocation landed);
//   - revocations cannot be lost while the agent runs: they are retried
//     until consoleauth accepts them (or refuses one as malformed, gRPC
//     INVALID_ARGUMENT, which no retry would change), with capped, jittered
//     exponential backoff, in a queue bounded to Config.MaxPendingRevocations
//     instances that keeps one entry per instance (a newer event's reason
//     replaces an older one's). A slow or absent consoleauth never holds
//     the registration up. Revocations still pending when ctx ends are
//     logged and dropped.
package registration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/compute-agent/internal/backoff"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Revoker ends the console tokens (and sessions) of an instance: the
// consoleauth RevokeInstanceTokens call.
type Revoker interface {
	RevokeInstanceTokens(ctx context.Context, uuid, reason string) error
}

// Config is what an Agent needs. Zero durations take the defaults shown.
type Config struct {
	Client *clientv3.Client
	// Host is this compute host's name, as in registry keys.
	Host string
	// Address is the agent's gRPC address that consoleauth dials.
	Address string
	// TTL of the registration lease, in whole seconds (at least 1): 10s.
	TTL     time.Duration
	Driver  driver.Driver
	Revoker Revoker // nil: events revoke nothing
	Logger  *slog.Logger
	// MinBackoff and MaxBackoff bound the waits between attempts to
	// register or publish again: 200ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// OpTimeout bounds every etcd and revocation call: 5s.
	OpTimeout time.Duration
	// MaxPendingRevocations bounds the instances whose revocation waits
	// for consoleauth: 4096.
	MaxPendingRevocations int
	// ResyncInterval is how often everything is published again, to repair
	// keys changed behind the agent's back and to follow drivers that send
	// no events: 1m. Unchanged keys are not rewritten.
	ResyncInterval time.Duration
	// Console is what the agent's GetConsole answers for an instance
	// (grpcapi.Server.Console: the driver's answer with the address
	// proxies dial), published in its claim; nil is Driver.Console.
	Console func(ctx context.Context, uuid string) (driver.Console, error)
	// Metrics counts the events handled; nil counts nothing.
	Metrics *Metrics
}

// Agent is a running registration; see Run.
type Agent struct {
	cfg         Config
	log         *slog.Logger
	revocations *revocationQueue
	registered  atomic.Bool  // the compute key is on a live lease
	lease       atomic.Int64 // the lease of the latest registration
}

// Registered reports whether the agent's compute key is in etcd on a lease
// kept alive (for the admin listener's /readyz).
func (a *Agent) Registered() bool { return a.registered.Load() }

// errKeepAliveLost says the lease's keep-alive stream ended.
var errKeepAliveLost = errors.New("lease keep-alive ended")

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("registration: no etcd client")
	case cfg.Driver == nil:
		return nil, errors.New("registration: no driver")
	case cfg.Host == "" || strings.Contains(cfg.Host, "/"):
		return nil, fmt.Errorf("registration: host %q must be non-empty and contain no '/'", cfg.Host)
	case cfg.Address == "":
		return nil, errors.New("registration: no address to advertise")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 5 * time.Second
	}
	if cfg.MaxPendingRevocations <= 0 {
		cfg.MaxPendingRevocations = 4096
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = time.Minute
	}
	if cfg.Console == nil {
		cfg.Console = cfg.Driver.Console
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		cfg:         cfg,
		log:         log.With("host", cfg.Host),
		revocations: newRevocationQueue(cfg.MaxPendingRevocations),
	}, nil
}

// Run registers the agent and keeps it registered until ctx ends, then
// revokes its lease (the compute key goes; claims stay, the instances
// still exist) and returns nil. Call it once.
func (a *Agent) Run(ctx context.Context) error {
	var events <-chan driver.Event
	if w, ok := a.cfg.Driver.(driver.Watcher); ok {
		events = w.Watch(ctx)
	}
	revokerDone := make(chan struct{})
	go func() {
		defer close(revokerDone)
		a.revokeLoop(ctx)
	}()
	defer func() { <-revokerDone }()

	var prev clientv3.LeaseID
	failures := 0
	for {
		lease, keepAlive, err := a.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			delay := a.backoff(failures)
			failures++
			a.log.Warn("registration failed", "error", err, "attempt", failures, "retry_in", delay)
			if !a.wait(ctx, delay, &events) {
				return nil
			}
			continue
		}
		failures = 0
		if prev != 0 && prev != lease {
			a.revokeLease(prev) // best effort: the old lease holds nothing now
		}
		prev = lease
		a.log.Info("registered", "address", a.cfg.Address, "lease", int64(lease), "ttl", a.cfg.TTL)
		a.registered.Store(true)
		err = a.serve(ctx, keepAlive, &events)
		a.registered.Store(false)
		if ctx.Err() != nil {
			a.revokeLease(lease)
			a.log.Info("deregistered")
			return nil
		}
		a.log.Warn("registration lost, registering again", "error", err)
	}
}

// register grants a lease, puts the compute key on it and starts its
// keep-alive, whose channel is returned. The keep-alive ends with ctx.
func (a *Agent) register(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	ttl := max(int64((a.cfg.TTL+time.Second-1)/time.Second), 1)
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	lease, err := a.cfg.Client.Grant(op, ttl)
	if err != nil {
		return 0, nil, fmt.Errorf("grant lease: %w", err)
	}
	val, err := json.Marshal(registry.Compute{Address: a.cfg.Address})
	if err != nil {
		return 0, nil, err
	}
	if _, err := a.cfg.Client.Put(op, registry.ComputeKey(a.cfg.Host), string(val), clientv3.WithLease(lease.ID)); err != nil {
		a.revokeLease(lease.ID)
		return 0, nil, fmt.Errorf("put %s: %w", registry.ComputeKey(a.cfg.Host), err)
	}
	keepAlive, err := a.cfg.Client.KeepAlive(ctx, lease.ID)
	if err != nil {
		a.revokeLease(lease.ID)
		return 0, nil, fmt.Errorf("keep lease alive: %w", err)
	}
	// Claims vouch for their console under this lease from now on; those
	// written under an earlier one vouch for nothing until the first sync
	// rewrites them.
	a.lease.Store(int64(lease.ID))
	return lease.ID, keepAlive, nil
}

// serve keeps one registration: it drains the keep-alive, publishes all
// instances (again, with backoff, until it works) and handles events. It
// returns when the keep-alive ends or ctx does.
func (a *Agent) serve(ctx context.Context, keepAlive <-chan *clientv3.LeaseKeepAliveResponse, events *<-chan driver.Event) error {
	syncTimer := time.NewTimer(0) // publish everything at once
	defer syncTimer.Stop()
	syncFailures := 0
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-keepAlive:
			if !ok {
				return errKeepAliveLost
			}
		case ev, ok := <-*events:
			if !ok {
				*events = nil
				continue
			}
			if err := a.handle(ctx, ev, true); err != nil {
				a.log.Warn("instance not updated in etcd, will publish all again", "instance", ev.UUID, "error", err)
				syncTimer.Reset(a.backoff(syncFailures))
			}
		case <-syncTimer.C:
			if err := a.sync(ctx); err != nil {
				delay := a.backoff(syncFailures)
				syncFailures++
				a.log.Warn("publishing instances failed", "error", err, "retry_in", delay)
				syncTimer.Reset(delay)
				continue
			}
			syncFailures = 0
			syncTimer.Reset(a.cfg.ResyncInterval)
		}
	}
}

// wait sleeps for d while still handling events (revocations go on while
// etcd is away; publication waits for the next registration). It reports
// false when ctx ended.
func (a *Agent) wait(ctx context.Context, d time.Duration, events *<-chan driver.Event) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case ev, ok := <-*events:
			if !ok {
				*events = nil
				continue
			}
			_ = a.handle(ctx, ev, false)
		}
	}
}

// handle acts on one driver event: registered, it first rewrites the
// instance's claim with what the driver says now (so that consoleauth stops
// vouching for an old console before any revocation is sent), then queues
// the revocation the event calls for. With registered false it only queues
// revocations (the next registration publishes everything anyway; until
// then the compute key is gone or on a lease no claim outlives by more
// than its TTL, and the revocation deletes the instance's tokens).
func (a *Agent) handle(ctx context.Context, ev driver.Event, registered bool) error {
	log := a.log.With("instance", ev.UUID, "event", ev.Kind.String(), "reason", ev.Reason)
	log.Info("instance event")
	a.cfg.Metrics.event(ev.Kind)
	uuid, err := registry.ParseInstanceUUID(ev.UUID)
	if err != nil {
		log.Warn("instance event ignored: the instance id is not a UUID", "error", err)
		return nil
	}
	var published error
	switch ev.Kind {
	case driver.Started, driver.Stopped, driver.ConsoleChanged, driver.MigratedAway, driver.Deleted:
		if registered {
			published = a.publish(ctx, uuid)
		}
	default:
		log.Warn("unknown instance event ignored")
		return nil
	}
	switch ev.Kind {
	case driver.Started:
		a.revocations.runsHere(uuid) // back here: no unpublish after its revocation
	case driver.Stopped, driver.ConsoleChanged:
		a.queueRevocation(uuid, ev.Reason, false)
	case driver.MigratedAway, driver.Deleted:
		if !a.queueRevocation(uuid, ev.Reason, true) && registered && published == nil {
			return a.unpublish(ctx, uuid)
		}
	}
	return published
}

// sync publishes every instance of the driver and unpublishes those this
// host published before but no longer runs, except those whose revocation
// is still pending (they are unpublished once it lands).
func (a *Agent) sync(ctx context.Context) error {
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	ids, err := a.cfg.Driver.Instances(op)
	cancel()
	if err != nil {
		return fmt.Errorf("list instances: %w", err)
	}
	runs := make(map[string]bool, len(ids))
	written := 0
	for _, raw := range ids {
		id, err := registry.ParseInstanceUUID(raw)
		if err != nil {
			a.log.Warn("instance not published: its id is not a UUID", "error", err, "instance", raw)
			continue
		}
		runs[id] = true
		wrote, err := a.write(ctx, id)
		if err != nil {
			return err
		}
		if wrote {
			written++
		}
	}
	op, cancel = context.WithTimeout(ctx, a.cfg.OpTimeout)
	prefix := registry.ComputeInstancesPrefix(a.cfg.Host)
	resp, err := a.cfg.Client.Get(op, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("list published instances: %w", err)
	}
	pruned := 0
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), prefix)
		if runs[id] || a.revocations.holdsClaim(id) {
			continue
		}
		if err := a.unpublish(ctx, id); err != nil {
			return err
		}
		pruned++
	}
	level := slog.LevelDebug
	if written > 0 || pruned > 0 {
		level = slog.LevelInfo
	}
	a.log.Log(ctx, level, "instances published", "count", len(runs), "written", written, "pruned", pruned)
	return nil
}

// publish writes this host's claim on an instance.
func (a *Agent) publish(ctx context.Context, uuid string) error {
	_, err := a.write(ctx, uuid)
	return err
}

// write puts this host's claim on an instance unless it already holds it
// with the same value (a resync then writes nothing and wakes no watcher);
// it reports whether it wrote.
func (a *Agent) write(ctx context.Context, uuid string) (bool, error) {
	key := registry.ComputeInstanceKey(a.cfg.Host, uuid)
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	location, err := a.location(op, uuid)
	if err != nil {
		return false, err
	}
	resp, err := a.cfg.Client.Txn(op).
		If(clientv3.Compare(clientv3.Value(key), "=", location)).
		Else(clientv3.OpPut(key, location)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("publish instance %s: %w", uuid, err)
	}
	return !resp.Succeeded, nil
}

// maxNoConsole bounds the reason a claim gives for having no console: a
// token check may repeat it to a proxy.
const maxNoConsole = 200

// location is the claim's value for an instance (JSON registry.Location):
// under the current lease, what Config.Console says now, as the agent's
// ValidateConsolePort would judge it (a console, or not running, unknown
// here or without VNC); without a lease when the driver cannot say.
func (a *Agent) location(ctx context.Context, uuid string) (string, error) {
	loc := registry.Location{ComputeHost: a.cfg.Host}
	c, err := a.cfg.Console(ctx, uuid)
	switch {
	case err == nil:
		loc.Lease = a.lease.Load()
		loc.Console = &registry.LocationConsole{Host: c.Host, Port: c.Port, InternalAccessPath: c.InternalAccessPath}
	case errors.Is(err, driver.ErrNotFound), errors.Is(err, driver.ErrNotRunning), errors.Is(err, driver.ErrNoConsole):
		loc.Lease = a.lease.Load()
		loc.NoConsole = err.Error()
		if len(loc.NoConsole) > maxNoConsole {
			loc.NoConsole = strings.ToValidUTF8(loc.NoConsole[:maxNoConsole], "")
		}
	default:
		a.log.Debug("instance published without its console: the driver cannot say", "instance", uuid, "error", err)
	}
	b, err := json.Marshal(loc)
	if err != nil {
		return "", fmt.Errorf("encode the claim of instance %s: %w", uuid, err)
	}
	return string(b), nil
}

// unpublish deletes this host's claim on an instance.
func (a *Agent) unpublish(ctx context.Context, uuid string) error {
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	if _, err := a.cfg.Client.Delete(op, registry.ComputeInstanceKey(a.cfg.Host, uuid)); err != nil {
		return fmt.Errorf("unpublish instance %s: %w", uuid, err)
	}
	a.log.Info("instance unpublished", "instance", uuid)
	return nil
}

func (a *Agent) revokeLease(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), min(a.cfg.OpTimeout, 2*time.Second))
	defer cancel()
	if _, err := a.cfg.Client.Revoke(ctx, id); err != nil {
		a.log.Debug("lease not revoked; it expires by itself", "lease", int64(id), "error", err)
	}
}

// queueRevocation queues the revocation of an instance's tokens, to be
// followed by unpublishing it when unpublish is set. It reports false when
// nothing was queued (no Revoker, or the queue is full).
func (a *Agent) queueRevocation(uuid, reason string, unpublish bool) bool {
	if a.cfg.Revoker == nil {
		return false
	}
	if !a.revocations.add(uuid, reason, unpublish) {
		a.log.Error("revocation queue full, tokens not revoked", "instance", uuid, "reason", reason,
			"pending", a.cfg.MaxPendingRevocations)
		return false
	}
	return true
}

// revokeLoop calls the Revoker for each pending revocation, the earliest
// due first, retrying each with backoff until it succeeds or ctx ends; after
// a revocation that asked for it, it unpublishes the instance.
func (a *Agent) revokeLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			// Shutting down: revoke returns at once, so looping again would spin.
			if n := a.revocations.len(); n > 0 {
				a.log.Warn("agent stopping, pending revocations dropped", "count", n)
			}
			return
		}
		r, wait, ok := a.revocations.next(time.Now())
		switch {
		case !ok:
			wait = time.Hour // nothing pending: sleep until woken
		case wait <= 0:
			a.revoke(ctx, r)
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done(): // the loop's first check returns
		case <-a.revocations.wake:
		case <-timer.C:
		}
	}
}

// revoke makes one attempt at r.
func (a *Agent) revoke(ctx context.Context, r pendingRevocation) {
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	err := a.cfg.Revoker.RevokeInstanceTokens(op, r.uuid, r.reason)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if status.Code(err) == codes.InvalidArgument {
		// consoleauth will never accept this request: retrying would only
		// hold a slot (and a claim) for ever.
		a.log.Error("revocation refused as malformed, dropped", "instance", r.uuid, "reason", r.reason, "error", err)
		if a.revocations.succeeded(r) {
			if err := a.unpublish(ctx, r.uuid); err != nil {
				a.log.Warn("instance not unpublished", "instance", r.uuid, "error", err)
			}
		}
		return
	}
	if err != nil {
		delay := a.backoff(r.attempt)
		a.revocations.failed(r, time.Now().Add(delay))
		a.log.Warn("revoking instance tokens failed, will retry", "instance", r.uuid, "reason", r.reason,
			"error", err, "attempt", r.attempt+1, "retry_in", delay)
		return
	}
	a.log.Info("instance tokens revoked", "instance", r.uuid, "reason", r.reason, "attempt", r.attempt+1)
	if a.revocations.succeeded(r) {
		if err := a.unpublish(ctx, r.uuid); err != nil {
			// The next resync prunes it: it is no longer pending.
			a.log.Warn("instance not unpublished after its revocation", "instance", r.uuid, "error", err)
		}
	}
}

func (a *Agent) backoff(attempt int) time.Duration {
	return backoff.Delay(a.cfg.MinBackoff, a.cfg.MaxBackoff, attempt)
}
