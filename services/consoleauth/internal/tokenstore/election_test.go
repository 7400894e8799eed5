package tokenstore_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
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
	// Probes far shorter than an election (ClusterElectionMs): without the
	// grace, the election would be an outage.
	cluster, s, _ := clusterStore(t, tokenstore.Options{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond})
	ctx := testworld.Ctx(t)
	m := mintWhenServing(ctx, t, s)
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
}

// TestQuorumLossIsRefusedAtOnce kills 2 of 3 members, the leader among
// them: the store finds most members refusing Status and reports etcd
// unavailable for that reason (not after its probe's timeout, or once calls
// stopped being answered), calls made meanwhile and after fail with
// ErrStoreUnavailable, and once the members are back the store serves
// again. The outage and its end are logged once each.
func TestQuorumLossIsRefusedAtOnce(t *testing.T) {
	t.Parallel()
	cluster, s, logs := clusterStore(t, tokenstore.Options{})
	ctx := testworld.Ctx(t)
	m := mintWhenServing(ctx, t, s)
	healthy, changed := s.Health()
	if !healthy {
		t.Fatal("store unhealthy after a mint")
	}

	leader, err := cluster.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	follower := (leader + 1) % len(cluster.Members)
	cluster.Kill(leader, follower)
	killed := time.Now()

	// Calls right after the kill: refused, whether the probe has noticed
	// yet or not. A token not in memory, so the lookup reads etcd.
	_, lerr := s.Lookup(ctx, strings.Repeat("Q", tokenstore.TokenLen))
	lookupTook := time.Since(killed)
	if !errors.Is(lerr, tokenstore.ErrStoreUnavailable) {
		t.Errorf("lookup after the kill: got %v, want ErrStoreUnavailable", lerr)
	}
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("the store never reported etcd unavailable")
	}
	found := time.Since(killed)
	if s.Healthy() {
		t.Fatal("store healthy with 2 of 3 members killed")
	}
	for name, call := range map[string]func() error{
		"mint":   func() error { _, err := s.Mint(ctx, record("i-1")); return err },
		"lookup": func() error { _, err := s.Lookup(ctx, m.Token); return err },
	} {
		err := call()
		if !errors.Is(err, tokenstore.ErrStoreUnavailable) || !strings.Contains(err.Error(), "most etcd members are down: 2 of 3 refused") {
			t.Errorf("%s with 2 of 3 members down: got %v, want ErrStoreUnavailable saying most members refused", name, err)
		}
	}
	t.Logf("lookup right after the kill refused in %v; the store reported etcd unavailable %v after the kill",
		lookupTook.Round(time.Millisecond), found.Round(time.Millisecond))

	_, changed = s.Health()
	if err := cluster.Start(leader, follower); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("the store never reported etcd available again")
	}
	if _, err := s.Mint(ctx, record("i-1")); err != nil {
		t.Errorf("mint after the members came back: %v", err)
	}
	t.Logf("the store served again %v after the members were started", time.Since(started).Round(time.Millisecond))
	if n := strings.Count(logs.String(), "etcd unavailable"); n != 1 {
		t.Errorf("got %d 'etcd unavailable' lines, want 1", n)
	}
	if n := strings.Count(logs.String(), "etcd available again"); n != 1 {
		t.Errorf("got %d 'etcd available again' lines, want 1", n)
	}
}

// mintWhenServing mints a token once the store serves: a busy machine may
// fail the first probes of a new store, before the fault a test injects.
func mintWhenServing(ctx context.Context, t *testing.T, s *tokenstore.Store) tokenstore.Minted {
	t.Helper()
	for {
		m, err := s.Mint(ctx, record("i-1"))
		if err == nil {
			return m
		}
		_, changed := s.Health()
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("mint before the fault: %v", err)
		}
	}
}

// clusterStore starts a 3-member cluster and a store on a client of every
// member, logging to the returned buffer, shown if t fails.
func clusterStore(t *testing.T, opts tokenstore.Options) (*etcd.Cluster, *tokenstore.Store, *testlog.Buffer) {
	t.Helper()
	cluster, cli := etcd.StartCluster(t, 3)
	logs := &testlog.Buffer{}
	opts.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	s := newStore(t, cli, opts)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	return cluster, s, logs
}
