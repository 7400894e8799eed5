package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
)

// TestLiveSessionsKillDrainAndAudit: xvp-proxy publishes its sessions in
// etcd, a kill key closes one (XVP has no way to say why), a drain key
// turns /healthz red and ends the rest at its deadline, and the audit file
// has one event per end and per refusal in the same schema as
// novnc-proxy's, never the token.
func TestLiveSessionsKillDrainAndAudit(t *testing.T) {
	etcdSrv, cli := etcd.Start(t)
	auth := fakeconsoleauth.Start(t)
	echoAddr := loopback.Echo(t)
	auth.Add("tok-secret-a", "xvpvnc", "inst-a", echoAddr, "")
	cfg := testConfig(t, auth.Addr)
	cfg.EtcdEndpoints = []string{etcdSrv.Endpoint}
	cfg.AdminListen = "127.0.0.1:0"
	cfg.Live.ProxyName = "xp1"
	cfg.Live.TTL = 2 * time.Second
	cfg.Live.Refresh = time.Second
	cfg.Live.AuditFile = filepath.Join(t.TempDir(), "audit.jsonl")
	addr, admin := startRunAddrs(t, cfg, slog.New(slog.DiscardHandler))

	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	records := func() []registry.LiveSession {
		resp, err := cli.Get(context.Background(), registry.ProxySessionsPrefix("xp1"), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var out []registry.LiveSession
		for _, kv := range resp.Kvs {
			var s registry.LiveSession
			json.Unmarshal(kv.Value, &s)
			out = append(out, s)
		}
		return out
	}

	a := dial()
	ar := openSession(t, a, "tok-secret-a")
	echoOver(t, a, ar, "some bytes")
	var rec registry.LiveSession
	waitUntil(t, "the session published with its bytes", func() bool {
		l := records()
		if len(l) == 1 {
			rec = l[0]
		}
		return len(l) == 1 && l[0].BytesToClient == 10 && l[0].BytesToServer == 10
	})
	if rec.InstanceUUID != "inst-a" || rec.ConsoleType != "xvpvnc" || rec.Client != "127.0.0.1" {
		t.Errorf("record: got %+v", rec)
	}
	kill, _ := json.Marshal(registry.SessionKill{Reason: "admin", By: "operator"})
	if _, err := cli.Put(context.Background(), registry.SessionKillKey("xp1", rec.ID), string(kill)); err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(20 * time.Second)) // bounds a hang
	if _, err := io.Copy(io.Discard, ar); err != nil {
		t.Fatalf("killed session still open: %v", err)
	}
	waitUntil(t, "the record gone", func() bool { return len(records()) == 0 })

	// A refusal.
	bad := dial()
	bad.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(bad, "CONNECT /console?token=nope HTTP/1.1\r\n\r\n")
	line, _ := bufio.NewReader(bad).ReadString('\n')
	if !strings.HasPrefix(line, "HTTP/1.1 401") {
		t.Errorf("bad token: got %q, want 401", line)
	}

	// A drain: /healthz red, the live session closed at the deadline.
	b := dial()
	br := openSession(t, b, "tok-secret-a")
	echoOver(t, b, br, "x")
	d, _ := json.Marshal(registry.ProxyDrain{Deadline: time.Now().Add(time.Second), By: "operator"})
	if _, err := cli.Put(context.Background(), registry.ProxyDrainKey("xp1"), string(d)); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, admin, http.StatusServiceUnavailable, "draining")
	b.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("session still open after the drain's deadline: %v", err)
	}

	waitUntil(t, "three audit events", func() bool {
		b, _ := os.ReadFile(cfg.Live.AuditFile)
		return strings.Count(string(b), "\n") >= 3
	})
	raw, _ := os.ReadFile(cfg.Live.AuditFile)
	if strings.Contains(string(raw), "tok-secret-a") {
		t.Fatal("the token is in the audit file")
	}
	var events []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		events = append(events, e)
	}
	want := []map[string]any{
		{"event": "session_end", "session": rec.ID, "reason": "revoked", "message": "an administrator closed the console",
			"console_type": "xvpvnc", "proxy": "xp1", "instance": "inst-a", "bytes_to_client": 10.0, "code": 0.0},
		{"event": "refusal", "reason": "token_invalid", "code": 401.0, "client": "127.0.0.1"},
		{"event": "session_end", "reason": "shutdown", "ended_by": "proxy"},
	}
	for i, w := range want {
		for k, v := range w {
			if events[i][k] != v {
				t.Errorf("event %d %s: got %v, want %v", i, k, events[i][k], v)
			}
		}
	}
}
