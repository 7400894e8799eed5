package e2e

// The attack suite: every finding of issue 10 ("Security by default"),
// replayed as the attacker did against the services as separate processes
// of the devstack world, with the answer the fix must give. Each subtest is
// named after the finding it replays.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// Instances of the attack world besides the demo VM, all on the devstack's
// one compute host: own is a VNC server of its own (revoked by the tests
// without touching the demo VM's sessions); closing is a VNC server that
// hangs up when a test says so.
const (
	attackOwnUUID     = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
	attackClosingUUID = "9b2e4f1a-6c3d-4e8f-a1b2-c3d4e5f6a7b8"
)

// maxLogLine is the longest log line any service may write, however long
// what a caller sent: "a few KB".
const maxLogLine = 4 << 10

// phishing is a revocation reason of the caller's choosing, as finding 1
// sent it: the console page must never show it.
const phishing = "Your session expired. Log in again at https://evil.example/login"

// TestAttacks replays issue 10's findings against a devstack world without
// public TLS (the default of `make run`); TestAttacksTLS replays those that
// need TLS on the proxies.
func TestAttacks(t *testing.T) {
	requireNoVNCLibrary(t)
	raiseFileLimit(t, 2*idleConns+1000)
	own := rfb.NewServer(rfb.Options{Width: 320, Height: 200, Name: "attack own VM"})
	ownL := listenLoopback(t)
	go own.Serve(ownL)
	t.Cleanup(func() { own.Close() })
	closing := newClosingVNC(t)
	w := devstacktest.Start(t, devstack.Options{
		Instances: []devstack.Instance{
			{UUID: attackOwnUUID, VNCHost: "127.0.0.1", VNCPort: portOf(ownL.Addr()), State: "running"},
			{UUID: attackClosingUUID, VNCHost: "127.0.0.1", VNCPort: portOf(closing.l.Addr()), State: "running"},
		},
		Args: map[string][]string{
			devstack.NoVNCProxy: {"--failed_token_limit=3"},
			devstack.XVPProxy: {"--failed_token_limit=3", "--max_connections_per_client=" + strconv.Itoa(xvpPerClient),
				"--trusted_proxies=" + loadBalancer},
		},
	})
	var minted tokenLog // every token the suite got, none of which may be logged
	mint := func(t *testing.T, uuid, consoleType string) string {
		t.Helper()
		u := consoleURLOf(t, w, uuid, consoleType)
		minted.add(tokenOf(t, u))
		return u
	}
	restURL := func(path string) string { return w.RESTURL() + path }
	remoteConsoles := restURL("/v2.1/servers/" + attackOwnUUID + "/remote-consoles")
	const mintBody = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`

	// Finding 1: anyone who can reach consoleauth owns every console.
	t.Run("finding 1: unauthenticated REST", func(t *testing.T) {
		token := tokenOf(t, mint(t, attackOwnUUID, "novnc"))
		tests := []struct {
			name, method, path, body string
		}{
			{"mint", http.MethodPost, "/v2.1/servers/" + attackOwnUUID + "/remote-consoles", mintBody},
			{"mint (legacy action)", http.MethodPost, "/v2.1/servers/" + attackOwnUUID + "/action", `{"os-getVNCConsole": {"type": "novnc"}}`},
			{"introspect", http.MethodGet, "/v2.1/os-console-auth-tokens/" + token, ""},
			{"revoke", http.MethodDelete, "/v2.1/servers/" + attackOwnUUID + "/console-tokens", ""},
		}
		for _, tc := range tests {
			for _, cred := range []struct{ name, header string }{
				{"no credentials", ""},
				{"a wrong key", "Bearer " + strings.Repeat("0", 47)},
				{"a key in the wrong scheme", "Basic " + w.APIKey},
			} {
				t.Run(tc.name+" with "+cred.name, func(t *testing.T) {
					req := restRequest(t, tc.method, restURL(tc.path), tc.body)
					if cred.header != "" {
						req.Header.Set("Authorization", cred.header)
					}
					code, body := restDo(t, w.HTTPClient(), req)
					if code != http.StatusUnauthorized {
						t.Fatalf("got %d %s, want 401", code, body)
					}
					if strings.Contains(body, "token=") || strings.Contains(body, "token%3D") || strings.Contains(body, `"port"`) {
						t.Fatalf("401 body gives something away: %s", body)
					}
				})
			}
		}
		// Nothing was revoked: the token still checks.
		checkTokenOK(t, w, token, "novnc")
	})

	t.Run("finding 1: REST revocation reason of the caller's choosing", func(t *testing.T) {
		live, nc := novncConsole(t, mint(t, attackOwnUUID, "novnc"))
		si, _ := rfbView(t, "session before the revocations", nc)
		for _, reason := range []string{phishing, "the instance was stopped", strings.Repeat("R", 2<<10), strings.Repeat("R", 60<<10)} {
			req := restRequest(t, http.MethodDelete, restURL("/v2.1/servers/"+attackOwnUUID+"/console-tokens?reason="+url.QueryEscape(reason)), "")
			code, body := restDo(t, w.RESTClient(), req)
			if !refusedInput(code, len(reason)) {
				t.Fatalf("reason %.40q (%d bytes): got %d %.300s, want 400 (or 414/431 past the request head cap)", reason, len(reason), code, body)
			}
			if len(body) > 1024 || strings.Contains(body, "evil.example") || strings.Contains(body, "RRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRR") {
				t.Fatalf("reason %.40q: the 400 echoes it: %.300s", reason, body)
			}
		}
		// The session lived through the refused revocations.
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := rfb.RequestUpdate(nc, si, false); err != nil {
			t.Fatalf("session after refused revocations: %v", err)
		}
		if _, err := rfb.ReadUpdate(nc, si); err != nil {
			t.Fatalf("session after refused revocations: %v", err)
		}
		// A code is accepted, and users read its sentence.
		revokeREST(t, w, attackOwnUUID, "stopped")
		sentence := registry.RevocationReasons["stopped"]
		if ce := wsclose.Read(t, live); ce.Code != novncRevoked || !strings.Contains(ce.Reason, sentence) {
			t.Fatalf("got close %d %q, want %d with the sentence %q", ce.Code, ce.Reason, novncRevoked, sentence)
		}
	})

	t.Run("finding 1: DNS rebinding and cross-site REST calls", func(t *testing.T) {
		tests := []struct {
			name        string
			host        string
			contentType string
		}{
			{"Host: evil.example", "evil.example", "application/json"},
			{"Host: evil.example with the REST port", "evil.example:" + strconv.Itoa(w.Ports.ConsoleAuthREST), "application/json"},
			{"Content-Type: text/plain", "", "text/plain"},
			{"Content-Type: application/x-www-form-urlencoded", "", "application/x-www-form-urlencoded"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				req := restRequest(t, http.MethodPost, remoteConsoles, mintBody)
				req.Header.Set("Content-Type", tc.contentType)
				if tc.host != "" {
					req.Host = tc.host
				}
				code, body := restDo(t, w.RESTClient(), req)
				if code < 400 || code > 499 || strings.Contains(body, "token=") || strings.Contains(body, "token%3D") {
					t.Fatalf("got %d %s, want a 4xx refusal without a console URL", code, body)
				}
				t.Logf("refused with %d %s", code, body)
			})
		}
	})

	t.Run("finding 1: plaintext off loopback refused at start", func(t *testing.T) {
		// Each service as the finding found it: its defaults, listening on
		// every interface (0.0.0.0) without TLS; ports are free ones.
		free := func() string {
			l, err := net.Listen("tcp", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			return strconv.Itoa(portOf(l.Addr()))
		}
		etcd := "--etcd_endpoints=" + w.Etcd.Endpoint
		for _, tc := range []struct {
			service string
			args    []string
		}{
			{devstack.ConsoleAuth, []string{"--grpc_listen=0.0.0.0:" + free(), "--rest_listen=0.0.0.0:" + free(), etcd, "--api_keys_file=" + w.APIKeysFile}},
			{devstack.ComputeAgent, []string{"--grpc_listen=0.0.0.0:" + free(), etcd, "--host=plaintext-compute", "--driver=static",
				"--inventory_file=" + filepath.Join(w.Dir, "inventory.json"), "--consoleauth_address=" + w.Addr(w.Ports.ConsoleAuthGRPC)}},
			{devstack.NoVNCProxy, []string{"--novncproxy_host=0.0.0.0", "--novncproxy_port=" + free(), etcd}},
			{devstack.XVPProxy, []string{"--xvpvncproxy_host=0.0.0.0", "--xvpvncproxy_port=" + free(), etcd}},
		} {
			t.Run(tc.service, func(t *testing.T) {
				out, err := runUntilExit(t, tc.service, tc.args...)
				if err == nil || !strings.Contains(out, "allow_plaintext") {
					t.Fatalf("%s in plaintext on 0.0.0.0: exit %v, output:\n%s\nwant it to refuse to start, naming allow_plaintext", tc.service, err, out)
				}
			})
		}
	})

	// With mTLS on, any certificate of the CA could call every method.
	t.Run("finding 1: gRPC without a certificate", func(t *testing.T) {
		other, err := certs.NewCA("another CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		foreign, err := other.IssueIdentity(certs.Identity{Name: devstack.APIName, Role: string(authn.RoleAPI)}, "localhost")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name  string
			creds credentials.TransportCredentials
		}{
			{"plaintext", insecure.NewCredentials()},
			{"TLS without a client certificate", credentials.NewTLS(&tls.Config{RootCAs: w.CAPool(), MinVersion: tls.VersionTLS12})},
			{"a certificate from another CA", credentials.NewTLS(&tls.Config{RootCAs: w.CAPool(), Certificates: []tls.Certificate{foreign}, MinVersion: tls.VersionTLS12})},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := bounded(t)
				_, err := consoleauthv1.NewConsoleAuthServiceClient(grpcConn(t, w.Addr(w.Ports.ConsoleAuthGRPC), tc.creds)).
					GetConsoleURL(ctx, getConsoleURL(attackOwnUUID))
				checkGRPC(t, "consoleauth GetConsoleURL", err, false)
				// compute-agent's gRPC told any caller the VNC address of any instance.
				_, err = computeagentv1.NewComputeAgentServiceClient(grpcConn(t, w.Addr(w.Ports.ComputeAgent), tc.creds)).
					GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: attackOwnUUID, ConsoleType: "novnc"})
				checkGRPC(t, "compute-agent GetConsole", err, false)
			})
		}
	})

	t.Run("finding 1: a certificate without a role", func(t *testing.T) {
		cfg, err := w.ClientTLS("", "no-role")
		if err != nil {
			t.Fatal(err)
		}
		ctx := bounded(t)
		_, err = consoleauthv1.NewConsoleAuthServiceClient(grpcConn(t, w.Addr(w.Ports.ConsoleAuthGRPC), credentials.NewTLS(cfg))).
			CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: "x", ConsoleType: "novnc"})
		wantCode(t, "consoleauth CheckToken", err, codes.Unauthenticated)
		_, err = computeagentv1.NewComputeAgentServiceClient(grpcConn(t, w.Addr(w.Ports.ComputeAgent), credentials.NewTLS(cfg))).
			GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: attackOwnUUID, ConsoleType: "novnc"})
		wantCode(t, "compute-agent GetConsole", err, codes.Unauthenticated)
	})

	t.Run("finding 1: a compute agent's certificate cannot mint or read tokens", func(t *testing.T) {
		token := tokenOf(t, mint(t, attackOwnUUID, "novnc"))
		ca := consoleAuthAs(t, w, authn.RoleCompute, devstack.ComputeHost)
		ctx := bounded(t)
		_, err := ca.GetConsoleURL(ctx, getConsoleURL(attackOwnUUID))
		wantCode(t, "GetConsoleURL", err, codes.PermissionDenied)
		_, err = ca.GetVNCConsole(ctx, &consoleauthv1.GetVNCConsoleRequest{ServerId: attackOwnUUID,
			OsGetVncConsole: &consoleauthv1.GetVNCConsoleAction{Type: "novnc"}})
		wantCode(t, "GetVNCConsole", err, codes.PermissionDenied)
		_, err = ca.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
		wantCode(t, "GetConsoleAuthToken", err, codes.PermissionDenied)
		_, err = ca.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
		wantCode(t, "CheckToken", err, codes.PermissionDenied)
	})

	t.Run("finding 1: a compute agent's certificate cannot revoke another host's instance", func(t *testing.T) {
		token := tokenOf(t, mint(t, attackOwnUUID, "novnc"))
		ctx := bounded(t)
		revoke := &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: attackOwnUUID, Reason: "deleted"}
		_, err := consoleAuthAs(t, w, authn.RoleCompute, "other-compute").RevokeInstanceTokens(ctx, revoke)
		wantCode(t, "RevokeInstanceTokens by another host", err, codes.PermissionDenied)
		checkTokenOK(t, w, token, "novnc")
		// The instance's own host may.
		if _, err := consoleAuthAs(t, w, authn.RoleCompute, devstack.ComputeHost).RevokeInstanceTokens(ctx, revoke); err != nil {
			t.Fatalf("RevokeInstanceTokens by the instance's own host: %v", err)
		}
		_, err = consoleAuthClient(t, w).CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
		wantCode(t, "CheckToken after its host revoked", err, codes.NotFound)
	})

	t.Run("finding 1: a proxy's certificate can only check tokens", func(t *testing.T) {
		token := tokenOf(t, mint(t, attackOwnUUID, "novnc"))
		ca := consoleAuthClient(t, w)
		ctx := bounded(t)
		_, err := ca.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: attackOwnUUID, Reason: "deleted"})
		wantCode(t, "RevokeInstanceTokens", err, codes.PermissionDenied)
		_, err = ca.GetConsoleURL(ctx, getConsoleURL(attackOwnUUID))
		wantCode(t, "GetConsoleURL", err, codes.PermissionDenied)
		_, err = ca.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
		wantCode(t, "GetConsoleAuthToken", err, codes.PermissionDenied)
		checkTokenOK(t, w, token, "novnc") // what a proxy may do, and the revocation did not happen
	})

	t.Run("finding 1: compute-agent only answers consoleauth", func(t *testing.T) {
		ctx := bounded(t)
		get := &computeagentv1.GetConsoleRequest{InstanceUuid: attackOwnUUID, ConsoleType: "novnc"}
		validate := &computeagentv1.ValidateConsolePortRequest{InstanceUuid: attackOwnUUID, ConsoleType: "novnc",
			Host: "127.0.0.1", Port: int32(portOf(ownL.Addr()))}
		for _, caller := range []struct {
			role authn.Role
			name string
		}{
			{authn.RoleProxy, "novnc-proxy"},
			{authn.RoleCompute, "other-compute"},
			{authn.RoleAPI, devstack.APIName},
		} {
			agent := computeagentv1.NewComputeAgentServiceClient(grpcAs(t, w, w.Addr(w.Ports.ComputeAgent), caller.role, caller.name))
			_, err := agent.GetConsole(ctx, get)
			wantCode(t, "GetConsole as "+string(caller.role), err, codes.PermissionDenied)
			_, err = agent.ValidateConsolePort(ctx, validate)
			wantCode(t, "ValidateConsolePort as "+string(caller.role), err, codes.PermissionDenied)
		}
		agent := computeagentv1.NewComputeAgentServiceClient(grpcAs(t, w, w.Addr(w.Ports.ComputeAgent), authn.RoleConsoleAuth, "consoleauth"))
		resp, err := agent.GetConsole(ctx, get)
		if err != nil || int(resp.GetPort()) != portOf(ownL.Addr()) {
			t.Fatalf("GetConsole as consoleauth: got %v, %v; want the instance's port %d", resp, err, portOf(ownL.Addr()))
		}
	})

	// Finding 4: unbounded input reached logs and error bodies.
	t.Run("finding 4: a 60 KB server_id over REST", func(t *testing.T) {
		// 2 KB fits in the request head and reaches the id's check; 60 KB
		// may be refused earlier, by the cap on the request head.
		for _, size := range []int{2 << 10, 60 << 10} {
			id := strings.Repeat("A", size)
			for _, path := range []string{"/v2.1/servers/" + id + "/remote-consoles", "/v2.1/servers/" + id + "/action", "/v2.1/servers/" + id + "/console-tokens", "/v2.1/os-console-auth-tokens/" + id} {
				method, body := http.MethodPost, mintBody
				switch {
				case strings.HasSuffix(path, "/action"):
					body = `{"os-getVNCConsole": {"type": "novnc"}}`
				case strings.HasSuffix(path, "/console-tokens"):
					method, body = http.MethodDelete, ""
				case strings.HasPrefix(path, "/v2.1/os-console-auth-tokens/"):
					method, body = http.MethodGet, ""
				}
				code, got := restDo(t, w.RESTClient(), restRequest(t, method, restURL(path), body))
				if !refusedInput(code, size) {
					t.Errorf("%s %.40s… (%d-byte id): got %d %.200s, want 400 (or 414/431 past the request head cap)", method, path, size, code, got)
				}
				if len(got) > 1024 || strings.Contains(got, strings.Repeat("A", 64)) {
					t.Errorf("%s %.40s… (%d-byte id): the answer echoes the id (%d bytes): %.200s", method, path, size, len(got), got)
				}
			}
		}
		// Not a UUID in Nova's format, however short.
		code, got := restDo(t, w.RESTClient(), restRequest(t, http.MethodPost, restURL("/v2.1/servers/not-a-uuid/remote-consoles"), mintBody))
		if code != http.StatusBadRequest || !strings.Contains(got, "server_id") {
			t.Errorf("server_id not-a-uuid: got %d %s, want 400 naming server_id", code, got)
		}
	})

	t.Run("finding 4: a 60 KB and a 2 MiB server_id over gRPC", func(t *testing.T) {
		ca := consoleAuthAPI(t, w)
		for _, size := range []int{60 << 10, 2 << 20} {
			ctx := bounded(t)
			id := strings.Repeat("B", size)
			_, err := ca.GetConsoleURL(ctx, getConsoleURL(id))
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.ResourceExhausted {
				t.Errorf("%d-byte server_id: got %v, want InvalidArgument (or ResourceExhausted past the message cap)", size, err)
			}
			if msg := status.Convert(err).Message(); len(msg) > 1024 {
				t.Errorf("%d-byte server_id: the error message echoes it (%d bytes)", size, len(msg))
			}
			_, err = ca.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: attackOwnUUID, Reason: id})
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.ResourceExhausted {
				t.Errorf("%d-byte reason: got %v, want InvalidArgument (or ResourceExhausted past the message cap)", size, err)
			}
		}
	})

	// Finding 5: trust in shared state.
	t.Run("finding 5: a token record planted without a lease", func(t *testing.T) {
		token := strings.Repeat("P", 43) // the form of a real token: 43 base64url characters
		rec, _ := json.Marshal(registry.Token{InstanceUUID: attackOwnUUID, ConsoleType: "novnc", ComputeHost: devstack.ComputeHost,
			Host: "127.0.0.1", Port: int32(portOf(ownL.Addr())), CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
		ctx := bounded(t)
		if _, err := w.Client.Put(ctx, registry.TokenKey(registry.TokenHash(token)), string(rec)); err != nil {
			t.Fatal(err)
		}
		_, err := consoleAuthClient(t, w).CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
		wantCode(t, "CheckToken of the planted token", err, codes.NotFound)
		wsURL := "ws://" + w.Addr(w.Ports.NoVNC) + "/websockify?token=" + url.QueryEscape(token)
		if ce := wsclose.Read(t, novncDial(t, wsURL, "http://"+w.Addr(w.Ports.NoVNC))); ce.Code != novncTokenInvalid {
			t.Fatalf("novnc-proxy with the planted token: got close %d %q, want %d", ce.Code, ce.Reason, novncTokenInvalid)
		}
	})

	t.Run("finding 5: another host's claim on an instance", func(t *testing.T) {
		// What a compute agent could write before: the instance's location
		// key, and now a claim under its own host.
		ctx := bounded(t)
		loc, _ := json.Marshal(registry.Location{ComputeHost: "evil-compute"})
		for _, key := range []string{registry.InstancesPrefix + attackOwnUUID + "/location", registry.ComputeInstanceKey("evil-compute", attackOwnUUID)} {
			prev, err := w.Client.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			// Put back what was there, so later subtests find the instance.
			t.Cleanup(func() {
				if len(prev.Kvs) == 1 {
					w.Client.Put(context.Background(), key, string(prev.Kvs[0].Value))
				} else {
					w.Client.Delete(context.Background(), key)
				}
			})
			if _, err := w.Client.Put(ctx, key, string(loc)); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := consoleAuthClient(t, w).CheckToken(ctx, &consoleauthv1.CheckTokenRequest{
			Token: tokenOf(t, mint(t, attackOwnUUID, "novnc")), ConsoleType: "novnc"})
		if err != nil {
			t.Fatalf("CheckToken: %v", err)
		}
		if got := resp.GetConnectInfo().GetComputeHost(); got != devstack.ComputeHost {
			t.Fatalf("token minted for host %q, want its true host %q (the oldest claim)", got, devstack.ComputeHost)
		}
	})

	// Finding 6, smaller ones.
	t.Run("finding 6: Origin with a wrong port", func(t *testing.T) {
		wsURL, origin := novncWSURL(t, mint(t, attackOwnUUID, "novnc"))
		for _, bad := range []string{
			"http://127.0.0.1:1",
			strings.Replace(origin, "http://", "https://", 1),
			"http://127.0.0.1",
		} {
			code := novncRefusal(t, wsURL, bad, "")
			if code != http.StatusForbidden {
				t.Errorf("Origin %s (page at %s): got HTTP %d, want 403 before the upgrade", bad, origin, code)
			}
		}
	})

	t.Run("finding 6: Origin checked before the token", func(t *testing.T) {
		// A bad token from a foreign page is refused for its Origin (403),
		// so a cross-site page learns nothing about tokens and uses none up.
		wsURL := "ws://" + w.Addr(w.Ports.NoVNC) + "/websockify?token=not-a-token"
		if code := novncRefusal(t, wsURL, "http://evil.example", ""); code != http.StatusForbidden {
			t.Fatalf("bad token with a foreign Origin: got HTTP %d, want 403 before any token check", code)
		}
	})

	t.Run("finding 6: an xvp session ends when the VNC server closes", func(t *testing.T) {
		c := xvpSession(t, mint(t, attackClosingUUID, "xvpvnc"))
		version := make([]byte, 12)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, version); err != nil || !bytes.HasPrefix(version, []byte("RFB ")) {
			t.Fatalf("first bytes through xvp-proxy: %q, %v", version, err)
		}
		client, proxy := c.LocalAddr().String(), c.RemoteAddr().String()
		pid := w.Proc(devstack.XVPProxy).Pid
		if !holdsConn(t, pid, proxy, client) {
			t.Fatalf("xvp-proxy (pid %d) holds no socket for the client %s", pid, client)
		}
		closing.hangUp()
		// The client sends nothing: only the proxy can end the session.
		c.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a hang
		if n, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("after the VNC server closed: read %d bytes, then %v; want EOF", n, err)
		}
		deadline := time.Now().Add(30 * time.Second) // bounds a hang
		for holdsConn(t, pid, proxy, client) {
			if time.Now().After(deadline) {
				t.Fatalf("xvp-proxy still holds the client's socket 30 s after the VNC server closed")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// Finding 2: one failed-token limit locked out everyone behind an address.
	t.Run("finding 2: a throttled address still connects with a valid token", func(t *testing.T) {
		const addr = "127.0.0.2" // its own address: throttling it leaves the rest of the suite alone
		novnc, xvp := w.Addr(w.Ports.NoVNC), w.Addr(w.Ports.XVP)
		for i := range 4 { // past the limit of 3
			ce := wsclose.Read(t, novncDialFrom(t, addr, "ws://"+novnc+"/websockify?token=guessguessguessguess", "http://"+novnc))
			if ce.Code != novncTokenInvalid && ce.Code != novncThrottled {
				t.Fatalf("novnc guess %d: got close %d %q, want %d or %d", i, ce.Code, ce.Reason, novncTokenInvalid, novncThrottled)
			}
			got := xvpRawFrom(t, addr, xvp, "CONNECT /console?token=guessguessguessguess HTTP/1.1\r\n\r\n")
			if !strings.HasPrefix(got, "HTTP/1.1 401 ") && !strings.HasPrefix(got, "HTTP/1.1 429 ") {
				t.Fatalf("xvp guess %d: got %q, want 401 or 429", i, got)
			}
		}
		wsURL, origin := novncWSURL(t, mint(t, attackOwnUUID, "novnc"))
		c := novncDialFrom(t, addr, wsURL, origin)
		rfbView(t, "novnc-proxy, valid token from the throttled address", websocket.NetConn(context.Background(), c, websocket.MessageBinary))
		rfbView(t, "xvp-proxy, valid token from the throttled address", xvpSessionFrom(t, addr, mint(t, attackOwnUUID, "xvpvnc")))
	})

	t.Run("finding 2: cross-origin refusals are not failed tokens", func(t *testing.T) {
		const addr = "127.0.0.3"
		wsURL, origin := novncWSURL(t, mint(t, attackOwnUUID, "novnc"))
		for i := range 10 { // a foreign page, visited by many behind one address
			if code := novncRefusal(t, wsURL, "http://evil.example", addr); code != http.StatusForbidden {
				t.Fatalf("foreign Origin %d: got HTTP %d, want 403", i, code)
			}
		}
		// Not counted: a bad token is still just invalid, and the valid one
		// (not used up by the foreign page) connects.
		novnc := w.Addr(w.Ports.NoVNC)
		if ce := wsclose.Read(t, novncDialFrom(t, addr, "ws://"+novnc+"/websockify?token=not-a-token", origin)); ce.Code != novncTokenInvalid {
			t.Fatalf("bad token after 10 Origin refusals: got close %d %q, want %d", ce.Code, ce.Reason, novncTokenInvalid)
		}
		c := novncDialFrom(t, addr, wsURL, origin)
		rfbView(t, "valid token after 10 Origin refusals", websocket.NetConn(context.Background(), c, websocket.MessageBinary))
	})

	t.Run("finding 2: xvp-proxy behind a load balancer (PROXY protocol)", func(t *testing.T) {
		xvp := w.Addr(w.Ports.XVP)
		const guesser, user, hog = "203.0.113.7", "198.51.100.9", "192.0.2.44"
		// The guesser, behind the load balancer, goes past the limit of 3.
		for i := range 4 {
			got := xvpViaLB(t, xvp, guesser, "CONNECT /console?token=guessguessguessguess HTTP/1.1\r\n\r\n", true)
			if !strings.HasPrefix(got, "HTTP/1.1 401 ") && !strings.HasPrefix(got, "HTTP/1.1 429 ") {
				t.Fatalf("guess %d through the load balancer: got %q, want 401 or 429", i, got)
			}
		}
		// Another client behind the same load balancer holds its cap of
		// connections, then asks for more.
		var held []net.Conn
		for range xvpPerClient {
			c, err := fromDialer(loadBalancer).Dial("tcp", xvp)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			io.WriteString(c, proxyV1(hog, c))
			held = append(held, c)
		}
		token := tokenOf(t, mint(t, attackOwnUUID, "xvpvnc"))
		connect := "CONNECT /console?token=" + url.QueryEscape(token) + " HTTP/1.1\r\n\r\n"
		if got := xvpViaLB(t, xvp, hog, connect, true); !strings.HasPrefix(got, "HTTP/1.1 503 ") {
			t.Errorf("client %s past its %d connections through the load balancer: got %q, want 503", hog, xvpPerClient, got)
		}
		// Neither locks out anyone else behind the load balancer, and the
		// guesser's own valid token works.
		for _, client := range []string{user, guesser} {
			c := xvpSessionViaLB(t, xvp, client, mint(t, attackOwnUUID, "xvpvnc"))
			rfbView(t, "xvp-proxy through the load balancer for "+client, c)
		}
		for _, c := range held {
			c.Close()
		}
		// Only the load balancer's word counts: a PROXY header from anyone
		// else is a malformed request, and the load balancer must send one.
		if got := xvpViaLB(t, xvp, user, connect, false); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
			t.Errorf("a PROXY header from an untrusted address: got %q, want 400", got)
		}
		if got := xvpRawFrom(t, loadBalancer, xvp, connect); strings.HasPrefix(got, "HTTP/1.1 200 ") {
			t.Errorf("the load balancer without a PROXY header: got %q, want a refusal", got)
		}
	})

	// Finding 3: the edge could be held.
	t.Run("finding 3: 2,000 idle connections do not stop a valid user", func(t *testing.T) {
		for _, proxy := range []struct {
			name string
			addr string
			use  func(t *testing.T)
		}{
			{devstack.NoVNCProxy, w.Addr(w.Ports.NoVNC), func(t *testing.T) {
				_, nc := novncConsole(t, mint(t, attackOwnUUID, "novnc"))
				rfbView(t, "novnc-proxy beside 2,000 idle connections", nc)
			}},
			{devstack.XVPProxy, w.Addr(w.Ports.XVP), func(t *testing.T) {
				rfbView(t, "xvp-proxy beside 2,000 idle connections", xvpSession(t, mint(t, attackOwnUUID, "xvpvnc")))
			}},
		} {
			t.Run(proxy.name, func(t *testing.T) {
				idle := openIdle(t, "127.0.0.4", proxy.addr, idleConns)
				proxy.use(t)
				t.Logf("%s: %d of %d idle connections from one address still open beside the valid user", proxy.name, idle.stillOpen(), idleConns)
				idle.close()
			})
		}
	})

	t.Run("finding 3: a slow request body does not hold a connection", func(t *testing.T) {
		addr := w.Addr(w.Ports.NoVNC)
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Under 256 KiB: small enough that net/http reads what the handler
		// left of the body, to keep the connection, rather than closing it.
		fmt.Fprintf(c, "POST /websockify HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n", addr)
		io.WriteString(c, "x")
		var answer bytes.Buffer
		ended := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := io.Copy(&answer, c)
			ended <- err
		}()
		_, nc := novncConsole(t, mint(t, attackOwnUUID, "novnc"))
		rfbView(t, "novnc-proxy beside a slow body", nc)
		// A byte a second, faster than the finding's one every 2 s: only a
		// limit on the whole request (or not reading it) ends it.
		trickle := time.NewTicker(time.Second)
		defer trickle.Stop()
		deadline := time.After(2 * time.Minute) // bounds a hang
		for {
			select {
			case err := <-ended:
				head, _, _ := strings.Cut(answer.String(), "\r\n")
				t.Logf("novnc-proxy ended the slow body's connection after %v (%v), answering %q", time.Since(start).Round(time.Second), err, head)
				return
			case <-trickle.C:
				c.Write([]byte("x"))
			case <-deadline:
				t.Fatalf("a body sent a byte a second still holds its connection after 2 minutes")
			}
		}
	})

	// Last: every log line the services wrote during the suite, including
	// those about the oversized ids above.
	t.Run("finding 4: log lines stay short and hold no credential", func(t *testing.T) {
		secrets := append(minted.all(), w.APIKey)
		for _, service := range []string{devstack.ConsoleAuth, devstack.ComputeAgent, devstack.NoVNCProxy, devstack.XVPProxy} {
			checkLog(t, w.LogPath(service), service, secrets)
		}
	})

	// Finding 1's refusals above each left an audit line (README: "Who may
	// call what").
	t.Run("finding 1: every refusal is audited", func(t *testing.T) {
		for _, want := range []struct {
			service string
			reasons []string
		}{
			{devstack.ConsoleAuth, []string{"unauthenticated", "permission_denied"}},
			{devstack.ComputeAgent, []string{"unauthenticated", "permission_denied"}},
		} {
			got := auditReasons(t, w.LogPath(want.service))
			for _, reason := range want.reasons {
				if got[reason] == 0 {
					t.Errorf("%s: no audit line (request refused) with reason %s; got %v", want.service, reason, got)
				}
			}
			t.Logf("%s audit lines by reason: %v", want.service, got)
		}
	})
}

// TestAttacksTLS replays the findings about the proxies' TLS: a devstack
// world with TLS, novnc-proxy without ssl_only (so TLS and plain share its
// port through the combined listener of finding 3).
func TestAttacksTLS(t *testing.T) {
	requireNoVNCLibrary(t)
	w := devstacktest.Start(t, devstack.Options{
		TLS: true,
		Args: map[string][]string{
			devstack.NoVNCProxy:  {"--ssl_only=false"},
			devstack.ConsoleAuth: {"--single_use_tokens"}, // each token connects once
		},
	})

	t.Run("finding 6: a cross-site page cannot use up a single-use token", func(t *testing.T) {
		consoleURL := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
		u, _ := url.Parse(consoleURL)
		wsURL := "wss://" + u.Host + "/websockify?token=" + url.QueryEscape(tokenOf(t, consoleURL))
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: w.HTTPClient(), HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
		if err == nil {
			c.CloseNow()
			t.Fatal("a foreign page's WebSocket with the victim's token was upgraded, want 403")
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a foreign page's WebSocket: got %v (%v), want 403", resp, err)
		}
		// The Origin was refused before the token was looked at: the
		// victim's token still opens the console, once.
		rfbView(t, "the victim's single-use token after a foreign page tried it",
			websocket.NetConn(context.Background(), novncTLSDial(t, w, consoleURL), websocket.MessageBinary))
	})

	t.Run("finding 6: TLS 1.1 refused", func(t *testing.T) {
		for _, service := range []struct{ name, addr string }{
			{devstack.NoVNCProxy, w.Addr(w.Ports.NoVNC)},
			{devstack.XVPProxy, w.Addr(w.Ports.XVP)},
			{"consoleauth REST", w.Addr(w.Ports.ConsoleAuthREST)},
		} {
			refusesTLS11(t, w, service.name, service.addr)
		}
		// Nova's ssl_minimum_version = tlsv1_1 may not take a listener below
		// TLS 1.2: refused at start, or TLS 1.1 still refused.
		for _, args := range [][]string{
			{"--ssl_only"},
			{"--ssl_only", "--ssl_minimum_version=tlsv1_1"},
			{"--ssl_minimum_version=tlsv1_1"},
		} {
			what := "novnc-proxy " + strings.Join(args, " ")
			addr, refused := startTLSNoVNC(t, w, args...)
			if addr == "" {
				if !strings.Contains(refused, "ssl_minimum_version") {
					t.Errorf("%s exited without naming ssl_minimum_version: %s", what, refused)
				}
				t.Logf("%s refused to start: %.300s", what, refused)
				continue
			}
			refusesTLS11(t, w, what, addr)
		}
		// TLS 1.2 is served.
		c := novncTLSDial(t, w, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		rfbView(t, "novnc-proxy over TLS 1.2+", websocket.NetConn(context.Background(), c, websocket.MessageBinary))
	})

	t.Run("finding 3: the listener survives fd exhaustion", func(t *testing.T) {
		pid := w.Proc(devstack.NoVNCProxy).Pid
		var old unix.Rlimit
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
			t.Fatal(err)
		}
		// A few descriptors to spare, then run it out of them.
		low := unix.Rlimit{Cur: uint64(fdCount(t, pid) + 8), Max: old.Max}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil) })
		idle := openIdle(t, "127.0.0.1", w.Addr(w.Ports.NoVNC), 40) // the finding's 40
		deadline := time.Now().Add(30 * time.Second)                // bounds a hang
		for fdCount(t, pid) < int(low.Cur) {
			if time.Now().After(deadline) {
				t.Fatalf("novnc-proxy has %d descriptors of %d after 40 connections: not exhausted", fdCount(t, pid), low.Cur)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("novnc-proxy out of descriptors (%d of %d)", fdCount(t, pid), low.Cur)
		idle.close()
		// Once they are free, it serves again (its accept loop backs off
		// and retries rather than ending).
		var last error
		for time.Now().Before(deadline) {
			// A token per attempt: tokens are single-use in this world.
			consoleURL := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
			u, _ := url.Parse(consoleURL)
			wsURL := "wss://" + u.Host + "/websockify?token=" + url.QueryEscape(tokenOf(t, consoleURL))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
				HTTPClient: w.HTTPClient(), HTTPHeader: http.Header{"Origin": {"https://" + u.Host}}})
			cancel()
			if err == nil {
				t.Cleanup(func() { c.CloseNow() })
				rfbView(t, "novnc-proxy after running out of descriptors", websocket.NetConn(context.Background(), c, websocket.MessageBinary))
				return
			}
			last = err
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("novnc-proxy does not serve 30 s after descriptors were freed: %v", last)
	})

	t.Run("finding 4: log lines stay short", func(t *testing.T) {
		for _, service := range []string{devstack.ConsoleAuth, devstack.ComputeAgent, devstack.NoVNCProxy, devstack.XVPProxy} {
			checkLog(t, w.LogPath(service), service, []string{w.APIKey})
		}
	})
}

// runUntilExit runs a service of the stack's build with args and returns
// its output and exit error once it exits; it fails t if the service is
// still running after 30 s (it started when it should have refused to).
func runUntilExit(t *testing.T, service string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(devstacktest.Binaries(t), service), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(30 * time.Second): // bounds a hang: refusing takes no time
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running 30 s after it started, want it to refuse its configuration:\n%s", service, out.String())
		return "", nil
	}
}

// refusesTLS11 requires a TLS 1.1 client's handshake with addr to fail.
func refusesTLS11(t *testing.T, w *devstack.World, what, addr string) {
	t.Helper()
	old := &tls.Config{RootCAs: w.CAPool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: old}
	c, err := d.DialContext(bounded(t), "tcp", addr)
	if err == nil {
		v := c.(*tls.Conn).ConnectionState().Version
		c.Close()
		t.Errorf("%s: a TLS 1.1 client got a session (version %x), want the handshake refused", what, v)
		return
	}
	t.Logf("%s refused TLS 1.1: %v", what, err)
}

// startTLSNoVNC runs one more novnc-proxy of the stack's build beside it,
// with novnc-proxy's certificate on its public port and args, until the
// test ends. It returns the proxy's address once a TLS 1.2 client is
// served, or "" and the proxy's output if it exited first.
func startTLSNoVNC(t *testing.T, w *devstack.World, args ...string) (addr, exited string) {
	t.Helper()
	l := listenLoopback(t)
	addr = l.Addr().String()
	l.Close()
	f := w.Certs[devstack.NoVNCProxy]
	cmd := exec.Command(filepath.Join(devstacktest.Binaries(t), devstack.NoVNCProxy), append([]string{
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=" + strconv.Itoa(portOf(l.Addr())),
		"--novncproxy_base_url=https://" + addr + "/vnc_lite.html",
		"--consoleauth_address=" + w.Addr(w.Ports.ConsoleAuthGRPC),
		"--etcd_endpoints=" + w.Etcd.Endpoint,
		"--cert=" + f.Cert, "--key=" + f.Key,
		"--admin_listen=", // several run at once: no shared admin port
	}, append(w.GRPCFlags(devstack.NoVNCProxy), args...)...)...)
	var logs strings.Builder
	var mu sync.Mutex
	cmd.Stdout = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logs.Write(p) })
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	ready := &tls.Config{RootCAs: w.CAPool(), MinVersion: tls.VersionTLS12}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-done:
			mu.Lock()
			defer mu.Unlock()
			return "", logs.String()
		default:
		}
		if c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, ready); err == nil {
			c.Close()
			return addr, ""
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Fatalf("novnc-proxy %v not ready in 30 s: %s", args, logs.String())
	return "", ""
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// idleConns is how many idle connections finding 3's test holds open.
const idleConns = 2000

// loadBalancer is the address of the attack world's load balancer in front
// of xvp-proxy (its trusted_proxies); xvpPerClient its
// max_connections_per_client.
const (
	loadBalancer = "127.0.0.5"
	xvpPerClient = 20
)

// proxyV1 is the PROXY protocol v1 header a load balancer sends on c for a
// client at address client (HAProxy's send-proxy).
func proxyV1(client string, c net.Conn) string {
	local := c.LocalAddr().(*net.TCPAddr)
	remote := c.RemoteAddr().(*net.TCPAddr)
	return fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\n", client, remote.IP, 40000+local.Port%20000, remote.Port)
}

// xvpViaLB sends request to xvp-proxy after a PROXY header for client, and
// returns the whole answer; trusted says whether it comes from the load
// balancer's address or from another (whose header must not count).
func xvpViaLB(t *testing.T, addr, client, request string, trusted bool) string {
	t.Helper()
	src := loadBalancer
	if !trusted {
		src = "127.0.0.6"
	}
	c, err := fromDialer(src).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(c, proxyV1(client, c)+request)
	got, _ := io.ReadAll(c)
	return string(got)
}

// xvpSessionViaLB is xvpSession through the load balancer for client.
func xvpSessionViaLB(t *testing.T, addr, client, consoleURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := fromDialer(loadBalancer).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "%sCONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", proxyV1(client, c), u.RequestURI(), u.Host)
	br := bufio.NewReader(c)
	ok := make([]byte, len(xvpOK))
	if _, err := io.ReadFull(br, ok); err != nil || string(ok) != xvpOK {
		rest, _ := io.ReadAll(br)
		t.Fatalf("xvp answer for %s through the load balancer: got %q%q (%v), want exactly %q", client, ok, rest, err, xvpOK)
	}
	c.SetDeadline(time.Time{})
	return &xvpConn{Conn: c, r: br}
}

// bounded is a context that bounds a hang of one step of a test.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func getConsoleURL(uuid string) *consoleauthv1.GetConsoleURLRequest {
	return &consoleauthv1.GetConsoleURLRequest{ServerId: uuid, RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}}
}

// refusedInput reports whether status is the refusal of an oversized or
// malformed field of size bytes: 400, or, when the field alone exceeds a
// cap on the request head (8 KiB or more), the HTTP server's 414 or 431.
func refusedInput(status, size int) bool {
	switch status {
	case http.StatusBadRequest:
		return true
	case http.StatusRequestURITooLong, http.StatusRequestHeaderFieldsTooLarge:
		return size > 8<<10
	}
	return false
}

// restRequest is a REST request with a JSON body (when body is not empty).
func restRequest(t *testing.T, method, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

// wantCode requires a gRPC call to have failed with code.
func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Errorf("%s: got %v, want %v", what, err, code)
	} else if msg := status.Convert(err).Message(); msg == "" {
		t.Errorf("%s: %v without a message saying why", what, code)
	}
}

// checkTokenOK requires token to check as valid, as a proxy asks.
func checkTokenOK(t *testing.T, w *devstack.World, token, consoleType string) {
	t.Helper()
	if _, err := consoleAuthClient(t, w).CheckToken(bounded(t), &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: consoleType}); err != nil {
		t.Fatalf("CheckToken: %v, want the token valid", err)
	}
}

// fromDialer dials from the loopback address src, so a test can be a
// client of its own (loopback is all of 127.0.0.0/8 on Linux).
func fromDialer(src string) *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
}

// fromClient is an HTTP client whose connections come from src.
func fromClient(t *testing.T, src string) *http.Client {
	tr := &http.Transport{DialContext: fromDialer(src).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// novncDialFrom is novncDial from the address src.
func novncDialFrom(t *testing.T, src, wsURL, origin string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: fromClient(t, src), HTTPHeader: http.Header{"Origin": {origin}}})
	if err != nil {
		t.Fatalf("websocket to novnc-proxy from %s: %v (%v)", src, err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// novncRefusal opens a WebSocket that must be refused before the upgrade
// and returns the HTTP status; src is the client address ("" for any).
func novncRefusal(t *testing.T, wsURL, origin, src string) int {
	t.Helper()
	opts := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}
	if src != "" {
		opts.HTTPClient = fromClient(t, src)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL, opts)
	if err == nil {
		ce := wsclose.Read(t, c)
		t.Fatalf("Origin %s: upgraded, then closed %d %q; want a refusal before the upgrade", origin, ce.Code, ce.Reason)
	}
	if resp == nil {
		t.Fatalf("Origin %s: no HTTP answer: %v", origin, err)
	}
	return resp.StatusCode
}

// xvpRawFrom is xvpRaw from the address src.
func xvpRawFrom(t *testing.T, src, addr, request string) string {
	t.Helper()
	c, err := fromDialer(src).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(c, request)
	got, _ := io.ReadAll(c)
	return string(got)
}

// xvpSessionFrom is xvpSession from the address src.
func xvpSessionFrom(t *testing.T, src, consoleURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := fromDialer(src).Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
	br := bufio.NewReader(c)
	ok := make([]byte, len(xvpOK))
	if _, err := io.ReadFull(br, ok); err != nil || string(ok) != xvpOK {
		t.Fatalf("xvp answer from %s: got %q (%v), want exactly %q", src, ok, err, xvpOK)
	}
	c.SetDeadline(time.Time{})
	return &xvpConn{Conn: c, r: br}
}

// idleSet is connections that send nothing.
type idleSet struct {
	conns []net.Conn
}

// openIdle opens n connections from src to addr, 64 at a time, and sends
// nothing on them. A connection the server refuses or closes is fine: what
// matters is what the server does for others meanwhile.
func openIdle(t *testing.T, src, addr string, n int) *idleSet {
	t.Helper()
	s := &idleSet{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	failed := 0
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := fromDialer(src).Dial("tcp", addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			s.conns = append(s.conns, c)
		}()
	}
	wg.Wait()
	t.Cleanup(s.close)
	t.Logf("%d idle connections from %s to %s (%d dials failed)", len(s.conns), src, addr, failed)
	return s
}

// stillOpen counts the connections the server has not closed: a read
// that times out at once means nothing came, not even EOF.
func (s *idleSet) stillOpen() int {
	open := 0
	one := make([]byte, 1)
	for _, c := range s.conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(one)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			open++
		}
	}
	return open
}

func (s *idleSet) close() {
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// closingVNC is a VNC server that sends its version, then keeps the
// connection open until hangUp.
type closingVNC struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newClosingVNC(t *testing.T) *closingVNC {
	v := &closingVNC{l: listenLoopback(t)}
	go func() {
		for {
			c, err := v.l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "RFB 003.008\n")
			v.mu.Lock()
			v.conns = append(v.conns, c)
			v.mu.Unlock()
		}
	}()
	t.Cleanup(v.hangUp)
	return v
}

// hangUp closes every connection the server holds.
func (v *closingVNC) hangUp() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.conns {
		c.Close()
	}
	v.conns = nil
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func portOf(a net.Addr) int { return a.(*net.TCPAddr).Port }

// holdsConn reports whether process pid has an open socket from local to
// peer (host:port each): the kernel's TCP table names the socket's inode,
// /proc/PID/fd the inodes the process holds.
func holdsConn(t *testing.T, pid int, local, peer string) bool {
	t.Helper()
	inode := tcpInode(t, local, peer)
	if inode == "" || inode == "0" {
		return false // gone, or an orphan no process holds
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && link == "socket:["+inode+"]" {
			return true
		}
	}
	return false
}

// tcpInode is the inode of the IPv4 socket from local to peer, from
// /proc/net/tcp ("" if none). Both ends count: another test's listener may
// have the client's port, and its clients a socket whose peer matches.
func tcpInode(t *testing.T, local, peer string) string {
	t.Helper()
	// /proc/net/tcp writes an IPv4 address as the 32-bit word in host
	// (little-endian) order, then the port in hex.
	hex := func(addr string) string {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		ip := net.ParseIP(host).To4()
		p, _ := strconv.Atoi(port)
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	}
	wantLocal, wantPeer := hex(local), hex(peer)
	raw, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 10 && f[1] == wantLocal && f[2] == wantPeer {
			return f[9]
		}
	}
	return ""
}

// fdCount is how many descriptors process pid has open.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// raiseFileLimit lifts this process's soft open-file limit to want (or the
// hard limit) for the idle connections it opens.
func raiseFileLimit(t *testing.T, want uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= want {
		return
	}
	rl.Cur = min(want, rl.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < want {
		t.Logf("open-file limit %d, below the %d wanted: some idle connections will fail to open", rl.Cur, want)
	}
}

// checkLog requires every line of a service's log to be at most maxLogLine
// bytes and to hold none of secrets.
func checkLog(t *testing.T, path, service string, secrets []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	longest, lines := 0, 0
	for n := 1; ; n++ {
		line, err := readLine(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		lines++
		longest = max(longest, len(line))
		if len(line) > maxLogLine {
			t.Errorf("%s (%s) line %d: %d bytes, want at most %d: %.200s…", service, filepath.Base(path), n, len(line), maxLogLine, line)
		}
		for _, s := range secrets {
			if s != "" && bytes.Contains(line, []byte(s)) {
				t.Errorf("%s (%s) line %d logs a credential (%.8s…)", service, filepath.Base(path), n, s)
			}
		}
	}
	t.Logf("%s: %d log lines, the longest %d bytes", service, lines, longest)
}

// auditReasons counts a service's audit lines ("request refused") by
// reason.
func auditReasons(t *testing.T, path string) map[string]int {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		var rec struct {
			Msg    string `json:"msg"`
			Reason string `json:"reason"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "request refused" {
			got[rec.Reason]++
		}
	}
	return got
}

// readLine reads one line, however long.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				return line, nil
			}
			return nil, err
		}
		line = append(line, chunk...)
		if !isPrefix {
			return line, nil
		}
	}
}

// tokenLog collects the tokens a test got.
type tokenLog struct {
	mu     sync.Mutex
	tokens []string
}

func (l *tokenLog) add(token string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = append(l.tokens, token)
}

func (l *tokenLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.tokens...)
}
