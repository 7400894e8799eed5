package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
)

// adminGet fetches path from addr over plain HTTP.
func adminGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReadyz polls /readyz until it answers code naming failing ("" for
// ready); the deadline only bounds a hang.
func waitReadyz(t *testing.T, addr string, code int, failing string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, body := adminGet(t, addr, "/readyz")
		var r struct{ Status, Failing string }
		_ = json.Unmarshal([]byte(body), &r)
		if got == code && r.Failing == failing {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: still %d %s, want %d failing %q", got, body, code, failing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAdminListener: /livez, /readyz following consoleauth (503 naming it
// while no replica is up), /metrics with the proxy's metrics and pprof on
// the admin listener; neither /metrics nor pprof on the public port, which
// keeps /healthz; /readyz names draining from shutdown.
func TestAdminListener(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	replica := auth.StartReplica(t, nil)
	cfg := testConfig(t, auth)
	cfg.ConsoleAuthAddress = replica.Addr
	cfg.ShutdownDelay = 3 * time.Second // readiness red while the port still serves
	s := startRun(t, cfg)

	if code, body := adminGet(t, s.admin, "/livez"); code != 200 || !strings.Contains(body, `"alive"`) {
		t.Errorf("/livez: %d %s", code, body)
	}
	waitReadyz(t, s.admin, 200, "")
	if code, body := adminGet(t, s.admin, "/metrics"); code != 200 || !strings.Contains(body, "vncgate_proxy_sessions_active 0") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d, want the proxy's metrics", code)
	}
	if code, body := adminGet(t, s.admin, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ on the admin listener: %d", code)
	}
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/cmdline", "/livez", "/readyz"} {
		if code, _ := adminGet(t, s.addr, path); code != http.StatusNotFound {
			t.Errorf("%s on the public port: %d, want 404", path, code)
		}
	}
	if code, body := adminGet(t, s.addr, "/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("/healthz on the public port: %d %s, want 200 ok", code, body)
	}

	replica.Kill()
	waitReadyz(t, s.admin, 503, "consoleauth")
	if code, _ := adminGet(t, s.admin, "/livez"); code != 200 {
		t.Errorf("/livez with consoleauth down: %d, want 200", code)
	}
	replica.Restart(t)
	waitReadyz(t, s.admin, 200, "")

	s.cancel() // shutdown_delay: readiness red, port open
	waitReadyz(t, s.admin, 503, "draining")
}

func TestAdminListenRefusedOffLoopback(t *testing.T) {
	cfg := testConfig(t, fakeconsoleauth.Start(t))
	cfg.AdminListen = "0.0.0.0:0"
	want := "admin_listen 0.0.0.0:0: plaintext off loopback"
	if err := run(t.Context(), cfg, slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
	if _, _, err := loadConfig([]string{"--admin_listen=6180"}); err == nil || !strings.Contains(err.Error(), "admin_listen") {
		t.Errorf("admin_listen without a host: got %v, want an error naming admin_listen", err)
	}
}

// TestAdminReadyzFollowsTheRevocationWatch: with etcd_endpoints, /readyz is
// 503 naming revocation_watch while etcd is stopped, 200 once it is back.
func TestAdminReadyzFollowsTheRevocationWatch(t *testing.T) {
	etcdSrv, _ := etcd.Start(t)
	cfg := testConfig(t, fakeconsoleauth.Start(t))
	cfg.EtcdEndpoints = []string{etcdSrv.Endpoint}
	s := startRun(t, cfg)
	waitReadyz(t, s.admin, 200, "")
	etcdSrv.Stop()
	waitReadyz(t, s.admin, 503, "revocation_watch")
	if err := etcdSrv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitReadyz(t, s.admin, 200, "")
}
