package server_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// replica is one more consoleauth on the world's etcd, with a log of its
// own (to see which replica answered a call).
type replica struct {
	srv  *server.Server
	addr string // its gRPC address, kept across a restart
	logs *testlog.Buffer
}

// startReplica starts a consoleauth with cfg on grpcListen ("" for a port
// that stays free for a restart), shut down when t ends unless killed
// before.
func startReplica(t *testing.T, cfg server.Config, grpcListen string) *replica {
	t.Helper()
	if grpcListen == "" {
		l := loopback.ListenRestartable(t, "127.0.0.1")
		grpcListen = l.Addr().String()
		l.Close()
	}
	cfg.GRPCListen, cfg.RESTListen = grpcListen, "127.0.0.1:0"
	r := &replica{logs: &testlog.Buffer{}}
	srv, err := server.Start(testworld.Ctx(t), cfg, slog.New(slog.NewJSONHandler(r.logs, nil)))
	if err != nil {
		t.Fatalf("start replica on %s: %v", grpcListen, err)
	}
	t.Cleanup(func() { _ = srv.Shutdown() })
	r.srv, r.addr = srv, srv.GRPCAddr()
	return r
}

// kill stops the replica the way its process dying would: with a
// shutdown timeout of a nanosecond, every connection and call is cut.
func (r *replica) kill() { _ = r.srv.Shutdown() }

// checks counts the CheckToken calls the replica answered.
func (r *replica) checks() int {
	return strings.Count(r.logs.String(), `"method":"/vncgate.consoleauth.v1.ConsoleAuthService/CheckToken"`)
}

// proxyChecker is a proxy's token checker (tokencheck over grpcclient,
// with a proxy's certificate) of addresses.
func proxyChecker(t *testing.T, w *world, addresses string, log *slog.Logger) (*tokencheck.Checker, *grpc.ClientConn) {
	t.Helper()
	creds, err := w.pki.Files(t, "novnc-1", authn.RoleProxy).ClientCredentials()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tokencheck.DialCredentials(addresses, creds, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tokencheck.New(conn, 5*time.Second), conn
}

// checkUnder runs total checks of token from 4 callers and calls fault
// once, a quarter of the way in; it fails the test for every failed check.
func checkUnder(t *testing.T, c *tokencheck.Checker, token string, total int, fault func()) {
	t.Helper()
	var next, failed atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for n := next.Add(1); n <= int64(total); n = next.Add(1) {
				if n == int64(total/4) {
					fault()
				}
				if _, err := c.Check(context.Background(), token, "novnc"); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d of %d checks failed, want 0; first: %v", failed.Load(), total, first.Load())
	}
}

// waitFor polls cond until it holds; the bound only stops a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProxyFailsOverBetweenReplicas: a proxy's client lists two real
// consoleauth replicas on one etcd. One is killed during 200 checks: none
// fails. It restarts on its port and answers checks again; then the other
// is killed during 200 more: none fails.
func TestProxyFailsOverBetweenReplicas(t *testing.T) {
	t.Parallel()
	var cfg server.Config
	w := newWorld(t, func(c *server.Config) { cfg = *c })
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	token := w.mint(t, vm)
	cfg.ShutdownTimeout = time.Nanosecond // Shutdown is a kill
	a := startReplica(t, cfg, "")
	b := startReplica(t, cfg, "")
	logs := &testlog.Buffer{}
	c, _ := proxyChecker(t, w, a.addr+","+b.addr, slog.New(slog.NewTextHandler(logs, nil)))
	waitFor(t, "both replicas answering", func() bool {
		_, err := c.Check(context.Background(), token, "novnc")
		return err == nil && a.checks() > 0 && b.checks() > 0
	})

	checkUnder(t, c, token, 200, a.kill)
	a = startReplica(t, cfg, a.addr)
	waitFor(t, "the restarted replica answering", func() bool {
		_, err := c.Check(context.Background(), token, "novnc")
		return err == nil && a.checks() > 0
	})
	checkUnder(t, c, token, 200, b.kill)
	if strings.Contains(logs.String(), "unreachable") {
		t.Errorf("the proxy's client found consoleauth unreachable with a replica up:\n%s", logs)
	}
}

// TestHealthFollowsEtcd: a replica's grpc.health.v1 says SERVING while its
// etcd answers, NOT_SERVING while its link to etcd is cut, and SERVING
// again after; meanwhile a proxy listing it and a healthy replica loses no
// check. Shutdown turns it NOT_SERVING before it stops.
func TestHealthFollowsEtcd(t *testing.T) {
	t.Parallel()
	var cfg server.Config
	w := newWorld(t, func(c *server.Config) { cfg = *c })
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	token := w.mint(t, vm)
	link := w.etcd.NewLink(t)
	cutCfg := cfg
	cutCfg.EtcdEndpoints = []string{link.Addr}
	a := startReplica(t, cutCfg, "")
	b := startReplica(t, cfg, "")

	// Health is open to any caller with a certificate of the CA.
	health := healthpb.NewHealthClient(w.pki.Dial(t, a.addr, "lb-probe", authn.RoleProxy))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	expect := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for {
			resp, err := watch.Recv()
			if err != nil {
				t.Fatalf("health watch: %v, want %v", err, want)
			}
			if resp.GetStatus() == want {
				return
			}
		}
	}
	expect(healthpb.HealthCheckResponse_SERVING)

	c, _ := proxyChecker(t, w, a.addr+","+b.addr, slog.New(slog.DiscardHandler))
	checkUnder(t, c, token, 200, link.Cut)
	expect(healthpb.HealthCheckResponse_NOT_SERVING)
	checkUnder(t, c, token, 50, func() {})

	link.Restore()
	expect(healthpb.HealthCheckResponse_SERVING)
	waitFor(t, "the replica answering checks again", func() bool {
		before := a.checks()
		_, err := c.Check(context.Background(), token, "novnc")
		return err == nil && a.checks() > before
	})

	go a.kill()
	expect(healthpb.HealthCheckResponse_NOT_SERVING)
}
