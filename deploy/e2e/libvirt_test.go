package e2e

// The whole system against a real libvirt guest: a TCG guest under
// libvirtd, a compute agent with driver=libvirt, consoleauth's REST API,
// and a real RFB handshake with a framebuffer update through novnc-proxy
// (WebSocket) and xvp-proxy (CONNECT). Then `virsh destroy`: the open
// sessions close within 2 s with the reason, the tokens are refused, and a
// token for the old VNC port cannot reach whatever listens there now.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/rfb"
)

// libvirtComputeHost is the name the libvirt agent registers under.
const libvirtComputeHost = "libvirt-compute"

func TestLibvirtConsoleEndToEnd(t *testing.T) {
	needLibvirtd(t)
	w := devstacktest.Start(t, devstack.Options{Skip: map[string]bool{devstack.ComputeAgent: true}})
	startLibvirtAgent(t, w)
	ctx := context.Background()

	p1, p2 := freeVNCPort(t), freeVNCPort(t)
	for p2 == p1 {
		p2 = freeVNCPort(t)
	}
	guest := defineGuest(t, vncAt(p1))
	virsh(t, "start", guest.name)
	waitPublished(t, w, guest.uuid)

	// A console through each proxy: RFB handshake and a framebuffer update.
	novncURL, err := w.ConsoleURL(ctx, guest.uuid, "novnc")
	if err != nil {
		t.Fatalf("novnc console URL: %v", err)
	}
	xvpURL, err := w.ConsoleURL(ctx, guest.uuid, "xvpvnc")
	if err != nil {
		t.Fatalf("xvpvnc console URL: %v", err)
	}
	novncToken, xvpToken := consoleToken(t, novncURL), consoleToken(t, xvpURL)
	if got := introspectPort(t, w, novncToken); got != p1 {
		t.Fatalf("token port: got %d, want %d (the guest's VNC port)", got, p1)
	}
	_, wsConn := openNoVNCSession(t, w, novncToken)
	rfbUpdate(t, "novnc", wsConn)
	xvpConn := openXVPSession(t, w, xvpToken)
	rfbUpdate(t, "xvp", xvpConn)

	// Keep reading both sessions: each reports how and when it ended.
	type ending struct {
		err error
		at  time.Time
	}
	wsEnded, xvpEnded := make(chan ending, 1), make(chan ending, 1)
	go func() { _, err := io.Copy(io.Discard, wsConn); wsEnded <- ending{err, time.Now()} }()
	go func() { _, err := io.Copy(io.Discard, xvpConn); xvpEnded <- ending{err, time.Now()} }()

	start := time.Now()
	virsh(t, "destroy", guest.name)
	destroyed := time.Now()
	t.Logf("virsh destroy took %s", destroyed.Sub(start))
	deadline := time.After(2 * time.Second)
	for range 2 {
		select {
		case e := <-wsEnded:
			t.Logf("novnc session ended %s after destroy began: %v", e.at.Sub(start), e.err)
			// QEMU dies (and its VNC server closes) before libvirt reports
			// the stop, so the proxy must prefer the revocation's reason
			// over the backend's EOF that precedes it.
			var ce websocket.CloseError
			if !errors.As(e.err, &ce) || ce.Code != 4410 || !strings.Contains(ce.Reason, "the instance was stopped") {
				t.Errorf("novnc session ended with %v (nil: a normal 1000 close), want close 4410 %q", e.err, "the instance was stopped")
			}
		case e := <-xvpEnded:
			t.Logf("xvp session ended %s after destroy began: %v", e.at.Sub(start), e.err)
		case <-deadline:
			t.Fatalf("sessions still open 2s after virsh destroy returned")
		}
	}

	// The tokens are refused now.
	refusedNoVNC(t, w, novncToken)
	refusedXVP(t, w, xvpToken)

	// The stale port: the guest comes back on p2 while another guest takes
	// p1. An old token must not reach the newcomer on p1; a new one reaches
	// the guest on p2.
	oldToken := novncToken
	virsh(t, "define", guestXML(t, guest, vncAt(p2)))
	virsh(t, "start", guest.name)
	other := defineGuest(t, vncAt(p1))
	virsh(t, "start", other.name)
	refusedNoVNC(t, w, oldToken)
	var fresh string
	for time.Now().Before(start.Add(30 * time.Second)) {
		u, err := w.ConsoleURL(ctx, guest.uuid, "novnc")
		if err == nil {
			fresh = consoleToken(t, u)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := introspectPort(t, w, fresh); got != p2 {
		t.Fatalf("new token port: got %d, want %d", got, p2)
	}
	_, conn := openNoVNCSession(t, w, fresh)
	rfbUpdate(t, "novnc after restart", conn)
}

// startLibvirtAgent runs the compute agent with driver=libvirt and waits
// for its registration.
func startLibvirtAgent(t *testing.T, w *devstack.World) {
	t.Helper()
	bin := filepath.Join(devstacktest.Binaries(t), devstack.ComputeAgent)
	cmd := exec.Command(bin,
		"--grpc_listen=127.0.0.1:0",
		"--host="+libvirtComputeHost,
		"--etcd_endpoints="+w.Etcd.Endpoint,
		"--driver=libvirt",
		"--libvirt_uri=qemu:///system",
		"--server_proxyclient_address=127.0.0.1",
		"--consoleauth_address="+w.Addr(w.Ports.ConsoleAuthGRPC),
		"--registration_ttl=5",
	)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start compute-agent: %v", err)
	}
	logs := newAgentLog(t)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			logs.line("compute-agent  " + sc.Text())
		}
	}()
	exited := make(chan struct{})
	go func() { <-copied; cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("compute-agent did not stop within 10s of SIGTERM")
		}
	})
	waitEtcdKey(t, w, registry.ComputeKey(libvirtComputeHost), exited, "compute-agent registration")
}

func waitPublished(t *testing.T, w *devstack.World, uuid string) {
	t.Helper()
	waitEtcdKey(t, w, registry.LocationKey(uuid), nil, "location of "+uuid)
}

func waitEtcdKey(t *testing.T, w *devstack.World, key string, exited <-chan struct{}, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := w.Client.Get(ctx, key)
		cancel()
		if err == nil && len(resp.Kvs) > 0 {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s: the agent exited", what)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not in etcd after 30s (err %v)", what, key, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func consoleToken(t *testing.T, consoleURL string) string {
	t.Helper()
	tok, err := devstack.TokenOf(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// introspectPort asks consoleauth's admin API which port a token points to.
func introspectPort(t *testing.T, w *devstack.World, token string) int {
	t.Helper()
	resp, err := http.Get(w.RESTURL() + "/v2.1/os-console-auth-tokens/" + url.PathEscape(token))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Console struct {
			Port json.Number `json:"port"`
		} `json:"console"`
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &out) != nil {
		t.Fatalf("token introspection: %s %s", resp.Status, raw)
	}
	p, err := strconv.Atoi(out.Console.Port.String())
	if err != nil {
		t.Fatalf("token introspection: port %q", out.Console.Port)
	}
	return p
}

// openNoVNCSession opens a console WebSocket as the console page does.
func openNoVNCSession(t *testing.T, w *devstack.World, token string) (*websocket.Conn, net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "ws://"+w.Addr(w.Ports.NoVNC)+"/?token="+url.QueryEscape(token), &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {"http://" + w.Addr(w.Ports.NoVNC)}},
	})
	if err != nil {
		t.Fatalf("novnc websocket: %v (%v)", err, resp)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return ws, websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
}

// openXVPSession sends the xvp CONNECT preamble and reads the 200.
func openXVPSession(t *testing.T, w *devstack.World, token string) net.Conn {
	t.Helper()
	c, status, r := xvpConnect(t, w, token)
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("xvp: got %q, want 200", status)
	}
	return &preambleConn{Conn: c, r: r}
}

func xvpConnect(t *testing.T, w *devstack.World, token string) (net.Conn, string, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.Addr(w.Ports.XVP), 5*time.Second)
	if err != nil {
		t.Fatalf("xvp dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT /console?token=%s HTTP/1.1\r\nHost: %s\r\n\r\n", url.QueryEscape(token), w.Addr(w.Ports.XVP))
	r := bufio.NewReader(c)
	status, err := r.ReadString('\n')
	if err != nil {
		return c, "", r
	}
	for { // headers up to the blank line
		line, err := r.ReadString('\n')
		if err != nil || line == "\r\n" {
			break
		}
	}
	c.SetDeadline(time.Time{})
	return c, strings.TrimSpace(status), r
}

// preambleConn reads through the reader that parsed the xvp reply, so no
// RFB byte read along with it is lost.
type preambleConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *preambleConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// rfbUpdate does the RFB handshake and reads one framebuffer update.
func rfbUpdate(t *testing.T, name string, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	si, err := rfb.Handshake(c)
	if err != nil {
		t.Fatalf("%s: rfb handshake: %v", name, err)
	}
	if err := rfb.RequestUpdate(c, si, false); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	u, err := rfb.ReadUpdate(c, si)
	if err != nil {
		t.Fatalf("%s: framebuffer update: %v", name, err)
	}
	if len(u.Rects) == 0 {
		t.Fatalf("%s: framebuffer update without rectangles", name)
	}
	t.Logf("%s: %dx%d %q, first update %d rectangles", name, si.Width, si.Height, si.Name, len(u.Rects))
}

// refusedNoVNC checks that the proxy refuses token with close 4401.
func refusedNoVNC(t *testing.T, w *devstack.World, token string) {
	t.Helper()
	ws, conn := openNoVNCSession(t, w, token)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := conn.Read(make([]byte, 1))
	var ce websocket.CloseError
	if !errors.As(err, &ce) || (ce.Code != 4401 && ce.Code != 4409) {
		t.Fatalf("novnc with a revoked token: got %v, want close 4401 or 4409", err)
	}
	ws.CloseNow()
}

// refusedXVP checks that the xvp proxy answers 401 to token.
func refusedXVP(t *testing.T, w *devstack.World, token string) {
	t.Helper()
	c, status, _ := xvpConnect(t, w, token)
	c.Close()
	if !strings.HasPrefix(status, "HTTP/1.1 401") && !strings.HasPrefix(status, "HTTP/1.1 409") {
		t.Fatalf("xvp with a revoked token: got %q, want 401 or 409", status)
	}
}

// --- libvirt fixtures (virsh: no libvirt library in this module) ---

var (
	libvirtdOnce sync.Once
	libvirtdErr  error
)

// needLibvirtd makes sure libvirtd answers on qemu:///system, starting
// virtlogd and libvirtd (and installing them with apt) when needed; it fails
// saying why when that is impossible (VNCGATE_SKIP_LIBVIRT=1 outside CI
// skips instead).
func needLibvirtd(t *testing.T) {
	t.Helper()
	libvirtdOnce.Do(func() { libvirtdErr = startLibvirtd() })
	if libvirtdErr == nil {
		return
	}
	if os.Getenv("CI") != "true" && os.Getenv("VNCGATE_SKIP_LIBVIRT") == "1" {
		t.Skipf("skipping libvirt test (VNCGATE_SKIP_LIBVIRT=1): %v", libvirtdErr)
	}
	t.Fatalf("this test needs a running libvirtd: %v", libvirtdErr)
}

func libvirtdUp() error {
	out, err := exec.Command("virsh", "-c", "qemu:///system", "version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("virsh version: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func startLibvirtd() error {
	if _, err := exec.LookPath("virsh"); err == nil && libvirtdUp() == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("libvirtd is not running and the test is not root, so it cannot start it")
	}
	for _, p := range []string{"libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(p); err != nil {
			cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "libvirt-daemon-system", "qemu-system-x86")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("apt-get install libvirt-daemon-system qemu-system-x86: %v: %s", err, out)
			}
			break
		}
	}
	if !pidFileAlive("/run/virtlogd.pid") {
		if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
			return fmt.Errorf("start virtlogd: %v: %s", err, out)
		}
	}
	if !pidFileAlive("/run/libvirtd.pid") {
		if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
			return fmt.Errorf("start libvirtd: %v: %s", err, out)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := libvirtdUp()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("libvirtd started but does not answer: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pidFileAlive(file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && syscall.Kill(pid, 0) == nil
}

type guest struct {
	name, uuid string
}

// defineGuest defines a tiny persistent TCG guest (no disk, 64 MiB) and
// destroys and undefines it when the test ends.
func defineGuest(t *testing.T, graphics string) guest {
	t.Helper()
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	g := guest{uuid: fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])}
	g.name = "vncgate-e2e-" + g.uuid[:8]
	virsh(t, "define", guestXML(t, g, graphics))
	t.Cleanup(func() {
		exec.Command("virsh", "-c", "qemu:///system", "destroy", g.uuid).Run()
		if out, err := exec.Command("virsh", "-c", "qemu:///system", "undefine", g.uuid).CombinedOutput(); err != nil {
			t.Logf("undefine %s: %v: %s", g.name, err, out)
		}
	})
	return g
}

func vncAt(port int) string {
	return fmt.Sprintf("<graphics type='vnc' port='%d' autoport='no' listen='127.0.0.1'/>", port)
}

func guestXML(t *testing.T, g guest, graphics string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), g.name+".xml")
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    %s
  </devices>
</domain>`, g.name, g.uuid, graphics)
	if err := os.WriteFile(path, []byte(xml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func virsh(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// freeVNCPort returns a port nobody listens on now on 127.0.0.1, away from
// libvirt's autoport range start.
func freeVNCPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		var b [2]byte
		rand.Read(b[:])
		p := 20000 + (int(b[0])<<8|int(b[1]))%20000
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// agentLog sends lines to t.Log until the test's cleanups run out.
type agentLog struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func newAgentLog(t *testing.T) *agentLog {
	l := &agentLog{t: t}
	t.Cleanup(func() { l.mu.Lock(); l.done = true; l.mu.Unlock() })
	return l
}

func (l *agentLog) line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Log(s)
	}
}
