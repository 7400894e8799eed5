package server_test

import (
	"net/http"
	"testing"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The operator's API: only role operator may call it, over gRPC with its
// certificate or REST with its key, and it may also revoke an instance's
// tokens; the others may not touch it.
func TestOperationsPolicy(t *testing.T) {
	keys, byName := testworld.KeysFile(t, append(keyRoles[:len(keyRoles):len(keyRoles)],
		authn.Identity{Name: "ops-bot", Role: authn.RoleOperator})...)
	w := newWorld(t, func(c *server.Config) { c.APIKeysFile = keys })
	w.keys = byName
	const vm = "0e0e0e0e-1111-4222-8333-444444444444"
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.0.0.9", Port: 5900})

	ops := consoleauthv1.NewOperationsServiceClient(w.pki.Dial(t, w.srv.GRPCAddr(), "alice", authn.RoleOperator))
	st, err := ops.GetStatus(testworld.Ctx(t), &consoleauthv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("operator GetStatus: %v", err)
	}
	if !st.EtcdHealthy || len(st.Agents) != 1 || st.Agents[0].Host != "compute-1" || st.Agents[0].Instances != 1 {
		t.Errorf("operator GetStatus: got %v, want etcd healthy and compute-1 with 1 instance", st)
	}
	if _, err := ops.ListSessions(testworld.Ctx(t), &consoleauthv1.ListSessionsRequest{}); err != nil {
		t.Errorf("operator ListSessions: %v", err)
	}
	_, err = ops.KillSession(testworld.Ctx(t), &consoleauthv1.KillSessionRequest{SessionId: "gone"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("operator KillSession of an unknown session: got %v, want NotFound", err)
	}
	operator := consoleauthv1.NewConsoleAuthServiceClient(w.pki.Dial(t, w.srv.GRPCAddr(), "alice", authn.RoleOperator))
	if _, err := operator.RevokeInstanceTokens(testworld.Ctx(t), &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: vm, Reason: "admin"}); err != nil {
		t.Errorf("operator RevokeInstanceTokens: %v", err)
	}
	if _, err := operator.GetConsoleURL(testworld.Ctx(t), &consoleauthv1.GetConsoleURLRequest{ServerId: vm, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("operator GetConsoleURL: got %v, want PermissionDenied", err)
	}

	for _, role := range []authn.Role{authn.RoleAPI, authn.RoleMint, authn.RoleProxy, authn.RoleCompute, authn.RoleConsoleAuth} {
		c := consoleauthv1.NewOperationsServiceClient(w.pki.Dial(t, w.srv.GRPCAddr(), "someone", role))
		if _, err := c.GetStatus(testworld.Ctx(t), &consoleauthv1.GetStatusRequest{}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("role %s GetStatus: got %v, want PermissionDenied", role, err)
		}
		if _, err := c.KillSession(testworld.Ctx(t), &consoleauthv1.KillSessionRequest{SessionId: "x"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("role %s KillSession: got %v, want PermissionDenied", role, err)
		}
	}

	// REST: the operator's key reads the status; the API layer's is refused.
	w.key = w.keys["ops-bot"]
	code, m := w.do(t, "GET", "/vncgate/v1/status", "")
	if code != http.StatusOK || m["etcd_healthy"] != true {
		t.Errorf("REST status as operator: got %d %v, want 200 with etcd_healthy true", code, m)
	}
	code, m = w.do(t, "DELETE", "/vncgate/v1/sessions/gone", "")
	if code != http.StatusNotFound {
		t.Errorf("REST kill of an unknown session: got %d %v, want 404", code, m)
	}
	w.key = w.keys["nova-api"]
	if code, m := w.do(t, "GET", "/vncgate/v1/sessions", ""); code != http.StatusForbidden {
		t.Errorf("REST sessions as the API layer: got %d %v, want 403", code, m)
	}
}

// The token records who minted it, and CheckToken tells the proxy.
func TestCheckTokenSaysWhoMinted(t *testing.T) {
	w := newWorld(t, nil)
	const vm = "0f0f0f0f-1111-4222-8333-444444444444"
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.0.0.9", Port: 5900})
	token := w.mint(t, vm) // REST, with nova-api's key
	resp, err := w.proxy.CheckToken(testworld.Ctx(t), &consoleauthv1.CheckTokenRequest{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.ConnectInfo.GetMintedBy(); got != "nova-api" {
		t.Errorf("minted_by: got %q, want nova-api (the key's name)", got)
	}
	url, err := w.grpc.GetConsoleURL(testworld.Ctx(t), &consoleauthv1.GetConsoleURLRequest{ServerId: vm, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err = w.proxy.CheckToken(testworld.Ctx(t), &consoleauthv1.CheckTokenRequest{Token: tokenOf(t, url.GetRemoteConsole().GetUrl())})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.ConnectInfo.GetMintedBy(); got != "nova-api" {
		t.Errorf("minted_by over gRPC: got %q, want nova-api (the certificate's name)", got)
	}
}
