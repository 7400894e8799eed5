package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
)

// adminGet fetches path from the admin listener at addr.
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

// TestAdminListener: /readyz follows consoleauth (503 naming it while no
// replica is up) and the revocation watch on a real etcd; /livez, /metrics
// with the proxy's metrics, pprof and /healthz on the admin listener.
func TestAdminListener(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	replica := auth.StartReplica(t, nil)
	etcdSrv, _ := etcd.Start(t)
	cfg := testConfig(t, replica.Addr)
	cfg.AdminListen = "127.0.0.1:0"
	cfg.EtcdEndpoints = []string{etcdSrv.Endpoint}
	addr, adm := startRunAddrs(t, cfg, slog.New(slog.DiscardHandler))

	if code, body := adminGet(t, adm, "/livez"); code != 200 || !strings.Contains(body, `"alive"`) {
		t.Errorf("/livez: %d %s", code, body)
	}
	waitReadyz(t, adm, 200, "")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoOver(t, c, openSession(t, c, "tok"), "hello")
	c.Close()
	if code, body := adminGet(t, adm, "/metrics"); code != 200 || !strings.Contains(body, `vncgate_proxy_sessions_total{result="relayed"} 1`) {
		t.Errorf("/metrics: %d, want the relayed session counted", code)
	}
	if code, body := adminGet(t, adm, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}
	if code, body := adminGet(t, adm, "/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("/healthz: %d %s", code, body)
	}

	replica.Kill()
	waitReadyz(t, adm, 503, "consoleauth")
	if code, _ := adminGet(t, adm, "/livez"); code != 200 {
		t.Errorf("/livez with consoleauth down: %d, want 200", code)
	}
	replica.Restart(t)
	waitReadyz(t, adm, 200, "")

	etcdSrv.Stop()
	waitReadyz(t, adm, 503, "revocation_watch")
	if err := etcdSrv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitReadyz(t, adm, 200, "")
}

func TestAdminListenRefusedOffLoopback(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	cfg := testConfig(t, auth.Addr)
	cfg.AdminListen = "0.0.0.0:0"
	want := "admin_listen 0.0.0.0:0: plaintext off loopback"
	if err := run(t.Context(), cfg, slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
	cfg.AllowPlaintext = true
	_, adm := startRunAddrs(t, cfg, slog.New(slog.DiscardHandler))
	if code, _ := adminGet(t, strings.Replace(adm, "0.0.0.0", "127.0.0.1", 1), "/livez"); code != 200 {
		t.Errorf("with allow_plaintext: /livez %d", code)
	}
}
