package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
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

// waitAdmin polls path until it answers want; the deadline only bounds a
// hang (the etcd probe runs every 300 ms).
func waitAdmin(t *testing.T, addr net.Addr, path string, want int, body string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, b := adminGet(t, addr, path)
		if code == want && strings.Contains(b, body) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d %s, want %d with %s", path, code, b, want, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAdminListener: /readyz follows etcd (503 naming etcd while it is
// stopped, 200 when back) and goes red on shutdown; /livez, /metrics and
// pprof answer on the admin listener, and neither /metrics nor pprof on
// REST.
func TestAdminListener(t *testing.T) {
	etcdSrv, _ := etcd.Start(t)
	restAddr := freeAddr(t)
	keysFile, keys := testworld.KeysFile(t, authn.Identity{Name: "nova-api", Role: authn.RoleAPI})
	cfg, _, err := loadConfig([]string{"--grpc_listen=127.0.0.1:0", "--rest_listen=" + restAddr, "--etcd_endpoints=" + etcdSrv.Endpoint,
		"--api_keys_file=" + keysFile, "--admin_listen=127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	adminAddr := make(chan net.Addr, 1)
	go func() { done <- runAdmin(ctx, cfg, slog.New(slog.DiscardHandler), func(a net.Addr) { adminAddr <- a }) }()
	var addr net.Addr
	select {
	case addr = <-adminAddr:
	case err := <-done:
		t.Fatalf("run: %v", err)
	}

	if code, body := adminGet(t, addr, "/livez"); code != 200 || !strings.Contains(body, `"alive"`) {
		t.Errorf("/livez: %d %s", code, body)
	}
	waitAdmin(t, addr, "/readyz", 200, `"ready"`)
	if code, body := adminGet(t, addr, "/metrics"); code != 200 || !strings.Contains(body, "vncgate_consoleauth_") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d %.300s", code, body)
	}
	if code, body := adminGet(t, addr, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		req, _ := http.NewRequest("GET", "http://"+restAddr+path, nil)
		req.Header.Set("Authorization", "Bearer "+keys["nova-api"])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s on REST with a key: %d, want 404 (only on the admin listener)", path, resp.StatusCode)
		}
	}

	etcdSrv.Stop()
	waitAdmin(t, addr, "/readyz", 503, `"failing":"etcd"`)
	if code, _ := adminGet(t, addr, "/livez"); code != 200 {
		t.Errorf("/livez with etcd down: %d, want 200 (alive, not ready)", code)
	}
	if err := etcdSrv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitAdmin(t, addr, "/readyz", 200, `"ready"`)

	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	if _, err := http.Get("http://" + addr.String() + "/livez"); err == nil {
		t.Error("admin listener still open after run returned")
	}
}

func TestAdminListenRefusedOffLoopback(t *testing.T) {
	keysFile, _ := testworld.KeysFile(t)
	cfg, _, err := loadConfig([]string{"--grpc_listen=127.0.0.1:0", "--rest_listen=127.0.0.1:0", "--api_keys_file=" + keysFile, "--admin_listen=0.0.0.0:6190"})
	if err != nil {
		t.Fatal(err)
	}
	want := "admin_listen 0.0.0.0:6190: plaintext off loopback; configure TLS for it, or set [vncgate] allow_plaintext = true"
	if err := run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
	if _, _, err := loadConfig([]string{"--admin_listen=6190"}); err == nil || !strings.Contains(err.Error(), "admin_listen") {
		t.Errorf("admin_listen without a host: got %v, want an error naming admin_listen", err)
	}
}
