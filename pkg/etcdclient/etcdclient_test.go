package etcdclient_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/etcd"
)

func TestNewRefusesBadSettings(t *testing.T) {
	if _, err := etcdclient.New(nil, tlsconfig.Files{}); err == nil || !strings.Contains(err.Error(), "no endpoints") {
		t.Errorf("no endpoints: got %v", err)
	}
	if _, err := etcdclient.New([]string{"127.0.0.1:2379"}, tlsconfig.Files{Cert: "/nonexistent.pem"}); err == nil || !strings.Contains(err.Error(), "etcd tls") {
		t.Errorf("unreadable certificate: got %v", err)
	}
}

// TestNewDoesNotWaitForEtcd: a service starts while etcd is down; calls
// fail by their own timeout.
func TestNewDoesNotWaitForEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cli, err := etcdclient.New([]string{addr}, tlsconfig.Files{})
	if err != nil {
		t.Fatalf("New with etcd down: %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := cli.Get(ctx, "k"); err == nil {
		t.Error("Get with etcd down: got no error")
	}
}

// TestReconnects: after etcd restarts, the same client works again.
func TestReconnects(t *testing.T) {
	srv := etcd.New(t, "127.0.0.1:0")
	cli, err := etcdclient.New([]string{srv.Endpoint}, tlsconfig.Files{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get after etcd restarted: got %v, %v; want v", resp, err)
	}
}
