package revoker

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
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
}

func (c *consoleauth) RevokeInstanceTokens(_ context.Context, req *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	if req.GetInstanceUuid() == "" {
		return nil, status.Error(codes.InvalidArgument, "instance_uuid is empty")
	}
	c.got <- req
	return &consoleauthv1.RevokeInstanceTokensResponse{RevokedCount: 2}, nil
}

func TestRevokeInstanceTokens(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ca := &consoleauth{got: make(chan *consoleauthv1.RevokeInstanceTokensRequest, 1)}
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, ca)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := New(consoleauthv1.NewConsoleAuthServiceClient(conn), slog.New(slog.DiscardHandler))

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

	err = r.RevokeInstanceTokens(ctx, "", "x")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "revoke tokens of instance") {
		t.Errorf("refused revocation: got %v, want INVALID_ARGUMENT kept in the wrapped error", err)
	}
}
