package tokenstore

import (
	"context"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
)

// TestGroupCommit: the mints of one group share one etcd transaction (one
// revision) and each succeeds or fails on its own guards; concurrent
// mints are all written and found, in fewer transactions than mints.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(cli, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/vncgate/test/guard", "1"); err != nil {
		t.Fatal(err)
	}
	before, err := cli.Get(ctx, "/vncgate/test/guard")
	if err != nil {
		t.Fatal(err)
	}
	mint := func(key string, guard int64) *pendingMint {
		return &pendingMint{
			op: clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value("/vncgate/test/guard"), "=", "1"),
				clientv3.Compare(clientv3.ModRevision("/vncgate/test/guard"), "=", guard)},
				[]clientv3.Op{clientv3.OpPut(key, "v")}, []clientv3.Op{clientv3.OpGet(key)}),
			done: make(chan mintResult, 1),
		}
	}
	guard := before.Kvs[0].ModRevision
	group := []*pendingMint{mint("/vncgate/test/a", guard), mint("/vncgate/test/b", guard+1), mint("/vncgate/test/c", guard)}
	s.commitGroup(group)
	for i, want := range []bool{true, false, true} {
		r := <-group[i].done
		if r.err != nil || r.resp.GetSucceeded() != want {
			t.Errorf("mint %d of the group: succeeded %v (%v), want %v", i, r.resp.GetSucceeded(), r.err, want)
		}
	}
	got, err := cli.Get(ctx, "/vncgate/test/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != 3 || got.Kvs[0].ModRevision != got.Kvs[1].ModRevision || got.Header.Revision != guard+1 {
		t.Errorf("after the group: %d keys (want a, c, guard), revisions %v, header %d; want one revision, %d",
			len(got.Kvs), got.Kvs, got.Header.Revision, guard+1)
	}

	const n = 64
	start := got.Header.Revision
	var wg sync.WaitGroup
	minted := make([]Minted, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			minted[i], errs[i] = s.Mint(ctx, registry.Token{InstanceUUID: "44444444-4444-4444-8444-444444444444",
				ConsoleType: "novnc", ComputeHost: "c1", Host: "10.0.0.5", Port: 5901})
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("mint %d: %v", i, errs[i])
		}
		if _, err := s.Lookup(ctx, minted[i].Token); err != nil {
			t.Fatalf("lookup of mint %d: %v", i, err)
		}
	}
	end, err := cli.Get(ctx, "/vncgate/test/guard")
	if err != nil {
		t.Fatal(err)
	}
	// One revision per transaction: at most n, fewer when grouped.
	t.Logf("%d concurrent mints took %d etcd revisions", n, end.Header.Revision-start)
	if writes := end.Header.Revision - start; writes > n {
		t.Errorf("%d mints: %d revisions, want at most %d", n, writes, n)
	}
}
