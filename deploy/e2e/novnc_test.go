package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
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
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/testlog"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// qemuUUID is the QEMU guest's instance in the stack's inventory.
const qemuUUID = "a3c1e5f7-2b4d-4e6f-8a0b-1c2d3e4f5a6b"

// requireTool fails under CI=true when a tool the test needs is missing,
// and skips otherwise.
func requireTool(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (make deps installs it)", what)
	}
	t.Skipf("%s (make deps installs it)", what)
}

// requireNoVNCLibrary checks that npm installed the noVNC library the
// proxy's console page serves: without it novnc-proxy does not start.
func requireNoVNCLibrary(t *testing.T) {
	t.Helper()
	root, err := devstacktest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(root, "services/novnc-proxy/web/node_modules/@novnc/novnc/core/rfb.js"))
	requireTool(t, err == nil, "noVNC library missing: run npm ci in services/novnc-proxy/web")
}

// rawHTTP sends raw bytes to addr and returns the answer's status line.
func rawHTTP(t *testing.T, addr string, raw []byte) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go c.Write(raw) // may fail once the server has answered and closed
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "closed: " + err.Error()
	}
	return strings.TrimSpace(line)
}

// TestNoVNCProxy runs the whole stack and goes through novnc-proxy as a
// browser's noVNC does: REST get-console-URL, WebSocket, RFB, to the demo VM
// and to a real QEMU; then the security checks, throttling last (it bans
// 127.0.0.1 for the rest of the window).
func TestNoVNCProxy(t *testing.T) {
	requireNoVNCLibrary(t)
	qemuPort := qemu.StartVNC(t)
	w := devstacktest.Start(t, devstack.Options{
		Skip:      map[string]bool{devstack.XVPProxy: true},
		Instances: []devstack.Instance{{UUID: qemuUUID, VNCHost: "127.0.0.1", VNCPort: qemuPort, State: "running"}},
	})
	proxyAddr := w.Addr(w.Ports.NoVNC)

	t.Run("console page", func(t *testing.T) {
		u := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "vncgate/app.js") {
			t.Fatalf("GET %s: got %d, want the console page", u, resp.StatusCode)
		}
		for _, p := range []string{"/novnc/core/rfb.js", "/vncgate/closecodes.js"} {
			resp, err := http.Get("http://" + proxyAddr + p)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET %s: got %d, want 200", p, resp.StatusCode)
			}
		}
	})

	t.Run("demo VM: handshake, framebuffer update, key", func(t *testing.T) {
		_, nc := novncConsole(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		_, up := rfbView(t, "demo VM through novnc-proxy", nc)
		if up.Rects[0].DistinctColours() < 2 {
			t.Fatalf("got %d rects, want the demo's test pattern", len(up.Rects))
		}
		if err := rfb.SendKey(nc, 'q', true); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := w.Demo.WaitKey(ctx, 'q'); err != nil {
			t.Fatalf("key did not reach the demo VM: %v", err)
		}
	})

	t.Run("QEMU VM: handshake and framebuffer update", func(t *testing.T) {
		_, nc := novncConsole(t, consoleURLOf(t, w, qemuUUID, "novnc"))
		si, up := rfbView(t, "QEMU through novnc-proxy", nc)
		if !strings.Contains(si.Name, "QEMU") {
			t.Errorf("got desktop name %q, want QEMU's", si.Name)
		}
		if up.Rects[0].Width == 0 {
			t.Fatalf("got %d rects, want QEMU's screen", len(up.Rects))
		}
	})

	t.Run("cross-origin upgrade refused with 403", func(t *testing.T) {
		wsURL, _ := novncWSURL(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://evil.example"}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("got %v (%v), want HTTP 403 before the upgrade", resp, err)
		}
		var body struct {
			Error string `json:"error"`
			Code  int    `json:"code"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Code != 403 || body.Error == "" {
			t.Errorf("got body %+v (%v), want a JSON error", body, err)
		}
	})

	t.Run("token of another console type refused", func(t *testing.T) {
		token := tokenOf(t, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc"))
		c := novncDial(t, "ws://"+proxyAddr+"/?token="+url.QueryEscape(token), "http://"+proxyAddr)
		if ce := wsclose.Read(t, c); ce.Code != novncWrongType {
			t.Fatalf("got close %d %q, want %d", ce.Code, ce.Reason, novncWrongType)
		}
	})

	t.Run("revocation ends live sessions and refuses the token", func(t *testing.T) {
		u := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
		live, nc := novncConsole(t, u)
		rfbView(t, "novnc-proxy before the revocation", nc)
		start := time.Now()
		revokeREST(t, w, devstack.DemoUUID, "stopped")
		ce := wsclose.Read(t, live)
		if ce.Code != novncRevoked || !strings.Contains(ce.Reason, "stopped") {
			t.Fatalf("live session: got close %d %q, want %d with the reason", ce.Code, ce.Reason, novncRevoked)
		}
		t.Logf("the revocation ended the session after %s", time.Since(start))
		wsURL, origin := novncWSURL(t, u)
		if ce := wsclose.Read(t, novncDial(t, wsURL, origin)); ce.Code != novncTokenInvalid {
			t.Fatalf("revoked token: got close %d %q, want %d", ce.Code, ce.Reason, novncTokenInvalid)
		}
	})

	t.Run("open redirect guard", func(t *testing.T) {
		if got := rawHTTP(t, proxyAddr, []byte("GET //evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n")); got != "HTTP/1.1 400 Bad Request" {
			t.Fatalf("got %q, want 400", got)
		}
	})

	t.Run("garbage and oversized handshakes closed while a session goes on", func(t *testing.T) {
		_, nc := novncConsole(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		si, _ := rfbView(t, "novnc-proxy session", nc)
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		var wg sync.WaitGroup
		for _, tc := range []struct{ name, raw, want string }{
			{"garbage", "\x00\x01\x02garbage\xff\r\n\r\n", "HTTP/1.1 400 Bad Request"},
			{"oversized", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 1<<20) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if got := rawHTTP(t, proxyAddr, []byte(tc.raw)); got != tc.want {
					t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
				}
			}()
		}
		for i := 0; i < 10; i++ {
			if err := rfb.RequestUpdate(nc, si, false); err != nil {
				t.Fatal(err)
			}
			if _, err := rfb.ReadUpdate(nc, si); err != nil {
				t.Fatalf("session during bad handshakes: %v", err)
			}
		}
		wg.Wait()
	})

	t.Run("repeated bad tokens throttled, a valid token still served", func(t *testing.T) {
		origin := "http://" + proxyAddr
		// One guess, repeated past the default limit of 10: however failures
		// are counted (per client, or per client and token prefix), its key
		// is throttled (the checks slowed, or refused with 4429).
		for i := range 11 {
			ce := wsclose.Read(t, novncDial(t, "ws://"+proxyAddr+"/?token=guessguessguessguess", origin))
			if ce.Code != novncTokenInvalid && ce.Code != novncThrottled {
				t.Fatalf("bad token %d: got close %d %q, want %d or %d", i, ce.Code, ce.Reason, novncTokenInvalid, novncThrottled)
			}
		}
		_, nc := novncConsole(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		rfbView(t, "valid token from a throttled address", nc)
	})
}

// browser is the node driver of chromium (browser/console.mjs).
type browser struct {
	t *testing.T
	*nodeDriver
}

// browserResult is console.mjs's answer to a job.
type browserResult struct {
	State       string   `json:"state"`
	Status      string   `json:"status"`
	Message     string   `json:"message"`
	CloseCode   string   `json:"closeCode"`
	Colours     int      `json:"colours"`
	Painted     float64  `json:"painted"` // share of the canvas drawn
	Reconnected bool     `json:"reconnected"`
	Canvas      *rectBox `json:"canvas"`
	Logs        []string `json:"logs"`
	Error       string   `json:"error"`
}

type rectBox struct{ X, Y, Width, Height float64 }

func startBrowser(t *testing.T) *browser {
	t.Helper()
	return &browser{t: t, nodeDriver: startNodeDriver(t, "console.mjs")}
}

// nodeDriver is a browser driver script under browser/ (playwright-core
// and Chromium): one JSON command a line on stdin, one JSON answer a line
// on stdout.
type nodeDriver struct {
	stdin  io.WriteCloser
	out    *bufio.Scanner
	stderr *testlog.Buffer
}

// startNodeDriver starts script and waits for its {"ready": true}; the
// driver closes the browser and exits when the test ends.
func startNodeDriver(t *testing.T, script string) *nodeDriver {
	t.Helper()
	node, err := exec.LookPath("node")
	requireTool(t, err == nil, "node missing")
	_, err = os.Stat("/usr/bin/chromium")
	requireTool(t, err == nil, "chromium missing (/usr/bin/chromium)")
	_, err = os.Stat("browser/node_modules/playwright-core")
	requireTool(t, err == nil, "playwright-core missing: run npm ci in deploy/e2e/browser")

	cmd := exec.Command(node, script)
	cmd.Dir = "browser"
	d := &nodeDriver{stderr: &testlog.Buffer{}}
	cmd.Stderr = d.stderr
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		d.stdin.Close() // the driver closes the browser and exits
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	d.out = bufio.NewScanner(stdout)
	d.out.Buffer(make([]byte, 1<<20), 1<<20)
	var ready struct{ Ready bool }
	if err := d.next(&ready); err != nil || !ready.Ready {
		t.Fatalf("browser did not start: %v\n%s", err, d.stderr)
	}
	return d
}

// next reads the driver's next answer, waiting at most a minute.
func (d *nodeDriver) next(v any) error {
	line := make(chan bool, 1)
	go func() { line <- d.out.Scan() }()
	select {
	case ok := <-line:
		if !ok {
			return fmt.Errorf("driver exited: %v", d.out.Err())
		}
		return json.Unmarshal(d.out.Bytes(), v)
	case <-time.After(time.Minute):
		return errors.New("driver did not answer within a minute")
	}
}

// run sends one job and returns its result.
func (b *browser) run(job map[string]any) browserResult {
	b.t.Helper()
	line, _ := json.Marshal(job)
	if _, err := fmt.Fprintf(b.stdin, "%s\n", line); err != nil {
		b.t.Fatalf("driver: %v\n%s", err, b.stderr)
	}
	var r browserResult
	if err := b.next(&r); err != nil {
		b.t.Fatalf("driver: %v\n%s", err, b.stderr)
	}
	if r.Error != "" {
		b.t.Fatalf("browser job %v: %s\npage log:\n%s\n%s", job["url"], r.Error, strings.Join(r.Logs, "\n"), b.stderr)
	}
	return r
}

// screenshotColours counts the distinct colours of a screenshot inside box.
func screenshotColours(t *testing.T, path string, box *rectBox) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	r := img.Bounds()
	if box != nil {
		r = image.Rect(int(box.X), int(box.Y), int(box.X+box.Width), int(box.Y+box.Height)).Intersect(r)
	}
	seen := map[uint32]struct{}{}
	for y := r.Min.Y; y < r.Max.Y; y += 2 {
		for x := r.Min.X; x < r.Max.X; x += 2 {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			seen[cr>>8<<16|cg>>8<<8|cb>>8] = struct{}{}
		}
	}
	return len(seen)
}

// TestNoVNCInABrowser opens console URLs from the REST API in Debian's
// chromium: our page connects and shows the demo VM's picture, a typed key,
// Ctrl-Alt-Del and a clipboard paste reach the VM, Reconnect connects again,
// an expired token gets its sentence, and
// Debian's own noVNC build served through `web` works too.
func TestNoVNCInABrowser(t *testing.T) {
	requireNoVNCLibrary(t)
	b := startBrowser(t)
	// Nova's 600 s TTL: a slow browser must never see its token expire.
	w := devstacktest.Start(t, devstack.Options{Skip: map[string]bool{devstack.XVPProxy: true}})
	shots := t.TempDir()
	if dir := os.Getenv("VNCGATE_SCREENSHOTS"); dir != "" {
		shots = dir
	}

	t.Run("console connects, shows the VM, types", func(t *testing.T) {
		shot := filepath.Join(shots, "connected.png")
		r := b.run(map[string]any{
			"url": consoleURLOf(t, w, devstack.DemoUUID, "novnc"), "expect": "connected",
			"typeKey": "a", "ctrlAltDel": true, "paste": "pasted from vncgate", "reconnect": true, "screenshot": shot,
		})
		if r.State != "connected" || !strings.HasPrefix(r.Status, "Connected") {
			t.Fatalf("page state %q status %q, want connected\n%s", r.State, r.Status, strings.Join(r.Logs, "\n"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := w.Demo.WaitKey(ctx, 'a'); err != nil {
			t.Errorf("the key typed in the page did not reach the VM: %v", err)
		}
		if _, err := w.Demo.WaitKey(ctx, 0xffff); err != nil { // XK_Delete
			t.Errorf("Ctrl-Alt-Del did not reach the VM: %v", err)
		}
		if _, err := w.Demo.WaitCutText(ctx, "pasted from vncgate"); err != nil {
			t.Errorf("clipboard paste did not reach the VM: %v", err)
		}
		if !r.Reconnected || r.State != "connected" {
			t.Errorf("reconnect: got reconnected=%v state %q, want connected again", r.Reconnected, r.State)
		}
		if r.Colours < 5 || r.Painted < 0.95 {
			t.Errorf("canvas has %d colours, %.0f%% drawn; want the demo's whole picture", r.Colours, 100*r.Painted)
		}
		if n := screenshotColours(t, shot, r.Canvas); n < 5 {
			t.Errorf("screenshot of the console has %d colours, want a picture, not a flat screen", n)
		}
		t.Logf("screenshot %s: canvas %+v, %d colours, %.0f%% drawn", shot, *r.Canvas, r.Colours, 100*r.Painted)
	})

	t.Run("expired token shows why", func(t *testing.T) {
		// A world of its own whose tokens live one second; the page opens
		// once consoleauth itself says the token is gone.
		short := devstacktest.Start(t, devstack.Options{
			Skip:     map[string]bool{devstack.XVPProxy: true},
			TokenTTL: time.Second,
		})
		u := consoleURLOf(t, short, devstack.DemoUUID, "novnc")
		waitTokenExpired(t, short, tokenOf(t, u))
		shot := filepath.Join(shots, "expired.png")
		r := b.run(map[string]any{"url": u, "expect": "disconnected", "screenshot": shot})
		if r.CloseCode != strconv.Itoa(novncTokenInvalid) || !strings.Contains(r.Message, "invalid or has expired") {
			t.Fatalf("got close code %q message %q, want %d and the sentence", r.CloseCode, r.Message, novncTokenInvalid)
		}
		t.Logf("expired token: %q (screenshot %s)", r.Message, shot)
	})

	t.Run("Debian's noVNC through web", func(t *testing.T) {
		const debian = "/usr/share/novnc"
		if _, err := os.Stat(filepath.Join(debian, "vnc_lite.html")); err != nil {
			t.Skip("Debian's noVNC is not installed (apt-get install novnc)")
		}
		addr := startNoVNCProxy(t, w, "--web="+debian)
		token := tokenOf(t, consoleURLOf(t, w, devstack.DemoUUID, "novnc"))
		shot := filepath.Join(shots, "debian-novnc.png")
		r := b.run(map[string]any{
			"url":  "http://" + addr + "/vnc_lite.html?path=" + url.QueryEscape("?token="+token),
			"page": "novnc-lite", "expect": "connected", "typeKey": "b", "screenshot": shot,
			"pictureTimeoutMs": 2000, // it never draws it all; see below
		})
		if r.State != "connected" {
			t.Fatalf("Debian's noVNC: status %q, want connected\n%s", r.Status, strings.Join(r.Logs, "\n"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := w.Demo.WaitKey(ctx, 'b'); err != nil {
			t.Errorf("the key typed in Debian's noVNC did not reach the VM: %v", err)
		}
		// Only colours, not how much is drawn: noVNC 1.3's Raw decoder sets
		// the alpha of the wrong bytes (it forgets the queue offset), so the
		// demo VM's pixels, whose padding byte is 0, mostly stay transparent;
		// the same happens through websockify.
		if n := screenshotColours(t, shot, r.Canvas); n < 5 {
			t.Errorf("screenshot has %d colours, want the VM's picture", n)
		}
		t.Logf("Debian's noVNC: %q, canvas %.0f%% drawn (screenshot %s)", r.Status, 100*r.Painted, shot)
	})
}

// startNoVNCProxy runs one more novnc-proxy of the stack's build with extra
// flags, on a free port, until the test ends; it returns its address.
func startNoVNCProxy(t *testing.T, w *devstack.World, args ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(filepath.Join(devstacktest.Binaries(t), devstack.NoVNCProxy), append([]string{
		"--novncproxy_host=127.0.0.1", "--novncproxy_port=" + strconv.Itoa(port),
		"--novncproxy_base_url=http://" + addr + "/vnc_lite.html",
		"--consoleauth_address=" + w.Addr(w.Ports.ConsoleAuthGRPC),
		"--admin_listen=", // not the stack's: no default port to share
	}, append(w.GRPCFlags(devstack.NoVNCProxy), args...)...)...)
	logs := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("novnc-proxy %s:\n%s", addr, logs)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		select {
		case <-exited:
			t.Fatalf("novnc-proxy exited: %s", logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("novnc-proxy not ready: %s", logs)
		}
	}
}
