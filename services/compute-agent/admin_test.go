package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/etcd"
)

// adminGet fetches path from the admin listener at addr.
func adminGet(t *testing.T, addr net.Addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr.String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminListener: /readyz is 503 naming the registration while etcd is
// down, 200 once the agent registered; /livez, /metrics and pprof answer.
func TestAdminListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := l.Addr().String()
	l.Close()
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	pki := newPKI(t)
	cfg := testConfig(t, pki, endpoint, inventory)
	cfg.AdminListen = "127.0.0.1:0"

	ctx, cancel := context.WithCancel(context.Background())
	adminAddr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { done <- run(ctx, cfg, env{log: log, admin: func(a net.Addr) { adminAddr <- a }}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	var addr net.Addr
	select {
	case addr = <-adminAddr:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run not ready after 10s")
	}

	if code, body := adminGet(t, addr, "/livez"); code != 200 || !strings.Contains(body, `"alive"`) {
		t.Errorf("/livez: %d %s", code, body)
	}
	if code, body := adminGet(t, addr, "/readyz"); code != 503 || !strings.Contains(body, `"failing":"registration"`) {
		t.Errorf("/readyz without etcd: %d %s, want 503 failing registration", code, body)
	}
	etcd.New(t, endpoint)
	eventually(t, 15*time.Second, "/readyz once registered", func() error {
		if code, body := adminGet(t, addr, "/readyz"); code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, body := adminGet(t, addr, "/metrics"); code != 200 || !strings.Contains(body, "vncgate_compute_agent_registered 1") ||
		!strings.Contains(body, "vncgate_compute_agent_driver_up 1") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d %s", code, body)
	}
	_, body := adminGet(t, addr, "/metrics")
	for _, want := range []string{"vncgate_compute_agent_instances 1", `vncgate_compute_agent_driver_events_total{kind="stopped"} 0`,
		`vncgate_compute_agent_revocations_total{result="revoked"} 0`, `grpc_server_handled_total{grpc_code="OK",grpc_method="GetConsole"`,
		"vncgate_build_info{", "vncgate_ready 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics: no %s in %s", want, body)
		}
	}
	if code, _ := adminGet(t, addr, "/debug/pprof/cmdline"); code != 200 {
		t.Errorf("/debug/pprof/cmdline: %d", code)
	}
}

func TestAdminListenRefusedOffLoopback(t *testing.T) {
	inventory := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, inventory, 5901)
	cfg := testConfig(t, newPKI(t), "127.0.0.1:1", inventory)
	cfg.AdminListen = "0.0.0.0:0"
	want := "admin_listen 0.0.0.0:0: plaintext off loopback"
	if err := run(context.Background(), cfg, env{log: slog.New(slog.DiscardHandler)}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
	if _, _, err := loadConfig([]string{"--admin_listen=6192"}); err == nil || !strings.Contains(err.Error(), "admin_listen") {
		t.Errorf("admin_listen without a host: got %v, want an error naming admin_listen", err)
	}
}
