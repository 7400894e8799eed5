package authserver

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
)

const vm3 = "0a1b2c3d-0000-4000-8000-00000000000c" // on h3, whose agent restarts

// restartingAgent is the compute agent of h3, running vm3: a real gRPC
// server that a test kills and starts again on the same address, where it
// registers again as the real agent does.
type restartingAgent struct {
	computeagentv1.UnimplementedComputeAgentServiceServer
	addr string
	srv  *grpc.Server
}

func (a *restartingAgent) GetConsole(context.Context, *computeagentv1.GetConsoleRequest) (*computeagentv1.GetConsoleResponse, error) {
	return &computeagentv1.GetConsoleResponse{Host: "10.0.0.3", Port: 5903}, nil
}

func (a *restartingAgent) ValidateConsolePort(_ context.Context, req *computeagentv1.ValidateConsolePortRequest) (*computeagentv1.ValidateConsolePortResponse, error) {
	return &computeagentv1.ValidateConsolePortResponse{Valid: req.GetHost() == "10.0.0.3" && req.GetPort() == 5903}, nil
}

// start serves on a.addr (a free port the first time) and registers.
func (a *restartingAgent) start(t *testing.T, w *world) {
	t.Helper()
	addr := a.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("agent listen: %v", err)
	}
	a.addr = l.Addr().String()
	a.srv = grpc.NewServer()
	computeagentv1.RegisterComputeAgentServiceServer(a.srv, a)
	go func() { _ = a.srv.Serve(l) }()
	t.Cleanup(a.srv.Stop)
	testworld.PutJSON(t, w.cli, registry.ComputeKey("h3"), registry.Compute{Address: a.addr})
}

// TestMintAfterAgentRestart kills h3's agent (its registration stays, as
// when an agent dies before its lease ends) and starts it again on the same
// port: the first mint after it registered again succeeds, whatever
// reconnect backoff consoleauth's connection to it had reached meanwhile.
func TestMintAfterAgentRestart(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	agent := &restartingAgent{}
	agent.start(t, w)
	testworld.PutJSON(t, w.cli, registry.ComputeInstanceKey("h3", vm3), registry.Location{ComputeHost: "h3"})
	w.mint(t, vm3)

	agent.srv.Stop()
	mint := func() error {
		_, err := w.client.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{
			ServerId: vm3, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: TypeNoVNC}})
		return err
	}
	// The first mint fails on the connection that broke, the second one
	// dials and is refused: the connection is failing now, and backs off.
	for range 2 {
		if err := mint(); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("agent killed: got %v, want FailedPrecondition (compute host down)", err)
		}
	}
	attemptsWhileDown(ctx, t, agent.addr, 5)

	agent.start(t, w)
	back := time.Now()
	if err := mint(); err != nil {
		t.Fatalf("first mint after the agent came back: %v", err)
	}
	t.Logf("first mint after the agent came back answered in %v", time.Since(back))
}

// attemptsWhileDown stands in for an agent's port while the agent restarts
// (the port accepts and drops connections) until consoleauth's failing
// connection has tried n times in the background, each after a longer
// backoff than the last.
func attemptsWhileDown(ctx context.Context, t *testing.T, addr string, n int) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, n)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	for range n {
		select {
		case <-accepted:
		case <-ctx.Done():
			t.Fatalf("waiting for consoleauth's reconnect attempts: %v", ctx.Err())
		}
	}
}
