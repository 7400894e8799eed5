package etcd

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

func TestStopRestartKeepsData(t *testing.T) {
	s, cli := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}

	s.Stop()
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := cli.Get(short, "k")
	cancelShort()
	if err == nil {
		t.Fatal("get while stopped: got nil error, want one")
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: got %v, want k=v", resp.Kvs)
	}
}

func TestStopTwiceAndRestartStopped(t *testing.T) {
	s := New(t, "127.0.0.1:0")
	s.Stop()
	s.Stop()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
}

// TestStartSecure: clients need TLS and a certificate of the server's CA;
// once authentication is on, the certificate's name is the user.
func TestStartSecure(t *testing.T) {
	s := StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	plain, err := etcdclient.New([]string{s.Endpoint}, tlsconfig.Files{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := plain.Get(short, "k"); err == nil {
		t.Error("plaintext client: got an answer, want none")
	}
	cancelShort()
	noCert := s.ClientFiles(t, "x")
	noCert.Cert, noCert.Key = "", ""
	anon, err := etcdclient.New([]string{s.Endpoint}, noCert)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	short, cancelShort = context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := anon.Get(short, "k"); err == nil {
		t.Error("client without a certificate: got an answer, want none")
	}
	cancelShort()

	root := s.ClientAs(t, "root")
	if _, err := root.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Put(ctx, "k", "v"); err != nil {
		t.Errorf("root after auth enable: %v", err)
	}
	if _, err := s.ClientAs(t, "nobody").Get(ctx, "k"); err == nil {
		t.Error("a user that does not exist: got an answer, want a refusal")
	}
}

func TestLinkCutAndRestore(t *testing.T) {
	s, direct := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	link := s.NewLink(t)
	cli, err := etcdclient.New([]string{link.Addr}, tlsconfig.Files{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "1"); err != nil {
		t.Fatal(err)
	}
	link.Cut()
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := cli.Get(short, "k"); err == nil {
		t.Error("through a cut link: got an answer, want none")
	}
	cancelShort()
	if _, err := direct.Put(ctx, "k", "2"); err != nil {
		t.Errorf("etcd itself while the link is cut: %v", err)
	}
	link.Restore()
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("after restore: got %v, %v, want k=2", resp, err)
	}
}
