package e2e

// View-only consoles end to end: a token minted with "view_only": true makes
// both proxies run the RFB handshake themselves and drop the client's input
// (pkg/rfbproxy.ViewOnly). Whatever a view-only client sends, typed keys,
// pointer moves and clicks, pastes, Ctrl-Alt-Del, power and resize
// requests reach nothing, while its screen keeps updating and a normal
// session on the same instance at the same time still types.
//
// "Nothing reached" is proven by events, never by waiting: a VNC server
// reads a connection's messages in order, so once it has answered an update
// request sent after the input, it has read the input too (a "barrier");
// and the normal session's marker key is recorded, so every message sent
// before its barrier has been.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// viewOnlyQEMUUUID is the QEMU instance of TestViewOnlyQEMU.
const viewOnlyQEMUUUID = "5d1e7c3a-9b2f-4e8d-a6c4-2f0b9e1d7a35"

// viewOnlyURL asks the REST API for a view-only console URL of consoleType,
// as an API layer does with the extra field, and checks the answer says so.
func viewOnlyURL(t *testing.T, w *devstack.World, uuid, consoleType string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := fmt.Sprintf(`{"remote_console": {"protocol": "vnc", "type": %q, "view_only": true}}`, consoleType)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		w.RESTURL()+"/v2.1/servers/"+url.PathEscape(uuid)+"/remote-consoles", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.RESTClient().Do(req)
	if err != nil {
		t.Fatalf("REST view-only console of %s: %v", uuid, err)
	}
	defer resp.Body.Close()
	var out struct {
		RemoteConsole struct {
			URL      string `json:"url"`
			ViewOnly bool   `json:"view_only"`
		} `json:"remote_console"`
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &out) != nil || !out.RemoteConsole.ViewOnly {
		t.Fatalf("REST view-only console of %s: got %d %s, want 200 with view_only true", uuid, resp.StatusCode, raw)
	}
	return out.RemoteConsole.URL
}

// openConsole opens a session through the proxy a console URL names (novnc
// or xvpvnc) and runs the RFB handshake and a first full update over it.
func openConsole(t *testing.T, what, consoleType, consoleURL string) (net.Conn, rfb.ServerInit) {
	t.Helper()
	var c net.Conn
	if consoleType == "xvpvnc" {
		c = xvpSession(t, consoleURL)
	} else {
		_, c = novncConsole(t, consoleURL)
	}
	si, _ := rfbView(t, what, c)
	return c, si
}

// barrier asks for a full update on c and reads it: once it arrives, the
// VNC server has read every message sent on c before. The session must have
// no update request outstanding.
func barrier(t *testing.T, what string, c net.Conn, si rfb.ServerInit) rfb.Update {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if err := rfb.RequestUpdate(c, si, false); err != nil {
		t.Fatalf("%s: update request: %v", what, err)
	}
	u, err := rfb.ReadUpdate(c, si)
	if err != nil {
		t.Fatalf("%s: no update after the input (a forwarded message the VM refused ends the session): %v", what, err)
	}
	return u
}

// Client messages a view-only session must drop besides KeyEvent,
// PointerEvent and ClientCutText, as they change the VM: each would also end
// a session with the demo VM, which knows none of them, and the xvp and gii
// ones a session with QEMU.
var (
	qemuExtendedKey = []byte{255, 0, 0, 1, 0, 0, 0, 'v', 0, 0, 0, 0x2f}
	xvpReboot       = []byte{250, 0, 1, 3}
	setDesktopSize  = []byte{251, 0, 0x04, 0x00, 0x03, 0x00, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x04, 0x00, 0x03, 0x00, 0, 0, 0, 0}
	giiInjection    = []byte{253, 0, 4, 0, 1, 2, 3, 4}
)

// sendInput sends keys, pointer moves and clicks, a paste and
// Ctrl-Alt-Del on a view-only session c.
func sendInput(t *testing.T, what string, c net.Conn, key uint32, paste string) {
	t.Helper()
	var b bytes.Buffer
	rfb.SendKey(&b, key, true)
	rfb.SendKey(&b, key, false)
	rfb.SendPointer(&b, 0, 10, 10)
	rfb.SendPointer(&b, 4, 20, 30) // right button
	rfb.SendPointer(&b, 0, 20, 30)
	rfb.SendCutText(&b, paste)
	for _, k := range []uint32{0xffe3, 0xffe9, 0xffff} { // Ctrl-Alt-Del
		rfb.SendKey(&b, k, true)
	}
	send(t, what, c, b.Bytes())
}

// sendVMChanges sends QEMU's extended key event, an xvp reboot, a desktop
// resize and a gii event on a view-only session c.
func sendVMChanges(t *testing.T, what string, c net.Conn) {
	t.Helper()
	send(t, what, c, bytes.Join([][]byte{qemuExtendedKey, xvpReboot, setDesktopSize, giiInjection}, nil))
}

func send(t *testing.T, what string, c net.Conn, b []byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	defer c.SetWriteDeadline(time.Time{})
	if _, err := c.Write(b); err != nil {
		t.Fatalf("%s: send: %v", what, err)
	}
}

// demoInput is the input the demo VM recorded from connections accepted
// after the after-th, except from conn keep.
func demoInput(w *devstack.World, after, keep uint64) []string {
	var got []string
	for _, k := range w.Demo.Keys() {
		if k.Conn > after && k.Conn != keep {
			got = append(got, fmt.Sprintf("key %#x down=%v from conn %d", k.Keysym, k.Down, k.Conn))
		}
	}
	for _, p := range w.Demo.Pointers() {
		if p.Conn > after && p.Conn != keep {
			got = append(got, fmt.Sprintf("pointer %d,%d buttons %#x from conn %d", p.X, p.Y, p.Buttons, p.Conn))
		}
	}
	for _, c := range w.Demo.CutTexts() {
		if c.Conn > after && c.Conn != keep {
			got = append(got, fmt.Sprintf("cut text %q from conn %d", c.Text, c.Conn))
		}
	}
	return got
}

// typeMarker types key on a normal session and returns the demo VM's
// connection that session is, one accepted after the after-th: the one
// whose key the recorder has once the session's barrier is through.
func typeMarker(t *testing.T, w *devstack.World, what string, c net.Conn, si rfb.ServerInit, key uint32, after uint64) uint64 {
	t.Helper()
	if err := rfb.SendKey(c, key, true); err != nil {
		t.Fatal(err)
	}
	barrier(t, what, c, si)
	for _, k := range w.Demo.Keys() {
		if k.Keysym == key && k.Conn > after {
			return k.Conn
		}
	}
	t.Fatalf("%s: the normal session's key %q did not reach the VM", what, rune(key))
	return 0
}

// TestViewOnlyConsoles runs the whole stack and opens view-only consoles
// through both proxies to the demo VM, whose input recorder says what
// reached it: with the raw RFB client, from Chromium through our console
// page (told it is view-only, and not told), and with input sent in the
// same packet as xvp's CONNECT.
func TestViewOnlyConsoles(t *testing.T) {
	requireNoVNCLibrary(t)
	w := devstacktest.Start(t, devstack.Options{})

	for _, consoleType := range []string{"novnc", "xvpvnc"} {
		t.Run(consoleType+": raw client's input dropped, screen updates, normal session types", func(t *testing.T) {
			base := w.Demo.Accepted()
			normal, nsi := openConsole(t, "normal session", consoleType, consoleURLOf(t, w, devstack.DemoUUID, consoleType))
			view, vsi := openConsole(t, "view-only session", consoleType, viewOnlyURL(t, w, devstack.DemoUUID, consoleType))

			sendInput(t, "view-only session", view, 'v', "pasted into a view-only console")
			barrier(t, "view-only session", view, vsi) // the VM has read all the view-only client sent
			// The normal session has sent no input yet: the VM has none.
			if leaked := demoInput(w, base, 0); len(leaked) > 0 {
				t.Fatalf("input of the view-only session reached the VM:\n%s", strings.Join(leaked, "\n"))
			}
			sendVMChanges(t, "view-only session", view)
			barrier(t, "view-only session, after power, resize and gii messages", view, vsi)
			// The screen keeps updating: an incremental request is answered
			// once the picture changed.
			view.SetDeadline(time.Now().Add(20 * time.Second))
			if err := rfb.RequestUpdate(view, vsi, true); err != nil {
				t.Fatal(err)
			}
			if u, err := rfb.ReadUpdate(view, vsi); err != nil || len(u.Rects) == 0 {
				t.Fatalf("view-only session: no incremental update (%v): the screen must keep updating", err)
			}
			view.SetDeadline(time.Time{})

			keep := typeMarker(t, w, "normal session", normal, nsi, 'n', base)
			if leaked := demoInput(w, base, keep); len(leaked) > 0 {
				t.Fatalf("input of the view-only session reached the VM:\n%s", strings.Join(leaked, "\n"))
			}
			if keys := w.Demo.Keys(); keys[len(keys)-1].Keysym != 'n' || keys[len(keys)-1].Conn != keep {
				t.Errorf("last key recorded: got %+v, want the normal session's n", keys[len(keys)-1])
			}
			// The view-only session is still there and still sees.
			barrier(t, "view-only session after the normal session typed", view, vsi)
		})
	}

	t.Run("browser", func(t *testing.T) {
		b := startBrowser(t)
		base := w.Demo.Accepted()
		// A normal session on the same instance, open all along.
		normal, nsi := openConsole(t, "normal session", "novnc", consoleURLOf(t, w, devstack.DemoUUID, "novnc"))

		u := viewOnlyURL(t, w, devstack.DemoUUID, "novnc")
		if pu, _ := url.Parse(u); pu.Query().Get("view_only") != "1" {
			t.Fatalf("view-only console URL %s: want view_only=1 beside path", u)
		}
		// The page told it is view-only: it says so and offers no input.
		r := b.runViewOnly(map[string]any{"url": u, "expect": "connected", "typeKey": "v", "pointer": true, "framesAfter": 3})
		if r.State != "connected" || !strings.HasPrefix(r.Status, "Connected") {
			t.Fatalf("view-only page: state %q status %q, want connected\n%s", r.State, r.Status, strings.Join(r.Logs, "\n"))
		}
		if r.ViewOnly.Flag != "true" || r.ViewOnly.Badge != "View only" {
			t.Errorf("view-only page: got %+v, want the View only badge shown", r.ViewOnly)
		}
		for id, disabled := range r.ViewOnly.Disabled {
			if !disabled {
				t.Errorf("view-only page: #%s enabled, want disabled", id)
			}
		}
		if r.Colours < 5 || r.FramesSeen < 3 {
			t.Errorf("view-only page: %d colours, %d screen changes after the input; want the picture, updating", r.Colours, r.FramesSeen)
		}

		// The same token in a page not told (say the user removed
		// view_only=1): the page sends everything; the proxy drops it.
		pu, _ := url.Parse(u)
		q := pu.Query()
		q.Del("view_only")
		pu.RawQuery = q.Encode()
		r = b.runViewOnly(map[string]any{"url": pu.String(), "expect": "connected", "typeKey": "w", "pointer": true,
			"ctrlAltDel": true, "paste": "pasted from a view-only page", "framesAfter": 3})
		if r.State != "connected" || r.CloseCode != "" {
			t.Fatalf("page not told: state %q close code %q, want still connected (input dropped, the session kept)\n%s",
				r.State, r.CloseCode, strings.Join(r.Logs, "\n"))
		}
		if r.ViewOnly.Badge != "" || r.FramesSeen < 3 {
			t.Errorf("page not told: badge %q, %d screen changes after the input; want none and an updating screen", r.ViewOnly.Badge, r.FramesSeen)
		}

		// Each page saw screen changes after its input, so the VM has read
		// it; the normal session has sent no input yet.
		if leaked := demoInput(w, base, 0); len(leaked) > 0 {
			t.Fatalf("input typed, clicked or pasted in a view-only console page reached the VM:\n%s", strings.Join(leaked, "\n"))
		}
		keep := typeMarker(t, w, "normal session", normal, nsi, 'n', base)
		if leaked := demoInput(w, base, keep); len(leaked) > 0 {
			t.Fatalf("input reached the VM from another session than the normal one:\n%s", strings.Join(leaked, "\n"))
		}
	})

	t.Run("xvpvnc: input sent with the CONNECT head is dropped too", func(t *testing.T) {
		base := w.Demo.Accepted()
		u, err := url.Parse(viewOnlyURL(t, w, devstack.DemoUUID, "xvpvnc"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		// One write: the head, then a whole RFB 3.8 client side up to its
		// ClientInit, then keys, before any answer.
		var b bytes.Buffer
		fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
		pipelined := "RFB 003.008\n\x01\x01"
		b.WriteString(pipelined)
		rfb.SendKey(&b, 'p', true)
		rfb.SendKey(&b, 'p', false)
		if _, err := c.Write(b.Bytes()); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		switch {
		case err != nil || !strings.HasPrefix(line, "HTTP/1.1 200"):
			// Refusing such a client is fine; passing its bytes on is not.
			t.Logf("xvp-proxy refused the pipelined client: %q %v", line, err)
			normal, nsi := openConsole(t, "normal session", "xvpvnc", consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc"))
			keep := typeMarker(t, w, "normal session", normal, nsi, 'm', base)
			if leaked := demoInput(w, base, keep); len(leaked) > 0 {
				t.Fatalf("pipelined input reached the VM:\n%s", strings.Join(leaked, "\n"))
			}
			return
		}
		if rest, err := br.ReadString('\n'); err != nil || rest != "\r\n" {
			t.Fatalf("xvp answer: got %q%q (%v), want exactly %q", line, rest, err, xvpOK)
		}
		// The rest of the RFB handshake, the pipelined part already sent.
		conn := &prewritten{Reader: br, Writer: c, skip: len(pipelined)}
		si, err := rfb.Handshake(conn)
		if err == nil {
			err = rfb.RequestUpdate(c, si, false)
		}
		if err == nil {
			_, err = rfb.ReadUpdate(br, si)
		}
		if err != nil {
			// The bytes read with the head must go to the proxy's RFB
			// handshake (as the client's), not straight to the VNC server.
			if leaked := demoInput(w, base, 0); len(leaked) > 0 {
				t.Fatalf("input sent with the CONNECT head reached the VM (bytes read with the head went to the VNC server, "+
					"around the RFB handshake and the view-only filter):\n%s\nthe session then failed: %v", strings.Join(leaked, "\n"), err)
			}
			t.Fatalf("view-only session whose client sent its first RFB bytes with the CONNECT head: %v", err)
		}
		if leaked := demoInput(w, base, 0); len(leaked) > 0 {
			t.Fatalf("input sent with the CONNECT head reached the VM:\n%s", strings.Join(leaked, "\n"))
		}
	})
}

// prewritten is a session whose first skip written bytes the client had
// already sent: Write drops them.
type prewritten struct {
	io.Reader
	io.Writer
	skip int
}

func (p *prewritten) Write(b []byte) (int, error) {
	n := min(p.skip, len(b))
	p.skip -= n
	if n == len(b) {
		return n, nil
	}
	m, err := p.Writer.Write(b[n:])
	return n + m, err
}

// TestViewOnlyQEMU opens view-only consoles through both proxies to a real
// QEMU whose input events are traced to a file (a VGA machine, so keys
// are input events rather than text-console keystrokes): nothing the
// view-only client types or clicks shows there, while a normal session's
// key does.
func TestViewOnlyQEMU(t *testing.T) {
	requireNoVNCLibrary(t)
	trace := filepath.Join(t.TempDir(), "qemu-input.log")
	port := qemu.StartVNC(t, "-machine", "pc", "-device", "VGA", "-trace", "input_event_*", "-D", trace)
	w := devstacktest.Start(t, devstack.Options{
		Instances: []devstack.Instance{{UUID: viewOnlyQEMUUUID, VNCHost: "127.0.0.1", VNCPort: port, State: "running"}},
	})
	// Markers the normal sessions type, one per proxy: QEMU's trace names
	// keys by QEMU key code, here the letter.
	markers := map[string]uint32{"novnc": 'n', "xvpvnc": 'x'}
	for _, consoleType := range []string{"novnc", "xvpvnc"} {
		t.Run(consoleType, func(t *testing.T) {
			view, vsi := openConsole(t, "view-only session to QEMU", consoleType, viewOnlyURL(t, w, viewOnlyQEMUUUID, consoleType))
			sendInput(t, "view-only session to QEMU", view, 'v', "pasted into QEMU")
			barrier(t, "view-only session to QEMU", view, vsi)

			normal, nsi := openConsole(t, "normal session to QEMU", consoleType, consoleURLOf(t, w, viewOnlyQEMUUUID, consoleType))
			marker := markers[consoleType]
			rfb.SendKey(normal, marker, true)
			rfb.SendKey(normal, marker, false)
			barrier(t, "normal session to QEMU", normal, nsi)
			log := waitTrace(t, trace, fmt.Sprintf("key qcode %c, down 0", marker))
			for _, leak := range []string{"qcode v", "input_event_btn", "input_event_abs", "input_event_rel", "qcode ctrl", "qcode alt", "qcode delete"} {
				if strings.Contains(log, leak) {
					t.Fatalf("QEMU's input trace has %q: the view-only session's input reached it:\n%s", leak, log)
				}
			}
			sendVMChanges(t, "view-only session to QEMU", view)
			barrier(t, "view-only session to QEMU, after power, resize and gii messages", view, vsi)
			if log := waitTrace(t, trace, ""); strings.Contains(log, "qcode v") {
				t.Fatalf("QEMU's input trace has the view-only session's extended key event:\n%s", log)
			}
		})
	}
}

// waitTrace returns QEMU's trace file once it holds want, which the test
// has made QEMU log: the file is written as events happen.
func waitTrace(t *testing.T, path, want string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU's input trace never showed %q:\n%s", want, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// viewOnlyResult is console.mjs's answer with the fields of its view-only
// options.
type viewOnlyResult struct {
	browserResult
	FramesSeen int `json:"framesSeen"`
	ViewOnly   struct {
		Flag     string          `json:"flag"`
		Badge    string          `json:"badge"`
		Disabled map[string]bool `json:"disabled"`
	} `json:"viewOnly"`
}

// runViewOnly is run, decoding the view-only fields too.
func (b *browser) runViewOnly(job map[string]any) viewOnlyResult {
	b.t.Helper()
	line, _ := json.Marshal(job)
	if _, err := fmt.Fprintf(b.stdin, "%s\n", line); err != nil {
		b.t.Fatalf("driver: %v\n%s", err, b.stderr)
	}
	var r viewOnlyResult
	if err := b.next(&r); err != nil {
		b.t.Fatalf("driver: %v\n%s", err, b.stderr)
	}
	if r.Error != "" {
		b.t.Fatalf("browser job %v: %s\npage log:\n%s\n%s", job["url"], r.Error, strings.Join(r.Logs, "\n"), b.stderr)
	}
	return r
}
