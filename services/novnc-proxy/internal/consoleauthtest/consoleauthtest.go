// Package consoleauthtest runs a stand-in consoleauth for novnc-proxy's
// tests: a real gRPC server on 127.0.0.1 answering CheckToken from a map,
// with consoleauth's status codes (NOT_FOUND, PERMISSION_DENIED,
// FAILED_PRECONDITION, UNAVAILABLE). The real consoleauth is tested end to
// end in deploy/e2e.
package consoleauthtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/registry"
)

// Server is the stand-in. Its methods are safe for concurrent use.
type Server struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	// Addr is the gRPC address, 127.0.0.1:port.
	Addr string

	mu          sync.Mutex
	tokens      map[string]*entry
	unavailable bool
	checks      atomic.Int64
}

type entry struct {
	info  *consoleauthv1.ConnectInfo
	moved bool
}

// Start serves until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: l.Addr().String(), tokens: map[string]*entry{}}
	g := grpc.NewServer()
	consoleauthv1.RegisterConsoleAuthServiceServer(g, s)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return s
}

// Mint stores a new random token for instance's console of consoleType at
// host:port, valid for ttl, and returns it.
func (s *Server) Mint(instance, consoleType, host string, port int32, ttl time.Duration) string {
	b := make([]byte, 16)
	rand.Read(b)
	token := hex.EncodeToString(b)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = &entry{info: &consoleauthv1.ConnectInfo{
		InstanceUuid:    instance,
		ConsoleType:     consoleType,
		Host:            host,
		Port:            port,
		CreatedAt:       timestamppb.New(now),
		ExpiresAt:       timestamppb.New(now.Add(ttl)),
		TokenHashPrefix: registry.HashPrefix(registry.TokenHash(token)),
	}}
	return token
}

// Revoke forgets token.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// SetMoved makes token's instance no longer listen where the token says.
func (s *Server) SetMoved(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.tokens[token]; e != nil {
		e.moved = true
	}
}

// SetUnavailable makes every check fail as if etcd were down.
func (s *Server) SetUnavailable(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = down
}

// Checks counts CheckToken calls.
func (s *Server) Checks() int64 { return s.checks.Load() }

// CheckToken answers as consoleauth does.
func (s *Server) CheckToken(_ context.Context, req *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	s.checks.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unavailable {
		return nil, status.Error(codes.Unavailable, "etcd unavailable")
	}
	e := s.tokens[req.GetToken()]
	if e == nil || time.Now().After(e.info.GetExpiresAt().AsTime()) {
		return nil, status.Error(codes.NotFound, "console token not found or expired")
	}
	if req.GetConsoleType() != "" && req.GetConsoleType() != e.info.GetConsoleType() {
		return nil, status.Errorf(codes.PermissionDenied, "token is for console type %s", e.info.GetConsoleType())
	}
	if e.moved {
		return nil, status.Error(codes.FailedPrecondition, "instance no longer listens there")
	}
	return &consoleauthv1.CheckTokenResponse{ConnectInfo: e.info}, nil
}
