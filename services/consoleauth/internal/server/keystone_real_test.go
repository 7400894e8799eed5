package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/consoleauth/internal/keystone"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	testkeystone "github.com/vncgate/vncgate/testkit/keystone"
)

// keystones is one real Keystone for this package, launched by the first
// test that asks for it (15–35 s) and stopped after the package's tests.
var keystones testkeystone.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	keystones.Close()
	os.Exit(code)
}

// TestKeystoneRealREST runs consoleauth with rest_auth = keystone against
// a real Keystone 22 (Debian's python3-keystone): Keystone's admin gets
// role api, its member role mint, a token Keystone refuses is 401 and
// Keystone being down is 503, over the REST API end to end. It stops and
// restarts the package's Keystone, which no other test uses.
func TestKeystoneRealREST(t *testing.T) {
	t.Parallel()
	start := time.Now()
	ks := keystones.Get(t)
	t.Logf("keystone at %s in %v (setup %v, serve %v, users %v)", ks.AuthURL, time.Since(start).Round(time.Millisecond),
		ks.Timings.Setup.Round(time.Millisecond), ks.Timings.Serve.Round(time.Millisecond), ks.Timings.Users.Round(time.Millisecond))
	w := newWorld(t, func(c *server.Config) {
		c.RESTAuth = "keystone"
		c.Keystone = keystone.Options{AuthURL: ks.AuthURL, Username: ks.Service.Name, Password: ks.Service.Password,
			ProjectName: ks.Service.Project,
			// Every request asks Keystone: a revocation in Keystone is
			// refused at the next request, without waiting for a cache.
			CacheTime: 0,
			// Above the deadline of the outage request below: a 503 that
			// waited for this timeout instead of failing on the refused
			// connection misses that deadline.
			Timeout: time.Minute,
		}
	})
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	const mintBody = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	mintPath := "/v2.1/servers/" + vm + "/remote-consoles"
	revokePath := "/v2.1/servers/" + vm + "/console-tokens"
	introspect := func(console string) string { return "/v2.1/os-console-auth-tokens/" + console }
	// secrets are what must not reach consoleauth's log.
	secrets := []string{ks.Service.Password, ks.Admin.Password, ks.Demo.Password}
	token := func(t *testing.T, u testkeystone.User) string {
		tok := ks.Token(t, u)
		secrets = append(secrets, tok)
		return tok
	}
	as := func(t *testing.T, tok, method, path, body string) (*http.Response, []byte) {
		t.Helper()
		h := http.Header{"X-Auth-Token": {tok}}
		if body != "" {
			h.Set("Content-Type", "application/json")
		}
		return w.send(t, method, path, body, h)
	}
	mint := func(t *testing.T, tok string) string {
		t.Helper()
		resp, raw := as(t, tok, "POST", mintPath, mintBody)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("mint: got %d %s, want 200", resp.StatusCode, raw)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("mint: %q: %v", raw, err)
		}
		console := tokenOf(t, str(t, m, "remote_console", "url"))
		secrets = append(secrets, console)
		return console
	}
	wantFault := func(t *testing.T, resp *http.Response, raw []byte, status int, name, msg string) {
		t.Helper()
		if resp.StatusCode != status {
			t.Fatalf("got %d %s, want %d %s", resp.StatusCode, raw, status, name)
		}
		gotName, code, gotMsg := fault(t, raw)
		if gotName != name || code != status || !strings.HasPrefix(gotMsg, msg) {
			t.Errorf("got %s %d %q, want %s %d %q…", gotName, code, gotMsg, name, status, msg)
		}
	}
	challenge := `Keystone uri="` + ks.AuthURL + `"`

	var admin string
	t.Run("admin mints, introspects and revokes", func(t *testing.T) {
		admin = token(t, ks.Admin)
		console := mint(t, admin)
		resp, raw := as(t, admin, "GET", introspect(console), "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(raw), `"instance_uuid":"`+vm+`"`) {
			t.Fatalf("introspect: got %d %s, want 200 naming the instance", resp.StatusCode, raw)
		}
		resp, raw = as(t, admin, "DELETE", revokePath, "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(raw), `"revoked_count":1`) {
			t.Fatalf("revoke: got %d %s, want 200 with revoked_count 1", resp.StatusCode, raw)
		}
		resp, raw = as(t, admin, "GET", introspect(console), "")
		wantFault(t, resp, raw, http.StatusNotFound, "itemNotFound", "")
	})
	t.Run("member mints, may not introspect or revoke", func(t *testing.T) {
		demo := token(t, ks.Demo)
		console := mint(t, demo)
		resp, raw := as(t, demo, "GET", introspect(console), "")
		wantFault(t, resp, raw, http.StatusForbidden, "forbidden", "role mint may not call GetConsoleAuthToken")
		resp, raw = as(t, demo, "DELETE", revokePath, "")
		wantFault(t, resp, raw, http.StatusForbidden, "forbidden", "role mint may not call RevokeInstanceTokens")
		// The refused revocation revoked nothing.
		if resp, raw := as(t, admin, "GET", introspect(console), ""); resp.StatusCode != http.StatusOK {
			t.Errorf("the member's console after its refused revocation: got %d %s, want 200", resp.StatusCode, raw)
		}
		refusals := 0
		for _, a := range auditLines(t, w) {
			if a["caller"] == "demo@demo" && a["via"] == "keystone" && a["role"] == "mint" && a["reason"] == "permission_denied" {
				refusals++
			}
		}
		if refusals != 2 {
			t.Errorf("audit lines for demo's refusals: got %d, want 2; all: %v", refusals, auditLines(t, w))
		}
	})
	t.Run("tokens Keystone refuses", func(t *testing.T) {
		forged := token(t, ks.Admin)
		forged = forged[:len(forged)-4] + "AAAA"
		for _, tok := range []string{"not-a-keystone-token", forged} {
			secrets = append(secrets, tok)
			resp, raw := as(t, tok, "POST", mintPath, mintBody)
			wantFault(t, resp, raw, http.StatusUnauthorized, "unauthorized", "the Keystone token is not valid")
			if !slices.Contains(resp.Header.Values("WWW-Authenticate"), challenge) {
				t.Errorf("WWW-Authenticate: got %q, want %q among them", resp.Header.Values("WWW-Authenticate"), challenge)
			}
		}
	})
	t.Run("token revoked in Keystone", func(t *testing.T) {
		demo := token(t, ks.Demo)
		mint(t, demo)
		ks.Revoke(t, demo)
		resp, raw := as(t, demo, "POST", mintPath, mintBody)
		wantFault(t, resp, raw, http.StatusUnauthorized, "unauthorized", "the Keystone token is not valid")
	})
	t.Run("keystone stopped, then back", func(t *testing.T) {
		unseen := token(t, ks.Demo)
		ks.Stop()
		// The deadline only bounds a hang; it is far below the Keystone
		// timeout, so an answer that waited for it fails here.
		ctx, cancel := context.WithTimeout(testworld.Ctx(t), 15*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "POST", w.rest+mintPath, strings.NewReader(mintBody))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = http.Header{"X-Auth-Token": {unseen}, "Content-Type": {"application/json"}}
		resp, err := w.http.Do(req)
		if err != nil {
			t.Fatalf("mint with Keystone stopped: %v (want 503 before the deadline)", err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		wantFault(t, resp, raw, http.StatusServiceUnavailable, "serviceUnavailable", "cannot validate the Keystone token now")
		if got := resp.Header.Values("WWW-Authenticate"); len(got) != 0 {
			t.Errorf("503 with WWW-Authenticate %q: an outage must not ask for other credentials", got)
		}
		// Bearer keys do not depend on Keystone.
		if code, m := w.do(t, "POST", mintPath, mintBody); code != http.StatusOK {
			t.Errorf("bearer key with Keystone stopped: got %d %v, want 200", code, m)
		}
		if err := ks.Restart(testworld.Ctx(t)); err != nil {
			t.Fatal(err)
		}
		mint(t, unseen)
	})

	logs := w.logs.String()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("consoleauth's log holds a secret (%.8s…)", s)
		}
	}
	// Keystone's fernet tokens start so (version 0x80, then the time's
	// zero high bytes): this catches the service token too.
	if strings.Contains(logs, "gAAAAA") {
		t.Error("consoleauth's log holds a fernet token")
	}
	var reasons []string
	for _, a := range auditLines(t, w) {
		reasons = append(reasons, a["reason"].(string))
	}
	for _, want := range []string{"unauthenticated", "permission_denied", "keystone_unavailable"} {
		if !slices.Contains(reasons, want) {
			t.Errorf("no audit line with reason %s; got %q", want, reasons)
		}
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}

// TestKeystoneConnectionsClosedOnShutdown: consoleauth's connections to
// Keystone end with it. Keystone's own server (wsgiref, HTTP/1.0) closes
// every connection after its answer, so a keep-alive stand-in on
// net/http shows the idle connection the client keeps.
func TestKeystoneConnectionsClosedOnShutdown(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	doc := `{"token": {"issued_at": "` + now.Format(time.RFC3339Nano) + `", "expires_at": "` + now.Add(time.Hour).Format(time.RFC3339Nano) +
		`", "user": {"id": "u1", "name": "admin"}, "project": {"id": "p1", "name": "admin"}, "roles": [{"name": "admin"}]}}`
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	closed := make(chan struct{}, 16)
	stand := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.Header().Set("X-Subject-Token", "service-token")
			w.WriteHeader(http.StatusCreated)
		}
		_, _ = io.WriteString(w, doc)
	}))
	stand.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case http.StateNew:
			open[c] = true
		case http.StateClosed, http.StateHijacked:
			delete(open, c)
			select {
			case closed <- struct{}{}:
			default: // a wake-up is pending already
			}
		}
	}
	stand.Start()
	t.Cleanup(stand.Close)
	openConns := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(open)
	}
	w := newWorld(t, func(c *server.Config) {
		c.RESTAuth = "keystone"
		c.Keystone = keystone.Options{AuthURL: stand.URL, Username: "nova", Password: "secret", ProjectName: "service"}
	})
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	resp, raw := w.send(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles", `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`,
		http.Header{"X-Auth-Token": {"user-token"}, "Content-Type": {"application/json"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("mint: got %d %s, want 200", resp.StatusCode, raw)
	}
	if openConns() == 0 {
		t.Fatal("no connection to Keystone kept open after a validation: nothing for shutdown to close")
	}
	if err := w.srv.Shutdown(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(15 * time.Second) // bounds a hang: the client closes at once
	for openConns() > 0 {
		select {
		case <-closed:
		case <-deadline:
			t.Fatalf("%d connections to Keystone still open after shutdown", openConns())
		}
	}
}
