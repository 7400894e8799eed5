package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/keystone"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/novaconf"
)

// defaults is the configuration without any option set.
func defaults() Config {
	return Config{
		Config: server.Config{
			GRPCListen:          "0.0.0.0:6090",
			RESTListen:          "0.0.0.0:6091",
			EtcdEndpoints:       []string{"127.0.0.1:2379"},
			EtcdTimeout:         5 * time.Second,
			ComputeTimeout:      5 * time.Second,
			TokenTTL:            600 * time.Second,
			TokenCacheSize:      tokenstore.DefaultTokenCacheSize,
			NoVNCBaseURL:        "http://127.0.0.1:6080/vnc_lite.html",
			XVPBaseURL:          "http://127.0.0.1:6081/console",
			EnabledConsoleTypes: []string{"novnc", "xvpvnc"},
			CertRoleSource:      "san",
			RESTAuth:            "keys",
			KeystoneMintRoles:   []string{"admin", "member", "service"},
			DrainTimeout:        30 * time.Second,
			Keystone: keystone.Options{UserDomainName: "Default", ProjectDomainName: "Default",
				Timeout: keystone.DefaultTimeout, CacheTime: keystone.DefaultCacheTime, CacheSize: keystone.DefaultCacheSize},
		},
		VNCEnabled:  true,
		AdminListen: "127.0.0.1:6190",
		Log:         logging.Options{Level: slog.LevelInfo, Format: "json"},
	}
}

// TestOptions: every option, read from the section Nova (or vncgate) puts
// it in, with its meaning.
func TestOptions(t *testing.T) {
	novaconf.RunCases(t, []novaconf.Case[Config]{
		{Name: "defaults", Want: func(*Config) {}},
		{Name: "[vnc] novncproxy_base_url", File: "[vnc]\nnovncproxy_base_url = https://c.example/vnc_lite.html\n",
			Want: func(c *Config) { c.NoVNCBaseURL = "https://c.example/vnc_lite.html" }},
		{Name: "[vnc] xvpvncproxy_base_url", File: "[vnc]\nxvpvncproxy_base_url = https://c.example:6081/console\n",
			Want: func(c *Config) { c.XVPBaseURL = "https://c.example:6081/console" }},
		{Name: "[vnc] enabled = false turns every console type off", File: "[vnc]\nenabled = false\n",
			Want: func(c *Config) { c.VNCEnabled, c.EnabledConsoleTypes = false, nil }},
		{Name: "[consoleauth] token_ttl in whole seconds", File: "[consoleauth]\ntoken_ttl = 300\n",
			Want: func(c *Config) { c.TokenTTL = 300 * time.Second }},
		{Name: "[consoleauth] token_cache_size", File: "[consoleauth]\ntoken_cache_size = 500\n",
			Want: func(c *Config) { c.TokenCacheSize = 500 }},
		{Name: "token_cache_size 0 keeps no token in memory", Args: []string{"--token_cache_size=0"},
			Want: func(c *Config) { c.TokenCacheSize = -1 }},
		{Name: "negative token_cache_size", Args: []string{"--token_cache_size=-1"}, Err: "token_cache_size -1: want 0 (none) or more"},
		{Name: "[DEFAULT] console_token_ttl, Nova's old name", File: "[DEFAULT]\nconsole_token_ttl = 120\n",
			Want: func(c *Config) { c.TokenTTL = 120 * time.Second }},
		{Name: "[vncgate] listeners", File: "[vncgate]\ngrpc_listen = 10.0.0.1:1\nrest_listen = 10.0.0.1:2\n",
			Want: func(c *Config) { c.GRPCListen, c.RESTListen = "10.0.0.1:1", "10.0.0.1:2" }},
		{Name: "[vncgate] etcd", File: "[vncgate]\netcd_endpoints = a:2379, b:2379\netcd_cert = c.pem\netcd_key = k.pem\netcd_ca = ca.pem\netcd_timeout = 2\n",
			Want: func(c *Config) {
				c.EtcdEndpoints, c.EtcdTimeout = []string{"a:2379", "b:2379"}, 2*time.Second
				c.EtcdTLS = tlsconfig.Files{Cert: "c.pem", Key: "k.pem", CA: "ca.pem"}
			}},
		{Name: "[vncgate] gRPC and REST TLS, key in the certificate", File: "[vncgate]\ngrpc_cert = g.pem\ngrpc_ca = ca.pem\nrest_cert = r.pem\nrest_key = rk.pem\nrest_ca = rca.pem\n",
			Want: func(c *Config) {
				c.GRPCTLS = tlsconfig.Files{Cert: "g.pem", CA: "ca.pem"}
				c.RESTTLS = tlsconfig.Files{Cert: "r.pem", Key: "rk.pem", CA: "rca.pem"}
			}},
		{Name: "[vncgate] compute_timeout as a Go duration", File: "[vncgate]\ncompute_timeout = 1500ms\n",
			Want: func(c *Config) { c.ComputeTimeout = 1500 * time.Millisecond }},
		{Name: "[vncgate] console types and single use", File: "[vncgate]\nenabled_console_types = novnc\nsingle_use_tokens = yes\n",
			Want: func(c *Config) { c.EnabledConsoleTypes, c.SingleUseTokens = []string{"novnc"}, true }},
		{Name: "[vncgate] caller authentication", File: "[vncgate]\nallow_plaintext = true\napi_keys_file = /etc/vncgate/api-keys\ncert_role_source = subject\n" +
			"rest_allowed_hosts = consoleauth.example, 10.0.0.1\n",
			Want: func(c *Config) {
				c.AllowPlaintext, c.APIKeysFile, c.CertRoleSource = true, "/etc/vncgate/api-keys", "subject"
				c.RESTAllowedHosts = []string{"consoleauth.example", "10.0.0.1"}
			}},
		{Name: "[vncgate] rest_auth = keystone with [keystone_authtoken]", File: "[vncgate]\nrest_auth = keystone\nkeystone_mint_roles = member\n" +
			"[keystone_authtoken]\nauth_url = http://keystone:5000/v3\nusername = nova\npassword = secret\nproject_name = service\n",
			Want: func(c *Config) {
				c.RESTAuth, c.KeystoneMintRoles = "keystone", []string{"member"}
				c.Keystone.AuthURL, c.Keystone.Username, c.Keystone.Password, c.Keystone.ProjectName = "http://keystone:5000/v3", "nova", "secret", "service"
			}},
		{Name: "rest_auth = keystone without auth_url", Args: []string{"--rest_auth=keystone"}, Err: "rest_auth = keystone needs [keystone_authtoken] auth_url"},
		{Name: "unknown rest_auth", Args: []string{"--rest_auth=ldap"}, Err: "rest_auth"},
		{Name: "unknown cert_role_source", Args: []string{"--cert_role_source=cn"}, Err: "cert_role_source"},
		{Name: "[vncgate] logging", File: "[vncgate]\nlog_level = warn\nlog_format = text\n[DEFAULT]\ndebug = true\n",
			Want: func(c *Config) { c.Log = logging.Options{Level: slog.LevelWarn, Format: "text", Debug: true} }},
		{Name: "environment and flags over files", File: "[consoleauth]\ntoken_ttl = 300\n[vncgate]\ngrpc_listen = file:1\n",
			Env: map[string]string{"VNCGATE_TOKEN_TTL": "30", "VNCGATE_GRPC_LISTEN": "env:1"}, Args: []string{"--grpc_listen=flag:1", "--vnc_enabled=false"},
			Want: func(c *Config) {
				c.TokenTTL, c.GRPCListen = 30*time.Second, "flag:1"
				c.VNCEnabled, c.EnabledConsoleTypes = false, nil
			}},
		{Name: "token_ttl in the wrong section", File: "[vnc]\ntoken_ttl = 300\n", Err: "site.conf:2: [vnc] token_ttl: token_ttl is an option of [consoleauth], not [vnc]"},
		{Name: "misspelt option", File: "[vncgate]\ngrpc_lsten = :1\n", Err: "site.conf:2: unknown option [vncgate] grpc_lsten (neither Nova's nor vncgate's); did you mean grpc_listen?"},
		{Name: "zero ttl", Args: []string{"--token_ttl=0"}, Err: "token_ttl 0s: want at least 1 second"},
		{Name: "no etcd", Args: []string{"--etcd_endpoints= , "}, Err: "etcd_endpoints is empty"},
		{Name: "key without certificate", Args: []string{"--rest_key=k.pem"}, Err: "rest_key: a key without a certificate"},
		{Name: "bad log level", Args: []string{"--log_level=loud"}, Err: "log_level"},
		{Name: "stray argument", Args: []string{"extra"}, Err: `unexpected argument "extra"`},
	}, defaults, func(args []string) (Config, error) {
		c, _, err := loadConfig(args)
		return c, err
	})
}

// siteConf is a site file on top of Nova's sample nova.conf: what an
// operator adds for consoleauth.
const siteConf = `[DEFAULT]
my_ip = 192.0.2.10

[vnc]
# The console URLs handed to users.
novncproxy_base_url = "https://$my_ip:6080/vnc_lite.html"
xvpvncproxy_base_url = https://$my_ip:6081/console

[consoleauth]
token_ttl = 120

[vncgate]
grpc_listen = %s
rest_listen = %s
etcd_endpoints = %s
enabled_console_types = novnc,
  xvpvnc
grpc_cert = %s
grpc_key = %s
grpc_ca = %s
api_keys_file = %s
`

// TestNovaConf reads Debian's nova.conf (Nova's own generated sample) and
// a site file, then starts consoleauth from them: the console URL it
// mints for a caller with a bearer key carries the site's base URL.
func TestNovaConf(t *testing.T) {
	sample := novaconf.Sample(t)
	srv, cli := etcd.Start(t)
	pki := testworld.NewPKI(t)
	grpcTLS := pki.Files(t, "consoleauth-1", authn.RoleConsoleAuth)
	keysFile, keys := testworld.KeysFile(t, authn.Identity{Name: "nova-api", Role: authn.RoleAPI})
	grpcAddr, restAddr := freeAddr(t), freeAddr(t)
	site := filepath.Join(t.TempDir(), "site.conf")
	if err := os.WriteFile(site, []byte(fmt.Sprintf(siteConf, grpcAddr, restAddr, srv.Endpoint, grpcTLS.Cert, grpcTLS.Key, grpcTLS.CA, keysFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, notes, err := loadConfig([]string{"--config-file", sample, "--config-file", site})
	if err != nil {
		t.Fatal(err)
	}
	want := defaults()
	want.GRPCListen, want.RESTListen, want.EtcdEndpoints = grpcAddr, restAddr, []string{srv.Endpoint}
	want.NoVNCBaseURL, want.XVPBaseURL = "https://192.0.2.10:6080/vnc_lite.html", "https://192.0.2.10:6081/console"
	want.TokenTTL = 120 * time.Second
	want.GRPCTLS, want.APIKeysFile = grpcTLS, keysFile
	// Nova's sample sets [keystone_authtoken]; read, unused with rest_auth = keys.
	want.Keystone.AuthURL, want.Keystone.Username, want.Keystone.ProjectName = "http://localhost:5000", "nova", "service"
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config:\ngot  %+v\nwant %+v", cfg, want)
	}
	if len(notes.Files) != 2 || len(notes.Unsupported) != 0 {
		t.Errorf("notes: got %+v", notes)
	}

	agent := testworld.StartAgentTLS(t, cli, "compute-1", pki.Files(t, "compute-1", authn.RoleCompute))
	agent.AddInstance(t, instanceUUID, testworld.Console{Host: "127.0.0.1", Port: 5900})
	startRun(t, cfg, restAddr)
	code, b := post(t, restAddr, keys["nova-api"], `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`)
	if code != http.StatusOK || !strings.Contains(b, `"url":"https://192.0.2.10:6080/vnc_lite.html?path=`) {
		t.Errorf("POST remote-consoles: got %d %s, want a URL on the site's novncproxy_base_url", code, b)
	}
	if code, b := post(t, restAddr, "", `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`); code != http.StatusUnauthorized {
		t.Errorf("POST remote-consoles without a key: got %d %s, want 401", code, b)
	}
}

// post asks for a novnc console URL of instanceUUID with a bearer key.
func post(t *testing.T, restAddr, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+restAddr+"/v2.1/servers/"+instanceUUID+"/remote-consoles", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestVNCDisabled: with [vnc] enabled = false consoleauth runs and answers
// every console request 501, as Nova answers a console type it does not
// offer.
func TestVNCDisabled(t *testing.T) {
	srv, _ := etcd.Start(t)
	restAddr := freeAddr(t)
	keysFile, keys := testworld.KeysFile(t, authn.Identity{Name: "nova-api", Role: authn.RoleAPI})
	cfg, _, err := loadConfig([]string{"--vnc_enabled=false", "--grpc_listen=127.0.0.1:0", "--rest_listen=" + restAddr,
		"--etcd_endpoints=" + srv.Endpoint, "--api_keys_file=" + keysFile, "--admin_listen="})
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, cfg, restAddr)
	for _, typ := range []string{"novnc", "xvpvnc"} {
		if code, b := post(t, restAddr, keys["nova-api"], `{"remote_console": {"protocol": "vnc", "type": "`+typ+`"}}`); code != http.StatusNotImplemented {
			t.Errorf("%s with [vnc] enabled = false: got %d %s, want 501", typ, code, b)
		}
	}
}

// startRun runs consoleauth until the test ends, once /healthz answers.
func startRun(t *testing.T, cfg Config, restAddr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	waitHealthy(t, restAddr, done)
}

// waitHealthy waits until consoleauth's /healthz answers 200, or run
// returns; the deadline only bounds a hang.
func waitHealthy(t *testing.T, restAddr string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + restAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case runErr := <-done:
			done <- runErr // for the cleanup
			t.Fatalf("run returned before /healthz answered: %v", runErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz never answered 200: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const instanceUUID = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"

func TestRunServesUntilCanceled(t *testing.T) {
	etcdSrv, _ := etcd.Start(t)
	grpcAddr, restAddr := freeAddr(t), freeAddr(t)
	keysFile, _ := testworld.KeysFile(t)
	cfg, _, err := loadConfig([]string{"-grpc_listen", grpcAddr, "-rest_listen", restAddr, "-etcd_endpoints", etcdSrv.Endpoint, "-api_keys_file", keysFile, "-admin_listen="})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	waitHealthy(t, restAddr, done)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel: got %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if c, err := net.DialTimeout("tcp", grpcAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("gRPC listener still accepting after shutdown")
	}
}

// TestRunRefuses: consoleauth does not start with a bad base URL, nor with
// its defaults (plaintext on all interfaces) or without a way to
// authenticate REST callers, and says what to set.
func TestRunRefuses(t *testing.T) {
	keysFile, _ := testworld.KeysFile(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"relative novncproxy_base_url", []string{"-novncproxy_base_url", "/relative", "-grpc_listen", "127.0.0.1:0", "-rest_listen", "127.0.0.1:0", "-api_keys_file", keysFile},
			"novncproxy_base_url"},
		{"defaults: plaintext on 0.0.0.0", nil,
			"grpc_listen 0.0.0.0:6090: plaintext off loopback; configure TLS for it, or set [vncgate] allow_plaintext = true"},
		{"REST plaintext on 0.0.0.0", []string{"-grpc_listen", "127.0.0.1:0", "-api_keys_file", keysFile}, "rest_listen 0.0.0.0:6091: plaintext off loopback"},
		{"no REST credentials", []string{"-grpc_listen", "127.0.0.1:0", "-rest_listen", "127.0.0.1:0"}, "the REST API has no way to authenticate callers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadConfig(tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if err := run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestKeygen: the key printed works with the line printed, and the line
// holds no key.
func TestKeygen(t *testing.T) {
	var out strings.Builder
	if err := keygen(&out, []string{"nova-api", "api"}); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(out.String()) {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) != 2 || strings.Contains(lines[1], lines[0]) {
		t.Fatalf("output %q: want the key and the file's line, the line without the key", out.String())
	}
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(lines[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := authn.LoadKeyFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := keys.Lookup(lines[0]); !ok || id.Name != "nova-api" || id.Role != authn.RoleAPI {
		t.Errorf("the printed key: got %+v, %v; want nova-api with role api", id, ok)
	}
	for _, args := range [][]string{nil, {"x"}, {"x", "root"}, {"two words", "api"}} {
		if err := keygen(io.Discard, args); err == nil {
			t.Errorf("keygen %q: got no error", args)
		}
	}
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
