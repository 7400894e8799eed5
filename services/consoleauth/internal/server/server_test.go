package server_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const vm = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a11"

// unknownToken is well formed (43 base64url characters) but was never
// minted.
const unknownToken = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

// Instances of the refusal tests.
const (
	vmOK       = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a21"
	vmMoved    = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a22"
	vmDown     = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a23"
	vmGone     = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a24"
	vmDeleted  = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a25"
	vmStopped  = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a26"
	vmHeadless = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a27"
	vmGhost    = "6f0c5e62-0c9a-4c1e-9a57-0f3b1d1c2a28"
)

func TestRemoteConsoleNoVNC(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(c *server.Config) {
		c.NoVNCBaseURL = "https://console.example:6080/vnc_lite.html?lang=en&scale=true"
	})
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901, Path: "/internal"})
	ctx := testworld.Ctx(t)

	code, m := w.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles",
		`{"remote_console": {"protocol": "vnc", "type": "novnc"}, "ignored": true}`)
	if code != http.StatusOK {
		t.Fatalf("status: got %d %v, want 200", code, m)
	}
	if got := str(t, m, "remote_console", "protocol"); got != "vnc" {
		t.Errorf("protocol: got %q, want vnc", got)
	}
	if got := str(t, m, "remote_console", "type"); got != "novnc" {
		t.Errorf("type: got %q, want novnc", got)
	}
	rawURL := str(t, m, "remote_console", "url")
	if !strings.HasPrefix(rawURL, "https://console.example:6080/vnc_lite.html?") || !strings.Contains(rawURL, "path=%3Ftoken%3D") {
		t.Errorf("url: got %s, want the base URL with path=%%3Ftoken%%3D...", rawURL)
	}
	u, _ := url.Parse(rawURL)
	if q := u.Query(); q.Get("lang") != "en" || q.Get("scale") != "true" {
		t.Errorf("url %s: base query parameters lang=en&scale=true lost", rawURL)
	}
	token := tokenOf(t, rawURL)

	resp, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
	if err != nil {
		t.Fatalf("check token: %v", err)
	}
	ci := resp.GetConnectInfo()
	want := &consoleauthv1.ConnectInfo{InstanceUuid: vm, ConsoleType: "novnc", Host: "10.1.2.3", Port: 5901,
		InternalAccessPath: "/internal", ComputeHost: "compute-1", TokenHashPrefix: registry.HashPrefix(registry.TokenHash(token))}
	if ci.GetInstanceUuid() != want.InstanceUuid || ci.GetConsoleType() != want.ConsoleType || ci.GetHost() != want.Host ||
		ci.GetPort() != want.Port || ci.GetInternalAccessPath() != want.InternalAccessPath ||
		ci.GetComputeHost() != want.ComputeHost || ci.GetTokenHashPrefix() != want.TokenHashPrefix {
		t.Errorf("connect info: got %v, want %v", ci, want)
	}
	if d := ci.GetExpiresAt().AsTime().Sub(ci.GetCreatedAt().AsTime()); d != 10*time.Minute {
		t.Errorf("expires - created: got %v, want 10m", d)
	}
	// Multi-use by default.
	if _, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token}); err != nil {
		t.Errorf("second check: %v", err)
	}

	// The plaintext token is nowhere in etcd: scan every key and value.
	all, err := w.cli.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Kvs) < 4 {
		t.Fatalf("etcd scan: got %d keys, want at least the token, its index, the location and the agent", len(all.Kvs))
	}
	for _, kv := range all.Kvs {
		if strings.Contains(string(kv.Key), token) || strings.Contains(string(kv.Value), token) {
			t.Errorf("etcd key %s holds the plaintext token", kv.Key)
		}
	}
	// Nor in the logs, REST or gRPC.
	if strings.Contains(w.logs.String(), token) {
		t.Errorf("logs hold the plaintext token")
	}
}

func TestLegacyGetVNCConsoleAction(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})

	code, m := w.do(t, "POST", "/v2.1/servers/"+vm+"/action", `{"os-getVNCConsole": {"type": "novnc"}}`)
	if code != http.StatusOK {
		t.Fatalf("status: got %d %v, want 200", code, m)
	}
	console, ok := m["console"].(map[string]any)
	if !ok || len(console) != 2 {
		t.Fatalf("body: got %v, want {\"console\": {\"type\", \"url\"}}", m)
	}
	if got := str(t, m, "console", "type"); got != "novnc" {
		t.Errorf("type: got %q, want novnc", got)
	}
	rawURL := str(t, m, "console", "url")
	if !strings.HasPrefix(rawURL, "http://127.0.0.1:6080/vnc_lite.html?path=%3Ftoken%3D") {
		t.Errorf("url: got %s, want http://127.0.0.1:6080/vnc_lite.html?path=%%3Ftoken%%3D...", rawURL)
	}
	if _, err := w.proxy.CheckToken(testworld.Ctx(t), &consoleauthv1.CheckTokenRequest{Token: tokenOf(t, rawURL)}); err != nil {
		t.Errorf("check token of legacy URL: %v", err)
	}
}

func TestRemoteConsoleXVPVNC(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})

	rawURL := w.consoleURL(t, vm, "xvpvnc")
	token, ok := strings.CutPrefix(rawURL, "http://127.0.0.1:6081/console?token=")
	if !ok || len(token) != 43 {
		t.Fatalf("url: got %s, want http://127.0.0.1:6081/console?token= and 43 characters", rawURL)
	}
	resp, err := w.proxy.CheckToken(testworld.Ctx(t), &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "xvpvnc"})
	if err != nil {
		t.Fatalf("check token: %v", err)
	}
	if got := resp.GetConnectInfo().GetConsoleType(); got != "xvpvnc" {
		t.Errorf("console type: got %q, want xvpvnc", got)
	}
}

func TestTokenIntrospection(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901, Path: "/p"})
	token := w.mint(t, vm)

	code, m := w.do(t, "GET", "/v2.1/os-console-auth-tokens/"+token, "")
	if code != http.StatusOK {
		t.Fatalf("status: got %d %v, want 200", code, m)
	}
	got, _ := json.Marshal(m)
	want := `{"console":{"host":"10.1.2.3","instance_uuid":"` + vm + `","internal_access_path":"/p","port":5901}}`
	if string(got) != want {
		t.Errorf("body: got %s, want %s", got, want)
	}

	code, m = w.do(t, "GET", "/v2.1/os-console-auth-tokens/"+unknownToken, "")
	if code != http.StatusNotFound || walk(t, m, "itemNotFound", "code") != float64(404) {
		t.Errorf("unknown token: got %d %v, want 404 itemNotFound", code, m)
	}
}

func TestTokenExpires(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(c *server.Config) { c.TokenTTL = time.Second })
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	token := w.mint(t, vm)
	resp, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
	if err != nil {
		t.Fatalf("fresh token: %v", err)
	}

	time.Sleep(time.Until(resp.GetConnectInfo().GetExpiresAt().AsTime()) + 50*time.Millisecond)
	_, err = w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("expired token, gRPC: got %s (%v), want NotFound", got, err)
	}
	if code, m := w.do(t, "GET", "/v2.1/os-console-auth-tokens/"+token, ""); code != http.StatusNotFound {
		t.Errorf("expired token, introspection: got %d %v, want 404", code, m)
	}
}

func TestRevokeInstanceTokens(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	const other = "b7e1c0de-0000-4000-8000-000000000002"
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	w.agent.AddInstance(t, other, testworld.Console{Host: "10.1.2.3", Port: 5902})
	ctx := testworld.Ctx(t)
	victims := []string{w.mint(t, vm), w.mint(t, vm), w.mint(t, vm)}
	kept := []string{w.mint(t, other), w.mint(t, other)}

	code, m := w.do(t, "DELETE", "/v2.1/servers/"+vm+"/console-tokens?reason=stopped", "")
	if code != http.StatusOK || walk(t, m, "revoked_count") != float64(3) {
		t.Fatalf("revoke: got %d %v, want 200 {\"revoked_count\": 3}", code, m)
	}
	for _, tok := range victims {
		_, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: tok})
		if got := status.Code(err); got != codes.NotFound {
			t.Errorf("revoked token: got %s, want NotFound", got)
		}
	}
	for _, tok := range kept {
		if _, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: tok}); err != nil {
			t.Errorf("other instance's token: got %v, want valid", err)
		}
	}
	rev, err := w.cli.Get(ctx, registry.RevocationKey(vm))
	if err != nil {
		t.Fatal(err)
	}
	var r registry.Revocation
	if len(rev.Kvs) != 1 || json.Unmarshal(rev.Kvs[0].Value, &r) != nil || r.Reason != registry.RevocationReasons["stopped"] {
		t.Errorf("revocation key: got %v, want the reason %q", rev.Kvs, registry.RevocationReasons["stopped"])
	}
	if rev, err := w.cli.Get(ctx, registry.RevocationKey(other), clientv3.WithCountOnly()); err != nil || rev.Count != 0 {
		t.Errorf("other instance's revocation key: got %v (%v), want none", rev, err)
	}
}

func TestSingleUseTokens(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(c *server.Config) { c.SingleUseTokens = true })
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	token := w.mint(t, vm)

	const callers = 50
	codesSeen := make(chan codes.Code, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			_, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
			codesSeen <- status.Code(err)
		})
	}
	wg.Wait()
	close(codesSeen)
	count := map[codes.Code]int{}
	for c := range codesSeen {
		count[c]++
	}
	if count[codes.OK] != 1 || count[codes.NotFound] != callers-1 {
		t.Errorf("results of %d concurrent checks: got %v, want 1 OK and %d NotFound", callers, count, callers-1)
	}
}

func TestCheckTokenRefusals(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	ctx := testworld.Ctx(t)
	down := w.startAgent(t, "compute-2")
	gone := w.startAgent(t, "compute-3")
	instances := map[string]*testworld.Agent{vmOK: w.agent, vmMoved: w.agent, vmDown: down, vmGone: gone, vmDeleted: w.agent}
	tokens := map[string]string{}
	for uuid, a := range instances {
		a.AddInstance(t, uuid, testworld.Console{Host: "10.1.2.3", Port: 5901})
		tokens[uuid] = w.mint(t, uuid)
	}
	// After minting: the console moves, one agent dies, one is unregistered,
	// one instance disappears.
	w.agent.SetConsole(vmMoved, testworld.Console{Host: "10.1.2.3", Port: 5977})
	down.Stop()
	gone.Unregister(t)
	if _, err := w.cli.Delete(ctx, registry.ComputeInstanceKey("compute-1", vmDeleted)); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		req      *consoleauthv1.CheckTokenRequest
		want     codes.Code
		wantText string
	}{
		{name: "valid", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmOK], ConsoleType: "novnc"}, want: codes.OK},
		{name: "wrong console type", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmOK], ConsoleType: "xvpvnc"},
			want: codes.PermissionDenied, wantText: "token is for a novnc console, not xvpvnc"},
		{name: "unknown console type", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmOK], ConsoleType: "spice"},
			want: codes.InvalidArgument},
		{name: "console moved", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmMoved]},
			want: codes.FailedPrecondition, wantText: "console moved: instance " + vmMoved + " listens on 10.1.2.3:5977 now"},
		{name: "instance deleted", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmDeleted]},
			want: codes.FailedPrecondition, wantText: "console moved"},
		{name: "agent stopped", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmDown]}, want: codes.Unavailable},
		{name: "agent unregistered", req: &consoleauthv1.CheckTokenRequest{Token: tokens[vmGone]},
			want: codes.Unavailable, wantText: "compute host compute-3 of instance " + vmGone + " is down"},
		{name: "unknown token", req: &consoleauthv1.CheckTokenRequest{Token: unknownToken}, want: codes.NotFound},
		{name: "empty token", req: &consoleauthv1.CheckTokenRequest{}, want: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := w.proxy.CheckToken(ctx, tt.req)
			st := status.Convert(err)
			if st.Code() != tt.want {
				t.Fatalf("code: got %s (%q), want %s", st.Code(), st.Message(), tt.want)
			}
			if !strings.Contains(st.Message(), tt.wantText) {
				t.Errorf("message: got %q, want it to contain %q", st.Message(), tt.wantText)
			}
		})
	}
}

func TestRESTErrors(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(c *server.Config) { c.EnabledConsoleTypes = []string{"novnc"} })
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	for uuid, code := range map[string]codes.Code{vmStopped: codes.FailedPrecondition, vmHeadless: codes.InvalidArgument} {
		w.agent.AddInstance(t, uuid, testworld.Console{})
		w.agent.Fail(uuid, code)
	}
	down := w.startAgent(t, "compute-2")
	down.AddInstance(t, vmDown, testworld.Console{Host: "10.9.9.9", Port: 5900})
	down.Stop()
	gone := w.startAgent(t, "compute-3")
	gone.AddInstance(t, vmGone, testworld.Console{Host: "10.9.9.9", Port: 5900})
	gone.Unregister(t)

	const novnc = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		want     int
		wantKey  string
		wantText string
	}{
		{name: "malformed JSON", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {`,
			want: 400, wantKey: "badRequest", wantText: "malformed JSON request body"},
		{name: "wrong JSON type", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {"protocol": 5}}`,
			want: 400, wantKey: "badRequest", wantText: "malformed JSON request body"},
		{name: "missing body", path: "/v2.1/servers/" + vm + "/remote-consoles",
			want: 400, wantKey: "badRequest", wantText: `missing "remote_console" in request body`},
		{name: "empty object", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{}`,
			want: 400, wantKey: "badRequest", wantText: `missing "remote_console"`},
		{name: "unknown protocol", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {"protocol": "rdp", "type": "rdp-html5"}}`,
			want: 400, wantKey: "badRequest", wantText: `unsupported protocol "rdp": only vnc is served`},
		{name: "missing protocol", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {"type": "novnc"}}`,
			want: 400, wantKey: "badRequest", wantText: "protocol"},
		{name: "unknown type", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {"protocol": "vnc", "type": "spice-html5"}}`,
			want: 400, wantKey: "badRequest", wantText: `unsupported console type "spice-html5"`},
		{name: "type disabled", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {"protocol": "vnc", "type": "xvpvnc"}}`,
			want: 501, wantKey: "notImplemented", wantText: `console type "xvpvnc" is not enabled`},
		{name: "unknown instance", path: "/v2.1/servers/" + vmGhost + "/remote-consoles", body: novnc,
			want: 404, wantKey: "itemNotFound", wantText: "instance " + vmGhost + " not found"},
		{name: "compute key deleted", path: "/v2.1/servers/" + vmGone + "/remote-consoles", body: novnc,
			want: 409, wantKey: "conflictingRequest", wantText: "compute host compute-3 of instance " + vmGone + " is down"},
		{name: "agent server stopped", path: "/v2.1/servers/" + vmDown + "/remote-consoles", body: novnc,
			want: 409, wantKey: "conflictingRequest", wantText: "compute host compute-2 of instance " + vmDown + " is down"},
		{name: "instance not running", path: "/v2.1/servers/" + vmStopped + "/remote-consoles", body: novnc,
			want: 409, wantKey: "conflictingRequest", wantText: "instance " + vmStopped + " is not ready"},
		{name: "instance without console", path: "/v2.1/servers/" + vmHeadless + "/remote-consoles", body: novnc,
			want: 400, wantKey: "badRequest", wantText: "instance " + vmHeadless + " has no novnc console"},
		{name: "legacy action without os-getVNCConsole", path: "/v2.1/servers/" + vm + "/action", body: `{"os-getSPICEConsole": {"type": "spice-html5"}}`,
			want: 400, wantKey: "badRequest", wantText: `missing "os-getVNCConsole"`},
		{name: "legacy action type disabled", path: "/v2.1/servers/" + vm + "/action", body: `{"os-getVNCConsole": {"type": "xvpvnc"}}`,
			want: 501, wantKey: "notImplemented"},
		{name: "body too large", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"x": "` + strings.Repeat("a", 70<<10) + `"}`,
			want: 413, wantKey: "overLimit", wantText: "request body larger than 65536 bytes"},
		{name: "unknown route", method: "GET", path: "/v2.1/flavors",
			want: 404, wantKey: "itemNotFound", wantText: "no such resource"},
		{name: "wrong method", method: "PUT", path: "/v2.1/servers/" + vm + "/remote-consoles", body: novnc,
			want: 405, wantKey: "badMethod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "POST"
			}
			code, m := w.do(t, method, tt.path, tt.body)
			if code != tt.want {
				t.Fatalf("status: got %d %v, want %d", code, m, tt.want)
			}
			if len(m) != 1 {
				t.Fatalf("body: got %v, want one Nova fault object", m)
			}
			if got := walk(t, m, tt.wantKey, "code"); got != float64(tt.want) {
				t.Errorf("%s.code: got %v, want %d", tt.wantKey, got, tt.want)
			}
			if msg := str(t, m, tt.wantKey, "message"); !strings.Contains(msg, tt.wantText) {
				t.Errorf("message: got %q, want it to contain %q", msg, tt.wantText)
			}
		})
	}
}

func TestEtcdOutageAnswers503ThenRecovers(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	w.mint(t, vm)

	w.etcd.Stop()
	const body = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	code, m := w.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles", body)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("etcd down: got %d %v, want 503", code, m)
	}
	if msg := str(t, m, "serviceUnavailable", "message"); msg != "the console service is temporarily unavailable" {
		t.Errorf("message: got %q, want %q", msg, "the console service is temporarily unavailable")
	}
	if code, m := w.do(t, "GET", "/healthz", ""); code != http.StatusServiceUnavailable {
		t.Errorf("healthz with etcd down: got %d %v, want 503", code, m)
	}

	if err := w.etcd.Restart(); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, m = w.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles", body)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after etcd restart: still %d %v", code, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := w.proxy.CheckToken(testworld.Ctx(t), &consoleauthv1.CheckTokenRequest{Token: tokenOf(t, str(t, m, "remote_console", "url"))}); err != nil {
		t.Errorf("check token minted after restart: %v", err)
	}
	if code, m := w.do(t, "GET", "/healthz", ""); code != http.StatusOK {
		t.Errorf("healthz after restart: got %d %v, want 200", code, m)
	}
}

func TestMintsShareLeases(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	before, err := w.cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	for range n {
		_, err := w.grpc.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{ServerId: vm,
			RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}})
		if err != nil {
			t.Fatalf("get console url: %v", err)
		}
	}
	after, err := w.cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One 60 s bucket; the 100 mints may straddle one boundary.
	if granted := len(after.Leases) - len(before.Leases); granted < 1 || granted > 2 {
		t.Errorf("leases granted for %d tokens: got %d, want 1 or 2", n, granted)
	}
}

func TestRESTRunsThroughGRPCInterceptor(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.do(t, "GET", "/v2.1/os-console-auth-tokens/"+unknownToken, "")
	var found bool
	for line := range strings.Lines(w.logs.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if rec["msg"] == "rpc" && rec["method"] == "/vncgate.consoleauth.v1.ConsoleAuthService/GetConsoleAuthToken" {
			found = true
			if _, ok := rec["duration_ms"].(float64); rec["code"] != "NotFound" || !ok {
				t.Errorf("rpc log line: got %v, want code NotFound and duration_ms", rec)
			}
		}
	}
	if !found {
		t.Errorf("no rpc log line for the REST call; logs:\n%s", w.logs.String())
	}
	if strings.Contains(w.logs.String(), unknownToken) {
		t.Errorf("logs hold the token")
	}
}

func TestHealthOpenAPIMetrics(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	w.mint(t, vm)

	if code, m := w.do(t, "GET", "/healthz", ""); code != http.StatusOK || m["status"] != "ok" {
		t.Errorf("healthz: got %d %v, want 200 {\"status\":\"ok\"}", code, m)
	}
	code, m := w.do(t, "GET", "/openapi.json", "")
	if code != http.StatusOK || m["swagger"] != "2.0" {
		t.Errorf("openapi.json: got %d, swagger %v, want 200 and 2.0", code, m["swagger"])
	}
	if _, ok := walk(t, m, "paths").(map[string]any)["/v2.1/servers/{server_id}/remote-consoles"]; !ok {
		t.Errorf("openapi.json: no remote-consoles path")
	}
	// The metrics are the admin listener's (services/consoleauth), not REST's.
	if code, _ := w.doRaw(t, "GET", "/metrics", ""); code != http.StatusNotFound {
		t.Errorf("/metrics on REST: got %d, want 404", code)
	}
	if n, err := testutil.GatherAndCount(w.srv.Metrics(), "vncgate_consoleauth_tokens_minted_total"); err != nil || n != 2 {
		t.Errorf("tokens_minted_total series: got %d (%v), want 2 (novnc and xvpvnc, from the start)", n, err)
	}
}
