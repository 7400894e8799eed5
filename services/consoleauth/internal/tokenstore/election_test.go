package tokenstore_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// TestLeaderElectionIsSlowNotDown kills the leader of a 3-member cluster:
// while the two others elect a new one (no leader for an election timeout
// or more, several probe timeouts), the store's calls wait for it rather
// than failing at once as during a quorum loss, the store never reports
// etcd unavailable, and a write in flight to the dead leader is sent again
// once the new one is known rather than waiting for the store's timeout.
func TestLeaderElectionIsSlowNotDown(t *testing.T) {
	t.Parallel()
	cluster, cli := etcd.StartCluster(t, 3)
	ctx := testworld.Ctx(t)
	var logs testlog.Buffer
	// Probes far shorter than an election (ClusterElectionMs): without the
	// grace, the election would be an outage.
	s := newStore(t, cli, tokenstore.Options{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	// A busy machine may fail a probe of a quarter second before the
	// leader is killed: start from a store that serves.
	var m tokenstore.Minted
	var err error
	for {
		if m, err = s.Mint(ctx, record("i-1")); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("mint: %v", err)
		}
		_, changed := s.Health()
		select {
		case <-changed:
		case <-ctx.Done():
		}
	}
	var mu sync.Mutex
	var went []bool // health changes
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go s.WatchHealth(wctx, func(healthy bool) {
		mu.Lock()
		went = append(went, healthy)
		mu.Unlock()
	})

	leader, err := cluster.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	cluster.Kill(leader)

	// Calls through the election, until one has succeeded after a new
	// leader is known.
	type result struct {
		start, end time.Time
		err        error
	}
	var results []result
	elected := time.Time{}
	for {
		start := time.Now()
		_, err := s.Mint(ctx, record("i-1"))
		if err == nil {
			_, err = s.Lookup(ctx, m.Token)
		}
		results = append(results, result{start, time.Now(), err})
		if elected.IsZero() {
			if l, lerr := cluster.Leader(ctx); lerr == nil && l != leader {
				elected = time.Now()
			}
		}
		if !elected.IsZero() && err == nil && start.After(elected) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("no new leader")
		}
	}
	failed := 0
	for _, r := range results {
		if r.err == nil {
			continue
		}
		if failed++; failed <= 3 {
			t.Errorf("call at +%v answered after %v: %v, want it to wait for the election",
				r.start.Sub(killed).Round(time.Millisecond), r.end.Sub(r.start).Round(time.Millisecond), r.err)
		}
	}
	if failed > 3 {
		t.Errorf("... %d calls failed in all", failed)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range went {
		if !h {
			t.Errorf("store reported etcd unavailable during an election: health changes %v", went)
			break
		}
	}
	var slowest time.Duration
	for _, r := range results {
		slowest = max(slowest, r.end.Sub(r.start))
	}
	t.Logf("%d calls through the election, the slowest answered in %v; a new leader was known %v after the kill",
		len(results), slowest.Round(time.Millisecond), elected.Sub(killed).Round(time.Millisecond))
	if t.Failed() {
		t.Log(logs.String())
	}
}
