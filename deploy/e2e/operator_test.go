package e2e

// The operator's day: the real bin/vncgatectl, with the settings file the
// devstack banner names, against a world of two replicas of each proxy
// behind HAProxy. Sessions across both novnc-proxies are listed with their
// proxy, one is killed (its user gets the sentence), one proxy is drained
// (its console ends with 1012 and reconnects, with the same token, through
// HAProxy to the other replica), and each ended session has exactly one
// audit event in its proxy's log.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// novncServiceRestart is the close code of a drained novnc session, on
// which the console page reconnects.
const novncServiceRestart = 1012

// liveSession is a session as `vncgatectl sessions list -o json` shows it.
type liveSession struct {
	ID          string `json:"id"`
	Instance    string `json:"instance_uuid"`
	Proxy       string `json:"proxy"`
	ConsoleType string `json:"console_type"`
	MintedBy    string `json:"minted_by"`
}

// operator runs the real vncgatectl with the devstack's settings file.
type operator struct {
	w      *devstack.World
	config string
}

// run runs vncgatectl args and returns its exit code, stdout and stderr.
func (o operator) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	r := <-o.start(t, args...)
	if r.code < 0 {
		t.Fatalf("vncgatectl %v: %s", args, r.errOut)
	}
	return r.code, r.out, r.errOut
}

// result is how a vncgatectl run ended.
type result struct {
	code        int
	out, errOut string
}

// start runs vncgatectl args in the background, so the test can answer
// its console's close handshake meanwhile (as a browser does at once: the
// proxy's session ends, and its record goes, once the client answered).
func (o operator) start(t *testing.T, args ...string) <-chan result {
	t.Helper()
	done := make(chan result, 1)
	path := filepath.Join(o.w.Bin, devstack.VNCGateCtl)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, path, append([]string{"--config", o.config}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			code = -1
			errOut.Reset()
			errOut.WriteString(err.Error())
		}
		done <- result{code, out.String(), errOut.String()}
	}()
	return done
}

// sessions lists the live sessions (vncgatectl sessions list -o json).
func (o operator) sessions(t *testing.T, args ...string) []liveSession {
	t.Helper()
	code, out, errOut := o.run(t, append([]string{"sessions", "list", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("sessions list: exit %d: %s", code, errOut)
	}
	var list struct {
		Sessions []liveSession `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("sessions list -o json: %v\n%s", err, out)
	}
	return list.Sessions
}

// waitSession waits until a live session not in known shows, the way
// proxies publish them (asynchronously, within a flush), and returns it.
func (o operator) waitSession(t *testing.T, known map[string]bool) liveSession {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, s := range o.sessions(t) {
			if !known[s.ID] {
				known[s.ID] = true
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new live session listed within 30 s (known: %v)", known)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestOperatorCLI(t *testing.T) {
	_, err := exec.LookPath("haproxy")
	requireTool(t, err == nil, "haproxy missing (Debian package haproxy)")
	w := devstacktest.Start(t, devstack.Options{Replicas: 2, LB: true})
	config, err := w.OperatorConfig()
	if err != nil {
		t.Fatal(err)
	}
	op := operator{w: w, config: config}
	novncs := w.Processes(devstack.NoVNCProxy)
	if len(novncs) != 2 {
		t.Fatalf("novnc-proxy replicas: got %d, want 2", len(novncs))
	}

	// One novnc console straight to each replica, one xvp console through
	// HAProxy; each is learnt from the list as it appears.
	known := map[string]bool{}
	type console struct {
		ws      *websocket.Conn
		session liveSession
		url     string
	}
	var consoles []console
	for _, p := range novncs {
		u := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
		wsURL, origin := novncWSURL(t, u)
		wsURL = strings.Replace(wsURL, w.Addr(w.Ports.NoVNC), w.Addr(p.Ports.NoVNC), 1)
		c := novncDial(t, wsURL, origin)
		rfbView(t, p.Name, websocket.NetConn(context.Background(), c, websocket.MessageBinary))
		s := op.waitSession(t, known)
		t.Logf("%s holds session %s as proxy %s", p.Name, s.ID, s.Proxy)
		consoles = append(consoles, console{ws: c, session: s, url: u})
	}
	xvp := xvpSession(t, consoleURLOf(t, w, devstack.DemoUUID, "xvpvnc"))
	rfbView(t, "xvp through HAProxy", xvp)
	xvpLive := op.waitSession(t, known)

	// sessions list: every one, with its proxy.
	a, b := consoles[0].session, consoles[1].session
	if a.Proxy == b.Proxy || a.ConsoleType != "novnc" || xvpLive.ConsoleType != "xvpvnc" || xvpLive.Proxy == a.Proxy || xvpLive.Proxy == b.Proxy {
		t.Fatalf("sessions: %+v, %+v, %+v; want two novnc proxies and an xvp one", a, b, xvpLive)
	}
	all := op.sessions(t)
	if len(all) != 3 {
		t.Errorf("sessions list: got %+v, want 3", all)
	}
	for _, s := range all {
		if s.Instance != devstack.DemoUUID || s.MintedBy != devstack.APIName {
			t.Errorf("session %+v: want instance %s minted by %s", s, devstack.DemoUUID, devstack.APIName)
		}
	}
	if got := op.sessions(t, "--proxy", b.Proxy); len(got) != 1 || got[0].ID != b.ID {
		t.Errorf("sessions list --proxy %s: got %+v, want %s only", b.Proxy, got, b.ID)
	}
	// The compute host is the instance's (ConnectInfo.compute_host), not
	// the VNC server's address.
	if got := op.sessions(t, "--host", devstack.ComputeHost); len(got) != 3 {
		t.Errorf("sessions list --host %s: got %+v, want all 3", devstack.ComputeHost, got)
	}
	code, table, errOut := op.run(t, "sessions", "list")
	t.Logf("vncgatectl sessions list:\n%s", table)
	if code != 0 || !strings.Contains(table, a.ID) || !strings.Contains(table, b.Proxy) || !strings.Contains(table, xvpLive.Proxy) {
		t.Errorf("sessions list (table): exit %d %s\n%s", code, errOut, table)
	}
	code, status, errOut := op.run(t, "status")
	t.Logf("vncgatectl status:\n%s", status)
	if code != 0 || !strings.Contains(status, "ETCD healthy") || !strings.Contains(status, devstack.ComputeHost) ||
		!strings.Contains(status, "PROXIES 4") || !strings.Contains(status, "SESSIONS 3 live") {
		t.Errorf("status: exit %d %s\n%s\nwant etcd healthy, the agent, 4 proxies, 3 sessions", code, errOut, status)
	}

	// sessions kill: ended within consoleauth's 2 s wait; the user reads
	// the sentence.
	kill := op.start(t, "sessions", "kill", a.ID)
	ce := wsclose.Read(t, consoles[0].ws)
	if sentence := registry.RevocationReasons["admin"]; !strings.Contains(ce.Reason, sentence) {
		t.Errorf("killed console closed with %d %q, want the sentence %q", ce.Code, ce.Reason, sentence)
	}
	if r := <-kill; r.code != 0 || !strings.Contains(r.out, "ended") {
		t.Fatalf("sessions kill %s: exit %d, %q %q; want ended", a.ID, r.code, r.out, r.errOut)
	}
	if code, _, errOut := op.run(t, "sessions", "kill", a.ID); code != 3 {
		t.Errorf("kill of the ended session: exit %d (%s), want 3 (not found)", code, errOut)
	}

	// proxy drain: b's proxy ends its console at the deadline with 1012;
	// the client comes back with the same token through HAProxy, which
	// sends it to the other replica (the drained one's readiness is red).
	code, out, errOut := op.run(t, "proxy", "drain", b.Proxy, "--deadline", "3s")
	if code != 0 || !strings.Contains(out, "draining: its 1 live session(s)") {
		t.Fatalf("proxy drain %s: exit %d, %q %q", b.Proxy, code, out, errOut)
	}
	if ce := wsclose.Read(t, consoles[1].ws); ce.Code != novncServiceRestart {
		t.Fatalf("drained console closed with %d %q, want %d", ce.Code, ce.Reason, novncServiceRestart)
	}
	// The page reconnects once HAProxy took the drained replica out (its
	// readiness turned red when the drain arrived), as a page retrying
	// over a few seconds finds.
	if err := w.WaitLB(context.Background(), "novnc", novncs[1].Name, false); err != nil {
		t.Fatal(err)
	}
	wsURL, origin := novncWSURL(t, consoles[1].url) // HAProxy, same token
	again := novncDial(t, wsURL, origin)
	rfbView(t, "reconnected through HAProxy", websocket.NetConn(context.Background(), again, websocket.MessageBinary))
	moved := op.waitSession(t, known)
	if moved.Proxy == b.Proxy || moved.Proxy != a.Proxy {
		t.Errorf("reconnected session %+v: want it on %s, not the drained %s", moved, a.Proxy, b.Proxy)
	}
	_, status, _ = op.run(t, "status")
	if !strings.Contains(status, "draining until") {
		t.Errorf("status after the drain lacks the drained proxy's state:\n%s", status)
	}

	// One audit event per ended session, in its proxy's log.
	for _, s := range []liveSession{a, b} {
		waitAudit(t, w, s.ID)
	}
}

// waitAudit waits for the session_end audit event of session id in the
// proxies' logs (written as the session ends) and fails unless there is
// exactly one.
func waitAudit(t *testing.T, w *devstack.World, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := 0
		for _, p := range append(w.Processes(devstack.NoVNCProxy), w.Processes(devstack.XVPProxy)...) {
			n += countAudit(t, w.LogPath(p.Name), id)
		}
		switch {
		case n == 1:
			return
		case n > 1:
			t.Errorf("session %s: %d session_end audit events, want 1", id, n)
			return
		case time.Now().After(deadline):
			t.Errorf("session %s: no session_end audit event within 20 s", id)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// countAudit counts the session_end audit events of session id in a log.
func countAudit(t *testing.T, path, id string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev struct {
			Audit   bool   `json:"audit"`
			Event   string `json:"event"`
			Session string `json:"session"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Audit && ev.Event == "session_end" && ev.Session == id {
			n++
		}
	}
	return n
}
