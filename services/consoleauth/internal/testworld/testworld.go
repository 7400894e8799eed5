// Package testworld builds the real parts consoleauth's tests run on: a
// real etcd (testkit/etcd) and small compute agents, real gRPC servers
// on loopback that register in etcd the way the real agent does. Only tests
// import it.
package testworld

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
)

// Ctx is a context that ends with the test or after 30 s.
func Ctx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// PutJSON writes v as JSON under key.
func PutJSON(t testing.TB, cli *clientv3.Client, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %s: %v", key, err)
	}
	if _, err := cli.Put(Ctx(t), key, string(b)); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// Console is where an instance's VNC server listens.
type Console struct {
	Host string
	Port int32
	Path string
}

// Agent is an in-test compute agent: a real gRPC ComputeAgentService on
// loopback, registered under registry.ComputeKey(Host).
type Agent struct {
	computeagentv1.UnimplementedComputeAgentServiceServer

	// Host is the compute host's name, Addr the agent's gRPC address.
	Host string
	Addr string

	cli *clientv3.Client
	srv *grpc.Server

	mu       sync.Mutex
	consoles map[string]Console
	fails    map[string]codes.Code
}

// StartAgent starts an agent for compute host host and registers it.
func StartAgent(t testing.TB, cli *clientv3.Client, host string) *Agent {
	t.Helper()
	return startAgent(t, cli, host, grpc.NewServer())
}

// StartAgentTLS starts an agent that requires mTLS with files.
func StartAgentTLS(t testing.TB, cli *clientv3.Client, host string, files tlsconfig.Files) *Agent {
	t.Helper()
	cfg, err := files.Server()
	if err != nil {
		t.Fatalf("agent tls: %v", err)
	}
	return startAgent(t, cli, host, grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg))))
}

func startAgent(t testing.TB, cli *clientv3.Client, host string, srv *grpc.Server) *Agent {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("agent listen: %v", err)
	}
	a := &Agent{
		Host:     host,
		Addr:     lis.Addr().String(),
		cli:      cli,
		srv:      srv,
		consoles: map[string]Console{},
		fails:    map[string]codes.Code{},
	}
	computeagentv1.RegisterComputeAgentServiceServer(a.srv, a)
	go func() { _ = a.srv.Serve(lis) }()
	t.Cleanup(a.Stop)
	PutJSON(t, cli, registry.ComputeKey(host), registry.Compute{Address: a.Addr})
	return a
}

// AddInstance makes the agent run an instance and publishes its location.
func (a *Agent) AddInstance(t testing.TB, uuid string, c Console) {
	t.Helper()
	a.SetConsole(uuid, c)
	PutJSON(t, a.cli, registry.LocationKey(uuid), registry.Location{ComputeHost: a.Host})
}

// SetConsole changes where an instance's VNC server listens.
func (a *Agent) SetConsole(uuid string, c Console) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.consoles[uuid] = c
}

// Fail makes GetConsole of an instance answer with code.
func (a *Agent) Fail(uuid string, code codes.Code) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fails[uuid] = code
}

// Stop stops the agent's server; its registration stays, as when an agent
// dies before its lease ends.
func (a *Agent) Stop() { a.srv.Stop() }

// Unregister deletes the agent's registration, as when its lease ended.
func (a *Agent) Unregister(t testing.TB) {
	t.Helper()
	if _, err := a.cli.Delete(Ctx(t), registry.ComputeKey(a.Host)); err != nil {
		t.Fatalf("unregister agent: %v", err)
	}
}

// GetConsole implements computeagentv1.ComputeAgentServiceServer.
func (a *Agent) GetConsole(_ context.Context, req *computeagentv1.GetConsoleRequest) (*computeagentv1.GetConsoleResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if code, ok := a.fails[req.GetInstanceUuid()]; ok {
		return nil, status.Errorf(code, "test agent refuses instance %s", req.GetInstanceUuid())
	}
	c, ok := a.consoles[req.GetInstanceUuid()]
	if !ok {
		return nil, status.Error(codes.NotFound, "instance not found on this host")
	}
	return &computeagentv1.GetConsoleResponse{Host: c.Host, Port: c.Port, InternalAccessPath: c.Path}, nil
}

// ValidateConsolePort implements computeagentv1.ComputeAgentServiceServer.
func (a *Agent) ValidateConsolePort(_ context.Context, req *computeagentv1.ValidateConsolePortRequest) (*computeagentv1.ValidateConsolePortResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.consoles[req.GetInstanceUuid()]
	if !ok {
		return nil, status.Error(codes.NotFound, "instance not found on this host")
	}
	if c.Host != req.GetHost() || c.Port != req.GetPort() {
		return &computeagentv1.ValidateConsolePortResponse{
			Reason: fmt.Sprintf("instance %s listens on %s:%d now", req.GetInstanceUuid(), c.Host, c.Port),
		}, nil
	}
	return &computeagentv1.ValidateConsolePortResponse{Valid: true}, nil
}

// TLSFiles writes a fresh CA and one certificate for 127.0.0.1 signed by it,
// usable by servers and clients alike, and returns them as mTLS settings.
func TLSFiles(t testing.TB) tlsconfig.Files {
	t.Helper()
	f, _ := certs.TestFiles(t, "127.0.0.1")
	return tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}
