// Package etcdtest starts a real embedded etcd (etcdembed) for one test,
// with a client, both stopped in t.Cleanup.
package etcdtest

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vncgate/vncgate/pkg/etcdembed"
)

// Start runs etcd on a free loopback port and returns it with a client.
func Start(t testing.TB) (*etcdembed.Server, *clientv3.Client) {
	t.Helper()
	srv, err := etcdembed.Start(t.TempDir(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Stop)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{srv.Endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli
}
