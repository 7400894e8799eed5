package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/reexec"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

var pageOrigin = &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://127.0.0.1:6080"}}}

// liveConfig is testConfig publishing as name in etcd at endpoint, with a
// short lease and refresh and an audit file.
func liveConfig(t *testing.T, auth *fakeconsoleauth.Server, endpoint, name string) Config {
	t.Helper()
	cfg := testConfig(t, auth)
	cfg.EtcdEndpoints = []string{endpoint}
	cfg.Live.ProxyName = name
	cfg.Live.TTL = 2 * time.Second
	cfg.Live.Refresh = time.Second
	cfg.Live.AuditFile = filepath.Join(t.TempDir(), "audit.jsonl")
	return cfg
}

// liveSessions reads proxy's live session records.
func liveSessions(t *testing.T, cli *clientv3.Client, proxy string) []registry.LiveSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.ProxySessionsPrefix(proxy), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []registry.LiveSession
	for _, kv := range resp.Kvs {
		var s registry.LiveSession
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		out = append(out, s)
	}
	return out
}

func keyExists(t *testing.T, cli *clientv3.Client, key string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count > 0
}

// auditEvents reads an audit file.
func auditEvents(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// TestLiveSessionKillAndAudit: a console appears in etcd under its proxy
// with its byte counts refreshed while it runs (and the bytes metric
// moves live); an operator's kill key ends it with the reason's sentence
// as the close reason; its record and the kill key go; stopping the proxy
// takes its announcement away at once; the audit file holds one event for
// the session's end and one for a refusal, with every field, never the
// token.
func TestLiveSessionKillAndAudit(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	cfg := liveConfig(t, auth, etcdSrv.Endpoint, "np1")
	s := startRun(t, cfg)
	waitUntil(t, "the proxy announced", func() bool { return keyExists(t, cli, registry.ProxyKey("np1")) })

	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	c, nc, si := openConsole(t, "ws://"+s.addr+"/websockify?token="+tok, pageOrigin)
	var rec registry.LiveSession
	waitUntil(t, "the session published", func() bool {
		l := liveSessions(t, cli, "np1")
		if len(l) == 1 {
			rec = l[0]
		}
		return len(l) == 1
	})
	if rec.InstanceUUID != instance || rec.ConsoleType != "novnc" || rec.Proxy != "np1" || rec.Client != "127.0.0.1" ||
		rec.ComputeHost != fakeconsoleauth.ComputeHost || rec.Started.IsZero() || rec.TokenHashPrefix != registry.HashPrefix(registry.TokenHash(tok)) {
		t.Errorf("record: got %+v", rec)
	}
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.ReadUpdate(nc, si); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the byte counts refreshed", func() bool {
		l := liveSessions(t, cli, "np1")
		return len(l) == 1 && l[0].BytesToClient > 1000 && l[0].BytesToServer > 0
	})
	metrics := func() string {
		resp, err := http.Get("http://" + s.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := metrics()
	if strings.Contains(m, `vncgate_proxy_bytes_total{direction="server_to_client"} 0`) {
		t.Error("bytes_total did not move while the session is live")
	}
	// The token check is counted as a gRPC client call, with its code.
	if !strings.Contains(m, `grpc_client_handled_total{grpc_code="OK",grpc_method="CheckToken",grpc_service="vncgate.consoleauth.v1.ConsoleAuthService",grpc_type="unary"} 1`) {
		t.Errorf("no gRPC client metric of the token check:\n%s", m)
	}

	kill, _ := json.Marshal(registry.SessionKill{Reason: "stopped", By: "operator"})
	start := time.Now()
	if _, err := cli.Put(context.Background(), registry.SessionKillKey("np1", rec.ID), string(kill)); err != nil {
		t.Fatal(err)
	}
	ce := wsclose.Read(t, c)
	if ce.Code != websocket.StatusCode(closecode.Revoked) || ce.Reason != "the instance was stopped" {
		t.Fatalf("killed console: got close %d %q, want %d %q", ce.Code, ce.Reason, closecode.Revoked, "the instance was stopped")
	}
	t.Logf("the kill ended the session %s after its key was written", time.Since(start).Round(time.Millisecond))
	waitUntil(t, "the record and the kill gone", func() bool {
		return len(liveSessions(t, cli, "np1")) == 0 && !keyExists(t, cli, registry.SessionKillKey("np1", rec.ID))
	})

	// A refusal, for the audit.
	bad, _, err := websocket.Dial(context.Background(), "ws://"+s.addr+"/websockify?token=not-a-token", pageOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, bad); ce.Code != websocket.StatusCode(closecode.TokenInvalid) {
		t.Errorf("bad token: got %d, want %d", ce.Code, closecode.TokenInvalid)
	}

	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	if keyExists(t, cli, registry.ProxyKey("np1")) {
		t.Error("the announcement outlived a clean stop")
	}

	raw, err := os.ReadFile(cfg.Live.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), tok) {
		t.Fatal("the token is in the audit file")
	}
	events := auditEvents(t, cfg.Live.AuditFile)
	if len(events) != 2 {
		t.Fatalf("audit events: got %d, want 2:\n%s", len(events), raw)
	}
	end, refusal := events[0], events[1]
	for k, want := range map[string]any{
		"event": "session_end", "session": rec.ID, "request_id": rec.ID, "instance": instance, "console_type": "novnc",
		"proxy": "np1", "client": "127.0.0.1", "token_hash": rec.TokenHashPrefix, "reason": "revoked", "ended_by": "proxy",
		"message": "the instance was stopped", "code": float64(closecode.Revoked),
	} {
		if end[k] != want {
			t.Errorf("session_end %s: got %v, want %v", k, end[k], want)
		}
	}
	if b, _ := end["bytes_to_client"].(float64); b < 1000 {
		t.Errorf("session_end bytes_to_client: got %v", end["bytes_to_client"])
	}
	for _, k := range []string{"time", "started", "duration_seconds", "minted_by", "bytes_to_server"} {
		if _, ok := end[k]; !ok {
			t.Errorf("session_end lacks %s", k)
		}
	}
	for k, want := range map[string]any{"event": "refusal", "reason": "token_invalid", "proxy": "np1", "code": float64(closecode.TokenInvalid)} {
		if refusal[k] != want {
			t.Errorf("refusal %s: got %v, want %v", k, refusal[k], want)
		}
	}
}

// TestKillConfirmedWhileClientSilent: a killed session's record goes as
// the proxy ends it, not once a client that never answers the close frame
// is given up on: the kill's confirmation (the record's delete) does not
// wait for the client.
func TestKillConfirmedWhileClientSilent(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	s := startRun(t, liveConfig(t, auth, etcdSrv.Endpoint, "np1"))
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)

	// A client that upgrades, then reads nothing more.
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /websockify?token=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://127.0.0.1:6080\r\n\r\n", tok, s.addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	var id string
	waitUntil(t, "the session published", func() bool {
		l := liveSessions(t, cli, "np1")
		if len(l) == 1 {
			id = l[0].ID
		}
		return len(l) == 1
	})
	kill, _ := json.Marshal(registry.SessionKill{Reason: "admin", By: "operator"})
	if _, err := cli.Put(context.Background(), registry.SessionKillKey("np1", id), string(kill)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the record gone", func() bool { return len(liveSessions(t, cli, "np1")) == 0 })
	// The relay still waits for the client's close frame: the session has
	// not ended in the table yet, only for operators.
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := metricValue(string(text), "vncgate_proxy_sessions_active"); got != 1 {
		t.Errorf("sessions_active once the record went: got %v, want 1 (the relay waiting on the silent client)", got)
	}
}

// TestOperatorDrain: a drain key turns readiness red, marks the proxy
// draining, refuses new consoles after shutdown_delay and, at its
// deadline, closes live ones with 1012, on which the page reconnects
// elsewhere. The process goes on.
func TestOperatorDrain(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	cfg := liveConfig(t, auth, etcdSrv.Endpoint, "np1")
	s := startRun(t, cfg)
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	c, _, _ := openConsole(t, "ws://"+s.addr+"/websockify?token="+tok, pageOrigin)
	waitHealth(t, s.addr, http.StatusOK, "ok")

	deadline := time.Now().Add(2 * time.Second)
	d, _ := json.Marshal(registry.ProxyDrain{Deadline: deadline, By: "operator"})
	if _, err := cli.Put(context.Background(), registry.ProxyDrainKey("np1"), string(d)); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, s.addr, http.StatusServiceUnavailable, "draining")
	waitUntil(t, "the proxy marked draining", func() bool {
		resp, err := cli.Get(context.Background(), registry.ProxyKey("np1"))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		var p registry.Proxy
		return json.Unmarshal(resp.Kvs[0].Value, &p) == nil && p.Draining && p.DrainDeadline.Equal(deadline.Truncate(0))
	})
	ce := wsclose.Read(t, c)
	if ce.Code != websocket.StatusCode(closecode.ShuttingDown) {
		t.Fatalf("live console at the drain's deadline: got %d %q, want %d", ce.Code, ce.Reason, closecode.ShuttingDown)
	}
	late, _, err := websocket.Dial(context.Background(), "ws://"+s.addr+"/websockify?token="+tok, pageOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, late); ce.Code != websocket.StatusCode(closecode.ShuttingDown) {
		t.Errorf("new console after the drain: got %d, want %d", ce.Code, closecode.ShuttingDown)
	}
}

// tryConsole opens a console and reports whether the RFB handshake went
// through, or the close code it got instead.
func tryConsole(url string) (ok bool, code websocket.StatusCode, conn *websocket.Conn, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, pageOrigin)
	if err != nil {
		return false, 0, nil, err
	}
	nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := rfb.Handshake(nc); err != nil {
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return false, ce.Code, c, nil
		}
		return false, websocket.CloseStatus(err), c, nil
	}
	return true, 0, c, nil
}

// TestClusterCapAcrossTwoProxies: two proxies sharing etcd, each with
// max_sessions_per_instance = 2, admit 2 sessions of an instance between
// them however many clients try at once on both; the others get 4429. A
// session that ends frees its slot for either proxy.
func TestClusterCapAcrossTwoProxies(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	var proxies []*started
	for _, name := range []string{"np1", "np2"} {
		cfg := liveConfig(t, auth, etcdSrv.Endpoint, name)
		cfg.MaxSessionsPerInstance = 2
		proxies = append(proxies, startRun(t, cfg))
		waitUntil(t, name+" announced", func() bool { return keyExists(t, cli, registry.ProxyKey(name)) })
	}
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	const tries = 8
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted []*websocket.Conn
		refused  int
	)
	for i := range tries {
		wg.Go(func() {
			ok, code, c, err := tryConsole("ws://" + proxies[i%2].addr + "/websockify?token=" + tok)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("console %d: %v", i, err)
			case ok:
				admitted = append(admitted, c)
			case code == websocket.StatusCode(closecode.Throttled):
				refused++
				c.CloseNow()
			default:
				t.Errorf("console %d: closed with %d, want admitted or %d", i, code, closecode.Throttled)
			}
		})
	}
	wg.Wait()
	if len(admitted) != 2 || refused != tries-2 {
		t.Fatalf("%d consoles on two proxies with a cap of 2: got %d admitted, %d refused", tries, len(admitted), refused)
	}
	admitted[0].Close(websocket.StatusNormalClosure, "")
	defer admitted[1].CloseNow()
	waitUntil(t, "a freed slot taken again", func() bool {
		ok, _, c, err := tryConsole("ws://" + proxies[1].addr + "/websockify?token=" + tok)
		if c != nil {
			defer c.CloseNow()
		}
		return err == nil && ok
	})
}

// TestEtcdDownDoesNotStopSessions: with etcd unreachable, consoles open
// and run (the cluster-wide cap fails open to the proxy's own); when etcd
// is back, they are published.
func TestEtcdDownDoesNotStopSessions(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	link := etcdSrv.NewLink(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	cfg := liveConfig(t, auth, link.Addr, "np1")
	cfg.MaxSessionsPerInstance = 1
	link.Cut()
	s := startRun(t, cfg)
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	_, nc, si := openConsole(t, "ws://"+s.addr+"/websockify?token="+tok, pageOrigin)
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.ReadUpdate(nc, si); err != nil {
		t.Fatalf("console while etcd is down: %v", err)
	}
	// The local cap still holds.
	if ok, code, c, err := tryConsole("ws://" + s.addr + "/websockify?token=" + tok); err != nil || ok || code != websocket.StatusCode(closecode.Throttled) {
		t.Errorf("second console over the local cap: got ok %v, code %d, %v", ok, code, err)
	} else {
		c.CloseNow()
	}
	link.Restore()
	waitUntil(t, "the session published once etcd is back", func() bool { return len(liveSessions(t, cli, "np1")) == 1 })
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.ReadUpdate(nc, si); err != nil {
		t.Fatalf("console after etcd came back: %v", err)
	}
}

// TestKilledProxysRecordsVanish: a proxy killed with SIGKILL leaves its
// records in etcd only until its lease's TTL.
func TestKilledProxysRecordsVanish(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	_, host, port := startDemoVNC(t)
	child := reexec.Start(t, childEnv, 0,
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=0", "--consoleauth_address="+auth.Addr,
		"--etcd_endpoints="+etcdSrv.Endpoint, "--proxy_name=np-doomed", "--live_sessions_ttl=2",
		"--novnc_core_dir="+fakeNoVNC(t), "--admin_listen=")
	addr, _ := child.WaitLog(t, "novnc-proxy listening", 30*time.Second)["addr"].(string)
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	openConsole(t, "ws://"+addr+"/websockify?token="+tok, pageOrigin)
	waitUntil(t, "the session published", func() bool { return len(liveSessions(t, cli, "np-doomed")) == 1 })
	if err := child.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitUntil(t, "the dead proxy's records gone with its lease", func() bool {
		return len(liveSessions(t, cli, "np-doomed")) == 0 && !keyExists(t, cli, registry.ProxyKey("np-doomed"))
	})
	t.Logf("records gone %s after SIGKILL (lease ttl 2s)", time.Since(killed).Round(time.Millisecond))
}

func TestLiveOptions(t *testing.T) {
	cfg, _, err := loadConfig([]string{"--proxy_name=np-7", "--live_sessions_ttl=5", "--live_sessions_refresh=3", "--audit_syslog=udp://127.0.0.1:514", "--audit_file=/var/log/vncgate/audit.jsonl"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Live.ProxyName != "np-7" || cfg.Live.TTL != 5*time.Second || cfg.Live.Refresh != 3*time.Second || cfg.Live.AuditSyslog != "udp://127.0.0.1:514" || cfg.Live.AuditFile != "/var/log/vncgate/audit.jsonl" {
		t.Errorf("got %+v", cfg.Live)
	}
	for _, tt := range []struct{ arg, want string }{
		{"--proxy_name=a/b", "proxy_name"},
		{"--live_sessions_ttl=1", "live_sessions_ttl"},
		{"--live_sessions_refresh=0", "live_sessions_refresh"},
		{"--audit_syslog=siem", "audit_syslog"},
		{"--max_sessions_per_instance=5000", "max_sessions_per_instance"},
	} {
		if _, _, err := loadConfig([]string{tt.arg}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error naming %s", tt.arg, err, tt.want)
		}
	}
}

// TestAuditFileReopenedOnSIGHUP: after logrotate moves audit_file away and
// sends SIGHUP, the proxy writes its events to a new file at the path.
func TestAuditFileReopenedOnSIGHUP(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	child := reexec.Start(t, childEnv, 0,
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=0", "--consoleauth_address="+auth.Addr,
		"--etcd_endpoints=", "--audit_file="+file, "--novnc_core_dir="+fakeNoVNC(t), "--admin_listen=")
	addr, _ := child.WaitLog(t, "novnc-proxy listening", 30*time.Second)["addr"].(string)
	refused := func() {
		t.Helper()
		c, _, err := websocket.Dial(context.Background(), "ws://"+addr+"/websockify?token=nope", pageOrigin)
		if err != nil {
			t.Fatal(err)
		}
		wsclose.Read(t, c)
	}
	refused()
	waitUntil(t, "the first event written", func() bool { b, _ := os.ReadFile(file); return len(b) > 0 })
	if err := os.Rename(file, file+".1"); err != nil {
		t.Fatal(err)
	}
	if err := child.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	child.WaitLog(t, "audit_file reopened", 10*time.Second)
	refused()
	waitUntil(t, "the second event in the new file", func() bool {
		b, _ := os.ReadFile(file)
		return strings.Contains(string(b), `"event":"refusal"`)
	})
	if n := len(auditEvents(t, file+".1")); n != 1 {
		t.Errorf("rotated file: got %d events, want 1", n)
	}
}
