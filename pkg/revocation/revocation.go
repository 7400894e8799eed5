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
package revocation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Waits between watch attempts after a failure: short after an outage, up
// to maxRetry when etcd keeps refusing (a missing permission would
// otherwise log twice a second).
const (
	minRetry = 500 * time.Millisecond
	maxRetry = 30 * time.Second
	// readTimeout bounds the read that recovers from a compaction.
	readTimeout = 5 * time.Second
)

// Watch calls fn for every revocation written from now until ctx ends,
// with r.Revision set to the key's ModRevision.
func Watch(ctx context.Context, cli *clientv3.Client, log *slog.Logger, fn func(uuid string, r registry.Revocation)) {
	w := watcher{cli: cli, log: log, fn: fn}
	w.run(ctx)
}

type watcher struct {
	cli *clientv3.Client
	log *slog.Logger
	fn  func(uuid string, r registry.Revocation)
	// rev is the revision up to which every revocation was reported (0:
	// before the first watch was created; watch from now).
	rev int64
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
		delay := min(minRetry<<min(failures, 10), maxRetry)
		failures++
		level := slog.LevelWarn
		if isPermissionDenied(err) {
			level = slog.LevelError
			err = fmt.Errorf("%w (the etcd user needs read on %s)", err, registry.RevocationsPrefix)
		}
		w.log.Log(ctx, level, "revocation watch interrupted", "error", err, "attempt", failures, "retry_in", delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
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
