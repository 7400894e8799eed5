package e2e

// A rolling restart of two novnc-proxy replicas behind a real HAProxy, with
// a console open in a real Chromium: each drain ends the console with 1012
// and the page reconnects by itself, through HAProxy, to the other replica.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/testkit/haproxy"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// Drain settings of the replicas: HAProxy (checks every 300 ms, down after
// 2 failures) takes a replica out well within drainDelay.
const (
	drainDelay   = 2 // shutdown_delay, seconds
	drainTimeout = 2 // drain_timeout, seconds
)

// TestRollingRestartInABrowser: a console page opened through HAProxy stays
// connected, showing the demo VM, while both novnc-proxy replicas are
// restarted one after the other (SIGTERM, drain, 1012, reconnect to the
// other replica with the same token); the page shows only "reconnecting"
// in between.
func TestRollingRestartInABrowser(t *testing.T) {
	requireNoVNCLibrary(t)
	_, err := exec.LookPath("haproxy")
	requireTool(t, err == nil, "haproxy missing (Debian package haproxy)")
	page := startDrainPage(t)
	w := devstacktest.Start(t, devstack.Options{Skip: map[string]bool{devstack.XVPProxy: true}})

	front := freeAddr(t)
	replicas := []*replica{
		{name: "n1", addr: freeAddr(t), front: front, w: w},
		{name: "n2", addr: freeAddr(t), front: front, w: w},
	}
	for _, r := range replicas {
		r.start(t)
	}
	lb := startHAProxy(t, front, replicas)

	u, err := url.Parse(consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = front // the page, and so its WebSocket, go through HAProxy
	got := page.do(t, map[string]any{"open": u.String()})
	t.Logf("console open through HAProxy: %d colours, %.0f%% drawn", got.Colours, 100*got.Painted)
	holder := holding(t, replicas)

	connects := got.Connects
	for round := range 2 {
		other := replicas[1-slices.Index(replicas, holder)]
		t.Logf("round %d: SIGTERM %s (holds the console), %s serves", round+1, holder.name, other.name)
		holder.signal(t, syscall.SIGTERM)

		got = page.do(t, map[string]any{"waitConnects": connects + 1})
		connects = got.Connects
		if got.State != "connected" || !strings.HasPrefix(got.Status, "Connected") || got.Message != "" {
			t.Fatalf("after the drain: page %q %q message %q, want connected and no message", got.State, got.Status, got.Message)
		}
		for _, s := range got.States {
			if s != "reconnecting" && s != "connected" {
				t.Errorf("the page showed %q during the drain (states %v), want only reconnecting", s, got.States)
			}
		}
		if !slices.Contains(got.States, "reconnecting") {
			t.Errorf("states %v: want reconnecting shown", got.States)
		}
		if got.Colours < 5 || got.Painted < 0.95 {
			t.Errorf("after reconnecting: %d colours, %.0f%% drawn, want the demo's picture", got.Colours, 100*got.Painted)
		}
		if h := holding(t, replicas); h != other {
			t.Fatalf("the console is on %s, want %s", h.name, other.name)
		}
		if err := holder.wait(t); err != nil {
			t.Errorf("%s exit: %v, want 0 after the drain", holder.name, err)
		}
		if !strings.Contains(holder.logs.String(), `"shutting down: ending sessions"`) {
			t.Errorf("%s did not end the console at drain_timeout:\n%s", holder.name, holder.logs)
		}

		// Back in rotation before the next replica drains.
		ups := lb.Count("Server novnc/" + holder.name + " is UP")
		holder.start(t)
		lb.waitCount(t, "Server novnc/"+holder.name+" is UP", ups+1)
		holder = other
	}
}

// replica is one novnc-proxy process behind HAProxy, restartable on its
// port.
type replica struct {
	name, addr, front string
	w                 *devstack.World

	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	logs   *testlog.Buffer
}

// start runs the replica and returns once its /healthz answers 200.
func (r *replica) start(t *testing.T) {
	t.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	r.cmd = exec.Command(filepath.Join(devstacktest.Binaries(t), devstack.NoVNCProxy), append([]string{
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=" + port,
		"--novncproxy_base_url=http://" + r.front + "/vnc_lite.html",
		"--consoleauth_address=" + r.w.Addr(r.w.Ports.ConsoleAuthGRPC),
		"--etcd_endpoints=", "--admin_listen=", // no admin port: replicas would share it
		"--shutdown_delay=" + strconv.Itoa(drainDelay), "--drain_timeout=" + strconv.Itoa(drainTimeout),
	}, r.w.GRPCFlags(devstack.NoVNCProxy)...)...)
	r.logs = &testlog.Buffer{}
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited, cmd, logs := make(chan struct{}), r.cmd, r.logs
	r.exited = exited
	go func() { r.err = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("novnc-proxy %s (%s):\n%s", r.name, r.addr, logs)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if code, _ := health(r.addr); code == http.StatusOK {
			return
		}
		select {
		case <-exited:
			t.Fatalf("novnc-proxy %s exited: %s", r.name, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("novnc-proxy %s not ready: %s", r.name, logs)
		}
	}
}

func (r *replica) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the process to exit (the bound only stops a hang).
func (r *replica) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.exited:
		return r.err
	case <-time.After(30 * time.Second):
		t.Fatalf("novnc-proxy %s still running 30s after SIGTERM", r.name)
		return nil
	}
}

// health is a replica's /healthz status and live session count; code 0
// when it does not answer.
func health(addr string) (code, sessions int) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	var body struct{ Sessions int }
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Sessions
}

// holding returns the replica with the one live console (polled: a
// session ending on one replica and starting on the other are two events).
func holding(t *testing.T, replicas []*replica) *replica {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var with []*replica
		total := 0
		for _, r := range replicas {
			if _, n := health(r.addr); n > 0 {
				with = append(with, r)
				total += n
			}
		}
		if len(with) == 1 && total == 1 {
			return with[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("want one replica with one console, got %d consoles on %d replicas", total, len(with))
		}
	}
}

// lbLog is HAProxy's output, which can be waited on.
type lbLog struct{ *haproxy.HAProxy }

func (l lbLog) waitCount(t *testing.T, s string, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); l.Count(s) < n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not log %q %d times:\n%s", s, n, l.Log())
		}
	}
}

// startHAProxy runs HAProxy in HTTP mode in front of the replicas, as an
// operator would: round robin, readiness from /healthz (503 while a
// replica drains), WebSocket tunnels, retries on another replica.
func startHAProxy(t *testing.T, front string, replicas []*replica) lbLog {
	t.Helper()
	f := haproxy.Frontend{Name: "novnc", Bind: front, HTTP: true, CheckPath: "/healthz"}
	for _, r := range replicas {
		f.Servers = append(f.Servers, haproxy.Server{Name: r.name, Addr: r.addr, CheckAddr: r.addr})
	}
	h, err := haproxy.Run(haproxy.Config{Frontends: []haproxy.Frontend{f}, CheckInterval: 300 * time.Millisecond, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			t.Logf("haproxy:\n%s", h.Log())
		}
	})
	return lbLog{h}
}

// freeAddr is a loopback address whose port is free now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// drainPage is the node driver of one console page kept open in chromium
// (browser/drain.mjs).
type drainPage struct{ *nodeDriver }

// pageState is drain.mjs's answer.
type pageState struct {
	State      string   `json:"state"`
	Status     string   `json:"status"`
	Message    string   `json:"message"`
	CloseCode  string   `json:"closeCode"`
	Connects   int      `json:"connects"`
	Reconnects int      `json:"reconnects"`
	States     []string `json:"states"`
	Colours    int      `json:"colours"`
	Painted    float64  `json:"painted"`
	Logs       []string `json:"logs"`
	Error      string   `json:"error"`
}

func startDrainPage(t *testing.T) *drainPage {
	t.Helper()
	return &drainPage{startNodeDriver(t, "drain.mjs")}
}

// do sends one command and returns the page's state.
func (p *drainPage) do(t *testing.T, cmd map[string]any) pageState {
	t.Helper()
	line, _ := json.Marshal(cmd)
	if _, err := fmt.Fprintf(p.stdin, "%s\n", line); err != nil {
		t.Fatalf("driver: %v\n%s", err, p.stderr)
	}
	var s pageState
	if err := p.next(&s); err != nil {
		t.Fatalf("driver: %v\n%s", err, p.stderr)
	}
	if s.Error != "" {
		t.Fatalf("page %v: %s\nstate %q status %q message %q close %q states %v\npage log:\n%s\n%s",
			cmd, s.Error, s.State, s.Status, s.Message, s.CloseCode, s.States, strings.Join(s.Logs, "\n"), p.stderr)
	}
	return s
}
