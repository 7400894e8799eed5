package main

import (
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/reexec"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// TestSIGTERMDrain runs novnc-proxy as a process and sends it SIGTERM with
// a console live: /healthz turns 503 "draining" at once while the port
// still accepts and serves new consoles for shutdown_delay (a load
// balancer has not noticed yet); then the port closes, live consoles go
// on, and at drain_timeout they are closed with 1012 "service restart" (the
// page reconnects on it); the process exits 0 and leaves no VNC connection.
func TestSIGTERMDrain(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	vnc, host, port := startDemoVNC(t)
	child := reexec.Start(t, childEnv, 0,
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=0", "--consoleauth_address="+auth.Addr,
		"--etcd_endpoints=", "--novnc_core_dir="+fakeNoVNC(t), "--shutdown_delay=3", "--drain_timeout=2", "--admin_listen=127.0.0.1:0")
	addr, _ := child.WaitLog(t, "novnc-proxy listening", 30*time.Second)["addr"].(string)
	waitHealth(t, addr, http.StatusOK, "ok")
	tok := auth.Mint(instance, "novnc", host, port, time.Minute)
	wsURL := "ws://" + addr + "/?token=" + tok

	type console struct {
		c  *websocket.Conn
		nc net.Conn
		si rfb.ServerInit
	}
	open := func() console {
		t.Helper()
		c, nc, si := openConsole(t, wsURL, nil)
		return console{c, nc, si}
	}
	screen := func(what string, s console) {
		t.Helper()
		if err := rfb.RequestUpdate(s.nc, s.si, false); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if _, err := rfb.ReadUpdate(s.nc, s.si); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	live := open()
	screen("console before SIGTERM", live)

	if err := child.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	child.WaitLog(t, "shutting down: readiness red, still accepting", 10*time.Second)
	waitHealth(t, addr, http.StatusServiceUnavailable, "draining")
	late := open() // the same (multi-use) token, as a reconnecting page does
	screen("console opened during shutdown_delay", late)

	child.WaitLog(t, "shutting down: stopped accepting, draining", 10*time.Second)
	waitUntil(t, "the port closed after shutdown_delay", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	screen("live console while draining", live)
	screen("console admitted during the delay, while draining", late)

	child.WaitLog(t, "shutting down: ending sessions", 10*time.Second) // drain_timeout passed
	for _, s := range []console{live, late} {
		ce := wsclose.Read(t, s.c)
		if ce.Code != websocket.StatusCode(closecode.ShuttingDown) {
			t.Errorf("got close %d %q, want 1012 (service restart)", ce.Code, ce.Reason)
		}
	}
	if err := child.Wait(t, 15*time.Second); err != nil {
		t.Errorf("exit: got %v, want 0 after the drain", err)
	}
	waitUntil(t, "the VNC connections closed", func() bool { return vnc.ActiveConns() == 0 })
}

// TestNegativeDrainSettingsRefused: a negative delay or timeout is a clear
// error, not a silent zero.
func TestNegativeDrainSettingsRefused(t *testing.T) {
	for _, flag := range []string{"--shutdown_delay=-1", "--drain_timeout=-1"} {
		if _, _, err := loadConfig([]string{flag}); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("%s: got %v, want refused as negative", flag, err)
		}
	}
}
