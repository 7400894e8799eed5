package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vncgate/vncgate/pkg/requestid"
)

// TestRequestIDAtTheRESTEdge: the REST edge keeps a caller's valid
// X-Request-Id, replaces an invalid one, answers it, and the rpc line of
// the call it makes carries it; the call shows in the gRPC server metrics.
func TestRequestIDAtTheRESTEdge(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	for _, tc := range []struct {
		name, sent string
		keep       bool
	}{
		{"a valid id is kept", "edge-req-1", true},
		{"none: one is made", "", false},
		{"an invalid one is replaced", "a b\tc", false},
	} {
		h := http.Header{"Authorization": {"Bearer " + w.key}}
		if tc.sent != "" {
			h.Set(requestid.Header, tc.sent)
		}
		resp, _ := w.send(t, "GET", "/v2.1/os-console-auth-tokens/"+unknownToken, "", h)
		got := resp.Header.Get(requestid.Header)
		if !requestid.Valid(got) || tc.keep && got != tc.sent || !tc.keep && got == tc.sent {
			t.Errorf("%s: X-Request-Id answered %q for %q", tc.name, got, tc.sent)
			continue
		}
		var found bool
		for line := range strings.Lines(w.logs.String()) {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "rpc" && rec["request_id"] == got &&
				rec["method"] == "/vncgate.consoleauth.v1.ConsoleAuthService/GetConsoleAuthToken" {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no rpc line with request_id %s; logs:\n%s", tc.name, got, w.logs.String())
		}
	}
	if n, err := testutil.GatherAndCount(w.srv.Metrics(), "grpc_server_handled_total", "grpc_server_handling_seconds"); err != nil || n == 0 {
		t.Errorf("gRPC server metrics: got %d series (%v), want them", n, err)
	}
	const notFound = `grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetConsoleAuthToken"`
	if !strings.Contains(gathered(t, w), notFound) {
		t.Errorf("no %s} after the calls", notFound)
	}
}

// gathered is the text of the service's metrics, one sample a line.
func gathered(t *testing.T, w *world) string {
	t.Helper()
	families, err := w.srv.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range families {
		for _, m := range f.GetMetric() {
			b.WriteString(f.GetName() + "{")
			for i, l := range m.GetLabel() {
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString(l.GetName() + `="` + l.GetValue() + `"`)
			}
			b.WriteString("}\n")
		}
	}
	return b.String()
}
