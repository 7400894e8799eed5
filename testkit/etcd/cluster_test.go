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
	// retries them on "no leader" until their deadline.)
	for {
		short, cancelShort := context.WithTimeout(clientv3.WithRequireLeader(ctx), time.Second)
		_, err := survivor.Put(short, "k", "3")
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
