package tokenstore_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
)

func newStore(t *testing.T, cli *clientv3.Client, opts tokenstore.Options) *tokenstore.Store {
	t.Helper()
	s, err := tokenstore.New(cli, opts)
	if err != nil {
		t.Fatalf("new store: %v", err)
	}
	return s
}

func record(uuid string) registry.Token {
	return registry.Token{InstanceUUID: uuid, ConsoleType: "novnc", ComputeHost: "c1", Host: "10.0.0.5", Port: 5901}
}

func TestMintStoresOnlyTheHashOnOneLease(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{TTL: time.Minute})

	m, err := s.Mint(ctx, record("i-1"))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(m.Token)
	if err != nil || len(raw) != 32 {
		t.Fatalf("token %d chars: got %d bytes (err %v), want 32 bytes of base64url", len(m.Token), len(raw), err)
	}
	if got, want := m.Hash, registry.TokenHash(m.Token); got != want {
		t.Errorf("hash: got %s, want %s", got, want)
	}

	all, err := cli.Get(ctx, registry.Root, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int64{}
	for _, kv := range all.Kvs {
		if strings.Contains(string(kv.Key), m.Token) || strings.Contains(string(kv.Value), m.Token) {
			t.Errorf("key %s holds the plaintext token", kv.Key)
		}
		keys[string(kv.Key)] = kv.Lease
	}
	tokenLease, ok1 := keys[registry.TokenKey(m.Hash)]
	indexLease, ok2 := keys[registry.InstanceTokenKey("i-1", m.Hash)]
	if !ok1 || !ok2 || len(keys) != 2 {
		t.Fatalf("keys: got %v, want the token key and its index", keys)
	}
	if tokenLease == 0 || tokenLease != indexLease {
		t.Errorf("leases: got token %x, index %x, want one shared non-zero lease", tokenLease, indexLease)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(tokenLease))
	if err != nil {
		t.Fatal(err)
	}
	// Lease TTL = token TTL (60 s) + bucket width (6 s).
	if ttl.GrantedTTL != 66 {
		t.Errorf("lease granted TTL: got %d s, want 66 s", ttl.GrantedTTL)
	}

	e, err := s.Lookup(ctx, m.Token)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if got, want := e.Record.Port, int32(5901); got != want {
		t.Errorf("port: got %d, want %d", got, want)
	}
	if d := e.Record.ExpiresAt.Sub(e.Record.CreatedAt); d != time.Minute {
		t.Errorf("expires - created: got %v, want 1m", d)
	}
	if _, err := s.Lookup(ctx, "no-such-token"); !errors.Is(err, tokenstore.ErrNotFound) {
		t.Errorf("unknown token: got %v, want ErrNotFound", err)
	}
}

func TestExpiredTokenRefusedBeforeItsLeaseEnds(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{TTL: time.Second})

	m, err := s.Mint(ctx, record("i-1"))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	if _, err := s.Lookup(ctx, m.Token); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	time.Sleep(time.Until(m.Record.ExpiresAt) + 50*time.Millisecond)
	if _, err := s.Lookup(ctx, m.Token); !errors.Is(err, tokenstore.ErrNotFound) {
		t.Errorf("expired token: got %v, want ErrNotFound", err)
	}
	// The 2 s lease (1 s TTL + 1 s bucket) still holds the record: the
	// refusal came from the expiry check on read.
	resp, err := cli.Get(ctx, registry.TokenKey(m.Hash), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 1 {
		t.Errorf("record count right after expiry: got %d, want 1 (still on its lease)", resp.Count)
	}
}

func TestConcurrentMintsShareLeases(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{TTL: 10 * time.Minute})

	const workers, each = 20, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Go(func() {
			for range each {
				if _, err := s.Mint(ctx, record("i-1")); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("mint: %v", err)
	}
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One bucket is 60 s wide; 100 mints may straddle one boundary.
	if n := len(leases.Leases); n < 1 || n > 2 {
		t.Errorf("leases after %d concurrent mints: got %d, want 1 or 2", workers*each, n)
	}
	resp, err := cli.Get(ctx, registry.TokensPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != workers*each {
		t.Errorf("token records: got %d, want %d", resp.Count, workers*each)
	}
}

func TestConsumeSucceedsExactlyOnce(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})
	m, err := s.Mint(ctx, record("i-1"))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}

	const callers = 50
	results := make(chan error, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			e, err := s.Lookup(ctx, m.Token)
			if err == nil {
				err = s.Consume(ctx, e)
			}
			results <- err
		})
	}
	wg.Wait()
	close(results)
	won := 0
	for err := range results {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, tokenstore.ErrNotFound):
			t.Errorf("loser: got %v, want ErrNotFound", err)
		}
	}
	if won != 1 {
		t.Errorf("winners: got %d, want exactly 1", won)
	}
	resp, err := cli.Get(ctx, registry.Root, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("keys left after consume: got %d, want 0", resp.Count)
	}
}

func TestRevokeDeletesOneInstanceInBatches(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})

	// 150 tokens = 300 deletes + 1 put: more than one 128-op transaction.
	const many = 150
	var victims, others []string
	for range many {
		m, err := s.Mint(ctx, record("victim"))
		if err != nil {
			t.Fatalf("mint: %v", err)
		}
		victims = append(victims, m.Token)
	}
	for range 3 {
		m, err := s.Mint(ctx, record("other"))
		if err != nil {
			t.Fatalf("mint: %v", err)
		}
		others = append(others, m.Token)
	}

	n, err := s.Revoke(ctx, "victim", "the instance was deleted")
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if n != many {
		t.Errorf("revoked: got %d, want %d", n, many)
	}
	for _, tok := range victims {
		if _, err := s.Lookup(ctx, tok); !errors.Is(err, tokenstore.ErrNotFound) {
			t.Fatalf("revoked token: got %v, want ErrNotFound", err)
		}
	}
	for _, tok := range others {
		if _, err := s.Lookup(ctx, tok); err != nil {
			t.Errorf("other instance's token: got %v, want valid", err)
		}
	}
	idx, err := cli.Get(ctx, registry.InstanceTokensPrefix("victim"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if idx.Count != 0 {
		t.Errorf("index keys left: got %d, want 0", idx.Count)
	}

	rev, err := cli.Get(ctx, registry.RevocationKey("victim"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.Kvs) != 1 {
		t.Fatalf("revocation key: got %d keys, want 1", len(rev.Kvs))
	}
	var r registry.Revocation
	if err := json.Unmarshal(rev.Kvs[0].Value, &r); err != nil {
		t.Fatal(err)
	}
	if r.Reason != "the instance was deleted" || time.Since(r.RevokedAt) > time.Minute {
		t.Errorf("revocation: got %+v, want the reason and a recent time", r)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(rev.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != 60 {
		t.Errorf("revocation lease: got %d s, want 60 s", ttl.GrantedTTL)
	}
}

func TestRevokeWithoutTokensStillAnnounces(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})
	n, err := s.Revoke(ctx, "lonely", "stopped")
	if err != nil || n != 0 {
		t.Fatalf("revoke: got %d, %v, want 0, nil", n, err)
	}
	rev, err := cli.Get(ctx, registry.RevocationKey("lonely"), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if rev.Count != 1 {
		t.Errorf("revocation key: got %d, want 1", rev.Count)
	}
}

func TestEtcdDownIsUnavailableThenRecovers(t *testing.T) {
	t.Parallel()
	etcdSrv, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{Timeout: 500 * time.Millisecond})
	m, err := s.Mint(ctx, record("i-1"))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}

	etcdSrv.Stop()
	calls := map[string]func() error{
		"mint":   func() error { _, err := s.Mint(ctx, record("i-1")); return err },
		"lookup": func() error { _, err := s.Lookup(ctx, m.Token); return err },
		"revoke": func() error { _, err := s.Revoke(ctx, "i-1", "x"); return err },
		"locate": func() error { _, err := s.Locate(ctx, "i-1"); return err },
		"ping":   func() error { return s.Ping(ctx) },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		if !errors.Is(err, tokenstore.ErrStoreUnavailable) {
			t.Errorf("%s with etcd down: got %v, want ErrStoreUnavailable", name, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s with etcd down took %v, want about the 500ms timeout", name, d)
		}
	}

	if err := etcdSrv.Restart(); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := s.Lookup(ctx, m.Token)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lookup after etcd restart: still %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := s.Mint(ctx, record("i-1")); err != nil {
		t.Errorf("mint after etcd restart: %v", err)
	}
}

func TestLocate(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})
	testworld.PutJSON(t, cli, registry.LocationKey("running"), registry.Location{ComputeHost: "c1"})
	testworld.PutJSON(t, cli, registry.ComputeKey("c1"), registry.Compute{Address: "127.0.0.1:6092"})
	testworld.PutJSON(t, cli, registry.LocationKey("orphan"), registry.Location{ComputeHost: "c2"})

	tests := []struct {
		name    string
		uuid    string
		want    tokenstore.Agent
		wantErr error
		wantMsg string
	}{
		{name: "found", uuid: "running", want: tokenstore.Agent{ComputeHost: "c1", Address: "127.0.0.1:6092"}},
		{name: "unknown instance", uuid: "ghost", wantErr: tokenstore.ErrUnknownInstance, wantMsg: "instance ghost not found"},
		{name: "compute host down", uuid: "orphan", wantErr: tokenstore.ErrComputeDown, wantMsg: "compute host c2 of instance orphan is down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Locate(ctx, tt.uuid)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error: got %v, want %v", err, tt.wantErr)
			}
			if err != nil && err.Error() != tt.wantMsg {
				t.Errorf("message: got %q, want %q", err, tt.wantMsg)
			}
			if got != tt.want {
				t.Errorf("agent: got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNewRefusesShortTTL(t *testing.T) {
	_, err := tokenstore.New(nil, tokenstore.Options{TTL: 500 * time.Millisecond})
	if err == nil {
		t.Fatal("ttl 500ms: got nil error, want one")
	}
}

func TestViewOnlyIsStoredInTheRecord(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{TTL: time.Minute})
	for _, viewOnly := range []bool{false, true} {
		rec := record("i-1")
		rec.ViewOnly = viewOnly
		m, err := s.Mint(ctx, rec)
		if err != nil {
			t.Fatalf("mint: %v", err)
		}
		e, err := s.Lookup(ctx, m.Token)
		if err != nil {
			t.Fatalf("lookup: %v", err)
		}
		if e.Record.ViewOnly != viewOnly {
			t.Errorf("view-only %v: got %v after lookup", viewOnly, e.Record.ViewOnly)
		}
		raw, err := cli.Get(ctx, registry.TokenKey(m.Hash))
		if err != nil || len(raw.Kvs) != 1 {
			t.Fatalf("get record: %v", err)
		}
		// A normal token's record is what it was before view-only existed.
		if got, want := strings.Contains(string(raw.Kvs[0].Value), `"view_only":true`), viewOnly; got != want {
			t.Errorf("view-only %v: record %s has \"view_only\":true %v, want %v", viewOnly, raw.Kvs[0].Value, got, want)
		}
		if !viewOnly && strings.Contains(string(raw.Kvs[0].Value), "view_only") {
			t.Errorf("normal token: record %s mentions view_only", raw.Kvs[0].Value)
		}
	}
}
