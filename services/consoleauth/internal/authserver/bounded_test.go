package authserver

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
)

const (
	vm1 = "0a1b2c3d-0000-4000-8000-00000000000a" // on h1
	vm2 = "0a1b2c3d-0000-4000-8000-00000000000b" // on h2
)

// world is consoleauth's gRPC service on loopback, on a real etcd, with two
// compute agents (h1 running vm1, h2 running vm2) and its log in a buffer
// through the service's real logger.
type world struct {
	srv    *Server
	client consoleauthv1.ConsoleAuthServiceClient
	cli    *clientv3.Client
	h1, h2 *testworld.Agent
	store  *tokenstore.Store
	log    *testlog.Buffer
}

func newWorld(t *testing.T) *world {
	t.Helper()
	_, cli := etcd.Start(t)
	return newWorldOn(t, cli, tokenstore.Options{})
}

// newWorldOn builds the world on the etcd of cli, with a store of opts
// (its Logger is the world's).
func newWorldOn(t *testing.T, cli *clientv3.Client, opts tokenstore.Options) *world {
	t.Helper()
	w := &world{cli: cli, log: &testlog.Buffer{}}
	log := logging.New(w.log, "consoleauth", logging.Options{})
	opts.Logger = log
	store, err := tokenstore.New(cli, opts)
	if err != nil {
		t.Fatal(err)
	}
	w.store = store
	pool := agentclient.New(agentclient.Options{})
	t.Cleanup(func() { pool.Close() })
	novnc, _ := ParseBaseURL("novncproxy_base_url", "http://127.0.0.1:6080/vnc_lite.html")
	xvp, _ := ParseBaseURL("xvpvncproxy_base_url", "http://127.0.0.1:6081/console")
	w.srv, err = New(Config{NoVNCBaseURL: novnc, XVPBaseURL: xvp, EnabledTypes: []string{TypeNoVNC, TypeXVPVNC}},
		store, pool, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.h1 = testworld.StartAgent(t, cli, "h1")
	w.h1.AddInstance(t, vm1, testworld.Console{Host: "10.0.0.1", Port: 5901})
	w.h2 = testworld.StartAgent(t, cli, "h2")
	w.h2.AddInstance(t, vm2, testworld.Console{Host: "10.0.0.2", Port: 5902})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpcserver.ServerOptions(grpcserver.Options{Log: log, Quiet: EtcdOutage})...)
	consoleauthv1.RegisterConsoleAuthServiceServer(gs, w.srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	w.client = consoleauthv1.NewConsoleAuthServiceClient(conn)
	return w
}

// mint returns a new token of uuid's novnc console.
func (w *world) mint(t *testing.T, uuid string) string {
	t.Helper()
	resp, err := w.client.GetConsoleURL(testworld.Ctx(t), &consoleauthv1.GetConsoleURLRequest{
		ServerId: uuid, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: TypeNoVNC}})
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	_, token, _ := strings.Cut(resp.GetRemoteConsole().GetUrl(), "token%3D")
	if token == "" {
		t.Fatalf("no token in %s", resp.GetRemoteConsole().GetUrl())
	}
	return token
}

// TestInputIsBounded sends what an attacker would: every answer is a clear
// INVALID_ARGUMENT naming the field, no answer or log line repeats more than
// a short prefix of the input, and nothing reaches etcd or an agent.
func TestInputIsBounded(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	huge := strings.Repeat("a", 2<<20) // 2 MiB
	novnc := &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: TypeNoVNC}
	url := func(id string, rc *consoleauthv1.RemoteConsole) func() error {
		return func() error {
			_, err := w.client.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{ServerId: id, RemoteConsole: rc})
			return err
		}
	}
	check := func(token, typ string) func() error {
		return func() error {
			_, err := w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: typ})
			return err
		}
	}
	introspect := func(token string) func() error {
		return func() error {
			_, err := w.client.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
			return err
		}
	}
	revoke := func(id, reason string) func() error {
		return func() error {
			_, err := w.client.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: id, Reason: reason})
			return err
		}
	}
	legacy := func(id string) func() error {
		return func() error {
			_, err := w.client.GetVNCConsole(ctx, &consoleauthv1.GetVNCConsoleRequest{ServerId: id,
				OsGetVncConsole: &consoleauthv1.GetVNCConsoleAction{Type: TypeNoVNC}})
			return err
		}
	}
	token := w.mint(t, vm1)

	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"2 MiB server_id", url(huge, novnc), `server_id must be a UUID: want 36 characters (8-4-4-4-12 hexadecimal digits), not 2097152; got "aaaaaaaaaaaaaaaa"… (2097152 bytes)`},
		{"not a uuid", url("ghost", novnc), `server_id must be a UUID: want 36 characters (8-4-4-4-12 hexadecimal digits), not 5; got "ghost"`},
		{"braces", url("{"+vm1+"}", novnc), "server_id must be a UUID: want 36 characters"},
		{"no dashes", url(strings.ReplaceAll(vm1, "-", "")+"abcd", novnc), "server_id must be a UUID: want a dash at position 9"},
		{"control characters", url("\x1b[2J"+vm1[4:], novnc), `server_id must be a UUID: want hexadecimal digits, not the character at position 1; got "\x1b[2J`},
		{"legacy action, 2 MiB id", legacy(huge), "server_id must be a UUID"},
		{"2 MiB console type", url(vm1, &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: huge}), `unsupported console type "aaaaaaaaaaaaaaaa"… (2097152 bytes): want novnc or xvpvnc`},
		{"2 MiB protocol", url(vm1, &consoleauthv1.RemoteConsole{Protocol: huge, Type: TypeNoVNC}), `unsupported protocol "aaaaaaaaaaaaaaaa"… (2097152 bytes): only vnc is served`},
		{"2 MiB token", check(huge, ""), "token is not a console token: want 43 base64url characters"},
		{"token one too long", check(token+"A", ""), "token is not a console token"},
		{"token with a bad character", check(token[:42]+"=", ""), "token is not a console token"},
		{"2 MiB console type on check", check(token, huge), `unsupported console type "aaaaaaaaaaaaaaaa"…`},
		{"2 MiB introspected token", introspect(huge), "console_token is not a console token: want 43 base64url characters"},
		{"2 MiB instance_uuid", revoke(huge, ""), "instance_uuid must be a UUID"},
		{"2 MiB reason", revoke(vm1, huge), `unknown reason "aaaaaaaaaaaaaaaa"… (2097152 bytes): want one of admin, console, crashed, deleted, migrated, paused, rebooted, rebuilt, revoked, shelved, started, stopped, suspended`},
		{"a sentence as reason", revoke(vm1, "the instance was stopped"), `unknown reason "the instance was"… (24 bytes): want one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tt.want) {
				t.Errorf("got %s %.300q, want InvalidArgument %q…", st.Code(), st.Message(), tt.want)
			}
			if len(st.Message()) > 300 {
				t.Errorf("message of %d bytes, want a short one", len(st.Message()))
			}
		})
	}
	// The token was never used up, and nothing was revoked.
	if _, err := w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token}); err != nil {
		t.Errorf("token after the refused calls: %v", err)
	}
	if r, err := w.cli.Get(ctx, registry.RevocationsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || r.Count != 0 {
		t.Errorf("revocations after refused calls: %v, %v, want none", r, err)
	}

	logs := w.log.String()
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 8<<20)
	lines := 0
	for sc.Scan() {
		lines++
		if n := len(sc.Bytes()); n > 4<<10 {
			t.Errorf("a log line of %d bytes: %.200s…", n, sc.Text())
		}
	}
	if lines < len(tests) {
		t.Errorf("log lines: got %d, want one per call at least", lines)
	}
	if strings.Contains(logs, token) {
		t.Error("a token was logged")
	}
}

func TestUUIDIsCanonicalised(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	token := w.mint(t, strings.ToUpper(vm1))
	resp, err := w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
	if err != nil || resp.GetConnectInfo().GetInstanceUuid() != vm1 {
		t.Fatalf("check: got %v, %v, want instance %s", resp, err, vm1)
	}
	if _, err := w.client.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: strings.ToUpper(vm1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token}); status.Code(err) != codes.NotFound {
		t.Errorf("token after revoking the upper-case id: got %v, want NotFound", err)
	}
}

func TestRevocationReasonIsACode(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	for _, tt := range []struct{ code, sentence string }{
		{"", "the console was closed by the cloud"},
		{"stopped", "the instance was stopped"},
		{"admin", "an administrator closed the console"},
	} {
		if _, err := w.client.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: vm1, Reason: tt.code}); err != nil {
			t.Fatalf("code %q: %v", tt.code, err)
		}
		r, err := w.cli.Get(ctx, registry.RevocationKey(vm1))
		if err != nil || len(r.Kvs) != 1 || !strings.Contains(string(r.Kvs[0].Value), `"reason":"`+tt.sentence+`"`) {
			t.Errorf("code %q: record %v (%v), want the sentence %q", tt.code, r.Kvs, err, tt.sentence)
		}
	}
}

// TestComputeMayOnlyRevokeItsOwnInstances calls the service as the
// authentication layer leaves it: with the caller's identity in the context.
func TestComputeMayOnlyRevokeItsOwnInstances(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	// h1 also claims vm2 (it can write under its own prefix): h2's claim is
	// older and still wins.
	testworld.PutJSON(t, w.cli, registry.ComputeInstanceKey("h1", vm2), registry.Location{ComputeHost: "h1"})
	const unknown = "0a1b2c3d-0000-4000-8000-0000000000ff"
	compute := func(host string) context.Context {
		return authn.NewContext(ctx, authn.Identity{Name: host, Role: authn.RoleCompute, Host: host, Via: "certificate"})
	}
	tests := []struct {
		name    string
		ctx     context.Context
		uuid    string
		want    codes.Code
		wantMsg string
	}{
		{"own instance", compute("h1"), vm1, codes.OK, ""},
		{"another host's instance", compute("h1"), vm2, codes.PermissionDenied, `compute host "h1" may only revoke its own instances`},
		{"the other host's own", compute("h2"), vm2, codes.OK, ""},
		{"h2 on h1's instance", compute("h2"), vm1, codes.PermissionDenied, `compute host "h2" may only revoke its own instances`},
		{"an unknown instance", compute("h1"), unknown, codes.PermissionDenied, `compute host "h1" may only revoke its own instances`},
		{"a compute identity without a host", compute(""), vm1, codes.PermissionDenied, ""},
		{"the API layer: any instance", authn.NewContext(ctx, authn.Identity{Name: "nova", Role: authn.RoleAPI, Via: "key"}), vm2, codes.OK, ""},
		{"the API layer: an unknown instance", authn.NewContext(ctx, authn.Identity{Name: "nova", Role: authn.RoleAPI, Via: "key"}), unknown, codes.OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := w.mint(t, vm1)
			_, err := w.srv.RevokeInstanceTokens(tt.ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: tt.uuid, Reason: "stopped"})
			st := status.Convert(err)
			if st.Code() != tt.want || (tt.wantMsg != "" && st.Message() != tt.wantMsg) {
				t.Fatalf("got %s %q, want %s %q", st.Code(), st.Message(), tt.want, tt.wantMsg)
			}
			_, err = w.srv.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
			if revoked := status.Code(err) == codes.NotFound; revoked != (tt.want == codes.OK && tt.uuid == vm1) {
				t.Errorf("vm1's token after the call: got %v", err)
			}
		})
	}
	if !strings.Contains(w.log.String(), "revocation refused: not the instance's compute host") {
		t.Error("no audit line for the refusals")
	}
}

// TestIntrospectionRechecksWithTheAgent: introspection vouches for a host
// and port only while the instance's agent says they are its console.
func TestIntrospectionRechecksWithTheAgent(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	token := w.mint(t, vm1)
	introspect := func() (*consoleauthv1.GetConsoleAuthTokenResponse, error) {
		return w.client.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
	}
	if resp, err := introspect(); err != nil || resp.GetConsole().GetPort() != 5901 {
		t.Fatalf("introspection: got %v, %v, want port 5901", resp, err)
	}
	w.h1.SetConsole(vm1, testworld.Console{Host: "10.0.0.1", Port: 5999})
	if _, err := introspect(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "console moved") {
		t.Errorf("after the console moved: got %v, want FailedPrecondition console moved", err)
	}
	w.h1.SetConsole(vm1, testworld.Console{Host: "10.0.0.1", Port: 5901})
	w.h1.Stop()
	if _, err := introspect(); status.Code(err) != codes.Unavailable {
		t.Errorf("with the agent down: got %v, want Unavailable", err)
	}
}

func TestCheckTokenReturnsTheTokenRevision(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	token := w.mint(t, vm1)
	resp, err := w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := w.cli.Get(ctx, registry.TokenKey(registry.TokenHash(token)))
	if err != nil || len(kv.Kvs) != 1 {
		t.Fatalf("token record: %v", err)
	}
	if got, want := resp.GetConnectInfo().GetTokenRevision(), kv.Kvs[0].CreateRevision; got != want || got == 0 {
		t.Errorf("token_revision: got %d, want the record's CreateRevision %d", got, want)
	}
}

// TestFaultsNameNoKeys: an internal fault (a registration etcd holds that
// does not decode) is answered INTERNAL with a fixed sentence; its detail,
// which would name etcd's keys, goes to the log only.
func TestFaultsNameNoKeys(t *testing.T) {
	w := newWorld(t)
	ctx := testworld.Ctx(t)
	if _, err := w.cli.Put(ctx, registry.ComputeKey("h1"), "{not json"); err != nil {
		t.Fatal(err)
	}
	_, err := w.client.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{
		ServerId: vm1, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: TypeNoVNC}})
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != InternalMessage {
		t.Errorf("mint with a corrupt registration: got %s %q, want Internal %q", st.Code(), st.Message(), InternalMessage)
	}
	if !strings.Contains(w.log.String(), "decode the registration of compute host h1") {
		t.Errorf("the fault's detail is not in the log:\n%s", w.log.String())
	}
}
