package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
)

// recordingService answers every call with success and remembers nothing:
// the fuzz target is the REST decoding in front of it (routing, path
// parameters, JSON bodies, headers, credentials, microversions).
type recordingService struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
}

func (recordingService) GetConsoleURL(context.Context, *consoleauthv1.GetConsoleURLRequest) (*consoleauthv1.GetConsoleURLResponse, error) {
	return &consoleauthv1.GetConsoleURLResponse{}, nil
}

func (recordingService) GetVNCConsole(context.Context, *consoleauthv1.GetVNCConsoleRequest) (*consoleauthv1.GetVNCConsoleResponse, error) {
	return &consoleauthv1.GetVNCConsoleResponse{}, nil
}

func (recordingService) GetConsoleAuthToken(context.Context, *consoleauthv1.GetConsoleAuthTokenRequest) (*consoleauthv1.GetConsoleAuthTokenResponse, error) {
	return &consoleauthv1.GetConsoleAuthTokenResponse{}, nil
}

func (recordingService) RevokeInstanceTokens(context.Context, *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	return &consoleauthv1.RevokeInstanceTokensResponse{}, nil
}

// fuzzHandler is the REST handler as consoleauth builds it: the gateway
// with bearer keys, over an in-process gRPC server guarded by the real
// policy table's shape.
func fuzzHandler(f *testing.F) (http.Handler, string) {
	key, line, err := authn.NewKey("fuzz", authn.RoleAPI)
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(f.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	keys, err := authn.LoadKeyFile(path, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	secret := authn.NewGatewaySecret()
	all := []authn.Role{authn.RoleAPI}
	guard := authn.NewGuard(authn.GuardOptions{GatewaySecret: secret, Policy: authn.Policy{
		consoleauthv1.ConsoleAuthService_GetConsoleURL_FullMethodName:        all,
		consoleauthv1.ConsoleAuthService_GetVNCConsole_FullMethodName:        all,
		consoleauthv1.ConsoleAuthService_GetConsoleAuthToken_FullMethodName:  all,
		consoleauthv1.ConsoleAuthService_RevokeInstanceTokens_FullMethodName: all,
	}})
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(guard.UnaryInterceptor()))
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, recordingService{})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	f.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///fuzz", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = conn.Close() })
	h, err := New(context.Background(), conn, Options{Auth: Auth{Keys: keys, GatewaySecret: secret}})
	if err != nil {
		f.Fatal(err)
	}
	return h, key
}

// FuzzRESTDecoding feeds arbitrary methods, paths, headers and bodies to
// the REST handler: it must never panic, and must always answer with a
// known status and a JSON body that does not grow with the input.
func FuzzRESTDecoding(f *testing.F) {
	h, key := fuzzHandler(f)
	const uuid = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"
	for _, seed := range []struct {
		method, path, contentType, version, auth, body string
	}{
		{"POST", "/v2.1/servers/" + uuid + "/remote-consoles", "application/json", "2.6", "key", `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`},
		{"POST", "/v2.1/servers/" + uuid + "/action", "application/json", "", "key", `{"os-getVNCConsole": {"type": "xvpvnc"}}`},
		{"GET", "/v2.1/os-console-auth-tokens/abc", "", "2.31", "key", ""},
		{"DELETE", "/v2.1/servers/" + uuid + "/console-tokens?reason=stopped", "", "", "key", ""},
		{"POST", "/v2.1/servers/x/remote-consoles", "text/plain", "", "", `{"remote_console": 1}`},
		{"POST", "/v2.1/servers/%2e%2e/action", "application/json; charset=utf-8", "latest", "Bearer junk", `{"os-getVNCConsole": {"type": [1,2]}}`},
		{"PUT", "//v2.1/servers", "application/json", "3.0", "key", `[`},
	} {
		f.Add(seed.method, seed.path, seed.contentType, seed.version, seed.auth, []byte(seed.body))
	}
	known := map[int]bool{200: true, 202: true, 204: true, 400: true, 401: true, 403: true, 404: true, 405: true,
		406: true, 409: true, 413: true, 415: true, 431: true, 500: true, 501: true, 503: true}
	f.Fuzz(func(t *testing.T, method, path, contentType, version, auth string, body []byte) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t") || method == "" || strings.ContainsAny(method, " \r\n\t/") {
			return // not a request line net/http would hand to a handler
		}
		req, err := http.NewRequest(method, "http://127.0.0.1:6091"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Host = "127.0.0.1"
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if version != "" {
			req.Header.Set("X-OpenStack-Nova-API-Version", version)
		}
		switch auth {
		case "":
		case "key":
			req.Header.Set("Authorization", "Bearer "+key)
		default:
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusMovedPermanently || rec.Code == http.StatusTemporaryRedirect || rec.Code == http.StatusPermanentRedirect {
			// net/http's ServeMux sends unclean paths ("//v2.1", "/a/../b")
			// to their clean form.
			if rec.Header().Get("Location") == "" {
				t.Fatalf("%s %q: %d without Location", method, path, rec.Code)
			}
			return
		}
		if !known[rec.Code] {
			t.Fatalf("%s %q: status %d, not one the API answers", method, path, rec.Code)
		}
		if rec.Code == http.StatusNoContent {
			return
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("%s %q: %d with Content-Type %q, want JSON", method, path, rec.Code, ct)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %q: %d with a body that is not JSON: %q", method, path, rec.Code, rec.Body)
		}
		if n := rec.Body.Len(); n > 4<<10 {
			t.Fatalf("%s %q: %d with a %d-byte body: the answer grows with the input", method, path, rec.Code, n)
		}
	})
}
