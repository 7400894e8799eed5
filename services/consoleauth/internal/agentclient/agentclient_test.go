package agentclient_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/testkit/etcd"
)

func TestGetConsoleMapsAgentCodes(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	agent := testworld.StartAgent(t, cli, "c1")
	agent.AddInstance(t, "ok", testworld.Console{Host: "10.0.0.5", Port: 5901, Path: "/vnc"})
	for uuid, code := range map[string]codes.Code{
		"stopped": codes.FailedPrecondition, "headless": codes.InvalidArgument,
		"broken": codes.Internal, "busy": codes.Unavailable,
	} {
		agent.AddInstance(t, uuid, testworld.Console{})
		agent.Fail(uuid, code)
	}
	pool := agentclient.New(agentclient.Options{Timeout: 2 * time.Second})
	t.Cleanup(func() { _ = pool.Close() })

	tests := []struct {
		name    string
		uuid    string
		want    agentclient.Console
		wantErr error
		wantMsg string
	}{
		{name: "running", uuid: "ok", want: agentclient.Console{Host: "10.0.0.5", Port: 5901, InternalAccessPath: "/vnc"}},
		{name: "not on this host", uuid: "ghost", wantErr: agentclient.ErrNotFound, wantMsg: "instance ghost not found on compute host c1"},
		{name: "not running", uuid: "stopped", wantErr: agentclient.ErrNotReady},
		{name: "no console", uuid: "headless", wantErr: agentclient.ErrNoConsole},
		{name: "agent fault", uuid: "broken", wantErr: agentclient.ErrFailed},
		{name: "agent unavailable", uuid: "busy", wantErr: agentclient.ErrUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pool.GetConsole(ctx, agentclient.Agent{Host: agent.Host, Address: agent.Addr}, tt.uuid, "novnc")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error: got %v, want %v", err, tt.wantErr)
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Errorf("message: got %q, want %q", err, tt.wantMsg)
			}
			if got != tt.want {
				t.Errorf("console: got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestValidateConsolePort(t *testing.T) {
	t.Parallel()
	_, cli := etcd.Start(t)
	ctx := testworld.Ctx(t)
	agent := testworld.StartAgent(t, cli, "c1")
	agent.AddInstance(t, "vm", testworld.Console{Host: "10.0.0.5", Port: 5901})
	pool := agentclient.New(agentclient.Options{})
	t.Cleanup(func() { _ = pool.Close() })

	tests := []struct {
		name      string
		host      string
		port      int32
		wantValid bool
	}{
		{name: "same", host: "10.0.0.5", port: 5901, wantValid: true},
		{name: "other port", host: "10.0.0.5", port: 5902},
		{name: "other host", host: "10.0.0.6", port: 5901},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			valid, reason, err := pool.ValidateConsolePort(ctx, agentclient.Agent{Host: agent.Host, Address: agent.Addr}, "vm", "novnc", tt.host, tt.port)
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			if valid != tt.wantValid || (!valid && reason == "") {
				t.Errorf("got valid=%v reason=%q, want valid=%v with a reason when not", valid, reason, tt.wantValid)
			}
		})
	}
}

func TestUnreachableAgent(t *testing.T) {
	t.Parallel()
	ctx := testworld.Ctx(t)
	// A port nobody listens on: listen, note the address, close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()

	pool := agentclient.New(agentclient.Options{Timeout: time.Second})
	start := time.Now()
	_, err = pool.GetConsole(ctx, agentclient.Agent{Host: "c9", Address: addr}, "vm", "novnc")
	if !errors.Is(err, agentclient.ErrUnreachable) {
		t.Errorf("dead agent: got %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dead agent answered after %v, want within the 1s timeout", d)
	}
	if err := pool.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.GetConsole(ctx, agentclient.Agent{Host: "c9", Address: addr}, "vm", "novnc"); !errors.Is(err, agentclient.ErrUnreachable) {
		t.Errorf("closed pool: got %v, want ErrUnreachable", err)
	}
}
