package tokenstore

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// caughtUpToNow waits until the index has applied every change etcd holds
// now.
func caughtUpToNow(t *testing.T, ctx context.Context, s *Store) {
	t.Helper()
	rev, err := s.locations.currentRevision(ctx)
	if err == nil {
		err = s.locations.caughtUp(ctx, rev)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestTokensAreAnsweredFromMemoryWhileWatched: a minted token is found in
// memory once the index caught up, by this store and by another one (a
// second replica, which never minted it); its deletion (a revocation, a
// single use, an expired lease) reaches memory with the watch; the cache
// holds at most its size, and beyond that Lookup still finds every token,
// in etcd, saying so once in the log. A replica reads its own deletions.
func TestTokensAreAnsweredFromMemoryWhileWatched(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var logs testlog.Buffer
	minter, err := New(cli, Options{TokenCacheSize: 2, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	replica, err := New(cli, Options{TokenCacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	off, err := New(cli, Options{TokenCacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	rec := registry.Token{InstanceUUID: "33333333-3333-4333-8333-333333333333", ConsoleType: "novnc",
		ComputeHost: "c1", Host: "10.0.0.5", Port: 5901}
	var tokens []Minted
	for range 3 {
		m, err := minter.Mint(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, m)
	}
	for _, s := range []*Store{minter, replica, off} {
		s.locations.current() // start the watches
		caughtUpToNow(t, ctx, s)
	}
	lookup := func(s *Store, m Minted) Entry {
		t.Helper()
		e, err := s.Lookup(ctx, m.Token)
		if err != nil {
			t.Fatalf("lookup of %s: %v", registry.HashPrefix(m.Hash), err)
		}
		if e.Record.Port != rec.Port || e.Hash != m.Hash || e.Revision == 0 {
			t.Fatalf("lookup of %s: got %+v", registry.HashPrefix(m.Hash), e)
		}
		return e
	}
	for _, s := range []*Store{minter, replica} {
		fromMemory := 0
		for _, m := range tokens {
			if lookup(s, m).FromMemory {
				fromMemory++
			}
		}
		if fromMemory != 2 {
			t.Errorf("tokens found in memory with a cache of 2 (of 3 minted): got %d", fromMemory)
		}
	}
	for _, m := range tokens {
		if lookup(off, m).FromMemory {
			t.Errorf("a store without a cache answered from memory")
		}
	}
	if n := strings.Count(logs.String(), "token cache full"); n != 1 {
		t.Errorf("cache-full log lines: got %d, want 1:\n%s", n, logs.String())
	}

	// Revoking deletes the records: once the watch delivered it, memory
	// no longer vouches for them and etcd finds none.
	if _, err := minter.Revoke(ctx, rec.InstanceUUID, registry.DefaultRevocationReason); err != nil {
		t.Fatal(err)
	}
	// The replica that revoked reads its own deletion at once, before its
	// watch delivered it.
	for _, m := range tokens {
		if _, err := minter.Lookup(ctx, m.Token); !errors.Is(err, ErrNotFound) {
			t.Errorf("token just revoked here: got %v, want ErrNotFound", err)
		}
	}
	caughtUpToNow(t, ctx, replica)
	for _, m := range tokens {
		if _, err := replica.Lookup(ctx, m.Token); !errors.Is(err, ErrNotFound) {
			t.Errorf("revoked token: got %v, want ErrNotFound", err)
		}
	}
	replica.locations.mu.Lock()
	held := len(replica.locations.tokens.byHash)
	replica.locations.mu.Unlock()
	if held != 0 {
		t.Errorf("records held after the revocation: %d, want 0", held)
	}
}
