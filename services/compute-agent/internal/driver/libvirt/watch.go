package libvirt

import (
	"context"
	"fmt"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vncgate/vncgate/services/compute-agent/internal/backoff"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// Watch subscribes to libvirt's domain lifecycle events and translates them:
//
//   - Started, Resumed: driver.Started (once: a start brings both); a
//     domain that comes back on another VNC port than the one it had
//     before also gets driver.ConsoleChanged.
//   - Stopped (shutdown, destroyed, crashed, failed, saved, ...), Crashed:
//     driver.Stopped; Undefined: driver.Deleted ("the instance was deleted").
//   - Stopped/migrated, Suspended/migrated and Suspended/post-copy (the
//     source side of a migration): driver.MigratedAway.
//
// Other events (defined, plain pause, PM suspend) are not reported: the
// console stays usable.
//
// When the connection to libvirtd is lost, Watch reconnects with backoff,
// subscribes again, and reconciles: it compares every domain's state and
// VNC port with what it knew before and reports the differences (a domain
// that stopped or vanished meanwhile gets driver.Stopped, one that moved
// its port driver.ConsoleChanged), so no change is lost across a libvirtd
// restart. The first subscription reports nothing: the agent publishes
// Instances at start.
//
// The channel is closed only after ctx ends.
func (d *Driver) Watch(ctx context.Context) <-chan driver.Event {
	out := make(chan driver.Event, 16)
	w := &watcher{d: d, out: out, known: map[string]domainState{}}
	go func() {
		defer close(out)
		w.run(ctx)
	}()
	return out
}

// domainState is what the watcher remembers of a domain.
type domainState struct {
	active bool  // has a QEMU process (hasConsole)
	port   int32 // last VNC port seen; kept while the domain is stopped
	// migrated: shut off because it migrated away.
	migrated bool
}

type watcher struct {
	d     *Driver
	out   chan<- driver.Event
	known map[string]domainState
}

func (w *watcher) run(ctx context.Context) {
	retry := backoff.Backoff{Min: w.d.cfg.MinBackoff, Max: w.d.cfg.MaxBackoff}
	synced := false
	for {
		l, err := w.d.waitClient(ctx)
		if err != nil {
			return // ctx ended
		}
		start := time.Now()
		err = w.session(ctx, l, synced)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			synced = true
		}
		if time.Since(start) > time.Minute {
			retry.Reset()
		}
		wait := retry.Next()
		w.d.log.Warn("libvirt event subscription ended; subscribing again", "error", err, "retry_in", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session subscribes on l, reconciles, and forwards events until the
// stream ends. It returns nil when it got as far as the reconciliation
// (the stream then ended by itself), an error when it failed before.
func (w *watcher) session(ctx context.Context, l *golibvirt.Libvirt, announce bool) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var evs <-chan golibvirt.DomainEventLifecycleMsg
	err := w.d.do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		evs, err = l.LifecycleEvents(sctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("subscribe to lifecycle events: %w", err)
	}
	// go-libvirt's forwarder blocks on sending to evs: keep reading it
	// after we stop, until it closes (on cancel or disconnect).
	defer func() {
		cancel()
		go func() {
			for range evs {
			}
		}()
	}()

	// Subscribed first, then read the state: a change in between is both
	// in the snapshot and in the stream, never in neither.
	snap, err := w.snapshot(ctx)
	if err != nil {
		return fmt.Errorf("read domain states: %w", err)
	}
	w.reconcile(ctx, snap, announce)
	w.d.log.Info("watching libvirt lifecycle events", "domains", len(snap))

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-evs:
			if !ok {
				return nil
			}
			w.handle(ctx, ev)
		}
	}
}

// snapshot reads the state and VNC port of every domain.
func (w *watcher) snapshot(ctx context.Context) (map[string]domainState, error) {
	snap := map[string]domainState{}
	err := w.d.do(ctx, func(l *golibvirt.Libvirt) error {
		doms, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
		if err != nil {
			return err
		}
		for _, dom := range doms {
			s, reason, err := l.DomainGetState(dom, 0)
			if golibvirt.IsNotFound(err) {
				continue // gone since the listing
			}
			if err != nil {
				return err
			}
			st := domainState{active: hasConsole(golibvirt.DomainState(s))}
			st.migrated = golibvirt.DomainState(s) == golibvirt.DomainShutoff &&
				golibvirt.DomainShutoffReason(reason) == golibvirt.DomainShutoffMigrated
			if st.active {
				desc, err := l.DomainGetXMLDesc(dom, 0)
				if golibvirt.IsNotFound(err) {
					continue
				}
				if err != nil {
					return err
				}
				if g, err := parseVNC(desc); err == nil {
					st.port = g.Port
				}
			}
			snap[formatUUID(dom.UUID)] = st
		}
		return nil
	})
	return snap, err
}

// reconcile replaces what the watcher knows with snap, reporting the
// differences when announce is set.
func (w *watcher) reconcile(ctx context.Context, snap map[string]domainState, announce bool) {
	for uuid, old := range w.known {
		cur, ok := snap[uuid]
		switch {
		case !ok:
			if !announce {
				break
			}
			if old.active {
				w.emit(ctx, uuid, driver.Stopped, driver.ReasonStopped)
			} else {
				w.emit(ctx, uuid, driver.Deleted, driver.ReasonDeleted)
			}
		case old.active && !cur.active:
			if !announce {
				break
			}
			if cur.migrated {
				w.emit(ctx, uuid, driver.MigratedAway, driver.ReasonMigrated)
			} else {
				w.emit(ctx, uuid, driver.Stopped, driver.ReasonStopped)
			}
		case !old.active && cur.active:
			if announce {
				w.emit(ctx, uuid, driver.Started, driver.ReasonStarted)
			}
			fallthrough
		case old.active && cur.active:
			if announce && old.port > 0 && cur.port > 0 && old.port != cur.port {
				w.emit(ctx, uuid, driver.ConsoleChanged, driver.ReasonConsole)
			}
		}
		if ok && cur.port == 0 {
			cur.port = old.port // remember the port of a stopped domain
			snap[uuid] = cur
		}
	}
	for uuid, cur := range snap {
		if _, ok := w.known[uuid]; !ok && announce && cur.active {
			w.emit(ctx, uuid, driver.Started, driver.ReasonStarted)
		}
	}
	w.known = snap
}

// handle translates one lifecycle event.
func (w *watcher) handle(ctx context.Context, ev golibvirt.DomainEventLifecycleMsg) {
	uuid := formatUUID(ev.Dom.UUID)
	st := w.known[uuid]
	w.d.log.Debug("libvirt lifecycle event", "instance", uuid, "domain", ev.Dom.Name, "event", ev.Event, "detail", ev.Detail)
	switch golibvirt.DomainEventType(ev.Event) {
	case golibvirt.DomainEventStarted:
		w.activated(ctx, uuid, ev.Dom, driver.ReasonStarted)
	case golibvirt.DomainEventResumed:
		// libvirt starts QEMU paused and resumes it, so a start brings
		// Resumed then Started: one driver.Started is reported.
		w.activated(ctx, uuid, ev.Dom, driver.ReasonStarted)
	case golibvirt.DomainEventSuspended:
		switch golibvirt.DomainEventSuspendedDetailType(ev.Detail) {
		case golibvirt.DomainEventSuspendedMigrated, golibvirt.DomainEventSuspendedPostcopy:
			// The source side of a migration: the guest is about to run
			// elsewhere. If the migration fails libvirt resumes it here
			// (Resumed -> Started again); revoking early errs on the
			// safe side.
			st.active, st.migrated = false, true
			w.known[uuid] = st
			w.emit(ctx, uuid, driver.MigratedAway, driver.ReasonMigrated)
		}
	case golibvirt.DomainEventStopped:
		migrated := st.migrated
		st.active = false
		w.known[uuid] = st
		switch golibvirt.DomainEventStoppedDetailType(ev.Detail) {
		case golibvirt.DomainEventStoppedMigrated:
			st.migrated = true
			w.known[uuid] = st
			if !migrated { // not already reported at Suspended/migrated
				w.emit(ctx, uuid, driver.MigratedAway, driver.ReasonMigrated)
			}
		case golibvirt.DomainEventStoppedCrashed, golibvirt.DomainEventStoppedFailed:
			w.emit(ctx, uuid, driver.Stopped, driver.ReasonCrashed)
		default:
			w.emit(ctx, uuid, driver.Stopped, driver.ReasonStopped)
		}
	case golibvirt.DomainEventCrashed:
		w.emit(ctx, uuid, driver.Stopped, driver.ReasonCrashed)
	case golibvirt.DomainEventUndefined:
		delete(w.known, uuid)
		w.emit(ctx, uuid, driver.Deleted, driver.ReasonDeleted)
	}
}

// activated records that a domain runs: driver.Started when it did not
// before, driver.ConsoleChanged when its VNC port differs from the last one
// seen.
func (w *watcher) activated(ctx context.Context, uuid string, dom golibvirt.Domain, reason string) {
	st := w.known[uuid]
	wasActive, old := st.active, st.port
	st.active, st.migrated = true, false
	if port := w.port(ctx, dom); port > 0 {
		st.port = port
	}
	w.known[uuid] = st
	if !wasActive {
		w.emit(ctx, uuid, driver.Started, reason)
	}
	if old > 0 && st.port != old {
		w.emit(ctx, uuid, driver.ConsoleChanged, driver.ReasonConsole)
	}
}

// port reads the live VNC port of dom; 0 when there is none (yet).
func (w *watcher) port(ctx context.Context, dom golibvirt.Domain) int32 {
	var desc string
	err := w.d.do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		desc, err = l.DomainGetXMLDesc(dom, 0)
		return err
	})
	if err != nil {
		w.d.log.Warn("read domain xml", "instance", formatUUID(dom.UUID), "error", err)
		return 0
	}
	g, err := parseVNC(desc)
	if err != nil {
		return 0
	}
	return g.Port
}

func (w *watcher) emit(ctx context.Context, uuid string, kind driver.EventKind, reason string) {
	w.d.log.Info("instance lifecycle", "instance", uuid, "kind", kind.String(), "reason", reason)
	select {
	case w.out <- driver.Event{UUID: uuid, Kind: kind, Reason: reason}:
	case <-ctx.Done():
	}
}
