package etcd

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// TestClusterLosesAndRegainsQuorum: a 3-member cluster serves with one
// member stopped; with a second one killed, as a crash would, it has no
// leader (the member left up answers "no leader" to a client that requires
// one); and it serves again, with its data, once they are back.
func TestClusterLosesAndRegainsQuorum(t *testing.T) {
	c, cli := StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "1"); err != nil {
		t.Fatal(err)
	}

	c.Stop(0)
	if _, err := cli.Put(ctx, "k", "2"); err != nil {
		t.Fatalf("with one member of three down: %v", err)
	}

	c.Kill(1)
	survivor, err := etcdclient.New([]string{c.Members[2].Endpoint}, tlsconfig.Files{})
	if err != nil {
		t.Fatal(err)
	}
	defer survivor.Close()
	// The survivor notices within its election timeout; until then a write
	// waits for a leader that is gone. (Reads are no help here: the client
	// retries them on "no leader" until their deadline.) A write that timed
	// out may still commit once the members are back, so the probe writes
	// a key of its own, never k.
	for {
		short, cancelShort := context.WithTimeout(clientv3.WithRequireLeader(ctx), time.Second)
		_, err := survivor.Put(short, "probe", "3")
		cancelShort()
		if errors.Is(err, rpctypes.ErrNoLeader) {
			break
		}
		if err == nil {
			t.Fatal("with two members of three down: a write succeeded")
		}
		if ctx.Err() != nil {
			t.Fatalf("no leader never reported: last %v", err)
		}
	}

	if err := c.Start(0, 1); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("after the members came back: got %v, %v, want k=2", resp, err)
	}
	if err := c.Start(2); err == nil {
		t.Error("starting a running member: got nil error, want one")
	}
}

// TestClusterInDirFindsItsLeader: a cluster started outside a test (as
// devstack does) names one leader; once that member is killed, the others
// elect another, which Leader finds; Close ends every member.
func TestClusterInDirFindsItsLeader(t *testing.T) {
	c, err := StartClusterIn(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := waitLeader(ctx, t, c)
	c.Kill(first)
	if c.Running(first) {
		t.Fatalf("member %d runs after Kill", first)
	}
	if second := waitLeader(ctx, t, c); second == first {
		t.Fatalf("leader %d after it was killed", second)
	}
	c.Close()
	for i := range c.Members {
		if c.Running(i) {
			t.Errorf("member %d runs after Close", i)
		}
	}
	if _, err := c.Leader(ctx); err == nil {
		t.Error("Leader of a closed cluster: got nil error, want one")
	}
}

// waitLeader returns the leader once the members agree on one (an election
// may be under way); ctx bounds a hang.
func waitLeader(ctx context.Context, t *testing.T, c *Cluster) int {
	t.Helper()
	for {
		short, cancel := context.WithTimeout(ctx, time.Second)
		i, err := c.Leader(short)
		cancel()
		if err == nil {
			return i
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no leader: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
