package proxy

import (
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/scrape"
)

// TestMetricsCountRefusedAndRelayedSessions drives a refused connection, a
// relayed session the client ends and one a revocation ends through the
// proxy, and reads its metrics.
func TestMetricsCountRefusedAndRelayedSessions(t *testing.T) {
	w := newWorld(t)
	value := func(name string, labels ...string) float64 {
		t.Helper()
		return scrape.Value(t, w.metrics, name, labels...)
	}
	waitValue := func(want float64, name string, labels ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for value(name, labels...) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s%q: got %v, want %v", name, labels, value(name, labels...), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	echoAddr := echoServer(t)
	w.auth.add("good", "inst-1", echoAddr)
	w.auth.add("doomed", "inst-2", echoAddr)

	// Refused: a token consoleauth does not know.
	c, br, line := w.connect(t, "nope")
	if line != "HTTP/1.1 401 Not Authorized" {
		t.Fatalf("unknown token: got %q, want 401", line)
	}
	readAnswer(t, br)
	c.Close()

	// Relayed: 10 bytes to the echo server and back, then the client ends.
	c, br = w.session(t, "good")
	waitValue(1, "vncgate_proxy_sessions_active")
	echo(t, c, br, "0123456789")
	c.CloseWrite()
	if rest := readAnswer(t, br); rest != "" {
		t.Fatalf("after half-close: got %q, want EOF", rest)
	}
	c.Close()
	waitValue(0, "vncgate_proxy_sessions_active")

	// Relayed, then revoked.
	d, dr := w.session(t, "doomed")
	waitValue(1, "vncgate_proxy_sessions_active")
	w.core.Revoke("inst-2", registry.Revocation{Reason: "deleted", RevokedAt: time.Now()})
	expectClosed(t, d, dr, 30*time.Second)
	waitValue(0, "vncgate_proxy_sessions_active")

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vncgate_proxy_sessions_total", []string{"result", "relayed"}, 2},
		{"vncgate_proxy_sessions_total", []string{"result", "token_invalid"}, 1},
		{"vncgate_proxy_sessions_total", []string{"result", "bad_request"}, 0},
		{"vncgate_proxy_session_ended_total", []string{"reason", "revoked"}, 1},
		{"vncgate_proxy_session_ended_total", []string{"reason", "idle_timeout"}, 0},
		{"vncgate_proxy_bytes_total", []string{"direction", "client_to_server"}, 10},
		{"vncgate_proxy_bytes_total", []string{"direction", "server_to_client"}, 10},
		{"vncgate_proxy_session_setup_seconds", nil, 2},
		{"vncgate_proxy_session_duration_seconds", nil, 2},
	} {
		if got := value(tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%q: got %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// The client ended the first session: the relay records the side whose
	// read ended before it passes the half-close on to the echo server.
	if got := value("vncgate_proxy_session_ended_total", "reason", "client_closed"); got != 1 {
		t.Errorf("session_ended_total client_closed: got %v, want 1", got)
	}
	if got := value("vncgate_proxy_session_ended_total", "reason", "server_closed"); got != 0 {
		t.Errorf("session_ended_total server_closed: got %v, want 0", got)
	}
}
