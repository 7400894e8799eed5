package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/scrape"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// TestMetricsCountRefusedAndRelayedSessions drives two refused upgrades and
// one relayed session through the proxy and reads its metrics, from the
// registry and from GET /metrics.
func TestMetricsCountRefusedAndRelayedSessions(t *testing.T) {
	w := newWorld(t, nil)
	value := func(name string, labels ...string) float64 {
		t.Helper()
		return scrape.Value(t, w.metrics, name, labels...)
	}

	// Refused after the upgrade: a bad token.
	c, _, err := w.dial(w.wsURL("/websockify", "no-such-token"), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.TokenInvalid) {
		t.Fatalf("bad token: got close %d, want %d", ce.Code, closecode.TokenInvalid)
	}
	// Refused before the upgrade: a foreign page.
	_, resp, err := w.dial(w.wsURL("/websockify", w.token()), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://evil.example"}}})
	if err == nil {
		t.Fatal("foreign origin: got an open WebSocket, want 403")
	}
	wantJSONError(t, resp, http.StatusForbidden)

	// Relayed: 10 bytes to an echo server and back.
	host, port := echoServer(t)
	c, _, err = w.dial(w.wsURL("/", w.auth.Mint(w.instance, "novnc", host, port, time.Minute)), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one active session", func() bool { return value("vncgate_proxy_sessions_active") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sent := []byte("0123456789")
	for _, msg := range [][]byte{sent[:4], sent[4:]} {
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatal(err)
		}
	}
	var got bytes.Buffer
	for got.Len() < len(sent) {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("echo after %d bytes: %v", got.Len(), err)
		}
		got.Write(b)
	}
	if !bytes.Equal(got.Bytes(), sent) {
		t.Fatalf("echo: got %q, want %q", got.Bytes(), sent)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "no active session", func() bool { return value("vncgate_proxy_sessions_active") == 0 })

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vncgate_proxy_sessions_total", []string{"result", "relayed"}, 1},
		{"vncgate_proxy_sessions_total", []string{"result", "token_invalid"}, 1},
		{"vncgate_proxy_sessions_total", []string{"result", "origin_refused"}, 1},
		{"vncgate_proxy_sessions_total", []string{"result", "vnc_unreachable"}, 0},
		{"vncgate_proxy_session_ended_total", []string{"reason", "client_closed"}, 1},
		{"vncgate_proxy_session_ended_total", []string{"reason", "server_closed"}, 0},
		{"vncgate_proxy_bytes_total", []string{"direction", "client_to_server"}, 10},
		{"vncgate_proxy_bytes_total", []string{"direction", "server_to_client"}, 10},
		{"vncgate_proxy_session_setup_seconds", nil, 1},
		{"vncgate_proxy_session_duration_seconds", nil, 1},
		{"vncgate_proxy_sessions_active", nil, 0},
	} {
		if got := value(tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%q: got %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}

	resp, err = http.Get(w.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: got %d (%v), want 200", resp.StatusCode, err)
	}
	for _, want := range []string{
		`vncgate_proxy_sessions_total{result="relayed"} 1`,
		`vncgate_proxy_sessions_total{result="origin_refused"} 1`,
		`vncgate_proxy_session_ended_total{reason="client_closed"} 1`,
		`vncgate_proxy_bytes_total{direction="server_to_client"} 10`,
		"vncgate_proxy_sessions_active 0",
		"vncgate_proxy_session_setup_seconds_count 1",
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("GET /metrics: missing %q", want)
		}
	}
}

// TestCloseCodeOfEveryRefusalAndEnd pins the edge's one mapping from the
// session core's reasons to close codes.
func TestCloseCodeOfEveryRefusalAndEnd(t *testing.T) {
	for _, tc := range []struct {
		why  proxymetrics.Refusal
		want closecode.Code
	}{
		{proxymetrics.RefusedTokenInvalid, closecode.TokenInvalid},
		{proxymetrics.RefusedWrongType, closecode.WrongType},
		{proxymetrics.RefusedConsoleMoved, closecode.Moved},
		{proxymetrics.RefusedUnavailable, closecode.Unavailable},
		{proxymetrics.RefusedTooManySessions, closecode.Throttled},
		{proxymetrics.RefusedVNCUnreachable, closecode.Unreachable},
		{proxymetrics.RefusedRevoked, closecode.Revoked},
		{proxymetrics.RefusedShutdown, closecode.ShuttingDown},
	} {
		if got := refusalCode(tc.why); got != tc.want {
			t.Errorf("refused %s: got %d, want %d", tc.why, got, tc.want)
		}
	}
	for _, tc := range []struct {
		why  proxymetrics.EndReason
		want closecode.Code
	}{
		{proxymetrics.EndServerClosed, closecode.Normal},
		{proxymetrics.EndShutdown, closecode.ShuttingDown},
		{proxymetrics.EndProtocolError, closecode.TextFrame},
		{proxymetrics.EndRevoked, closecode.Revoked},
		{proxymetrics.EndIdleTimeout, closecode.IdleTimeout},
		{proxymetrics.EndMaxLength, closecode.SessionTooLong},
		{proxymetrics.EndTokenExpired, closecode.TokenExpired},
	} {
		if got := endCode(tc.why); got != tc.want {
			t.Errorf("ended %s: got %d, want %d", tc.why, got, tc.want)
		}
	}
}
