package tokenstore_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
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
	if _, err := s.Lookup(ctx, strings.Repeat("A", tokenstore.TokenLen)); !errors.Is(err, tokenstore.ErrNotFound) {
		t.Errorf("unknown token: got %v, want ErrNotFound", err)
	}
	if e.Revision != resp(t, cli, registry.TokenKey(m.Hash)).CreateRevision {
		t.Errorf("revision: got %d, want the record's CreateRevision", e.Revision)
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

	n, err := s.Revoke(ctx, "victim", "deleted")
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
		"revoke": func() error { _, err := s.Revoke(ctx, "i-1", "stopped"); return err },
		"locate": func() error { _, err := s.Locate(ctx, uuidRunning); return err },
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

const (
	uuidRunning  = "11111111-1111-4111-8111-111111111111"
	uuidOrphan   = "22222222-2222-4222-8222-222222222222"
	uuidMigrates = "33333333-3333-4333-8333-333333333333"
	uuidGhost    = "aaaaaaaa-4444-4444-8444-44444444444b"
)

func TestLocate(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})
	claim := func(host, uuid string) {
		testworld.PutJSON(t, cli, registry.ComputeInstanceKey(host, uuid), registry.Location{ComputeHost: host})
	}
	claim("c1", uuidRunning)
	testworld.PutJSON(t, cli, registry.ComputeKey("c1"), registry.Compute{Address: "127.0.0.1:6092"})
	testworld.PutJSON(t, cli, registry.ComputeKey("c3"), registry.Compute{Address: "127.0.0.1:6093"})
	c1 := resp(t, cli, registry.ComputeKey("c1")).ModRevision
	claim("c2", uuidOrphan)
	// A live migration from c1 to c3: both claim it; c1's claim is older.
	claim("c1", uuidMigrates)
	claim("c3", uuidMigrates)
	// Keys outside the layout are no claims.
	testworld.PutJSON(t, cli, registry.ComputeInstancesRoot+"c1/"+strings.ToUpper(uuidGhost), registry.Location{ComputeHost: "c1"})
	testworld.PutJSON(t, cli, registry.ComputeInstancesRoot+"c1/x/"+uuidGhost, registry.Location{ComputeHost: "c1"})

	tests := []struct {
		name    string
		uuid    string
		want    tokenstore.Agent
		wantErr error
		wantMsg string
	}{
		{name: "found", uuid: uuidRunning, want: tokenstore.Agent{ComputeHost: "c1", Address: "127.0.0.1:6092", Registration: c1}},
		{name: "unknown instance", uuid: uuidGhost, wantErr: tokenstore.ErrUnknownInstance, wantMsg: "instance " + uuidGhost + " not found"},
		{name: "compute host down", uuid: uuidOrphan, wantErr: tokenstore.ErrComputeDown, wantMsg: "compute host c2 of instance " + uuidOrphan + " is down"},
		{name: "two claims: the oldest wins", uuid: uuidMigrates, want: tokenstore.Agent{ComputeHost: "c1", Address: "127.0.0.1:6092", Registration: c1}},
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
			if got.ComputeHost != tt.want.ComputeHost || got.Address != tt.want.Address ||
				got.Registration != tt.want.Registration || got.Vouched {
				t.Errorf("agent: got %+v, want %+v (not vouched: the claims are of the older format)", got, tt.want)
			}
		})
	}
	if host, err := s.Owner(ctx, uuidOrphan); err != nil || host != "c2" {
		t.Errorf("owner of an instance whose host is down: got %q, %v, want c2", host, err)
	}

	// The source unpublishes: the destination's claim wins from then on,
	// at once (the index is only a hint).
	if _, err := cli.Delete(ctx, registry.ComputeInstanceKey("c1", uuidMigrates)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Locate(ctx, uuidMigrates); err != nil || got.ComputeHost != "c3" {
		t.Errorf("after the source unpublished: got %+v, %v, want c3", got, err)
	}
	// c1 claims it again: a newer claim than c3's, which still wins.
	claim("c1", uuidMigrates)
	if got, err := s.Locate(ctx, uuidMigrates); err != nil || got.ComputeHost != "c3" {
		t.Errorf("after c1 claimed it again: got %+v, %v, want c3 (the older claim)", got, err)
	}
	// A claim made just now is found at once: a miss waits for the index
	// to catch up with etcd.
	claim("c3", uuidGhost)
	if got, err := s.Locate(ctx, uuidGhost); err != nil || got.ComputeHost != "c3" {
		t.Errorf("right after publication: got %+v, %v, want c3", got, err)
	}
	// c1's agent registers again, as after a restart: a newer registration.
	testworld.PutJSON(t, cli, registry.ComputeKey("c1"), registry.Compute{Address: "127.0.0.1:6092"})
	if got, err := s.Locate(ctx, uuidRunning); err != nil || got.Registration <= c1 {
		t.Errorf("after c1 registered again: got %+v, %v, want a registration above %d", got, err, c1)
	}
}

// TestLocateAfterCompaction cuts the store off from etcd while claims
// change and are compacted away: the index cannot resume its watch, reads
// the claims again, and meanwhile answers nothing from memory alone.
func TestLocateAfterCompaction(t *testing.T) {
	t.Parallel()
	etcdSrv, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	link := etcdSrv.NewLink(t)
	s := newStore(t, newClient(t, link.Addr), tokenstore.Options{Timeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	testworld.PutJSON(t, cli, registry.ComputeKey("c1"), registry.Compute{Address: "127.0.0.1:6092"})
	testworld.PutJSON(t, cli, registry.ComputeInstanceKey("c1", uuidRunning), registry.Location{ComputeHost: "c1"})
	if _, err := s.Locate(ctx, uuidRunning); err != nil {
		t.Fatal(err)
	}

	link.Cut()
	if _, err := s.Locate(ctx, uuidRunning); !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("cut off: got %v, want ErrStoreUnavailable (no answer from the index alone)", err)
	}
	if _, err := cli.Delete(ctx, registry.ComputeInstanceKey("c1", uuidRunning)); err != nil {
		t.Fatal(err)
	}
	testworld.PutJSON(t, cli, registry.ComputeInstanceKey("c1", uuidOrphan), registry.Location{ComputeHost: "c1"})
	r, err := cli.Get(ctx, "compact")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	link.Restore()

	eventually(t, "locate after the compaction", func() error {
		if _, err := s.Locate(ctx, uuidOrphan); err != nil {
			return err
		}
		if _, err := s.Locate(ctx, uuidRunning); !errors.Is(err, tokenstore.ErrUnknownInstance) {
			return fmt.Errorf("unpublished instance: got %v, want ErrUnknownInstance", err)
		}
		return nil
	})
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

func resp(t *testing.T, cli *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	r, err := cli.Get(testworld.Ctx(t), key)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get %s: %v (%d keys)", key, err, len(r.Kvs))
	}
	return r.Kvs[0]
}

func newClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(etcdclient.Config([]string{endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// eventually retries check until it returns nil; the test's context bounds
// a hang.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	ctx := testworld.Ctx(t)
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestMalformedTokensNeverReachEtcd(t *testing.T) {
	t.Parallel()
	etcdSrv, cli := etcd.Start(t)
	s := newStore(t, cli, tokenstore.Options{Timeout: 200 * time.Millisecond})
	// With etcd stopped, a look-up that reached it would be "unavailable".
	etcdSrv.Stop()
	for name, token := range map[string]string{
		"empty":      "",
		"short":      "abc",
		"one long":   strings.Repeat("A", tokenstore.TokenLen+1),
		"2 MiB":      strings.Repeat("A", 2<<20),
		"padding":    strings.Repeat("A", tokenstore.TokenLen-1) + "=",
		"std base64": strings.Repeat("A", tokenstore.TokenLen-1) + "+",
		"space":      strings.Repeat("A", tokenstore.TokenLen-1) + " ",
	} {
		_, err := s.Lookup(testworld.Ctx(t), token)
		if !errors.Is(err, tokenstore.ErrMalformedToken) {
			t.Errorf("%s: got %v, want ErrMalformedToken", name, err)
		}
	}
}

// TestRecordWithoutALeaseIsRefused plants a token record as any etcd writer
// could, without a lease: it is not found, and logged once by hash prefix.
func TestRecordWithoutALeaseIsRefused(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	var logs testlog.Buffer
	s := newStore(t, cli, tokenstore.Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})

	token := strings.Repeat("P", tokenstore.TokenLen)
	hash := registry.TokenHash(token)
	rec := record(uuidRunning)
	rec.ExpiresAt = time.Now().Add(time.Hour)
	testworld.PutJSON(t, cli, registry.TokenKey(hash), rec)
	for range 3 {
		if _, err := s.Lookup(ctx, token); !errors.Is(err, tokenstore.ErrNotFound) {
			t.Fatalf("planted record: got %v, want ErrNotFound", err)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "token record without a lease refused"); n != 1 {
		t.Errorf("log lines: got %d, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, registry.HashPrefix(hash)) || strings.Contains(out, hash) || strings.Contains(out, token) {
		t.Errorf("log: got %s, want the hash prefix only", out)
	}

	// The same record on a lease is one consoleauth could have written.
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := json.Marshal(rec)
	if _, err := cli.Put(ctx, registry.TokenKey(hash), string(v), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, token); err != nil {
		t.Errorf("record on a lease: got %v, want it found", err)
	}
}

func TestRevokeTakesAReasonCode(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})
	for _, reason := range []string{"the instance was stopped", "Stopped", "<script>", strings.Repeat("x", 1<<20)} {
		if _, err := s.Revoke(ctx, uuidRunning, reason); !errors.Is(err, tokenstore.ErrUnknownReason) {
			t.Errorf("reason %.20q: got %v, want ErrUnknownReason", reason, err)
		}
	}
	if r, err := cli.Get(ctx, registry.RevocationKey(uuidRunning), clientv3.WithCountOnly()); err != nil || r.Count != 0 {
		t.Fatalf("revocation written for a refused reason: %v, %v", r, err)
	}
	for code, sentence := range map[string]string{"": registry.RevocationReasons["revoked"], "stopped": "the instance was stopped", "migrated": "the instance was migrated to another host"} {
		if _, err := s.Revoke(ctx, uuidRunning, code); err != nil {
			t.Fatalf("code %q: %v", code, err)
		}
		var r registry.Revocation
		if err := json.Unmarshal(resp(t, cli, registry.RevocationKey(uuidRunning)).Value, &r); err != nil || r.Reason != sentence {
			t.Errorf("code %q: stored %+v (%v), want the sentence %q", code, r, err, sentence)
		}
	}
}

// TestRevocationIsOrderedAfterItsTokens: the announcement's revision is
// above the creation of every token it ended, and below that of a token
// minted after it, whatever the clocks say.
func TestRevocationIsOrderedAfterItsTokens(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	s := newStore(t, cli, tokenstore.Options{})
	var before []int64
	for range 70 { // more than one transaction's worth of deletes
		m, err := s.Mint(ctx, record(uuidRunning))
		if err != nil {
			t.Fatal(err)
		}
		e, err := s.Lookup(ctx, m.Token)
		if err != nil {
			t.Fatal(err)
		}
		before = append(before, e.Revision)
	}
	if _, err := s.Revoke(ctx, uuidRunning, "stopped"); err != nil {
		t.Fatal(err)
	}
	revocation := resp(t, cli, registry.RevocationKey(uuidRunning)).ModRevision
	idx, err := cli.Get(ctx, registry.InstanceTokensPrefix(uuidRunning), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || idx.Count != 0 {
		t.Fatalf("index after revoke: %v, %v", idx, err)
	}
	for _, rev := range before {
		if rev >= revocation {
			t.Fatalf("token created at %d, revocation at %d: want the revocation later", rev, revocation)
		}
	}
	m, err := s.Mint(ctx, record(uuidRunning))
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.Lookup(ctx, m.Token)
	if err != nil {
		t.Fatal(err)
	}
	if e.Revision <= revocation {
		t.Errorf("token minted after the revocation: created at %d, want above %d", e.Revision, revocation)
	}
}

// TestUnderTheConsoleAuthRole runs the store as consoleauth's etcd user with
// authentication on (deploy/cmd/etcd-roles' plan), and the claims as their
// compute hosts' users write them.
func TestUnderTheConsoleAuthRole(t *testing.T) {
	t.Parallel()
	srv := etcd.StartSecure(t)
	ctx := testworld.Ctx(t)
	if err := (etcdclient.Roles{ComputeHosts: []string{"c1"}}).Apply(ctx, srv.ClientAs(t, "root")); err != nil {
		t.Fatal(err)
	}
	c1 := srv.ClientAs(t, "c1")
	testworld.PutJSON(t, c1, registry.ComputeKey("c1"), registry.Compute{Address: "127.0.0.1:6092"})
	testworld.PutJSON(t, c1, registry.ComputeInstanceKey("c1", uuidRunning), registry.Location{ComputeHost: "c1"})
	s := newStore(t, srv.ClientAs(t, "consoleauth"), tokenstore.Options{})

	if err := s.Ping(ctx); err != nil {
		t.Errorf("ping: %v", err)
	}
	if got, err := s.Locate(ctx, uuidRunning); err != nil || got.ComputeHost != "c1" {
		t.Errorf("locate: got %+v, %v", got, err)
	}
	if _, err := s.Locate(ctx, uuidGhost); !errors.Is(err, tokenstore.ErrUnknownInstance) {
		t.Errorf("locate an unknown instance: got %v, want ErrUnknownInstance", err)
	}
	m, err := s.Mint(ctx, record(uuidRunning))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	e, err := s.Lookup(ctx, m.Token)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if err := s.Consume(ctx, e); err != nil {
		t.Errorf("consume: %v", err)
	}
	if _, err := s.Mint(ctx, record(uuidRunning)); err != nil {
		t.Fatalf("mint: %v", err)
	}
	if n, err := s.Revoke(ctx, uuidRunning, "stopped"); err != nil || n != 1 {
		t.Errorf("revoke: got %d, %v, want 1", n, err)
	}
	// A compute host cannot plant a token record for the store to trust.
	if _, err := c1.Put(ctx, registry.TokenKey(registry.TokenHash(strings.Repeat("P", tokenstore.TokenLen))), "{}"); err == nil {
		t.Error("c1 wrote a token record")
	}
}
