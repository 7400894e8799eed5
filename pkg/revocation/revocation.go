// Package revocation lets proxies end live sessions when consoleauth revokes
// an instance's tokens: it watches registry.RevocationsPrefix in etcd and
// reports each revocation with the etcd revision that wrote it
// (registry.Revocation.Revision), so that which sessions end is decided by
// etcd's order, not by clocks.
//
// It promises: every revocation written after Watch started is reported at
// least once, in revision order, across etcd outages and restarts (the
// watch resumes after the last revision seen) and across a compaction of
// the revisions it missed (it then reads the revocations still in etcd, on
// their leases, and reports those written after the last one seen). Only
// the reader's read permission on registry.RevocationsPrefix is needed
// (the proxies' etcd role).
//
// It logs once per change of state, not once per attempt: a warning when
// the watch is lost (an error when etcd refuses the permission), and a note
// when it is back, with how long it was away.
package revocation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Waits between watch attempts after a failure: short through an outage,
// so that the watch is back within a second of etcd, up to maxDeniedRetry
// while etcd refuses the permission (an operator's fix takes longer).
const (
	minRetry       = 250 * time.Millisecond
	maxRetry       = time.Second
	maxDeniedRetry = 30 * time.Second
	// readTimeout bounds the read that recovers from a compaction.
	readTimeout = 5 * time.Second
)

// Watch calls fn for every revocation written from now until ctx ends,
// with r.Revision set to the key's ModRevision.
func Watch(ctx context.Context, cli *clientv3.Client, log *slog.Logger, fn func(uuid string, r registry.Revocation)) {
	WatchStatus(ctx, cli, log, fn, nil)
}

// Status says whether a watch is up, for a readiness check.
type Status struct {
	up   atomic.Bool
	conn atomic.Pointer[grpc.ClientConn]
}

// Healthy reports whether etcd created the watch, it has not been lost
// since, and the client is connected: the client resumes a watch on its
// own through an outage without reporting it, so the connection's state is
// what tells that etcd is away.
func (s *Status) Healthy() bool {
	c := s.conn.Load()
	return s.up.Load() && c != nil && c.GetState() == connectivity.Ready
}

// WatchStatus is Watch keeping status (if not nil) up to date.
func WatchStatus(ctx context.Context, cli *clientv3.Client, log *slog.Logger, fn func(uuid string, r registry.Revocation), status *Status) {
	if status == nil {
		status = new(Status)
	}
	status.conn.Store(cli.ActiveConnection())
	w := watcher{cli: cli, log: log, fn: fn, status: status}
	defer status.up.Store(false)
	w.run(ctx)
}

type watcher struct {
	cli *clientv3.Client
	log *slog.Logger
	fn  func(uuid string, r registry.Revocation)
	// rev is the revision up to which every revocation was reported (0:
	// before the first watch was created; watch from now).
	rev int64
	// lost is the kind of failure last logged ("" while the watch is up),
	// since when it lasts.
	lost   string
	since  time.Time
	status *Status
}

func (w *watcher) run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		created, compacted, err := w.watch(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case compacted > 0:
			err = w.catchUp(ctx)
		}
		if created {
			failures = 0 // it worked for a while: start the backoff again
		}
		if err == nil {
			continue
		}
		denied := isPermissionDenied(err)
		delay := min(minRetry<<min(failures, 10), maxRetry)
		if denied {
			delay = min(minRetry<<min(failures, 10), maxDeniedRetry)
		}
		failures++
		w.interrupted(ctx, err, denied, failures, delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
}

// interrupted logs a failed watch, once per kind of failure in a row: a
// warning for the first, an error when etcd refuses the permission; the
// attempts after it at debug level.
func (w *watcher) interrupted(ctx context.Context, err error, denied bool, attempt int, delay time.Duration) {
	w.status.up.Store(false)
	kind, level, msg := "unavailable", slog.LevelWarn, "revocation watch lost: etcd unavailable; retrying until it is back"
	if denied {
		kind, level, msg = "denied", slog.LevelError, "revocation watch refused by etcd"
		err = fmt.Errorf("%w (the etcd user needs read on %s)", err, registry.RevocationsPrefix)
	}
	if w.lost == kind {
		level = slog.LevelDebug
	} else if w.lost == "" {
		w.since = time.Now()
	}
	w.lost = kind
	w.log.Log(ctx, level, msg, "error", err, "attempt", attempt, "retry_in", delay)
}

// resumed logs, once, that the watch is back after a failure.
func (w *watcher) resumed() {
	if w.lost == "" {
		return
	}
	w.log.Info("revocation watch resumed", "lost_for", time.Since(w.since).Round(time.Millisecond))
	w.lost = ""
}

// watch reports revocations until the watch ends: with the revision etcd
// compacted past (the missed events are gone), or with an error. It reports
// whether etcd created the watch.
func (w *watcher) watch(ctx context.Context) (created bool, compacted int64, err error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithFilterDelete(), clientv3.WithCreatedNotify()}
	if w.rev > 0 {
		opts = append(opts, clientv3.WithRev(w.rev+1))
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range w.cli.Watch(wctx, registry.RevocationsPrefix, opts...) {
		if resp.CompactRevision > 0 {
			return created, resp.CompactRevision, nil
		}
		if err := resp.Err(); err != nil {
			return created, 0, err
		}
		if resp.Canceled {
			return created, 0, fmt.Errorf("watch canceled: %s", resp.CancelReason)
		}
		if resp.Created {
			created = true
			w.status.up.Store(true)
			w.resumed()
			if w.rev == 0 {
				// A watch "from now" starts after this revision:
				// resuming from it after an outage misses nothing
				// written since. (A resumed watch's header is etcd's
				// current revision, maybe ahead of the events it
				// still has to send: not taken.)
				w.rev = resp.Header.Revision
			}
		}
		for _, ev := range resp.Events {
			w.report(ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
		}
	}
	if ctx.Err() != nil {
		return created, 0, ctx.Err()
	}
	return created, 0, fmt.Errorf("watch closed")
}

// catchUp reports the revocations still in etcd that are newer than the last
// one reported (their events were compacted away), then lets the watch go
// on from the read's revision.
func (w *watcher) catchUp(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	resp, err := w.cli.Get(rctx, registry.RevocationsPrefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend))
	if err != nil {
		return fmt.Errorf("read revocations after a compaction: %w", err)
	}
	missed := 0
	for _, kv := range resp.Kvs {
		if kv.ModRevision > w.rev {
			w.report(kv.Key, kv.Value, kv.ModRevision)
			missed++
		}
	}
	w.log.Warn("revocation watch fell behind a compaction; read the revocations still in etcd",
		"reported", missed, "revision", resp.Header.Revision)
	w.rev = max(w.rev, resp.Header.Revision)
	return nil
}

func (w *watcher) report(key, value []byte, rev int64) {
	w.rev = max(w.rev, rev)
	var r registry.Revocation
	if err := json.Unmarshal(value, &r); err != nil {
		w.log.Error("bad revocation record", "key", string(key), "error", err)
		return
	}
	r.Revision = rev
	w.fn(strings.TrimPrefix(string(key), registry.RevocationsPrefix), r)
}

func isPermissionDenied(err error) bool {
	// A canceled watch carries the reason only as text.
	return rpctypes.Error(err) == rpctypes.ErrPermissionDenied ||
		strings.Contains(err.Error(), rpctypes.ErrPermissionDenied.Error())
}
