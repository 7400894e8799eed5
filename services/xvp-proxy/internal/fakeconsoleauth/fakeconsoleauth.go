// Package fakeconsoleauth plays consoleauth in xvp-proxy's tests: a real
// gRPC ConsoleAuthService on loopback whose CheckToken answers from a map,
// so the proxy's real tokencheck client is exercised. The real consoleauth
// is tested end to end in deploy/e2e.
package fakeconsoleauth

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
)

// Server answers CheckToken like consoleauth: NOT_FOUND for an unknown
// token, PERMISSION_DENIED for another console type, or a code set by Fail.
type Server struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	// Addr is the gRPC address, 127.0.0.1:port.
	Addr string

	mu     sync.Mutex
	tokens map[string]*consoleauthv1.ConnectInfo
	errs   map[string]codes.Code
	delay  time.Duration
}

// Start serves a Server on loopback until t's cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: l.Addr().String(), tokens: map[string]*consoleauthv1.ConnectInfo{}, errs: map[string]codes.Code{}}
	gs := grpc.NewServer()
	consoleauthv1.RegisterConsoleAuthServiceServer(gs, s)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return s
}

// CheckToken implements consoleauthv1.ConsoleAuthServiceServer.
func (s *Server) CheckToken(ctx context.Context, req *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	s.mu.Lock()
	info, code, delay := s.tokens[req.GetToken()], s.errs[req.GetToken()], s.delay
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	switch {
	case code != codes.OK:
		return nil, status.Error(code, "fake consoleauth says "+code.String())
	case info == nil:
		return nil, status.Error(codes.NotFound, "console token not found")
	case req.GetConsoleType() != "" && req.GetConsoleType() != info.GetConsoleType():
		return nil, status.Error(codes.PermissionDenied, "console token is for another console type")
	}
	return &consoleauthv1.CheckTokenResponse{ConnectInfo: info}, nil
}

// Add makes token valid for consoleType, connecting to instance's VNC
// server at addr (host:port) through path (empty for none).
func (s *Server) Add(token, consoleType, instance, addr, path string) {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = &consoleauthv1.ConnectInfo{
		InstanceUuid: instance, ConsoleType: consoleType, Host: host, Port: int32(p), InternalAccessPath: path,
	}
}

// Fail makes CheckToken of token answer code.
func (s *Server) Fail(token string, code codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs[token] = code
}

// SetDelay makes every CheckToken wait d before it answers.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}
