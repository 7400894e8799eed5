// Package testworld builds the real parts consoleauth's tests run on: a
// real etcd (testkit/etcd) and small compute agents, real gRPC servers
// on loopback that register in etcd the way the real agent does, and the
// credentials of every role (PKI: one CA per test and certificates that
// name their role; KeysFile: REST bearer keys). Only tests import it.
package testworld

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	"github.com/vncgate/vncgate/pkg/authn"
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

// StartAgentTLS starts an agent that requires mTLS with files and, as the
// real agent does, answers only callers whose certificate has the
// consoleauth role.
func StartAgentTLS(t testing.TB, cli *clientv3.Client, host string, files tlsconfig.Files) *Agent {
	t.Helper()
	cfg, err := files.Server()
	if err != nil {
		t.Fatalf("agent tls: %v", err)
	}
	guard := authn.NewGuard(authn.GuardOptions{Policy: authn.Policy{
		computeagentv1.ComputeAgentService_GetConsole_FullMethodName:          {authn.RoleConsoleAuth},
		computeagentv1.ComputeAgentService_ValidateConsolePort_FullMethodName: {authn.RoleConsoleAuth},
	}})
	return startAgent(t, cli, host, grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)), grpc.UnaryInterceptor(guard.UnaryInterceptor())))
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
	PutJSON(t, a.cli, registry.ComputeInstanceKey(a.Host, uuid), registry.Location{ComputeHost: a.Host})
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
// The certificate names no role: use PKI for callers.
func TLSFiles(t testing.TB) tlsconfig.Files {
	t.Helper()
	f, _ := certs.TestFiles(t, "127.0.0.1")
	return tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// PKI is one test's CA, issuing certificates that name their caller and
// role as vncgate's certificates do (CN and URI SAN urn:vncgate:role:ROLE).
type PKI struct {
	CA *certs.CA
}

// NewPKI makes a CA for t.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	return &PKI{CA: certs.TestCA(t)}
}

// Files writes a certificate for name with role (valid for 127.0.0.1 and
// localhost, as server and client), its key and the CA into a fresh
// directory, as mTLS settings.
func (p *PKI) Files(t testing.TB, name string, role authn.Role) tlsconfig.Files {
	t.Helper()
	f, err := p.CA.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: name, Role: string(role)}, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// TLS is a client configuration presenting a certificate for name with
// role and trusting the CA.
func (p *PKI) TLS(t testing.TB, name string, role authn.Role) *tls.Config {
	t.Helper()
	c, err := p.CA.IssueIdentity(certs.Identity{Name: name, Role: string(role)}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: p.CA.Pool(), MinVersion: tls.VersionTLS12}
}

// Dial is a gRPC connection to addr presenting a certificate for name with
// role, closed when t ends.
func (p *PKI) Dial(t testing.TB, addr, name string, role authn.Role) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(p.TLS(t, name, role))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// KeysFile writes an api_keys_file with one bearer key per identity
// (named by Name, with Role) and returns its path and the keys by name.
func KeysFile(t testing.TB, ids ...authn.Identity) (path string, keys map[string]string) {
	t.Helper()
	keys = map[string]string{}
	var b strings.Builder
	b.WriteString("# test keys\n")
	for _, id := range ids {
		key, line, err := authn.NewKey(id.Name, id.Role)
		if err != nil {
			t.Fatal(err)
		}
		keys[id.Name] = key
		b.WriteString(line + "\n")
	}
	path = filepath.Join(t.TempDir(), "api-keys")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, keys
}
