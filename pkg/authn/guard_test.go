package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/testlog"
)

const (
	checkMethod = "/grpc.health.v1.Health/Check"
	listMethod  = "/grpc.health.v1.Health/List"
	watchMethod = "/grpc.health.v1.Health/Watch"
)

// healthWithIdentity answers Check with the caller's identity in the
// status field's place: the service name it was asked for must match the
// identity's role, so the test sees what the handler saw.
type healthWithIdentity struct {
	*health.Server
}

func (h healthWithIdentity) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	id, ok := FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no identity in the handler's context")
	}
	if want := req.GetService(); want != "" && want != id.Name+"/"+string(id.Role) {
		return nil, status.Errorf(codes.Internal, "handler saw %s/%s, want %s", id.Name, id.Role, want)
	}
	return h.Server.Check(ctx, &healthpb.HealthCheckRequest{})
}

type guarded struct {
	addr string
	ca   *certs.CA
	logs *testlog.Buffer
}

// startGuarded serves grpc.health.v1 over mutual TLS (CA ca) behind a
// guard with policy: Check for proxies and compute agents, Watch for
// proxies, List not in the table.
func startGuarded(t *testing.T, src RoleSource) *guarded {
	t.Helper()
	g := &guarded{ca: certs.TestCA(t), logs: &testlog.Buffer{}}
	serverCert, err := g.ca.IssueIdentity(certs.Identity{Name: "server", Role: "consoleauth"}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	guard := NewGuard(GuardOptions{
		Policy:        Policy{checkMethod: {RoleProxy, RoleCompute}, watchMethod: {RoleProxy}},
		RoleSource:    src,
		NoCertificate: "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca",
		Log:           slog.New(slog.NewJSONHandler(g.logs, nil)),
	})
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: g.ca.Pool(),
			ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12})),
		grpc.UnaryInterceptor(guard.UnaryInterceptor()), grpc.StreamInterceptor(guard.StreamInterceptor()))
	healthpb.RegisterHealthServer(srv, healthWithIdentity{health.NewServer()})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	g.addr = l.Addr().String()
	return g
}

// client dials with a certificate for id (none when id is nil).
func (g *guarded) client(t *testing.T, id *certs.Identity) healthpb.HealthClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: g.ca.Pool(), MinVersion: tls.VersionTLS12}
	if id != nil {
		c, err := g.ca.IssueIdentity(*id, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return g.dial(t, credentials.NewTLS(cfg))
}

func (g *guarded) dial(t *testing.T, creds credentials.TransportCredentials) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestGuard calls a guarded server over real mutual TLS with certificates
// of each kind.
func TestGuard(t *testing.T) {
	g := startGuarded(t, RoleFromSAN)
	id := func(name, role string) *certs.Identity { return &certs.Identity{Name: name, Role: role} }
	tests := []struct {
		name    string
		client  healthpb.HealthClient
		service string // asked for: the identity the handler must see
		want    codes.Code
		wantMsg string
	}{
		{name: "proxy", client: g.client(t, id("novnc-1", "proxy")), service: "novnc-1/proxy", want: codes.OK},
		{name: "compute", client: g.client(t, id("compute-1", "compute")), service: "compute-1/compute", want: codes.OK},
		{name: "api may not", client: g.client(t, id("nova", "api")), want: codes.PermissionDenied, wantMsg: "role api may not call Check"},
		{name: "certificate without a role", client: g.client(t, id("someone", "")), want: codes.Unauthenticated,
			wantMsg: `certificate "CN=someone": no role: want a URI SAN urn:vncgate:role:ROLE`},
		{name: "TLS without a certificate", client: g.client(t, nil), want: codes.Unauthenticated,
			wantMsg: "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.client.Check(ctx(t), &healthpb.HealthCheckRequest{Service: tt.service})
			st := status.Convert(err)
			if st.Code() != tt.want || !strings.HasPrefix(st.Message(), tt.wantMsg) {
				t.Errorf("got %s %q, want %s %q", st.Code(), st.Message(), tt.want, tt.wantMsg)
			}
		})
	}

	proxy := g.client(t, id("novnc-1", "proxy"))
	if _, err := proxy.List(ctx(t), &healthpb.HealthListRequest{}); status.Code(err) != codes.PermissionDenied ||
		status.Convert(err).Message() != "List is not open to any caller" {
		t.Errorf("method not in the policy: got %v, want PermissionDenied", err)
	}
	// Streams are guarded too.
	stream, err := g.client(t, id("compute-1", "compute")).Watch(ctx(t), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("Watch by a compute agent: got %v, want PermissionDenied", err)
	}
	stream, err = proxy.Watch(ctx(t), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if err != nil {
		t.Errorf("Watch by a proxy: got %v, want an answer", err)
	}

	// One audit line per refusal, with who, what and why.
	var refused []map[string]any
	for line := range strings.Lines(g.logs.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "request refused" {
			refused = append(refused, rec)
		}
	}
	if len(refused) != 5 {
		t.Fatalf("audit lines: got %d, want 5 (one per refusal):\n%s", len(refused), g.logs)
	}
	if r := refused[0]; r["level"] != "WARN" || r["caller"] != "nova" || r["role"] != "api" || r["method"] != checkMethod ||
		r["reason"] != "permission_denied" || r["client"] != "127.0.0.1" || r["message"] != "role api may not call Check" {
		t.Errorf("audit line of the api caller: got %v", r)
	}
}

// TestGuardPlaintext: without TLS there is no caller, and the refusal says
// what to configure; open methods stay open.
func TestGuardPlaintext(t *testing.T) {
	guard := NewGuard(GuardOptions{
		Policy:        Policy{checkMethod: {RoleProxy}},
		Open:          []string{listMethod},
		NoCertificate: "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca",
	})
	srv := grpc.NewServer(grpc.UnaryInterceptor(guard.UnaryInterceptor()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	client := (&guarded{addr: l.Addr().String()}).dial(t, insecure.NewCredentials())
	_, err = client.Check(ctx(t), &healthpb.HealthCheckRequest{})
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "configure grpc_cert/grpc_key/grpc_ca") {
		t.Errorf("plaintext call: got %v, want Unauthenticated saying what to configure", err)
	}
	if _, err := client.List(ctx(t), &healthpb.HealthListRequest{}); err != nil {
		t.Errorf("open method: got %v, want an answer", err)
	}
}

// TestGuardSubjectRoles: with cert_role_source = subject the OU names the
// role.
func TestGuardSubjectRoles(t *testing.T) {
	g := startGuarded(t, RoleFromSubject)
	if _, err := g.client(t, &certs.Identity{Name: "novnc-1", Role: "proxy"}).Check(ctx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("proxy by OU: got %v", err)
	}
}

// TestGatewayIdentity: the in-process server believes only metadata
// carrying this process's secret.
func TestGatewayIdentity(t *testing.T) {
	secret := NewGatewaySecret()
	guard := NewGuard(GuardOptions{Policy: Policy{checkMethod: {RoleAPI}}, GatewaySecret: secret})
	api := Identity{Name: "nova", Role: RoleAPI, Via: "key"}
	tests := []struct {
		name string
		md   metadata.MD
		want codes.Code
	}{
		{"the gateway's", GatewayMetadata(secret, api, "192.0.2.1"), codes.OK},
		{"another secret", GatewayMetadata(NewGatewaySecret(), api, ""), codes.Unauthenticated},
		{"no secret", metadata.Pairs(gatewayIdentityKey, `{"name":"x","role":"api"}`), codes.Unauthenticated},
		{"secret twice", metadata.Join(GatewayMetadata(secret, api, ""), metadata.Pairs(gatewaySecretKey, secret)), codes.Unauthenticated},
		{"unknown role", GatewayMetadata(secret, Identity{Name: "x", Role: "root"}, ""), codes.Unauthenticated},
		{"none", nil, codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := metadata.NewIncomingContext(context.Background(), tt.md)
			got, err := guard.Admit(c, checkMethod)
			if status.Code(err) != tt.want {
				t.Fatalf("got %v, want %s", err, tt.want)
			}
			if id, _ := FromContext(got); err == nil && id != api {
				t.Errorf("identity: got %+v, want %+v", id, api)
			}
		})
	}
}

// BenchmarkGuardAdmit is the guard's cost per call: identity from a
// verified certificate and the policy check (the ns/op of one call).
func BenchmarkGuardAdmit(b *testing.B) {
	ca := certs.TestCA(b)
	c, err := ca.IssueIdentity(certs.Identity{Name: "novnc-1", Role: "proxy"}, "127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	guard := NewGuard(GuardOptions{Policy: Policy{checkMethod: {RoleProxy}}})
	p := &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c.Leaf, ca.Cert}}}},
	}
	base := peer.NewContext(context.Background(), p)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := guard.Admit(base, checkMethod); err != nil {
			b.Fatal(err)
		}
	}
}
