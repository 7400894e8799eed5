package server_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// world is a running consoleauth on loopback with its own embedded etcd and
// one in-test compute agent, "compute-1", all with credentials: mutual TLS
// with role certificates on every gRPC link, bearer keys on REST.
type world struct {
	etcd  *etcd.Server
	cli   *clientv3.Client
	pki   *testworld.PKI
	agent *testworld.Agent
	srv   *server.Server
	rest  string // http://host:port
	// grpc calls as the API layer (role api), proxy as a console proxy.
	grpc  consoleauthv1.ConsoleAuthServiceClient
	proxy consoleauthv1.ConsoleAuthServiceClient
	// keys are REST bearer keys by name: nova-api (api), horizon (mint),
	// novnc (proxy), compute-1 (compute); key is the one do sends.
	keys map[string]string
	key  string
	logs *testlog.Buffer
	http *http.Client
}

// Roles of the world's bearer keys, by name.
var keyRoles = []authn.Identity{
	{Name: "nova-api", Role: authn.RoleAPI},
	{Name: "horizon", Role: authn.RoleMint},
	{Name: "novnc", Role: authn.RoleProxy},
	{Name: "compute-1", Role: authn.RoleCompute},
	{Name: "agent-caller", Role: authn.RoleConsoleAuth},
}

// newWorld starts a world; edit adjusts the service's configuration.
func newWorld(t testing.TB, edit func(*server.Config)) *world {
	t.Helper()
	etcdSrv, cli := etcd.Start(t)
	w := &world{etcd: etcdSrv, cli: cli, pki: testworld.NewPKI(t), logs: &testlog.Buffer{}, http: &http.Client{Timeout: 20 * time.Second}}
	w.agent = w.startAgent(t, "compute-1")
	var keysFile string
	keysFile, w.keys = testworld.KeysFile(t, keyRoles...)
	w.key = w.keys["nova-api"]
	cfg := server.Config{
		GRPCTLS:             w.pki.Files(t, "consoleauth-1", authn.RoleConsoleAuth),
		APIKeysFile:         keysFile,
		GRPCListen:          "127.0.0.1:0",
		RESTListen:          "127.0.0.1:0",
		EtcdEndpoints:       []string{etcdSrv.Endpoint},
		EtcdTimeout:         time.Second,
		ComputeTimeout:      time.Second,
		TokenTTL:            10 * time.Minute,
		NoVNCBaseURL:        "http://127.0.0.1:6080/vnc_lite.html",
		XVPBaseURL:          "http://127.0.0.1:6081/console",
		EnabledConsoleTypes: []string{"novnc", "xvpvnc"},
		ShutdownTimeout:     5 * time.Second,
	}
	if edit != nil {
		edit(&cfg)
	}
	log := slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := server.Start(testworld.Ctx(t), cfg, log)
	if err != nil {
		t.Fatalf("start consoleauth: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	w.srv = srv
	w.rest = "http://" + srv.RESTAddr()
	if cfg.RESTTLS.Enabled() {
		w.rest = "https://" + srv.RESTAddr()
	}
	if cfg.GRPCTLS.Enabled() {
		w.grpc = w.client(t, "nova-api", authn.RoleAPI)
		w.proxy = w.client(t, "novnc-1", authn.RoleProxy)
	}
	return w
}

// startAgent starts an in-test agent for host with its compute
// certificate, answering only consoleauth.
func (w *world) startAgent(t testing.TB, host string) *testworld.Agent {
	t.Helper()
	return testworld.StartAgentTLS(t, w.cli, host, w.pki.Files(t, host, authn.RoleCompute))
}

// client is a gRPC client presenting a certificate for name with role.
func (w *world) client(t testing.TB, name string, role authn.Role) consoleauthv1.ConsoleAuthServiceClient {
	t.Helper()
	return consoleauthv1.NewConsoleAuthServiceClient(w.pki.Dial(t, w.srv.GRPCAddr(), name, role))
}

// do sends a REST request and decodes the JSON answer.
func (w *world) do(t testing.TB, method, path, body string) (int, map[string]any) {
	t.Helper()
	code, raw := w.doRaw(t, method, path, body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object: %q (%v)", method, path, raw, err)
	}
	return code, m
}

// doRaw sends a REST request with the world's bearer key (JSON for a POST
// or PUT) and returns the status and body.
func (w *world) doRaw(t testing.TB, method, path, body string) (int, []byte) {
	t.Helper()
	h := http.Header{}
	if w.key != "" {
		h.Set("Authorization", "Bearer "+w.key)
	}
	if method == http.MethodPost || method == http.MethodPut {
		h.Set("Content-Type", "application/json")
	}
	resp, raw := w.send(t, method, path, body, h)
	return resp.StatusCode, raw
}

// send sends a REST request with exactly the headers h.
func (w *world) send(t testing.TB, method, path, body string, h http.Header) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testworld.Ctx(t), method, w.rest+path, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if host := h.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := w.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp, raw
}

// consoleURL asks REST for a console URL and returns it.
func (w *world) consoleURL(t testing.TB, uuid, consoleType string) string {
	t.Helper()
	code, m := w.do(t, "POST", "/v2.1/servers/"+uuid+"/remote-consoles",
		`{"remote_console": {"protocol": "vnc", "type": "`+consoleType+`"}}`)
	if code != http.StatusOK {
		t.Fatalf("remote-consoles: got %d %v, want 200", code, m)
	}
	return str(t, m, "remote_console", "url")
}

// mint returns a fresh novnc token of an instance.
func (w *world) mint(t testing.TB, uuid string) string {
	t.Helper()
	return tokenOf(t, w.consoleURL(t, uuid, "novnc"))
}

// tokenOf takes the token out of a console URL of either type.
func tokenOf(t testing.TB, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("console URL %q: %v", raw, err)
	}
	if tok := u.Query().Get("token"); tok != "" {
		return tok
	}
	tok, ok := strings.CutPrefix(u.Query().Get("path"), "?token=")
	if !ok || tok == "" {
		t.Fatalf("console URL %q: no token", raw)
	}
	return tok
}

// str walks nested JSON objects and returns the string at the end.
func str(t testing.TB, m map[string]any, keys ...string) string {
	t.Helper()
	v := walk(t, m, keys...)
	s, ok := v.(string)
	if !ok {
		t.Fatalf("%v in %v: got %T, want a string", keys, m, v)
	}
	return s
}

func walk(t testing.TB, m map[string]any, keys ...string) any {
	t.Helper()
	var v any = m
	for _, k := range keys {
		obj, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%v in %v: %q is not inside an object", keys, m, k)
		}
		if v, ok = obj[k]; !ok {
			t.Fatalf("%v in %v: no %q", keys, m, k)
		}
	}
	return v
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }
