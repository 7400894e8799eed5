package revoker

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/requestid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// consoleauth answers RevokeInstanceTokens like the real service's edge:
// it records the request and refuses an empty uuid.
type consoleauth struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	got chan *consoleauthv1.RevokeInstanceTokensRequest
	ids chan string // the x-request-id of each accepted call
}

func (c *consoleauth) RevokeInstanceTokens(ctx context.Context, req *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	if req.GetInstanceUuid() == "" {
		return nil, status.Error(codes.InvalidArgument, "instance_uuid is empty")
	}
	c.got <- req
	c.ids <- requestid.Incoming(ctx)
	return &consoleauthv1.RevokeInstanceTokensResponse{RevokedCount: 2}, nil
}

func TestRevokeInstanceTokens(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ca := &consoleauth{got: make(chan *consoleauthv1.RevokeInstanceTokensRequest, 1), ids: make(chan string, 1)}
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, ca)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(requestid.UnaryClientInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	reg := prometheus.NewPedanticRegistry()
	r := New(consoleauthv1.NewConsoleAuthServiceClient(conn), slog.New(slog.DiscardHandler), reg)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const uuid = "11111111-2222-3333-4444-555555555555"
	if err := r.RevokeInstanceTokens(ctx, uuid, "stopped"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	req := <-ca.got
	if req.GetInstanceUuid() != uuid || req.GetReason() != "stopped" {
		t.Errorf("consoleauth got %v, want uuid %s and the reason code", req, uuid)
	}
	if id := <-ca.ids; !requestid.Valid(id) {
		t.Errorf("consoleauth got request id %q, want a new valid one", id)
	}

	err = r.RevokeInstanceTokens(ctx, "", "x")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "revoke tokens of instance") {
		t.Errorf("refused revocation: got %v, want INVALID_ARGUMENT kept in the wrapped error", err)
	}
	for result, want := range map[string]float64{"revoked": 1, "InvalidArgument": 1, "Unavailable": 0} {
		if got := testutil.ToFloat64(r.sent.WithLabelValues(result)); got != want {
			t.Errorf("revocations_total{result=%q}: got %v, want %v", result, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "vncgate_compute_agent_revocations_total"); err != nil || n < 4 {
		t.Errorf("registry: got %d series (%v), want the counter registered with its results", n, err)
	}
}
