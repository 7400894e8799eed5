package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// TestBannerURLsOpenTheDemoConsole is `make run` on free ports: the console
// URLs it prints reach the demo VM through both proxies, and cancelling (Ctrl-C)
// stops everything cleanly.
func TestBannerURLsOpenTheDemoConsole(t *testing.T) {
	bin := devstacktest.Binaries(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, pw, devstack.Options{Bin: bin, Host: "127.0.0.1", Dir: t.TempDir()})
		pw.Close()
		done <- err
	}()

	var banner strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		banner.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "Ctrl-C stops everything") {
			break
		}
	}
	go io.Copy(io.Discard, pr)
	text := banner.String()
	if !strings.Contains(text, devstack.DemoUUID) || !strings.Contains(text, "curl -s -X POST") {
		t.Fatalf("banner lacks the demo UUID or the curl:\n%s", text)
	}

	novncURL := regexp.MustCompile(`http://\S+/vnc_lite\.html\?path=%3Ftoken%3D\S+`).FindString(text)
	xvpURL := regexp.MustCompile(`http://\S+/console\?token=\S+`).FindString(text)
	if novncURL == "" || xvpURL == "" {
		t.Fatalf("banner lacks a console URL:\n%s", text)
	}
	tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
	defer tcancel()
	checkNoVNC(tctx, t, novncURL)
	checkXVP(tctx, t, xvpURL)

	// The curl, pasted as printed, mints a console URL that opens too.
	checkNoVNC(tctx, t, pasteCurl(tctx, t, text))
	// And the operator's command shows the fleet.
	pasteOperate(tctx, t, text)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("run still going 60s after Ctrl-C")
	}
}

// pasteCurl runs the banner's curl command as a shell would run it pasted
// (backslash-newline continuations and all) and returns the URL it got.
func pasteCurl(ctx context.Context, t *testing.T, banner string) string {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl to paste the banner's command into")
	}
	start := strings.Index(banner, "curl -s -X POST")
	end := strings.Index(banner[start:], "}}'")
	if end < 0 || !strings.Contains(banner[start:start+end], "-H 'Authorization: Bearer ") {
		t.Fatalf("banner's curl lacks its Authorization header or body:\n%s", banner)
	}
	command := banner[start : start+end+len("}}'")]
	out, err := exec.CommandContext(ctx, "bash", "-c", command).Output()
	if err != nil {
		t.Fatalf("pasted curl: %v\n%s", err, command)
	}
	var answer struct {
		RemoteConsole struct {
			URL string `json:"url"`
		} `json:"remote_console"`
	}
	if err := json.Unmarshal(out, &answer); err != nil || answer.RemoteConsole.URL == "" {
		t.Fatalf("pasted curl: got %s (%v), want a remote_console with a URL", out, err)
	}
	return answer.RemoteConsole.URL
}

// pasteOperate runs the banner's vncgatectl command as pasted: its status
// shows etcd healthy, the agent and both proxies (which publish themselves
// as they start; the status is asked again until they show or ctx ends).
func pasteOperate(ctx context.Context, t *testing.T, banner string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  operate +(\S.*)$`).FindStringSubmatch(banner)
	if m == nil || !strings.Contains(m[1], "vncgatectl --config ") || !strings.HasSuffix(m[1], " status") {
		t.Fatalf("banner lacks the vncgatectl status command:\n%s", banner)
	}
	for {
		out, err := exec.CommandContext(ctx, "bash", "-c", m[1]).CombinedOutput()
		text := string(out)
		if err == nil && strings.Contains(text, "ETCD healthy") && strings.Contains(text, devstack.ComputeHost) &&
			strings.Contains(text, "PROXIES 2") && strings.Contains(text, " novnc ") && strings.Contains(text, " xvpvnc ") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pasted %s: got %v\n%s\nwant etcd healthy, %s and both proxies", m[1], err, text, devstack.ComputeHost)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkNoVNC opens the WebSocket the console page opens and reads the demo
// VM's screen.
func checkNoVNC(ctx context.Context, t *testing.T, consoleURL string) {
	t.Helper()
	u, _ := url.Parse(consoleURL)
	token, err := devstack.TokenOf(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	ws, _, err := websocket.Dial(ctx, "ws://"+u.Host+"/websockify?token="+url.QueryEscape(token), &websocket.DialOptions{
		HTTPHeader:   map[string][]string{"Origin": {"http://" + u.Host}},
		Subprotocols: []string{"binary"},
	})
	if err != nil {
		t.Fatalf("novnc console: %v", err)
	}
	defer ws.CloseNow()
	screen(t, "novnc", websocket.NetConn(ctx, ws, websocket.MessageBinary))
}

// checkXVP speaks the XVP preamble a Java viewer sends, then RFB.
func checkXVP(ctx context.Context, t *testing.T, consoleURL string) {
	t.Helper()
	u, _ := url.Parse(consoleURL)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.0\r\n\r\n", u.RequestURI())
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || status != "HTTP/1.1 200 OK\r\n" {
		t.Fatalf("xvp console: got %q, %v; want HTTP/1.1 200 OK", status, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("xvp console: got %q after the status, want the end of the head", blank)
	}
	screen(t, "xvp", struct {
		io.Reader
		io.Writer
	}{br, c})
}

func screen(t *testing.T, name string, conn io.ReadWriter) {
	t.Helper()
	si, err := rfb.Handshake(conn)
	if err != nil {
		t.Fatalf("%s: RFB handshake: %v", name, err)
	}
	if si.Name != "vncgate demo VM" {
		t.Errorf("%s: desktop name: got %q, want the demo VM", name, si.Name)
	}
	if err := rfb.RequestUpdate(conn, si, false); err != nil {
		t.Fatal(err)
	}
	up, err := rfb.ReadUpdate(conn, si)
	if err != nil || len(up.Rects) == 0 {
		t.Fatalf("%s: framebuffer update: got %d rectangles, %v", name, len(up.Rects), err)
	}
}
