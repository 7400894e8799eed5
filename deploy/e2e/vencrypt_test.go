package e2e

import (
	"bytes"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/testlog"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// Instances of the VeNCrypt tests' QEMUs in the stacks' inventory.
const (
	vencryptUUID = "7c9d1e2f-4a5b-4c6d-8e9f-0a1b2c3d4e5f" // VeNCrypt x509, client certificate required
	passwordUUID = "8d0e2f3a-5b6c-4d7e-9f0a-1b2c3d4e5f6a" // VNC password only
	plainUUID    = "9e1f3a4b-6c7d-4e8f-a0b1-2c3d4e5f6a7b" // no authentication
)

// Close code of novnc-proxy for a failed RFB security negotiation
// (services/novnc-proxy/internal/closecode).
const novncSecurityFailed = 4525

// securityFailed is what a raw RFB client is told, in Nova's words.
const securityFailed = "Unable to negotiate security with server"

// logBuffer keeps the stack's log for the test to read, and passes it on to
// the test log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	out io.Writer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	return l.out.Write(p)
}

// wait returns once a line of the log holds every one of parts; the
// services write their refusal log line as they answer, so it may trail
// the answer a little (at most 10 s).
func (l *logBuffer) wait(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		text := l.buf.String()
		l.mu.Unlock()
		for line := range strings.SplitSeq(text, "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q", parts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVeNCrypt runs both proxies with Nova's [vnc] auth_schemes and
// vencrypt_* options against real QEMUs: one with VeNCrypt x509 requiring a
// client certificate (libvirt's vnc_tls=1, vnc_tls_x509_verify=1), one with
// VNC password authentication only, one with no authentication. Each stack
// is reached by Chromium with the console page, by the raw RFB test client
// through the novnc WebSocket and through xvp-proxy: sessions connect with
// the right client certificate, and are refused cleanly (a sentence on the
// page, the RFB failure for raw clients, the cause in the proxy's log) with
// a wrong CA, without a client certificate, or against a server offering
// only VNC password authentication.
func TestVeNCrypt(t *testing.T) {
	requireNoVNCLibrary(t)
	qemu.Require(t)
	b := startBrowser(t)

	dir := t.TempDir()
	ca := certs.TestCA(t)
	pki := filepath.Join(dir, "qemu-pki")
	if err := ca.WriteQEMUDir(pki, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	proxy, err := ca.WriteFiles(filepath.Join(dir, "proxy"), "vncgate proxy")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := certs.TestCA(t).WriteFiles(filepath.Join(dir, "foreign"), "vncgate proxy")
	if err != nil {
		t.Fatal(err)
	}
	// QEMU's VNC listen backlog is 1: each QEMU is reached by one client at
	// a time, as the subtests below do.
	instances := []devstack.Instance{
		{UUID: vencryptUUID, VNCHost: "127.0.0.1", VNCPort: qemu.StartVeNCrypt(t, pki, true), State: "running"},
		{UUID: passwordUUID, VNCHost: "127.0.0.1", VNCPort: qemu.StartVNCWith(t, "password=on"), State: "running"},
		{UUID: plainUUID, VNCHost: "127.0.0.1", VNCPort: qemu.StartVNC(t), State: "running"},
	}
	stack := func(t *testing.T, args ...string) (*devstack.World, *logBuffer) {
		t.Helper()
		logs := &logBuffer{out: testlog.New(t)}
		w := devstacktest.Start(t, devstack.Options{
			Instances: instances,
			Logs:      logs,
			Args:      map[string][]string{devstack.NoVNCProxy: args, devstack.XVPProxy: args},
		})
		return w, logs
	}
	withCert := []string{"--vencrypt_client_cert=" + proxy.Cert, "--vencrypt_client_key=" + proxy.Key}

	t.Run("auth_schemes=vencrypt with the client certificate", func(t *testing.T) {
		w, logs := stack(t, append([]string{"--auth_schemes=vencrypt", "--vencrypt_ca_certs=" + proxy.CA}, withCert...)...)
		t.Run("connects", func(t *testing.T) { connects(t, b, w, vencryptUUID, "vencrypt") })
		t.Run("server with VNC password only refused", func(t *testing.T) {
			refused(t, b, w, logs, passwordUUID, "offers security types [2 (VNC Authentication)]")
		})
		t.Run("server without authentication refused", func(t *testing.T) {
			refused(t, b, w, logs, plainUUID, "offers security types [1 (None)]")
		})
	})

	t.Run("auth_schemes=vencrypt trusting another CA", func(t *testing.T) {
		w, logs := stack(t, append([]string{"--auth_schemes=vencrypt", "--vencrypt_ca_certs=" + foreign.CA}, withCert...)...)
		refused(t, b, w, logs, vencryptUUID, "certificate signed by unknown authority")
	})

	t.Run("auth_schemes=vencrypt without a client certificate", func(t *testing.T) {
		w, logs := stack(t, "--auth_schemes=vencrypt", "--vencrypt_ca_certs="+proxy.CA)
		refused(t, b, w, logs, vencryptUUID, "closed the connection after TLS")
	})

	t.Run("auth_schemes=vencrypt,none (Nova's migration path)", func(t *testing.T) {
		w, _ := stack(t, append([]string{"--auth_schemes=vencrypt,none", "--vencrypt_ca_certs=" + proxy.CA}, withCert...)...)
		t.Run("server without authentication connects", func(t *testing.T) { connects(t, b, w, plainUUID, "none") })
		t.Run("VeNCrypt server connects", func(t *testing.T) { connects(t, b, w, vencryptUUID, "vencrypt") })
	})
}

// connects opens the instance's console three ways, one after another:
// the raw client through the novnc WebSocket and through xvp-proxy, then
// the console page in Chromium.
func connects(t *testing.T, b *browser, w *devstack.World, uuid, scheme string) {
	t.Helper()
	isQEMU := func(what string, si rfb.ServerInit) {
		if !strings.Contains(si.Name, "QEMU") {
			t.Errorf("%s: desktop name %q, want QEMU's", what, si.Name)
		}
	}
	ws, nc := novncConsole(t, consoleURLOf(t, w, uuid, "novnc"))
	si, _ := rfbView(t, "novnc-proxy, auth_schemes "+scheme, nc)
	isQEMU("novnc-proxy", si)
	ws.CloseNow()

	c := xvpSession(t, consoleURLOf(t, w, uuid, "xvpvnc"))
	si, _ = rfbView(t, "xvp-proxy, auth_schemes "+scheme, c)
	isQEMU("xvp-proxy", si)
	c.Close()

	// QEMU without a machine shows no picture: the page need not wait for
	// one (pictureTimeoutMs bounds that wait; nothing is judged on it).
	r := b.run(map[string]any{"url": consoleURLOf(t, w, uuid, "novnc"), "expect": "connected",
		"pictureTimeoutMs": 500, "screenshot": filepath.Join(t.TempDir(), "console.png")})
	if r.State != "connected" || !strings.Contains(r.Status, "QEMU") {
		t.Fatalf("console page: state %q status %q message %q, want connected to QEMU\n%s",
			r.State, r.Status, r.Message, strings.Join(r.Logs, "\n"))
	}
	t.Logf("console page: %q", r.Status)
}

// refused opens the instance's console the same three ways and expects
// each refused cleanly: the raw client gets RFB's failure reason (and
// through novnc-proxy the close code), the page a sentence, and the
// proxies' log the cause.
func refused(t *testing.T, b *browser, w *devstack.World, logs *logBuffer, uuid, cause string) {
	t.Helper()
	ws, nc := novncConsole(t, consoleURLOf(t, w, uuid, "novnc"))
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := rfb.Handshake(nc); err == nil || !strings.Contains(err.Error(), securityFailed) {
		t.Errorf("raw client through novnc-proxy: got %v, want the RFB failure %q", err, securityFailed)
	}
	if ce := wsclose.Read(t, ws); ce.Code != novncSecurityFailed {
		t.Errorf("raw client through novnc-proxy: got close %d %q, want %d", ce.Code, ce.Reason, novncSecurityFailed)
	}
	t.Logf("novnc-proxy log: %s", logs.wait(t, devstack.NoVNCProxy, uuid, cause))

	c := xvpSession(t, consoleURLOf(t, w, uuid, "xvpvnc"))
	if _, err := rfb.Handshake(c); err == nil || !strings.Contains(err.Error(), securityFailed) {
		t.Errorf("raw client through xvp-proxy: got %v, want the RFB failure %q", err, securityFailed)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("xvp-proxy after the failure: got %q (%v), want the connection closed", rest, err)
	}
	t.Logf("xvp-proxy log: %s", logs.wait(t, devstack.XVPProxy, uuid, cause))

	// noVNC reads the RFB failure before the close frame and reports its
	// disconnect at once; the page must still wait for the close code.
	r := b.run(map[string]any{"url": consoleURLOf(t, w, uuid, "novnc"), "expect": "disconnected"})
	if r.CloseCode != strconv.Itoa(novncSecurityFailed) || !strings.Contains(r.Message, "could not open a secure connection") {
		t.Errorf("console page: close code %q message %q, want %d and its sentence\n%s",
			r.CloseCode, r.Message, novncSecurityFailed, strings.Join(r.Logs, "\n"))
	}
	t.Logf("console page: close code %s, %q", r.CloseCode, r.Message)
}
