package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/reexec"
)

// TestSIGTERMDrain runs xvp-proxy as a process and sends it SIGTERM with a
// session live: /healthz turns 503 "draining" at once while the port still
// accepts and serves new sessions for shutdown_delay (a load balancer has
// not noticed yet); then the port closes, the live sessions go on, and at
// drain_timeout they are closed; the process exits 0.
func TestSIGTERMDrain(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("tok", "xvpvnc", "inst-a", loopback.Echo(t), "")
	child := reexec.Start(t, childEnv, 0,
		"-xvpvncproxy_host=127.0.0.1", "-xvpvncproxy_port=0", "-consoleauth_address="+auth.Addr,
		"-etcd_endpoints=", "-admin_listen=127.0.0.1:0", "-shutdown_delay=3", "-drain_timeout=2",
		"-server_greeting_timeout=0") // the echo back end never speaks first
	admin, _ := child.WaitLog(t, "admin listening", 30*time.Second)["addr"].(string)
	addr, _ := child.WaitLog(t, "listening", 30*time.Second)["addr"].(string)
	waitHealth(t, admin, http.StatusOK, "ok")

	open := func(what string) (net.Conn, io.Reader) {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Cleanup(func() { c.Close() })
		r := openSession(t, c, "tok")
		echoOver(t, c, r, what)
		return c, r
	}
	live, liveR := open("session before SIGTERM")

	if err := child.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	child.WaitLog(t, "shutting down: readiness red, still accepting", 10*time.Second)
	waitHealth(t, admin, http.StatusServiceUnavailable, "draining")
	late, lateR := open("session during shutdown_delay")

	child.WaitLog(t, "draining", 10*time.Second) // the listener is closed
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Error("port still accepting after shutdown_delay")
	}
	echoOver(t, live, liveR, "live session goes on while draining")
	echoOver(t, late, lateR, "so does the one admitted during the delay")

	child.WaitLog(t, "drain timeout: closing live sessions", 10*time.Second)
	for _, s := range []struct {
		c net.Conn
		r io.Reader
	}{{live, liveR}, {late, lateR}} {
		s.c.SetReadDeadline(time.Now().Add(10 * time.Second)) // bounds a hang
		var ne net.Error
		if _, err := io.ReadAll(s.r); errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("session still open after drain_timeout")
		}
	}
	if err := child.Wait(t, 10*time.Second); err != nil {
		t.Errorf("exit: got %v, want 0 after the drain", err)
	}
}

// TestNegativeDrainSettingsRefused: a negative delay or timeout is a clear
// error, not a silent zero.
func TestNegativeDrainSettingsRefused(t *testing.T) {
	for _, flag := range []string{"-shutdown_delay=-1", "-drain_timeout=-1"} {
		if _, _, err := loadConfig([]string{flag}); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("%s: got %v, want refused as negative", flag, err)
		}
	}
}
