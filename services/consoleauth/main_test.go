package main

import (
	"context"
	"errors"
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

	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
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
			NoVNCBaseURL:        "http://127.0.0.1:6080/vnc_lite.html",
			XVPBaseURL:          "http://127.0.0.1:6081/console",
			EnabledConsoleTypes: []string{"novnc", "xvpvnc"},
		},
		VNCEnabled: true,
		Log:        logging.Options{Level: slog.LevelInfo, Format: "json"},
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
`

// TestNovaConf reads Debian's nova.conf (Nova's own generated sample) and
// a site file, then starts consoleauth from them: the console URL it
// mints carries the site's base URL.
func TestNovaConf(t *testing.T) {
	sample := novaconf.Sample(t)
	srv, cli := etcd.Start(t)
	grpcAddr, restAddr := freeAddr(t), freeAddr(t)
	site := filepath.Join(t.TempDir(), "site.conf")
	if err := os.WriteFile(site, []byte(fmt.Sprintf(siteConf, grpcAddr, restAddr, srv.Endpoint)), 0o600); err != nil {
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
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config:\ngot  %+v\nwant %+v", cfg, want)
	}
	if len(notes.Files) != 2 || len(notes.Unsupported) != 0 {
		t.Errorf("notes: got %+v", notes)
	}

	agent := testworld.StartAgent(t, cli, "compute-1")
	agent.AddInstance(t, instanceUUID, testworld.Console{Host: "127.0.0.1", Port: 5900})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	waitHealthy(t, restAddr)
	body := `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	resp, err := http.Post("http://"+restAddr+"/v2.1/servers/"+instanceUUID+"/remote-consoles", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"url":"https://192.0.2.10:6080/vnc_lite.html?path=`) {
		t.Errorf("POST remote-consoles: got %d %s, want a URL on the site's novncproxy_base_url", resp.StatusCode, b)
	}
}

// TestVNCDisabled: with [vnc] enabled = false consoleauth runs and answers
// every console request 501, as Nova answers a console type it does not
// offer.
func TestVNCDisabled(t *testing.T) {
	srv, cli := etcd.Start(t)
	restAddr := freeAddr(t)
	cfg, _, err := loadConfig([]string{"--vnc_enabled=false", "--grpc_listen=127.0.0.1:0", "--rest_listen=" + restAddr, "--etcd_endpoints=" + srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	testworld.StartAgent(t, cli, "compute-1").AddInstance(t, instanceUUID, testworld.Console{Host: "127.0.0.1", Port: 5900})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	waitHealthy(t, restAddr)
	for _, typ := range []string{"novnc", "xvpvnc"} {
		body := `{"remote_console": {"protocol": "vnc", "type": "` + typ + `"}}`
		resp, err := http.Post("http://"+restAddr+"/v2.1/servers/"+instanceUUID+"/remote-consoles", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotImplemented {
			t.Errorf("%s with [vnc] enabled = false: got %d, want 501", typ, resp.StatusCode)
		}
	}
}

// waitHealthy waits until consoleauth's /healthz answers 200.
func waitHealthy(t *testing.T, restAddr string) {
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
	cfg, _, err := loadConfig([]string{"-grpc_listen", grpcAddr, "-rest_listen", restAddr, "-etcd_endpoints", etcdSrv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + restAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("healthz never answered 200: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
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

func TestRunRefusesBadBaseURL(t *testing.T) {
	cfg, _, err := loadConfig([]string{"-novncproxy_base_url", "/relative", "-grpc_listen", "127.0.0.1:0", "-rest_listen", "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("relative novncproxy_base_url: got %v, want a configuration error", err)
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
