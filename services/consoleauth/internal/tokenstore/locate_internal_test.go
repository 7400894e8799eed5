package tokenstore

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
)

// TestLocateVouchesOnlyWhileTheWatchIsHeard: a claim published under its
// agent's live lease is answered from memory (Vouched) while the watches
// are heard from; a watch gone silent (as when clientv3 is resuming a
// broken stream) sends Locate to etcd, unvouched, until the heartbeat's
// progress report is heard again. A claim under another lease, or its
// host's registration gone, vouches for nothing.
func TestLocateVouchesOnlyWhileTheWatchIsHeard(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := New(cli, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "22222222-2222-4222-8222-222222222222"
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, v any, opts ...clientv3.OpOption) {
		t.Helper()
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, key, string(b), opts...); err != nil {
			t.Fatal(err)
		}
	}
	put(registry.ComputeKey("c1"), registry.Compute{Address: "127.0.0.1:6092"}, clientv3.WithLease(lease.ID))
	console := registry.LocationConsole{Host: "10.0.0.9", Port: 5909}
	put(registry.ComputeInstanceKey("c1", uuid), registry.Location{ComputeHost: "c1", Lease: int64(lease.ID), Console: &console})

	await := func(what string, want bool) Agent {
		t.Helper()
		for {
			a, err := s.Locate(ctx, uuid)
			if err == nil && a.Vouched == want {
				return a
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s: last %+v, %v", what, a, err)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	a := await("the claim to vouch", true)
	if a.ComputeHost != "c1" || a.Address != "127.0.0.1:6092" || a.Console != console || a.claimRev == 0 {
		t.Errorf("vouched answer: got %+v, want c1 at 127.0.0.1:6092 with console %+v and the claim's revision", a, console)
	}

	// Silence on the watches: not current, so etcd is asked.
	s.locations.heard.Store(0)
	if a, err := s.Locate(ctx, uuid); err != nil || a.Vouched || a.ComputeHost != "c1" {
		t.Errorf("watch silent: got %+v, %v; want c1 from etcd, not vouched", a, err)
	}
	await("the heartbeat to make the watch heard again", true)

	// A claim under an older registration's lease vouches for nothing.
	put(registry.ComputeInstanceKey("c1", uuid), registry.Location{ComputeHost: "c1", Lease: int64(lease.ID) + 1, Console: &console})
	await("a claim of another lease to stop vouching", false)
	put(registry.ComputeInstanceKey("c1", uuid), registry.Location{ComputeHost: "c1", Lease: int64(lease.ID), Console: &console})
	await("the claim to vouch again", true)
	// The agent's lease ends: its registration goes, and with it the
	// claim's word (Locate says the host is down, from etcd).
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := s.Locate(ctx, uuid)
		if err != nil {
			if !isComputeDown(err) {
				t.Fatalf("agent's lease ended: got %v, want compute host down", err)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("agent's lease ended: Locate still answers")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func isComputeDown(err error) bool {
	for e := err; e != nil; {
		if e == ErrComputeDown {
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}
