package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestRevocationsReachTheLiveReplica: consoleauth_address lists a dead
// consoleauth first and a live one second (mutual TLS, health service,
// compute agents only); an instance leaving the host is revoked through
// the live one.
func TestRevocationsReachTheLiveReplica(t *testing.T) {
	etcdSrv := etcd.New(t, "127.0.0.1:0")
	pki := newPKI(t)
	so, err := pki.files(t, "consoleauth-2", "consoleauth").ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	guard := authn.NewGuard(authn.GuardOptions{Open: authn.HealthMethods, Policy: authn.Policy{
		consoleauthv1.ConsoleAuthService_RevokeInstanceTokens_FullMethodName: {authn.RoleCompute}}})
	live := &revocationsSeen{seen: make(chan authn.Identity, 16)}
	srv := grpc.NewServer(so, grpc.UnaryInterceptor(guard.UnaryInterceptor()), grpc.StreamInterceptor(guard.StreamInterceptor()))
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, live)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead.Close()

	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	cfg := testConfig(t, pki, etcdSrv.Endpoint, inventory)
	cfg.ConsoleAuthAddress = dead.Addr().String() + ", " + l.Addr().String()
	a := startRun(t, cfg, pki)
	cli, err := clientv3.New(etcdclient.Config([]string{etcdSrv.Endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	eventually(t, 10*time.Second, "instance published", func() error {
		if _, ok, err := etcdGet(cli, registry.ComputeInstanceKey("compute-test", uuidDemo)); !ok || err != nil {
			return fmt.Errorf("not published yet (%v)", err)
		}
		return nil
	})
	if err := os.WriteFile(inventory, []byte(`{"instances": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a.reload <- syscall.SIGHUP
	select {
	case id := <-live.seen:
		if id.Name != "compute-test" || id.Role != authn.RoleCompute {
			t.Errorf("revocation by %+v, want compute-test with role compute", id)
		}
	case <-time.After(30 * time.Second): // bounds a hang
		t.Fatal("no revocation reached the live consoleauth")
	}
}

func TestConsoleAuthAddressList(t *testing.T) {
	for _, tc := range []struct {
		name, value, want string
	}{
		{"a list", "127.0.0.1:6090, 127.0.0.2:6090,localhost:6090", ""},
		{"an empty entry", "127.0.0.1:6090,,127.0.0.2:6090", "consoleauth_address: entry 2 of 3 is empty"},
		{"IPv6 without brackets", "::1:6090", `consoleauth_address: entry "::1:6090": want host:port, with an IPv6 address in brackets`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaults()
			cfg.ConsoleAuthAddress = tc.value
			err := cfg.validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("validate: got %v, want %q", err, tc.want)
			}
		})
	}
	cfg := defaults()
	cfg.GRPCListen, cfg.ConsoleAuthAddress = "127.0.0.1:6092", "127.0.0.1:6090,192.0.2.1:6090"
	if err := cfg.checkPlaintext(); err == nil || !strings.Contains(err.Error(), "consoleauth_address 192.0.2.1:6090: plaintext off loopback") {
		t.Errorf("plaintext to a replica off loopback: got %v, want it refused, naming the replica", err)
	}
}
