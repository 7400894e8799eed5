package proxymetrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vncgate/vncgate/pkg/relay"
	"github.com/vncgate/vncgate/testkit/scrape"
)

func TestCountersMove(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)

	m.Refused(RefusedTokenInvalid)
	m.Refused(RefusedTokenInvalid)
	m.Refused(RefusedVNCUnreachable)
	m.Refused(0)   // not a refusal: not counted
	m.Refused(100) // out of range: not counted
	s := m.Start(3 * time.Millisecond)
	if got := testutil.ToFloat64(m.active); got != 1 {
		t.Errorf("sessions_active while relaying: got %v, want 1", got)
	}
	s.End(EndServerClosed, relay.Result{ClientToServer: 10, ServerToClient: 2000})
	s.End(EndRevoked, relay.Result{ClientToServer: 1, ServerToClient: 1}) // a second End does not count
	m.Start(time.Millisecond).End(0, relay.Result{ClientToServer: 5})     // no reason: bytes count, no reason does
	m.ConnOpened()
	m.ConnOpened()
	m.ConnClosed()
	m.ConnRefused(CapPerClient)
	m.ConnRefused(CapRefusal(7)) // out of range: not counted
	m.AcceptError()
	m.TokenCheckThrottled()

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vncgate_proxy_sessions_active", nil, 0},
		{"vncgate_proxy_sessions_total", []string{"result", "relayed"}, 2},
		{"vncgate_proxy_sessions_total", []string{"result", "token_invalid"}, 2},
		{"vncgate_proxy_sessions_total", []string{"result", "vnc_unreachable"}, 1},
		{"vncgate_proxy_sessions_total", []string{"result", "too_many_sessions"}, 0},
		{"vncgate_proxy_session_ended_total", []string{"reason", "server_closed"}, 1},
		{"vncgate_proxy_session_ended_total", []string{"reason", "revoked"}, 0},
		{"vncgate_proxy_bytes_total", []string{"direction", "client_to_server"}, 15},
		{"vncgate_proxy_bytes_total", []string{"direction", "server_to_client"}, 2000},
		{"vncgate_proxy_session_setup_seconds", nil, 2},
		{"vncgate_proxy_session_duration_seconds", nil, 2},
		{"vncgate_proxy_connections_open", nil, 1},
		{"vncgate_proxy_connections_refused_total", []string{"reason", "max_connections_per_client"}, 1},
		{"vncgate_proxy_connections_refused_total", []string{"reason", "max_connections"}, 0},
		{"vncgate_proxy_accept_errors_total", nil, 1},
		{"vncgate_proxy_token_checks_throttled_total", nil, 1},
	} {
		if got := scrape.Value(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%q: got %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := testutil.CollectAndCount(m.sessions); got != int(numRefusals) { // relayed + every refusal
		t.Errorf("sessions_total series: got %d, want %d", got, numRefusals)
	}
	if got, want := testutil.ToFloat64(m.refused[RefusedTokenInvalid]), 2.0; got != want {
		t.Errorf("token_invalid child: got %v, want %v", got, want)
	}
}

func TestMetricsTextNamesEveryMetricAndLabel(t *testing.T) {
	reg := NewRegistry()
	New(reg)
	srv := httptest.NewServer(Handler(reg))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: got %d, want 200", resp.StatusCode)
	}
	text := string(b)
	want := []string{
		"# TYPE vncgate_proxy_sessions_active gauge",
		"# TYPE vncgate_proxy_sessions_total counter",
		"# TYPE vncgate_proxy_session_ended_total counter",
		"# TYPE vncgate_proxy_bytes_total counter",
		"# TYPE vncgate_proxy_session_setup_seconds histogram",
		"# TYPE vncgate_proxy_session_duration_seconds histogram",
		"# TYPE vncgate_proxy_connections_open gauge",
		"# TYPE vncgate_proxy_accept_errors_total counter",
		"# TYPE vncgate_proxy_token_checks_throttled_total counter",
		`vncgate_proxy_connections_refused_total{reason="max_connections"} 0`,
		`vncgate_proxy_connections_refused_total{reason="max_connections_per_client"} 0`,
		`vncgate_proxy_sessions_total{result="relayed"} 0`,
		`vncgate_proxy_bytes_total{direction="client_to_server"} 0`,
		`vncgate_proxy_bytes_total{direction="server_to_client"} 0`,
		"go_goroutines ",
		"process_open_fds ",
	}
	for r := RefusedBadRequest; r < numRefusals; r++ {
		want = append(want, `vncgate_proxy_sessions_total{result="`+r.String()+`"} 0`)
	}
	for r := EndClientClosed; r < numEndReasons; r++ {
		want = append(want, `vncgate_proxy_session_ended_total{reason="`+r.String()+`"} 0`)
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("/metrics: missing %q", w)
		}
	}
	if strings.Contains(text, `="invalid"`) {
		t.Errorf("/metrics: has an \"invalid\" label value")
	}
}

func TestLabelValuesAreDistinctNames(t *testing.T) {
	seen := map[string]bool{resultRelayed: true}
	for r := RefusedBadRequest; r < numRefusals; r++ {
		if n := r.String(); n == "" || n == "invalid" || seen[n] {
			t.Errorf("refusal %d: got name %q, want a new one", int(r), n)
		} else {
			seen[n] = true
		}
	}
	seen = map[string]bool{}
	for r := EndClientClosed; r < numEndReasons; r++ {
		if n := r.String(); n == "" || n == "invalid" || seen[n] {
			t.Errorf("end reason %d: got name %q, want a new one", int(r), n)
		} else {
			seen[n] = true
		}
	}
	if got := Refusal(0).String(); got != "invalid" {
		t.Errorf("Refusal(0): got %q, want invalid", got)
	}
	if got := EndReason(numEndReasons).String(); got != "invalid" {
		t.Errorf("EndReason past the last: got %q, want invalid", got)
	}
}

func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestRegistriesAreIndependent(t *testing.T) {
	a, b := prometheus.NewRegistry(), prometheus.NewRegistry()
	ma, _ := New(a), New(b)
	New(nil).Refused(RefusedTokenInvalid) // unregistered: counts, exports nothing
	ma.Refused(RefusedTokenInvalid)
	if got := scrape.Value(t, a, "vncgate_proxy_sessions_total", "result", "token_invalid"); got != 1 {
		t.Errorf("registry a: got %v, want 1", got)
	}
	if got := scrape.Value(t, b, "vncgate_proxy_sessions_total", "result", "token_invalid"); got != 0 {
		t.Errorf("registry b: got %v, want 0", got)
	}
	if n, err := testutil.GatherAndCount(prometheus.DefaultGatherer, "vncgate_proxy_sessions_total"); err != nil || n != 0 {
		t.Errorf("default registry: got %d series (%v), want 0", n, err)
	}
}

// TestBytesCountLive: bytes show while a session runs (the relay's
// Counter), and End adds only what was not counted yet.
func TestBytesCountLive(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	s := m.Start(time.Millisecond)
	s.Count(relay.Client, 100)
	s.Count(relay.Server, 7000)
	s.Count(relay.Server, 0)
	if got := scrape.Value(t, reg, "vncgate_proxy_bytes_total", "direction", "server_to_client"); got != 7000 {
		t.Errorf("server_to_client while live: got %v, want 7000", got)
	}
	if got := scrape.Value(t, reg, "vncgate_proxy_bytes_total", "direction", "client_to_server"); got != 100 {
		t.Errorf("client_to_server while live: got %v, want 100", got)
	}
	s.End(EndClientClosed, relay.Result{ClientToServer: 150, ServerToClient: 7000})
	if got := scrape.Value(t, reg, "vncgate_proxy_bytes_total", "direction", "client_to_server"); got != 150 {
		t.Errorf("client_to_server after End: got %v, want 150 (not counted twice)", got)
	}
	if got := scrape.Value(t, reg, "vncgate_proxy_bytes_total", "direction", "server_to_client"); got != 7000 {
		t.Errorf("server_to_client after End: got %v, want 7000", got)
	}
}
