package server_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// call is one method of the service, called with a request it can serve.
type call struct {
	method string // its short name, as refusals say it
	grpc   func(context.Context, consoleauthv1.ConsoleAuthServiceClient) error
	// REST route, when it has one.
	httpMethod, path, body string
}

var calls = []call{
	{method: "GetConsoleURL", grpc: func(ctx context.Context, c consoleauthv1.ConsoleAuthServiceClient) error {
		_, err := c.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{ServerId: vm,
			RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}})
		return err
	}, httpMethod: "POST", path: "/v2.1/servers/" + vm + "/remote-consoles", body: `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`},
	{method: "GetVNCConsole", grpc: func(ctx context.Context, c consoleauthv1.ConsoleAuthServiceClient) error {
		_, err := c.GetVNCConsole(ctx, &consoleauthv1.GetVNCConsoleRequest{ServerId: vm,
			OsGetVncConsole: &consoleauthv1.GetVNCConsoleAction{Type: "novnc"}})
		return err
	}, httpMethod: "POST", path: "/v2.1/servers/" + vm + "/action", body: `{"os-getVNCConsole": {"type": "novnc"}}`},
	{method: "GetConsoleAuthToken", grpc: func(ctx context.Context, c consoleauthv1.ConsoleAuthServiceClient) error {
		_, err := c.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: unknownToken})
		return err
	}, httpMethod: "GET", path: "/v2.1/os-console-auth-tokens/" + unknownToken},
	{method: "RevokeInstanceTokens", grpc: func(ctx context.Context, c consoleauthv1.ConsoleAuthServiceClient) error {
		_, err := c.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: vm})
		return err
	}, httpMethod: "DELETE", path: "/v2.1/servers/" + vm + "/console-tokens"},
	{method: "CheckToken", grpc: func(ctx context.Context, c consoleauthv1.ConsoleAuthServiceClient) error {
		_, err := c.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: unknownToken})
		return err
	}},
}

// allowed is the policy as the issue states it, written out again rather
// than read from server.Policy, so that a change to the table fails here.
var allowed = map[string][]authn.Role{
	"GetConsoleURL":        {authn.RoleAPI, authn.RoleMint},
	"GetVNCConsole":        {authn.RoleAPI, authn.RoleMint},
	"GetConsoleAuthToken":  {authn.RoleAPI},
	"RevokeInstanceTokens": {authn.RoleAPI, authn.RoleCompute, authn.RoleOperator},
	"CheckToken":           {authn.RoleProxy},
}

// TestGRPCRoles calls every method with a certificate of every role over
// real mutual TLS: allowed roles reach the service (OK, or NOT_FOUND for
// the unknown token), every other role gets PERMISSION_DENIED saying who
// may not call what, with one audit line each.
func TestGRPCRoles(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	names := map[authn.Role]string{authn.RoleAPI: "nova-api", authn.RoleMint: "horizon", authn.RoleProxy: "novnc-1",
		authn.RoleCompute: "compute-1", authn.RoleConsoleAuth: "consoleauth-2", authn.RoleOperator: "alice"}
	refusals := 0
	for _, role := range authn.Roles {
		client := w.client(t, names[role], role)
		for _, c := range calls {
			t.Run(string(role)+"/"+c.method, func(t *testing.T) {
				err := c.grpc(ctx, client)
				st := status.Convert(err)
				if slices.Contains(allowed[c.method], role) {
					if st.Code() != codes.OK && st.Code() != codes.NotFound {
						t.Errorf("got %s %q, want the call served", st.Code(), st.Message())
					}
					return
				}
				refusals++
				want := "role " + string(role) + " may not call " + c.method
				if st.Code() != codes.PermissionDenied || st.Message() != want {
					t.Errorf("got %s %q, want PermissionDenied %q", st.Code(), st.Message(), want)
				}
			})
		}
	}
	audit := auditLines(t, w)
	if len(audit) != refusals {
		t.Errorf("audit lines: got %d, want %d (one per refusal)", len(audit), refusals)
	}
	for _, a := range audit {
		if a["level"] != "WARN" || a["caller"] == "" || a["role"] == "" || a["method"] == "" || a["reason"] != "permission_denied" {
			t.Errorf("audit line %v: want level WARN, caller, role, method and reason", a)
		}
	}
}

// auditLines are the "request refused" lines of w's logs.
func auditLines(t testing.TB, w *world) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(w.logs.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "request refused" {
			out = append(out, rec)
		}
	}
	return out
}

// TestGRPCPlaintextHasNoCaller: on a plaintext (loopback) gRPC listener no
// caller is known, and every call says what to configure.
func TestGRPCPlaintextHasNoCaller(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(c *server.Config) {
		c.GRPCTLS = testworld.TLSFiles(t)
		c.GRPCTLS.CA = ""
		c.GRPCTLS.Cert = ""
		c.GRPCTLS.Key = ""
	})
	conn, err := grpc.NewClient(w.srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := consoleauthv1.NewConsoleAuthServiceClient(conn)
	for _, c := range calls {
		err := c.grpc(testworld.Ctx(t), client)
		if st := status.Convert(err); st.Code() != codes.Unauthenticated ||
			st.Message() != "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca" {
			t.Errorf("%s over plaintext: got %s %q, want Unauthenticated saying what to configure", c.method, st.Code(), st.Message())
		}
	}
}

// fault decodes a Nova fault body, {"name": {"code": N, "message": "..."}}.
func fault(t testing.TB, raw []byte) (name string, code int, msg string) {
	t.Helper()
	var m map[string]struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || len(m) != 1 {
		t.Fatalf("body %q: want one Nova fault object (%v)", raw, err)
	}
	for k, v := range m {
		return k, v.Code, v.Message
	}
	return
}

// TestRESTRoles calls every REST route with a bearer key of every role:
// allowed roles are served, others get 403 {"forbidden": ...} naming the
// role and the call.
func TestRESTRoles(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	for _, id := range keyRoles {
		for _, c := range calls {
			if c.path == "" {
				continue
			}
			t.Run(string(id.Role)+"/"+c.method, func(t *testing.T) {
				h := http.Header{"Authorization": {"Bearer " + w.keys[id.Name]}, "Content-Type": {"application/json"}}
				resp, raw := w.send(t, c.httpMethod, c.path, c.body, h)
				if slices.Contains(allowed[c.method], id.Role) {
					if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
						t.Errorf("got %d %s, want the call served", resp.StatusCode, raw)
					}
					return
				}
				name, code, msg := fault(t, raw)
				want := "role " + string(id.Role) + " may not call " + c.method
				if resp.StatusCode != http.StatusForbidden || name != "forbidden" || code != 403 || msg != want {
					t.Errorf("got %d %s, want 403 forbidden %q", resp.StatusCode, raw, want)
				}
			})
		}
	}
}

// TestRESTRefusals: what an attacker without credentials (or with a
// browser) tries, and the answer each gets.
func TestRESTRefusals(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	const mint = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	mintPath := "/v2.1/servers/" + vm + "/remote-consoles"
	introspect := "/v2.1/os-console-auth-tokens/" + unknownToken
	forged := func(role authn.Role) string {
		b, _ := json.Marshal(map[string]string{"name": "forged", "role": string(role), "via": "key"})
		return base64.StdEncoding.EncodeToString(b)
	}
	bearer := func(name string) string { return "Bearer " + w.keys[name] }
	json := "application/json"
	tests := []struct {
		name         string
		method, path string
		body         string
		h            http.Header
		want         int
		wantFault    string
		wantMsg      string
	}{
		{name: "no credentials", method: "POST", path: mintPath, body: mint, h: http.Header{"Content-Type": {json}},
			want: 401, wantFault: "unauthorized", wantMsg: "authentication required: send Authorization: Bearer KEY"},
		{name: "no credentials, introspection", method: "GET", path: introspect,
			want: 401, wantFault: "unauthorized"},
		{name: "no credentials, revocation", method: "DELETE", path: "/v2.1/servers/" + vm + "/console-tokens?reason=admin",
			want: 401, wantFault: "unauthorized"},
		{name: "unknown key", method: "POST", path: mintPath, body: mint, h: http.Header{"Content-Type": {json}, "Authorization": {"Bearer vgk_nope"}},
			want: 401, wantFault: "unauthorized", wantMsg: "unknown bearer key"},
		{name: "other scheme", method: "POST", path: mintPath, body: mint, h: http.Header{"Content-Type": {json}, "Authorization": {"Basic YTpi"}},
			want: 401, wantFault: "unauthorized", wantMsg: `Authorization scheme "Basic" not accepted`},
		{name: "forged gateway identity, no credentials", method: "GET", path: introspect,
			h:    http.Header{"Grpc-Metadata-X-Vncgate-Identity-Bin": {forged(authn.RoleAPI)}, "Grpc-Metadata-X-Vncgate-Gateway-Secret": {"guess"}},
			want: 401, wantFault: "unauthorized"},
		{name: "forged gateway identity over a mint key", method: "GET", path: introspect,
			h: http.Header{"Authorization": {bearer("horizon")}, "Grpc-Metadata-X-Vncgate-Identity-Bin": {forged(authn.RoleAPI)},
				"Grpc-Metadata-X-Vncgate-Gateway-Secret": {"guess"}, "X-Vncgate-Identity-Bin": {forged(authn.RoleAPI)}},
			want: 403, wantFault: "forbidden", wantMsg: "role mint may not call GetConsoleAuthToken"},
		{name: "DNS rebinding: Host evil.example", method: "POST", path: mintPath, body: mint,
			h:    http.Header{"Content-Type": {json}, "Authorization": {bearer("nova-api")}, "Host": {"evil.example"}},
			want: 400, wantFault: "badRequest", wantMsg: `Host "evil.example" is not a name of this API`},
		{name: "Host localhost with a port", method: "POST", path: mintPath, body: mint,
			h:    http.Header{"Content-Type": {json}, "Authorization": {bearer("nova-api")}, "Host": {"localhost:6091"}},
			want: 200},
		{name: "text/plain POST", method: "POST", path: mintPath, body: mint,
			h:    http.Header{"Content-Type": {"text/plain"}, "Authorization": {bearer("nova-api")}},
			want: 415, wantFault: "badMediaType", wantMsg: `Content-Type "text/plain" not accepted: send application/json`},
		{name: "form POST", method: "POST", path: mintPath, body: "remote_console=x",
			h:    http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Authorization": {bearer("nova-api")}},
			want: 415, wantFault: "badMediaType"},
		{name: "POST without Content-Type", method: "POST", path: mintPath, body: mint, h: http.Header{"Authorization": {bearer("nova-api")}},
			want: 415, wantFault: "badMediaType"},
		{name: "JSON with a charset", method: "POST", path: mintPath, body: mint,
			h: http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Authorization": {bearer("nova-api")}}, want: 200},
		{name: "metrics need a caller", method: "GET", path: "/metrics", want: 401, wantFault: "unauthorized"},
		{name: "metrics are on the admin listener, not here", method: "GET", path: "/metrics", h: http.Header{"Authorization": {bearer("novnc")}}, want: 404},
		{name: "healthz is open", method: "GET", path: "/healthz", want: 200},
		{name: "openapi.json is open", method: "GET", path: "/openapi.json", want: 200},
		{name: "head too large", method: "GET", path: introspect,
			h: http.Header{"Authorization": {bearer("nova-api")}, "X-Padding": {strings.Repeat("p", 32<<10)}}, want: 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, raw := w.send(t, tt.method, tt.path, tt.body, tt.h)
			if resp.StatusCode != tt.want {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, raw, tt.want)
			}
			if tt.wantFault != "" {
				name, code, msg := fault(t, raw)
				if name != tt.wantFault || code != tt.want || !strings.HasPrefix(msg, tt.wantMsg) {
					t.Errorf("got %s %d %q, want %s %d %q…", name, code, msg, tt.wantFault, tt.want, tt.wantMsg)
				}
			}
			if challenge := resp.Header.Get("WWW-Authenticate"); (tt.want == 401) != (challenge == `Bearer realm="vncgate"`) {
				t.Errorf("WWW-Authenticate: got %q with status %d", challenge, tt.want)
			}
		})
	}
	logs := w.logs.String()
	for _, key := range w.keys {
		if strings.Contains(logs, key) {
			t.Fatal("a bearer key is in the logs")
		}
	}
	var reasons []string
	for _, a := range auditLines(t, w) {
		reasons = append(reasons, a["reason"].(string))
	}
	for _, want := range []string{"unauthenticated", "permission_denied", "host_not_allowed", "bad_media_type"} {
		if !slices.Contains(reasons, want) {
			t.Errorf("no audit line with reason %s; got %q", want, reasons)
		}
	}
}

// TestRESTKeyReload: a key added to api_keys_file works without a restart.
func TestRESTKeyReload(t *testing.T) {
	t.Parallel()
	var keysFile string
	w := newWorld(t, func(c *server.Config) { keysFile = c.APIKeysFile })
	key, line, err := authn.NewKey("late-comer", authn.RoleAPI)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"Authorization": {"Bearer " + key}}
	// An unknown token's introspection: 401 before the key is known, 404 after.
	probe := "/v2.1/os-console-auth-tokens/" + unknownToken
	if resp, _ := w.send(t, "GET", probe, "", h); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a key not yet in the file: got %d, want 401", resp.StatusCode)
	}
	old, err := os.ReadFile(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keysFile+".new", append(old, line+"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(keysFile+".new", keysFile); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second) // bounds a hang: the file is read again within a second
	for {
		resp, raw := w.send(t, "GET", probe, "", h)
		if resp.StatusCode == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key added to the file: still %d %s", resp.StatusCode, raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fakeKeystone stands for Keystone: a token's text says what it is.
type fakeKeystone struct{}

func (fakeKeystone) Validate(_ context.Context, token string) (authn.KeystoneToken, error) {
	switch token {
	case "admin-token":
		return authn.KeystoneToken{User: "admin", Project: "admin", Roles: []string{"admin", "member", "reader"}}, nil
	case "member-token":
		return authn.KeystoneToken{User: "demo", Project: "demo", Roles: []string{"member", "reader"}}, nil
	case "reader-token":
		return authn.KeystoneToken{User: "auditor", Project: "demo", Roles: []string{"reader"}}, nil
	case "keystone-down":
		return authn.KeystoneToken{}, errors.New("dial tcp 127.0.0.1:5000: connection refused: " + authn.ErrKeystoneUnavailable.Error())
	}
	return authn.KeystoneToken{}, authn.ErrInvalidToken
}

// TestRESTKeystone: with rest_auth = keystone, X-Auth-Token is checked as
// Nova's policy does (admin introspects and revokes, members mint), a
// refused token is 401 and Keystone being down is 503, not 401.
func TestRESTKeystone(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(c *server.Config) {
		c.RESTAuth, c.TokenValidator = "keystone", fakeKeystone{}
		c.Keystone.AuthURL = "http://127.0.0.1:5000/v3"
	})
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	const mint = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	mintPath := "/v2.1/servers/" + vm + "/remote-consoles"
	introspect := "/v2.1/os-console-auth-tokens/" + unknownToken
	tests := []struct {
		name, token, method, path, body string
		want                            int
	}{
		{"admin mints", "admin-token", "POST", mintPath, mint, 200},
		{"admin introspects", "admin-token", "GET", introspect, "", 404},
		{"admin revokes", "admin-token", "DELETE", "/v2.1/servers/" + vm + "/console-tokens", "", 200},
		{"member mints", "member-token", "POST", mintPath, mint, 200},
		{"member may not introspect", "member-token", "GET", introspect, "", 403},
		{"member may not revoke", "member-token", "DELETE", "/v2.1/servers/" + vm + "/console-tokens", "", 403},
		{"reader may do nothing", "reader-token", "POST", mintPath, mint, 403},
		{"refused token", "expired-token", "POST", mintPath, mint, 401},
		{"Keystone down", "keystone-down", "POST", mintPath, mint, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"X-Auth-Token": {tt.token}, "Content-Type": {"application/json"}}
			resp, raw := w.send(t, tt.method, tt.path, tt.body, h)
			if resp.StatusCode != tt.want {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, raw, tt.want)
			}
			if tt.want == 401 && !slices.Contains(resp.Header.Values("WWW-Authenticate"), `Keystone uri="http://127.0.0.1:5000/v3"`) {
				t.Errorf("WWW-Authenticate: got %q, want Keystone's uri", resp.Header.Values("WWW-Authenticate"))
			}
		})
	}
	// Bearer keys still work beside Keystone.
	if code, m := w.do(t, "GET", introspect, ""); code != http.StatusNotFound {
		t.Errorf("bearer key with rest_auth = keystone: got %d %v, want 404", code, m)
	}
	if strings.Contains(w.logs.String(), "member-token") {
		t.Error("a Keystone token is in the logs")
	}
}

// TestStartRefusals: consoleauth does not start with settings that would
// leave it open or unusable, and says what to set.
func TestStartRefusals(t *testing.T) {
	t.Parallel()
	pki := testworld.NewPKI(t)
	keysFile, _ := testworld.KeysFile(t, authn.Identity{Name: "nova-api", Role: authn.RoleAPI})
	broken := keysFile + ".broken"
	if err := os.WriteFile(broken, []byte("nova-api api not-a-hash\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	grpcTLS := pki.Files(t, "consoleauth-1", authn.RoleConsoleAuth)
	base := func() server.Config {
		return server.Config{GRPCListen: "127.0.0.1:0", RESTListen: "127.0.0.1:0", EtcdEndpoints: []string{"127.0.0.1:1"},
			TokenTTL: time.Minute, NoVNCBaseURL: "http://127.0.0.1:6080/vnc_lite.html", XVPBaseURL: "http://127.0.0.1:6081/console",
			GRPCTLS: grpcTLS, APIKeysFile: keysFile}
	}
	tests := []struct {
		name string
		edit func(*server.Config)
		want string // "" starts
	}{
		{"loopback", func(*server.Config) {}, ""},
		{"gRPC plaintext on all interfaces", func(c *server.Config) { c.GRPCTLS, c.GRPCListen = tlsconfig.Files{}, "0.0.0.0:0" },
			"grpc_listen 0.0.0.0:0: plaintext off loopback; configure TLS for it, or set [vncgate] allow_plaintext = true"},
		{"REST plaintext on all interfaces", func(c *server.Config) { c.RESTListen = "0.0.0.0:0" }, "rest_listen 0.0.0.0:0: plaintext off loopback"},
		{"REST plaintext on all interfaces, allowed", func(c *server.Config) { c.RESTListen, c.AllowPlaintext = "0.0.0.0:0", true }, ""},
		{"gRPC TLS on all interfaces", func(c *server.Config) { c.GRPCListen = "0.0.0.0:0" }, ""},
		{"no way to authenticate REST", func(c *server.Config) { c.APIKeysFile = "" }, "the REST API has no way to authenticate callers"},
		{"broken key file", func(c *server.Config) { c.APIKeysFile = broken }, "key hash of nova-api: want 64 hex digits"},
		{"missing key file", func(c *server.Config) { c.APIKeysFile = keysFile + ".missing" }, "no such file"},
		{"unknown rest_auth", func(c *server.Config) { c.RESTAuth = "ldap" }, `rest_auth "ldap": want keys or keystone`},
		{"unknown role source", func(c *server.Config) { c.CertRoleSource = "ou" }, `cert_role_source "ou": want san or subject`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.edit(&cfg)
			srv, err := server.Start(testworld.Ctx(t), cfg, slogDiscard())
			if err == nil {
				_ = srv.Shutdown()
			}
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
}

// TestGRPCMessageCap: a request larger than 64 KiB is refused before any
// handler (or log line) sees it.
func TestGRPCMessageCap(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	_, err := w.grpc.GetConsoleURL(testworld.Ctx(t), &consoleauthv1.GetConsoleURLRequest{ServerId: strings.Repeat("x", 100<<10),
		RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("100 KiB request: got %v, want ResourceExhausted", err)
	}
	if strings.Contains(w.logs.String(), strings.Repeat("x", 1000)) {
		t.Error("the oversized id reached the logs")
	}
}

// TestRESTWildcardHosts: with rest_listen on all interfaces and no
// rest_allowed_hosts, a caller with a certificate may use any Host name
// (a DNS-rebinding page cannot present one); a bearer key only a loopback
// name. rest_allowed_hosts names the others, for every caller.
func TestRESTWildcardHosts(t *testing.T) {
	t.Parallel()
	for _, allowed := range [][]string{nil, {"consoleauth.example"}} {
		var pki *testworld.PKI
		w := newWorld(t, func(c *server.Config) {
			pki = testworld.NewPKI(t)
			c.RESTTLS = pki.Files(t, "consoleauth-rest", authn.RoleConsoleAuth)
			c.RESTListen, c.RESTAllowedHosts = "0.0.0.0:0", allowed
		})
		_, port, _ := strings.Cut(w.srv.RESTAddr(), "]:")
		base := "https://127.0.0.1:" + port
		withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.TLS(t, "nova-api", authn.RoleAPI)}}
		noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.CA.Pool()}}}
		tests := []struct {
			name   string
			client *http.Client
			host   string
			bearer bool
			want   int
		}{
			// 404: let in, to introspect an unknown token.
			{"certificate, any name", withCert, "anything.example", false, map[bool]int{true: 400, false: 404}[allowed != nil]},
			{"bearer key, loopback", noCert, "127.0.0.1:" + port, true, http.StatusNotFound},
			{"bearer key, the allowed name", noCert, "consoleauth.example", true, map[bool]int{true: 404, false: 400}[allowed != nil]},
			{"bearer key, another name", noCert, "evil.example", true, http.StatusBadRequest},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%v/%s", allowed, tt.name), func(t *testing.T) {
				req, err := http.NewRequest("GET", base+"/v2.1/os-console-auth-tokens/"+unknownToken, nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = tt.host
				if tt.bearer {
					req.Header.Set("Authorization", "Bearer "+w.keys["nova-api"])
				}
				resp, err := tt.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tt.want {
					t.Errorf("got %d, want %d", resp.StatusCode, tt.want)
				}
			})
		}
	}
}
