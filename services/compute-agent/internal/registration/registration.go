// Package registration keeps one compute agent present in etcd and its
// instances published there, and turns driver lifecycle events into token
// revocations.
//
// It promises:
//   - registry.ComputeKey(host) holds registry.Compute{Address} on a lease
//     of Config.TTL that the agent keeps alive: a dead agent disappears
//     within the TTL; a stopped one (ctx ended) revokes its lease and
//     disappears at once;
//   - every instance the driver lists has registry.LocationKey(uuid) =
//     registry.Location{ComputeHost: host} (no lease) and the index key
//     registry.ComputeInstanceKey(host, uuid); an instance this host
//     published before but no longer runs loses its index key, and its
//     location too when the location still names this host (a Txn compares
//     the value, so a location another host has since written is kept);
//   - when the keep-alive stream ends or etcd cannot be reached, the agent
//     registers again with capped, jittered exponential backoff until ctx
//     ends, and publishes everything again once registered, and again every
//     Config.ResyncInterval (writing only what differs);
//   - driver events (when the driver is a driver.Watcher): Started publishes
//     the instance; Stopped and ConsoleChanged revoke its tokens and keep
//     its location; MigratedAway revokes its tokens and unpublishes it.
//     Revocations are queued (bounded) and retried with backoff, so a slow
//     consoleauth never holds the registration up.
package registration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/compute-agent/internal/backoff"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	// RevocationAttempts is how often a revocation is tried: 5.
	RevocationAttempts int
	// ResyncInterval is how often everything is published again, to repair
	// keys changed behind the agent's back and to follow drivers that send
	// no events: 1m. Unchanged keys are not rewritten.
	ResyncInterval time.Duration
}

// Agent is a running registration; see Run.
type Agent struct {
	cfg         Config
	log         *slog.Logger
	location    string // JSON of registry.Location naming this host
	revocations chan revocation
}

type revocation struct{ uuid, reason string }

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
	if cfg.RevocationAttempts <= 0 {
		cfg.RevocationAttempts = 5
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	loc, err := json.Marshal(registry.Location{ComputeHost: cfg.Host})
	if err != nil {
		return nil, err
	}
	return &Agent{
		cfg:         cfg,
		log:         log.With("host", cfg.Host),
		location:    string(loc),
		revocations: make(chan revocation, 1024),
	}, nil
}

// Run registers the agent and keeps it registered until ctx ends, then
// revokes its lease (the compute key goes; locations stay, the instances
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
		err = a.serve(ctx, keepAlive, &events)
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

// handle acts on one driver event; with registered false it only queues
// revocations (the next registration publishes everything anyway).
func (a *Agent) handle(ctx context.Context, ev driver.Event, registered bool) error {
	log := a.log.With("instance", ev.UUID, "event", ev.Kind.String(), "reason", ev.Reason)
	log.Info("instance event")
	switch ev.Kind {
	case driver.Started:
		if registered {
			return a.publish(ctx, ev.UUID)
		}
	case driver.Stopped, driver.ConsoleChanged:
		a.queueRevocation(ev)
	case driver.MigratedAway, driver.Deleted:
		a.queueRevocation(ev)
		if registered {
			return a.unpublish(ctx, ev.UUID)
		}
	default:
		log.Warn("unknown instance event ignored")
	}
	return nil
}

// sync publishes every instance of the driver and unpublishes those this
// host published before but no longer runs.
func (a *Agent) sync(ctx context.Context) error {
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	ids, err := a.cfg.Driver.Instances(op)
	cancel()
	if err != nil {
		return fmt.Errorf("list instances: %w", err)
	}
	runs := make(map[string]bool, len(ids))
	written := 0
	for _, id := range ids {
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
		if runs[id] {
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
	a.log.Log(ctx, level, "instances published", "count", len(ids), "written", written, "pruned", pruned)
	return nil
}

// publish writes the location and index keys of an instance.
func (a *Agent) publish(ctx context.Context, uuid string) error {
	_, err := a.write(ctx, uuid)
	return err
}

// write puts the location and index keys of an instance unless both
// already say so (a resync then writes nothing and wakes no watcher); it
// reports whether it wrote.
func (a *Agent) write(ctx context.Context, uuid string) (bool, error) {
	if !validUUIDKey(uuid) {
		return false, fmt.Errorf("instance %q: not a valid key part", uuid)
	}
	loc, idx := registry.LocationKey(uuid), registry.ComputeInstanceKey(a.cfg.Host, uuid)
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	resp, err := a.cfg.Client.Txn(op).
		If(clientv3.Compare(clientv3.Value(loc), "=", a.location), clientv3.Compare(clientv3.CreateRevision(idx), ">", 0)).
		Else(clientv3.OpPut(loc, a.location), clientv3.OpPut(idx, "")).
		Commit()
	if err != nil {
		return false, fmt.Errorf("publish instance %s: %w", uuid, err)
	}
	return !resp.Succeeded, nil
}

// unpublish deletes an instance's index key, and its location when the
// location still names this host.
func (a *Agent) unpublish(ctx context.Context, uuid string) error {
	loc, idx := registry.LocationKey(uuid), registry.ComputeInstanceKey(a.cfg.Host, uuid)
	op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	resp, err := a.cfg.Client.Get(op, loc)
	if err != nil {
		return fmt.Errorf("unpublish instance %s: %w", uuid, err)
	}
	var cur registry.Location
	if len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &cur) == nil && cur.ComputeHost == a.cfg.Host {
		txn, err := a.cfg.Client.Txn(op).
			If(clientv3.Compare(clientv3.Value(loc), "=", string(resp.Kvs[0].Value))).
			Then(clientv3.OpDelete(idx), clientv3.OpDelete(loc)).
			Else(clientv3.OpDelete(idx)).
			Commit()
		if err != nil {
			return fmt.Errorf("unpublish instance %s: %w", uuid, err)
		}
		a.log.Info("instance unpublished", "instance", uuid, "location_deleted", txn.Succeeded)
		return nil
	}
	if _, err := a.cfg.Client.Delete(op, idx); err != nil {
		return fmt.Errorf("unpublish instance %s: %w", uuid, err)
	}
	a.log.Info("instance unpublished", "instance", uuid, "location_deleted", false)
	return nil
}

func (a *Agent) revokeLease(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), min(a.cfg.OpTimeout, 2*time.Second))
	defer cancel()
	if _, err := a.cfg.Client.Revoke(ctx, id); err != nil {
		a.log.Debug("lease not revoked; it expires by itself", "lease", int64(id), "error", err)
	}
}

func (a *Agent) queueRevocation(ev driver.Event) {
	if a.cfg.Revoker == nil {
		return
	}
	select {
	case a.revocations <- revocation{uuid: ev.UUID, reason: ev.Reason}:
	default:
		a.log.Error("revocation queue full, tokens not revoked", "instance", ev.UUID)
	}
}

// revokeLoop calls the Revoker for each queued revocation, retrying with
// backoff, until ctx ends.
func (a *Agent) revokeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			if n := len(a.revocations); n > 0 {
				a.log.Warn("agent stopping, revocations dropped", "count", n)
			}
			return
		case r := <-a.revocations:
			a.revoke(ctx, r)
		}
	}
}

func (a *Agent) revoke(ctx context.Context, r revocation) {
	for attempt := 0; attempt < a.cfg.RevocationAttempts; attempt++ {
		op, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
		err := a.cfg.Revoker.RevokeInstanceTokens(op, r.uuid, r.reason)
		cancel()
		if err == nil {
			a.log.Info("instance tokens revoked", "instance", r.uuid, "reason", r.reason)
			return
		}
		if ctx.Err() != nil {
			return
		}
		delay := a.backoff(attempt)
		a.log.Warn("revoking instance tokens failed", "instance", r.uuid, "error", err, "attempt", attempt+1, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	a.log.Error("instance tokens not revoked, giving up", "instance", r.uuid, "attempts", a.cfg.RevocationAttempts)
}

func (a *Agent) backoff(attempt int) time.Duration {
	return backoff.Delay(a.cfg.MinBackoff, a.cfg.MaxBackoff, attempt)
}

// validUUIDKey refuses ids that would break the key layout.
func validUUIDKey(id string) bool {
	return id != "" && !strings.ContainsAny(id, "/\x00")
}
