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
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		file string // a site file
		args []string
		env  map[string]string
		want func(*Config)
		err  string
	}{
		{name: "defaults", want: func(*Config) {}},
		{name: "[vnc] novncproxy_base_url", file: "[vnc]\nnovncproxy_base_url = https://c.example/vnc_lite.html\n",
			want: func(c *Config) { c.NoVNCBaseURL = "https://c.example/vnc_lite.html" }},
		{name: "[vnc] xvpvncproxy_base_url", file: "[vnc]\nxvpvncproxy_base_url = https://c.example:6081/console\n",
			want: func(c *Config) { c.XVPBaseURL = "https://c.example:6081/console" }},
		{name: "[vnc] enabled = false turns every console type off", file: "[vnc]\nenabled = false\n",
			want: func(c *Config) { c.VNCEnabled, c.EnabledConsoleTypes = false, nil }},
		{name: "[consoleauth] token_ttl in whole seconds", file: "[consoleauth]\ntoken_ttl = 300\n",
			want: func(c *Config) { c.TokenTTL = 300 * time.Second }},
		{name: "[DEFAULT] console_token_ttl, Nova's old name", file: "[DEFAULT]\nconsole_token_ttl = 120\n",
			want: func(c *Config) { c.TokenTTL = 120 * time.Second }},
		{name: "[vncgate] listeners", file: "[vncgate]\ngrpc_listen = 10.0.0.1:1\nrest_listen = 10.0.0.1:2\n",
			want: func(c *Config) { c.GRPCListen, c.RESTListen = "10.0.0.1:1", "10.0.0.1:2" }},
		{name: "[vncgate] etcd", file: "[vncgate]\netcd_endpoints = a:2379, b:2379\netcd_cert = c.pem\netcd_key = k.pem\netcd_ca = ca.pem\netcd_timeout = 2\n",
			want: func(c *Config) {
				c.EtcdEndpoints, c.EtcdTimeout = []string{"a:2379", "b:2379"}, 2*time.Second
				c.EtcdTLS = tlsconfig.Files{Cert: "c.pem", Key: "k.pem", CA: "ca.pem"}
			}},
		{name: "[vncgate] gRPC and REST TLS, key in the certificate", file: "[vncgate]\ngrpc_cert = g.pem\ngrpc_ca = ca.pem\nrest_cert = r.pem\nrest_key = rk.pem\nrest_ca = rca.pem\n",
			want: func(c *Config) {
				c.GRPCTLS = tlsconfig.Files{Cert: "g.pem", CA: "ca.pem"}
				c.RESTTLS = tlsconfig.Files{Cert: "r.pem", Key: "rk.pem", CA: "rca.pem"}
			}},
		{name: "[vncgate] compute_timeout as a Go duration", file: "[vncgate]\ncompute_timeout = 1500ms\n",
			want: func(c *Config) { c.ComputeTimeout = 1500 * time.Millisecond }},
		{name: "[vncgate] console types and single use", file: "[vncgate]\nenabled_console_types = novnc\nsingle_use_tokens = yes\n",
			want: func(c *Config) { c.EnabledConsoleTypes, c.SingleUseTokens = []string{"novnc"}, true }},
		{name: "[vncgate] logging", file: "[vncgate]\nlog_level = warn\nlog_format = text\n[DEFAULT]\ndebug = true\n",
			want: func(c *Config) { c.Log = logging.Options{Level: slog.LevelWarn, Format: "text", Debug: true} }},
		{name: "environment and flags over files", file: "[consoleauth]\ntoken_ttl = 300\n[vncgate]\ngrpc_listen = file:1\n",
			env: map[string]string{"VNCGATE_TOKEN_TTL": "30", "VNCGATE_GRPC_LISTEN": "env:1"}, args: []string{"--grpc_listen=flag:1", "--vnc_enabled=false"},
			want: func(c *Config) {
				c.TokenTTL, c.GRPCListen = 30*time.Second, "flag:1"
				c.VNCEnabled, c.EnabledConsoleTypes = false, nil
			}},
		{name: "token_ttl in the wrong section", file: "[vnc]\ntoken_ttl = 300\n", err: "site.conf:2: [vnc] token_ttl: token_ttl is an option of [consoleauth], not [vnc]"},
		{name: "misspelt option", file: "[vncgate]\ngrpc_lsten = :1\n", err: "site.conf:2: unknown option [vncgate] grpc_lsten (neither Nova's nor vncgate's); did you mean grpc_listen?"},
		{name: "zero ttl", args: []string{"--token_ttl=0"}, err: "token_ttl 0s: want at least 1 second"},
		{name: "no etcd", args: []string{"--etcd_endpoints= , "}, err: "etcd_endpoints is empty"},
		{name: "key without certificate", args: []string{"--rest_key=k.pem"}, err: "rest_key: a key without a certificate"},
		{name: "bad log level", args: []string{"--log_level=loud"}, err: "log_level"},
		{name: "stray argument", args: []string{"extra"}, err: `unexpected argument "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := tc.args
			if tc.file != "" {
				site := filepath.Join(dir, "site.conf")
				if err := os.WriteFile(site, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append([]string{"--config-file", site}, args...)
			}
			got, _, err := loadConfig(args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config:\ngot  %+v\nwant %+v", got, want)
			}
		})
	}
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
