// Package fakeconsoleauth plays consoleauth in the proxies' tests: a real
// gRPC ConsoleAuthService on 127.0.0.1 whose CheckToken answers from a map
// with consoleauth's status codes, so a proxy's real tokencheck client is
// exercised. The real consoleauth is tested end to end in deploy/e2e.
//
// CheckToken answers, in this order: UNAVAILABLE while SetUnavailable is on
// (as if etcd were down); the code set by Fail for the token; NOT_FOUND for
// an unknown, revoked or expired token; PERMISSION_DENIED when the request
// names another console type; otherwise the token's ConnectInfo. Every
// method is safe for concurrent use.
package fakeconsoleauth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/registry"
)

// Server is the fake consoleauth.
type Server struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	// Addr is the gRPC address, 127.0.0.1:port.
	Addr string

	mu          sync.Mutex
	tokens      map[string]*consoleauthv1.ConnectInfo
	errs        map[string]codes.Code
	unavailable bool
	delay       time.Duration
	checks      atomic.Int64
}

// Start serves a Server on loopback until t's cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: l.Addr().String(), tokens: map[string]*consoleauthv1.ConnectInfo{}, errs: map[string]codes.Code{}}
	gs := grpc.NewServer(grpcclient.ServerOptions()...) // keepalive as consoleauth's
	consoleauthv1.RegisterConsoleAuthServiceServer(gs, s)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return s
}

// Add makes token valid, with no expiry, for consoleType, connecting to
// instance's VNC server at addr (host:port) through path (empty for none).
func (s *Server) Add(token, consoleType, instance, addr, path string) {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = &consoleauthv1.ConnectInfo{
		InstanceUuid: instance, ConsoleType: consoleType, Host: host, Port: int32(p), InternalAccessPath: path,
	}
}

// ComputeHost is the compute host of every console Mint stores.
const ComputeHost = "fake-compute"

// Mint stores a new random token for instance's console of consoleType at
// host:port, valid for ttl, and returns it. Its ConnectInfo carries creation
// and expiry times and the token's hash prefix, as consoleauth's does.
func (s *Server) Mint(instance, consoleType, host string, port int32, ttl time.Duration) string {
	token := hex.EncodeToString(randomBytes(16))
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = &consoleauthv1.ConnectInfo{
		InstanceUuid:    instance,
		ConsoleType:     consoleType,
		Host:            host,
		Port:            port,
		ComputeHost:     ComputeHost,
		CreatedAt:       timestamppb.New(now),
		ExpiresAt:       timestamppb.New(now.Add(ttl)),
		TokenHashPrefix: registry.HashPrefix(registry.TokenHash(token)),
	}
	return token
}

// Expire makes token expired now, without waiting for its TTL.
func (s *Server) Expire(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if info := s.tokens[token]; info != nil {
		// A copy: CheckToken hands the stored one to gRPC outside the lock.
		info = proto.CloneOf(info)
		info.ExpiresAt = timestamppb.New(time.Now().Add(-time.Second))
		s.tokens[token] = info
	}
}

// Revoke forgets token.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// Fail makes CheckToken of token answer code (codes.OK undoes it). For
// example FAILED_PRECONDITION is consoleauth's answer when the instance no
// longer listens where the token says.
func (s *Server) Fail(token string, code codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs[token] = code
}

// SetUnavailable makes every check fail with UNAVAILABLE, as if etcd were
// down, until it is called with false.
func (s *Server) SetUnavailable(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = down
}

// SetDelay makes every CheckToken wait d (or until its caller gives up)
// before it answers.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Checks counts CheckToken calls.
func (s *Server) Checks() int64 { return s.checks.Load() }

// CheckToken implements consoleauthv1.ConsoleAuthServiceServer.
func (s *Server) CheckToken(ctx context.Context, req *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	s.checks.Add(1)
	s.mu.Lock()
	delay := s.delay
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	info, code := s.tokens[req.GetToken()], s.errs[req.GetToken()]
	switch {
	case s.unavailable:
		return nil, status.Error(codes.Unavailable, "etcd unavailable")
	case code != codes.OK:
		return nil, status.Error(code, "fake consoleauth says "+code.String())
	case info == nil || (info.ExpiresAt != nil && time.Now().After(info.GetExpiresAt().AsTime())):
		return nil, status.Error(codes.NotFound, "console token not found or expired")
	case req.GetConsoleType() != "" && req.GetConsoleType() != info.GetConsoleType():
		return nil, status.Errorf(codes.PermissionDenied, "token is for console type %s", info.GetConsoleType())
	}
	return &consoleauthv1.CheckTokenResponse{ConnectInfo: info}, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (Go 1.24+)
	return b
}
