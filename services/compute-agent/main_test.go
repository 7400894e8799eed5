package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	"github.com/vncgate/vncgate/pkg/etcdembed"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/rfb"
	"github.com/vncgate/vncgate/services/compute-agent/internal/etcdconn"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const uuidDemo = "5f1c0c3e-8d6c-4a57-9a2e-0c6f8f0f4b1a"

func TestLoadConfig(t *testing.T) {
	hostname, _ := os.Hostname()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(Config) error
		wantErr string
	}{
		{name: "defaults", check: func(c Config) error {
			want := Config{
				GRPCListen: "0.0.0.0:6092", Host: hostname, EtcdEndpoints: []string{"127.0.0.1:2379"},
				Driver: "static", LibvirtURI: "qemu:///system", ProxyClientAddress: "127.0.0.1", RegistrationTTL: 10 * time.Second,
				ConsoleAuthAddress: "127.0.0.1:6090", LogLevel: "info",
			}
			if fmt.Sprint(c) != fmt.Sprint(want) {
				return fmt.Errorf("got %+v, want %+v", c, want)
			}
			return nil
		}},
		{
			name: "flags and environment",
			args: []string{"--host", "compute-7", "--etcd_endpoints", "10.0.0.1:2379, 10.0.0.2:2379", "--grpc_ca", "/ca.pem"},
			env:  map[string]string{"VNCGATE_REGISTRATION_TTL": "3", "VNCGATE_HOST": "ignored", "VNCGATE_SERVER_PROXYCLIENT_ADDRESS": "192.0.2.1"},
			check: func(c Config) error {
				if c.Host != "compute-7" || c.RegistrationTTL != 3*time.Second || c.ProxyClientAddress != "192.0.2.1" ||
					strings.Join(c.EtcdEndpoints, "|") != "10.0.0.1:2379|10.0.0.2:2379" || c.GRPCTLS.CA != "/ca.pem" {
					return fmt.Errorf("got %+v", c)
				}
				return nil
			},
		},
		{name: "host with slash", args: []string{"--host", "a/b"}, wantErr: "contain no '/'"},
		{name: "ttl zero", args: []string{"--registration_ttl", "0"}, wantErr: "registration_ttl"},
		{name: "bad log level", args: []string{"--log_level", "loud"}, wantErr: "log_level"},
		{name: "bad listen", args: []string{"--grpc_listen", "6092"}, wantErr: "grpc_listen"},
		{name: "no etcd", args: []string{"--etcd_endpoints", " , "}, wantErr: "etcd_endpoints is empty"},
		{name: "unknown flag", args: []string{"--novncproxy_port", "1"}, wantErr: "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := loadConfig(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.check(c); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestAdvertiseFrom(t *testing.T) {
	tests := []struct{ listen, want string }{
		{"0.0.0.0:6092", "127.0.0.1:6092"},
		{"[::]:6092", "127.0.0.1:6092"},
		{"10.1.2.3:6092", "10.1.2.3:6092"},
		{"127.0.0.1:40000", "127.0.0.1:40000"},
	}
	for _, tt := range tests {
		addr, err := net.ResolveTCPAddr("tcp", tt.listen)
		if err != nil {
			t.Fatal(err)
		}
		if got := advertiseFrom(addr); got != tt.want {
			t.Errorf("advertiseFrom(%s): got %s, want %s", tt.listen, got, tt.want)
		}
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
			cfg := testConfig("127.0.0.1:1", tt.inventory)
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

func testConfig(etcdEndpoint, inventory string) Config {
	return Config{
		GRPCListen: "127.0.0.1:0", Host: "compute-test", EtcdEndpoints: []string{etcdEndpoint},
		Driver: "static", InventoryFile: inventory, ProxyClientAddress: "127.0.0.1",
		RegistrationTTL: 2 * time.Second, ConsoleAuthAddress: "127.0.0.1:1", LogLevel: "debug",
	}
}

// agent is a run() started by a test.
type agent struct {
	addr   string
	client computeagentv1.ComputeAgentServiceClient
	health healthpb.HealthClient
	reload chan os.Signal
	stop   func() error
}

func startRun(t *testing.T, cfg Config) *agent {
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
	conn, err := grpc.NewClient(a.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
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
	etcd, err := etcdembed.Start(t.TempDir(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Stop)
	cli, err := clientv3.New(etcdconn.Config([]string{etcd.Endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	port := demoVM(t)
	writeInventory(t, inventory, port)

	a := startRun(t, testConfig(etcd.Endpoint, inventory))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	eventually(t, 10*time.Second, "registration", func() error {
		val, ok, err := etcdGet(cli, registry.ComputeKey("compute-test"))
		var c registry.Compute
		if err != nil || !ok || json.Unmarshal([]byte(val), &c) != nil || c.Address != a.addr {
			return fmt.Errorf("compute key: got %q (%v), want address %s", val, err, a.addr)
		}
		loc, ok, err := etcdGet(cli, registry.LocationKey(uuidDemo))
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
	if _, ok, _ := etcdGet(cli, registry.LocationKey(uuidDemo)); !ok {
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
	a := startRun(t, testConfig(endpoint, inventory))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := a.client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuidDemo}); err != nil || c.GetPort() != 5901 {
		t.Fatalf("get console without etcd: got %v, %v; want port 5901", c, err)
	}

	etcd, err := etcdembed.Start(t.TempDir(), endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Stop)
	cli, err := clientv3.New(etcdconn.Config([]string{etcd.Endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	eventually(t, 15*time.Second, "registration once etcd is up", func() error {
		if _, ok, err := etcdGet(cli, registry.ComputeKey("compute-test")); !ok || err != nil {
			return fmt.Errorf("compute key absent (%v)", err)
		}
		if _, ok, err := etcdGet(cli, registry.LocationKey(uuidDemo)); !ok || err != nil {
			return fmt.Errorf("location absent (%v)", err)
		}
		return nil
	})
	if err := a.stop(); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
}
