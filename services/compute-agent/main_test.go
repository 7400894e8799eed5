package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/novaconf"
	"github.com/vncgate/vncgate/testkit/rfb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const uuidDemo = "5f1c0c3e-8d6c-4a57-9a2e-0c6f8f0f4b1a"

// defaults is the configuration without any option set.
func defaults() Config {
	hostname, _ := os.Hostname()
	return Config{
		Host: hostname, VNCEnabled: true, ProxyClientAddress: "127.0.0.1", ServerListen: "127.0.0.1", LibvirtURI: "qemu:///system",
		GRPCListen: "0.0.0.0:6092", EtcdEndpoints: []string{"127.0.0.1:2379"}, Driver: "static",
		RegistrationTTL: 10 * time.Second, ConsoleAuthAddress: "127.0.0.1:6090", CertRoleSource: "san",
		AdminListen: "127.0.0.1:6192",
		Log:         logging.Options{Level: slog.LevelInfo, Format: "json"},
	}
}

// TestOptions: every option, read from the section Nova (or vncgate) puts
// it in, with its meaning.
func TestOptions(t *testing.T) {
	novaconf.RunCases(t, []novaconf.Case[Config]{
		{Name: "defaults", Want: func(*Config) {}},
		{Name: "[DEFAULT] host and my_ip", File: "[DEFAULT]\nhost = compute-7\nmy_ip = 10.0.0.7\n",
			Want: func(c *Config) { c.Host, c.MyIP = "compute-7", "10.0.0.7" }},
		{Name: "[vnc] server_proxyclient_address = $my_ip, as Nova's docs write it", File: "[DEFAULT]\nmy_ip = 10.0.0.7\n[vnc]\nserver_proxyclient_address = $my_ip\nserver_listen = 0.0.0.0\n",
			Want: func(c *Config) { c.MyIP, c.ProxyClientAddress, c.ServerListen = "10.0.0.7", "10.0.0.7", "0.0.0.0" }},
		{Name: "[libvirt] connection_uri", File: "[libvirt]\nconnection_uri = qemu+tcp://h/system\n",
			Want: func(c *Config) { c.LibvirtURI = "qemu+tcp://h/system" }},
		{Name: "[vncgate] options", File: "[vncgate]\ngrpc_listen = 10.0.0.1:7\nadvertise_address = agent.example:7\netcd_endpoints = a:1,b:2\n" +
			"etcd_cert = e.pem\ngrpc_cert = g.pem\ngrpc_ca = ca.pem\ndriver = qmp\nqmp_sockets = u=/s\ninventory_file = i.json\nregistration_ttl = 3\nconsoleauth_address = ca:6090\n",
			Want: func(c *Config) {
				c.GRPCListen, c.AdvertiseAddress, c.EtcdEndpoints = "10.0.0.1:7", "agent.example:7", []string{"a:1", "b:2"}
				c.EtcdTLS, c.GRPCTLS = tlsconfig.Files{Cert: "e.pem"}, tlsconfig.Files{Cert: "g.pem", CA: "ca.pem"}
				c.Driver, c.QMPSockets, c.InventoryFile = "qmp", "u=/s", "i.json"
				c.RegistrationTTL, c.ConsoleAuthAddress = 3*time.Second, "ca:6090"
			}},
		{Name: "flags and environment over files", File: "[DEFAULT]\nhost = from-file\n[vncgate]\nregistration_ttl = 30\n",
			Args: []string{"--host", "compute-7", "--etcd_endpoints", "10.0.0.1:2379, 10.0.0.2:2379", "--libvirt_uri=qemu:///session"},
			Env:  map[string]string{"VNCGATE_REGISTRATION_TTL": "3", "VNCGATE_HOST": "ignored", "VNCGATE_SERVER_PROXYCLIENT_ADDRESS": "192.0.2.1"},
			Want: func(c *Config) {
				c.Host, c.RegistrationTTL, c.ProxyClientAddress = "compute-7", 3*time.Second, "192.0.2.1"
				c.EtcdEndpoints, c.LibvirtURI = []string{"10.0.0.1:2379", "10.0.0.2:2379"}, "qemu:///session"
			}},
		{Name: "[vncgate] allow_plaintext and cert_role_source", File: "[vncgate]\nallow_plaintext = yes\ncert_role_source = subject\n",
			Want: func(c *Config) { c.AllowPlaintext, c.CertRoleSource = true, "subject" }},
		{Name: "unknown cert_role_source", Args: []string{"--cert_role_source", "cn"}, Err: "cert_role_source"},
		{Name: "[vnc] enabled = false", File: "[vnc]\nenabled = false\n", Err: "[vnc] enabled is false"},
		{Name: "misspelt option", File: "[vnc]\nserver_proxyclient_adress = 1.2.3.4\n",
			Err: "site.conf:2: unknown option [vnc] server_proxyclient_adress (neither Nova's nor vncgate's); did you mean server_proxyclient_address?"},
		{Name: "bad driver", File: "[vncgate]\ndriver = hyperv\n", Err: `site.conf:2: [vncgate] driver = "hyperv": want static, libvirt or qmp`},
		{Name: "host with slash", Args: []string{"--host", "a/b"}, Err: "contain no '/'"},
		{Name: "ttl zero", Args: []string{"--registration_ttl", "0"}, Err: "registration_ttl"},
		{Name: "bad log level", Args: []string{"--log_level", "loud"}, Err: "log_level"},
		{Name: "bad listen", Args: []string{"--grpc_listen", "6092"}, Err: "grpc_listen"},
		{Name: "[vncgate] admin_listen", File: "[vncgate]\nadmin_listen = 127.0.0.1:7192\n", Want: func(c *Config) { c.AdminListen = "127.0.0.1:7192" }},
		{Name: "admin_listen empty turns it off", Args: []string{"--admin_listen="}, Want: func(c *Config) { c.AdminListen = "" }},
		{Name: "bad admin_listen", Args: []string{"--admin_listen", "6192"}, Err: "admin_listen"},
		{Name: "no etcd", Args: []string{"--etcd_endpoints", " , "}, Err: "etcd_endpoints is empty"},
		{Name: "unknown flag", Args: []string{"--novncproxy_port", "1"}, Err: "flag provided but not defined"},
	}, defaults, func(args []string) (Config, error) {
		c, _, err := loadConfig(args)
		return c, err
	})
}

func TestAdvertiseFrom(t *testing.T) {
	tests := []struct{ listen, myIP, want string }{
		{"0.0.0.0:6092", "", "127.0.0.1:6092"},
		{"[::]:6092", "", "127.0.0.1:6092"},
		{"0.0.0.0:6092", "10.0.0.7", "10.0.0.7:6092"},
		{"10.1.2.3:6092", "10.0.0.7", "10.1.2.3:6092"},
		{"127.0.0.1:40000", "", "127.0.0.1:40000"},
	}
	for _, tt := range tests {
		addr, err := net.ResolveTCPAddr("tcp", tt.listen)
		if err != nil {
			t.Fatal(err)
		}
		if got := advertiseFrom(addr, tt.myIP); got != tt.want {
			t.Errorf("advertiseFrom(%s, %q): got %s, want %s", tt.listen, tt.myIP, got, tt.want)
		}
	}
}

func TestUnreachableVNC(t *testing.T) {
	for _, tc := range []struct {
		listen, proxyClient string
		warn                bool
	}{
		{"127.0.0.1", "127.0.0.1", false},
		{"0.0.0.0", "10.0.0.7", false},
		{"10.0.0.7", "10.0.0.7", false},
		{"127.0.0.1", "10.0.0.7", true},
		{"localhost", "compute-7.example", true},
	} {
		c := Config{ServerListen: tc.listen, ProxyClientAddress: tc.proxyClient}
		if got := c.unreachableVNC(); (got != "") != tc.warn {
			t.Errorf("server_listen %s, server_proxyclient_address %s: got %q, want a warning: %v", tc.listen, tc.proxyClient, got, tc.warn)
		}
	}
}

// siteConf is what an operator adds to Nova's sample nova.conf for the
// agent of one compute host.
const siteConf = `[DEFAULT]
host = compute-from-site
my_ip = 127.0.0.2

[vnc]
server_listen = 0.0.0.0
server_proxyclient_address = $my_ip

[vncgate]
grpc_listen = 0.0.0.0:0
etcd_endpoints = %s
inventory_file = %s
registration_ttl = 2
consoleauth_address = 127.0.0.1:1
grpc_cert = %s
grpc_key = %s
grpc_ca = %s
`

// TestNovaConf starts the agent from Debian's nova.conf (Nova's own
// generated sample) and a site file: it registers under the site's host,
// advertises my_ip, and hands out server_proxyclient_address.
func TestNovaConf(t *testing.T) {
	sample := novaconf.Sample(t)
	etcdSrv, cli := etcd.Start(t)
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	site := filepath.Join(t.TempDir(), "site.conf")
	pki := newPKI(t)
	grpcTLS := pki.files(t, "compute-from-site", "compute")
	if err := os.WriteFile(site, []byte(fmt.Sprintf(siteConf, etcdSrv.Endpoint, inventory, grpcTLS.Cert, grpcTLS.Key, grpcTLS.CA)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, notes, err := loadConfig([]string{"--config-file", sample, "--config-file", site})
	if err != nil {
		t.Fatal(err)
	}
	want := defaults()
	want.Host, want.MyIP, want.ServerListen, want.ProxyClientAddress = "compute-from-site", "127.0.0.2", "0.0.0.0", "127.0.0.2"
	want.GRPCListen, want.EtcdEndpoints, want.InventoryFile = "0.0.0.0:0", []string{etcdSrv.Endpoint}, inventory
	want.RegistrationTTL, want.ConsoleAuthAddress = 2*time.Second, "127.0.0.1:1"
	want.GRPCTLS = grpcTLS
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config:\ngot  %+v\nwant %+v", cfg, want)
	}
	if len(notes.Files) != 2 || len(notes.Unsupported) != 0 {
		t.Errorf("notes: got %+v", notes)
	}

	a := startRun(t, cfg, pki)
	_, port, _ := net.SplitHostPort(a.addr)
	eventually(t, 10*time.Second, "registration", func() error {
		val, ok, err := etcdGet(cli, registry.ComputeKey("compute-from-site"))
		var c registry.Compute
		if err != nil || !ok || json.Unmarshal([]byte(val), &c) != nil || c.Address != "127.0.0.2:"+port {
			return fmt.Errorf("compute key: got %q (%v), want address 127.0.0.2:%s (my_ip)", val, err, port)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo, ConsoleType: "novnc"})
	if err != nil || c.GetHost() != "127.0.0.2" || c.GetPort() != 5901 {
		t.Errorf("get console: got %v, %v; want 127.0.0.2:5901 (server_proxyclient_address = $my_ip)", c, err)
	}
}

func TestRunRefusesDrivers(t *testing.T) {
	tests := []struct{ driver, inventory, wantErr string }{
		{"libvirt", "", `libvirt uri "no-scheme": no scheme`},
		{"qmp", "", `qmp_sockets: "not-a-pair" is not uuid=path`},
		{"hyperv", "", `driver "hyperv" unknown`},
		{"static", "", "driver static needs inventory_file"},
		{"static", "/nonexistent/inventory.json", "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.driver+tt.inventory, func(t *testing.T) {
			cfg := testConfig(t, newPKI(t), "127.0.0.1:1", tt.inventory)
			cfg.Driver = tt.driver
			cfg.LibvirtURI = "no-scheme"
			cfg.QMPSockets = "not-a-pair"
			err := run(context.Background(), cfg, env{log: slog.New(slog.DiscardHandler)})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// testPKI is one test's CA, issuing certificates that name their role.
type testPKI struct{ ca *certs.CA }

func newPKI(t *testing.T) *testPKI { return &testPKI{certs.TestCA(t)} }

// files writes a certificate for name with role, its key and the CA.
func (p *testPKI) files(t *testing.T, name, role string) tlsconfig.Files {
	t.Helper()
	f, err := p.ca.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: name, Role: role}, "127.0.0.1", "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	return tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// creds are client credentials with a certificate for name with role
// (none when name is empty).
func (p *testPKI) creds(t *testing.T, name, role string) credentials.TransportCredentials {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}
	if name != "" {
		c, err := p.ca.IssueIdentity(certs.Identity{Name: name, Role: role}, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return credentials.NewTLS(cfg)
}

// testConfig is an agent on loopback with its compute certificate.
func testConfig(t *testing.T, pki *testPKI, etcdEndpoint, inventory string) Config {
	return Config{
		GRPCTLS:    pki.files(t, "compute-test", "compute"),
		GRPCListen: "127.0.0.1:0", Host: "compute-test", EtcdEndpoints: []string{etcdEndpoint},
		Driver: "static", InventoryFile: inventory, ProxyClientAddress: "127.0.0.1",
		RegistrationTTL: 2 * time.Second, ConsoleAuthAddress: "127.0.0.1:1", VNCEnabled: true,
	}
}

// agent is a run() started by a test.
type agent struct {
	addr   string
	client computeagentv1.ComputeAgentServiceClient
	health healthpb.HealthClient
	reload chan os.Signal
	stop   func() error
	// dial connects to the agent with creds.
	dial func(*testing.T, credentials.TransportCredentials) *grpc.ClientConn
}

// startRun runs the agent and connects to it as consoleauth.
func startRun(t *testing.T, cfg Config, pki *testPKI) *agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	a := &agent{reload: make(chan os.Signal, 1)}
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		done <- run(ctx, cfg, env{log: log, reload: a.reload, ready: func(addr string) { ready <- addr }})
	}()
	select {
	case a.addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("run not ready after 10s")
	}
	var stopped bool
	var runErr error
	a.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = errors.New("run did not return 15s after cancel")
			}
		}
		return runErr
	}
	t.Cleanup(func() { _ = a.stop() })
	a.dial = func(t *testing.T, creds credentials.TransportCredentials) *grpc.ClientConn {
		t.Helper()
		// A wildcard listener is dialled on loopback, which its certificate names.
		addr, err := net.ResolveTCPAddr("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(advertiseFrom(addr, ""), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	conn := a.dial(t, pki.creds(t, "consoleauth-1", "consoleauth"))
	a.client = computeagentv1.NewComputeAgentServiceClient(conn)
	a.health = healthpb.NewHealthClient(conn)
	return a
}

// demoVM serves the demo VNC server on loopback and returns its port.
func demoVM(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := rfb.NewServer(rfb.Options{Width: 64, Height: 48, Name: "demo"})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() { s.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func writeInventory(t *testing.T, path string, port int) {
	t.Helper()
	data := `{"instances": [{"uuid": "` + uuidDemo + `", "vnc_port": ` + strconv.Itoa(port) + `}]}`
	if err := os.WriteFile(path+".tmp", []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func etcdGet(cli *clientv3.Client, key string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return "", false, err
	}
	return string(resp.Kvs[0].Value), true, nil
}

// TestRun starts the whole agent against embedded etcd and a demo VM, and
// follows the console it reports to a real RFB handshake.
func TestRun(t *testing.T) {
	etcdSrv := etcd.New(t, "127.0.0.1:0")
	cli, err := clientv3.New(etcdclient.Config([]string{etcdSrv.Endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	port := demoVM(t)
	writeInventory(t, inventory, port)

	pki := newPKI(t)
	a := startRun(t, testConfig(t, pki, etcdSrv.Endpoint, inventory), pki)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	eventually(t, 10*time.Second, "registration", func() error {
		val, ok, err := etcdGet(cli, registry.ComputeKey("compute-test"))
		var c registry.Compute
		if err != nil || !ok || json.Unmarshal([]byte(val), &c) != nil || c.Address != a.addr {
			return fmt.Errorf("compute key: got %q (%v), want address %s", val, err, a.addr)
		}
		loc, ok, err := etcdGet(cli, registry.ComputeInstanceKey("compute-test", uuidDemo))
		if err != nil || !ok || !strings.Contains(loc, `"compute-test"`) {
			return fmt.Errorf("location: got %q (%v), want compute-test", loc, err)
		}
		return nil
	})
	if h, err := a.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: got %v (%v), want SERVING", h.GetStatus(), err)
	}

	c, err := a.client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo, ConsoleType: "novnc"})
	if err != nil {
		t.Fatalf("get console: %v", err)
	}
	if c.GetHost() != "127.0.0.1" || int(c.GetPort()) != port {
		t.Fatalf("get console: got %s:%d, want 127.0.0.1:%d", c.GetHost(), c.GetPort(), port)
	}
	vnc, err := net.DialTimeout("tcp", net.JoinHostPort(c.GetHost(), strconv.Itoa(int(c.GetPort()))), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer vnc.Close()
	_ = vnc.SetDeadline(time.Now().Add(10 * time.Second))
	if si, err := rfb.Handshake(vnc); err != nil || si.Name != "demo" {
		t.Fatalf("handshake with the reported console: got %+v, %v; want the demo VM", si, err)
	}
	v, err := a.client.ValidateConsolePort(ctx, &computeagentv1.ValidateConsolePortRequest{InstanceUuid: uuidDemo, ConsoleType: "novnc", Host: "127.0.0.1", Port: int32(port)})
	if err != nil || !v.GetValid() {
		t.Errorf("validate: got %v, %v; want valid", v, err)
	}

	// SIGHUP re-reads the inventory.
	writeInventory(t, inventory, port+1)
	a.reload <- syscall.SIGHUP
	eventually(t, 5*time.Second, "reload", func() error {
		c, err := a.client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo})
		if err != nil || int(c.GetPort()) != port+1 {
			return fmt.Errorf("got %v, %v; want port %d", c, err, port+1)
		}
		return nil
	})

	if err := a.stop(); err != nil {
		t.Fatalf("run: got %v, want nil", err)
	}
	if _, ok, err := etcdGet(cli, registry.ComputeKey("compute-test")); ok || err != nil {
		t.Errorf("compute key after stop: got present=%v (%v), want gone", ok, err)
	}
	if _, ok, _ := etcdGet(cli, registry.ComputeInstanceKey("compute-test", uuidDemo)); !ok {
		t.Error("location after stop: got none, want it kept (the instance still exists)")
	}
}

// TestRunBeforeEtcd starts the agent while etcd is down: it serves consoles
// at once and registers when etcd comes up.
func TestRunBeforeEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := l.Addr().String()
	l.Close()
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	pki := newPKI(t)
	a := startRun(t, testConfig(t, pki, endpoint, inventory), pki)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := a.client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo}); err != nil || c.GetPort() != 5901 {
		t.Fatalf("get console without etcd: got %v, %v; want port 5901", c, err)
	}

	etcdSrv := etcd.New(t, endpoint)
	cli, err := clientv3.New(etcdclient.Config([]string{etcdSrv.Endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	eventually(t, 15*time.Second, "registration once etcd is up", func() error {
		if _, ok, err := etcdGet(cli, registry.ComputeKey("compute-test")); !ok || err != nil {
			return fmt.Errorf("compute key absent (%v)", err)
		}
		if _, ok, err := etcdGet(cli, registry.ComputeInstanceKey("compute-test", uuidDemo)); !ok || err != nil {
			return fmt.Errorf("location absent (%v)", err)
		}
		return nil
	})
	if err := a.stop(); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
}

// TestCallers: the agent answers consoleauth only, over mutual TLS; health
// is open to any caller the TLS handshake let in.
func TestCallers(t *testing.T) {
	etcdSrv, _ := etcd.Start(t)
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	pki := newPKI(t)
	a := startRun(t, testConfig(t, pki, etcdSrv.Endpoint, inventory), pki)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		name    string
		creds   credentials.TransportCredentials
		want    codes.Code
		wantMsg string
	}{
		{"consoleauth", pki.creds(t, "consoleauth-1", "consoleauth"), codes.OK, ""},
		{"a proxy", pki.creds(t, "novnc-1", "proxy"), codes.PermissionDenied, "role proxy may not call GetConsole"},
		{"another compute agent", pki.creds(t, "compute-2", "compute"), codes.PermissionDenied, "role compute may not call GetConsole"},
		{"the API layer", pki.creds(t, "nova-api", "api"), codes.PermissionDenied, "role api may not call GetConsole"},
		{"a certificate without a role", pki.creds(t, "someone", ""), codes.Unauthenticated, `certificate "CN=someone": no role`},
		{"TLS without a certificate", pki.creds(t, "", ""), codes.Unavailable, ""},
		{"another CA's consoleauth", newPKI(t).creds(t, "consoleauth-1", "consoleauth"), codes.Unavailable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := computeagentv1.NewComputeAgentServiceClient(a.dial(t, tt.creds))
			_, err := client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo})
			st := status.Convert(err)
			if st.Code() != tt.want || !strings.HasPrefix(st.Message(), tt.wantMsg) {
				t.Errorf("GetConsole: got %s %q, want %s %q", st.Code(), st.Message(), tt.want, tt.wantMsg)
			}
			_, err = client.ValidateConsolePort(ctx, &computeagentv1.ValidateConsolePortRequest{InstanceUuid: uuidDemo, Host: "127.0.0.1", Port: 5901})
			if got := status.Code(err); got != tt.want {
				t.Errorf("ValidateConsolePort: got %v, want %s", err, tt.want)
			}
		})
	}
	consoleauth := computeagentv1.NewComputeAgentServiceClient(a.dial(t, pki.creds(t, "consoleauth-1", "consoleauth")))
	if _, err := consoleauth.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: strings.Repeat("x", 100<<10)}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("100 KiB request: got %v, want ResourceExhausted", err)
	}
	proxy := healthpb.NewHealthClient(a.dial(t, pki.creds(t, "novnc-1", "proxy")))
	if h, err := proxy.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check by a proxy: got %v, %v; want SERVING", h, err)
	}
}

// TestPlaintextAgent: on a plaintext loopback listener no caller is known:
// every call but health is refused, saying what to configure.
func TestPlaintextAgent(t *testing.T) {
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	cfg := testConfig(t, newPKI(t), "127.0.0.1:1", inventory)
	cfg.GRPCTLS = tlsconfig.Files{}
	a := startRun(t, cfg, newPKI(t))
	conn := a.dial(t, insecure.NewCredentials())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := computeagentv1.NewComputeAgentServiceClient(conn).GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo})
	if st := status.Convert(err); st.Code() != codes.Unauthenticated ||
		st.Message() != "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca" {
		t.Errorf("plaintext GetConsole: got %v, want Unauthenticated saying what to configure", err)
	}
	if h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("plaintext health check: got %v, %v; want SERVING", h, err)
	}
}

// TestRunRefusesPlaintext: without TLS, the agent does not listen off
// loopback nor send revocations off loopback, unless allow_plaintext.
func TestRunRefusesPlaintext(t *testing.T) {
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"grpc_listen on all interfaces", func(c *Config) { c.GRPCListen = "0.0.0.0:0" },
			"grpc_listen 0.0.0.0:0: plaintext off loopback; configure TLS for it, or set [vncgate] allow_plaintext = true"},
		{"consoleauth elsewhere", func(c *Config) { c.ConsoleAuthAddress = "consoleauth.example:6090" },
			"consoleauth_address consoleauth.example:6090: plaintext off loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, newPKI(t), "127.0.0.1:1", inventory)
			cfg.GRPCTLS = tlsconfig.Files{}
			tt.edit(&cfg)
			if err := run(context.Background(), cfg, env{log: slog.New(slog.DiscardHandler)}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("allowed", func(t *testing.T) {
		cfg := testConfig(t, newPKI(t), "127.0.0.1:1", inventory)
		cfg.GRPCTLS, cfg.GRPCListen, cfg.AllowPlaintext = tlsconfig.Files{}, "0.0.0.0:0", true
		if err := startRun(t, cfg, newPKI(t)).stop(); err != nil {
			t.Errorf("with allow_plaintext: %v", err)
		}
	})
}

// revocationsSeen is consoleauth as far as the agent's revocations go: it
// requires mutual TLS, lets only compute agents revoke, and reports who
// revoked what.
type revocationsSeen struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	seen chan authn.Identity
}

func (r *revocationsSeen) RevokeInstanceTokens(ctx context.Context, req *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	id, _ := authn.FromContext(ctx)
	select {
	case r.seen <- id:
	default: // the test reads the first ones
	}
	return &consoleauthv1.RevokeInstanceTokensResponse{}, nil
}

// TestRevocationsPresentTheCertificate: the agent's link to consoleauth
// presents its compute certificate, so consoleauth knows which host
// revokes.
func TestRevocationsPresentTheCertificate(t *testing.T) {
	etcdSrv := etcd.New(t, "127.0.0.1:0")
	pki := newPKI(t)
	so, err := pki.files(t, "consoleauth-1", "consoleauth").ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	guard := authn.NewGuard(authn.GuardOptions{Policy: authn.Policy{
		consoleauthv1.ConsoleAuthService_RevokeInstanceTokens_FullMethodName: {authn.RoleCompute}}})
	fake := &revocationsSeen{seen: make(chan authn.Identity, 16)}
	srv := grpc.NewServer(so, grpc.UnaryInterceptor(guard.UnaryInterceptor()))
	consoleauthv1.RegisterConsoleAuthServiceServer(srv, fake)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	cfg := testConfig(t, pki, etcdSrv.Endpoint, inventory)
	cfg.ConsoleAuthAddress = l.Addr().String()
	a := startRun(t, cfg, pki)
	cli, err := clientv3.New(etcdclient.Config([]string{etcdSrv.Endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	eventually(t, 10*time.Second, "instance published", func() error {
		if _, ok, err := etcdGet(cli, registry.ComputeInstanceKey("compute-test", uuidDemo)); !ok || err != nil {
			return fmt.Errorf("not published yet (%v)", err)
		}
		return nil
	})
	// The instance leaves this host: its tokens are revoked.
	if err := os.WriteFile(inventory, []byte(`{"instances": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a.reload <- syscall.SIGHUP
	select {
	case id := <-fake.seen:
		if want := (authn.Identity{Name: "compute-test", Role: authn.RoleCompute, Host: "compute-test", Via: "certificate"}); id != want {
			t.Errorf("revocation by %+v, want %+v", id, want)
		}
	case <-time.After(30 * time.Second): // bounds a hang
		t.Fatal("no revocation reached consoleauth")
	}
}
