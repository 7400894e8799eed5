package haproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRunBalancesOnReadiness: an HTTP frontend before two servers sends
// requests to both while their /readyz answers 200, only to the ready one
// once the other's turns 503 (HAProxy's runtime state says DOWN), and
// answers its own 503 with the Unavailable text once neither is ready;
// a FailOpen frontend then still sends requests to them.
func TestRunBalancesOnReadiness(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skipf("haproxy missing: %v", err)
	}
	type backend struct {
		name  string
		ready atomic.Bool
		srv   *httptest.Server
	}
	var backends []*backend
	for _, name := range []string{"a", "b"} {
		b := &backend{name: name}
		b.ready.Store(true)
		b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/readyz" && !b.ready.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, b.name)
		}))
		t.Cleanup(b.srv.Close)
		backends = append(backends, b)
	}
	front, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	var servers []Server
	for _, b := range backends {
		addr := strings.TrimPrefix(b.srv.URL, "http://")
		servers = append(servers, Server{Name: b.name, Addr: addr, CheckAddr: addr})
	}
	open, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	h, err := Run(Config{Dir: t.TempDir(), CheckInterval: 50 * time.Millisecond, Frontends: []Frontend{
		{Name: "web", Bind: front, HTTP: true, CheckPath: "/readyz", Unavailable: "nothing is ready", Servers: servers},
		{Name: "open", Bind: open, HTTP: true, CheckPath: "/readyz", FailOpen: true, Servers: servers},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	wait := func(server, want string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			got, err := h.ServerState("web", server)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("server %s: state %q (%v), want %q\n%s", server, got, err, want, h.Log())
			}
		}
	}
	get := func(addr ...string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + append(addr, front)[0] + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	wait("a", "UP")
	wait("b", "UP")
	seen := map[string]bool{}
	for range 4 {
		_, body := get()
		seen[body] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("4 requests reached %v, want both a and b", seen)
	}

	backends[0].ready.Store(false)
	wait("a", "DOWN")
	for range 4 {
		if code, body := get(); code != http.StatusOK || body != "b" {
			t.Errorf("with a not ready: got %d %q, want 200 from b", code, body)
		}
	}

	backends[1].ready.Store(false)
	wait("b", "DOWN")
	if code, body := get(); code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "nothing is ready" {
		t.Errorf("with neither ready: got %d %q, want 503 %q", code, body, "nothing is ready")
	}
	for range 2 {
		if code, body := get(open); code != http.StatusOK || body != "a" && body != "b" {
			t.Errorf("fail-open with neither ready: got %d %q, want 200 from a or b", code, body)
		}
	}
	if _, err := h.ServerState("web", "c"); err == nil {
		t.Error("state of an unknown server: got nil error, want one")
	}
}
