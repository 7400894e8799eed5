package fakeconsoleauth

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/testkit/loopback"
)

// Replica is one more consoleauth answering from the same Server, as
// replicas on one etcd do: its own gRPC server on 127.0.0.1 with
// grpc.health.v1, which a test can kill and restart, and its own count of
// CheckToken calls (to see which replica answered).
type Replica struct {
	// Addr is the replica's address, the same after Restart.
	Addr string

	of     *Server
	tls    *tls.Config
	checks atomic.Int64

	mu     sync.Mutex
	gs     *grpc.Server
	health *health.Server
}

// StartReplica serves a Replica of s until Kill or t's end, over cfg
// (a server configuration; mutual TLS when it asks for client
// certificates) or plaintext when cfg is nil, on a port that stays free
// for Restart (loopback.ListenRestartable).
func (s *Server) StartReplica(t testing.TB, cfg *tls.Config) *Replica {
	t.Helper()
	r := &Replica{of: s, tls: cfg}
	r.serve(loopback.ListenRestartable(t, "127.0.0.1"))
	t.Cleanup(r.Kill)
	return r
}

// Restart serves the replica again on its address, health SERVING.
func (r *Replica) Restart(t testing.TB) {
	t.Helper()
	l, err := net.Listen("tcp", r.Addr)
	if err != nil {
		t.Fatalf("replica on %s: %v", r.Addr, err)
	}
	r.serve(l)
}

func (r *Replica) serve(l net.Listener) {
	opts := grpcclient.ServerOptions() // keepalive as consoleauth's
	if r.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(r.tls)))
	}
	gs := grpc.NewServer(opts...)
	consoleauthv1.RegisterConsoleAuthServiceServer(gs, replicaService{r.of, &r.checks})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	r.mu.Lock()
	r.Addr, r.gs, r.health = l.Addr().String(), gs, hs
	r.mu.Unlock()
	go gs.Serve(l)
}

// Kill stops the replica as its process dying would: the port closes and
// every connection and call on it is cut.
func (r *Replica) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gs.Stop()
}

// SetServing sets what the replica's health service says.
func (r *Replica) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.health.SetServingStatus("", st)
}

// Checks counts the CheckToken calls this replica answered.
func (r *Replica) Checks() int64 { return r.checks.Load() }

// replicaService is a Server counting one replica's checks.
type replicaService struct {
	*Server
	checks *atomic.Int64
}

func (s replicaService) CheckToken(ctx context.Context, req *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	s.checks.Add(1)
	return s.Server.CheckToken(ctx, req)
}
