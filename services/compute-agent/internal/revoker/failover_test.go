package revoker

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/testkit/certs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// replica is a consoleauth replica over mutual TLS that counts
// revocations and, when etcdDown, answers them UNAVAILABLE as consoleauth
// does without etcd.
type replica struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	etcdDown bool
	calls    atomic.Int64
}

func (r *replica) RevokeInstanceTokens(context.Context, *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	r.calls.Add(1)
	if r.etcdDown {
		return nil, status.Error(codes.Unavailable, "the console service is temporarily unavailable")
	}
	return &consoleauthv1.RevokeInstanceTokensResponse{RevokedCount: 1}, nil
}

func serveReplica(t *testing.T, ca *certs.CA, r *replica) string {
	t.Helper()
	cert, err := ca.IssueIdentity(certs.Identity{Name: "consoleauth", Role: "consoleauth"}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})))
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, r)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

// TestRevocationRetriedOnAnotherReplica: over the agent's link to
// consoleauth (tokencheck.DialCredentials), a replica that cannot revoke
// (its etcd is gone) costs no revocation: each is retried on the other.
func TestRevocationRetriedOnAnotherReplica(t *testing.T) {
	ca := certs.TestCA(t)
	down, up := &replica{etcdDown: true}, &replica{}
	addrs := serveReplica(t, ca, down) + "," + serveReplica(t, ca, up)
	cert, err := ca.IssueIdentity(certs.Identity{Name: "compute-1", Role: "compute"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tokencheck.DialCredentials(addrs, credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool()}), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := New(consoleauthv1.NewConsoleAuthServiceClient(conn), slog.New(slog.DiscardHandler), nil)

	// Round robin spreads calls only over replicas it has connected to, and
	// the second connection may come up after the first calls: revoke until
	// the replica without etcd has had some (bounded), not a fixed count.
	n := 0
	for ; n < 20 || (down.calls.Load() == 0 && n < 2000); n++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := r.RevokeInstanceTokens(ctx, "11111111-2222-3333-4444-555555555555", "deleted")
		cancel()
		if err != nil {
			t.Fatalf("revocation %d: %v", n, err)
		}
		if down.calls.Load() == 0 {
			time.Sleep(time.Millisecond) // let the other connection come up
		}
	}
	if up.calls.Load() != int64(n) || down.calls.Load() == 0 {
		t.Errorf("calls: got %d to the replica without etcd and %d to the other, want some and %d", down.calls.Load(), up.calls.Load(), n)
	}
}
