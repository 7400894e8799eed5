package server_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/testkit/otlp"
)

// TestRESTCallJoinsCallersTrace: with tracing on, a REST call's gRPC span
// is a child of the span the caller names in its traceparent header.
func TestRESTCallJoinsCallersTrace(t *testing.T) {
	t.Parallel()
	collector := otlp.Start(t)
	tr, err := grpcserver.StartTracing(testworld.Ctx(t), grpcserver.TracingOptions{Endpoint: collector.URL}, "consoleauth")
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, func(c *server.Config) { c.Tracing = tr })
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	resp, body := w.send(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles", `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`,
		http.Header{"Authorization": {"Bearer " + w.key}, "Content-Type": {"application/json"},
			"Traceparent": {"00-" + traceID + "-" + parentID + "-01"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: got %d %s, want 200", resp.StatusCode, body)
	}
	// Shutdown waits for the call's handler, span included; then the
	// tracer exports what it holds.
	if err := w.srv.Shutdown(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	const name = "vncgate.consoleauth.v1.ConsoleAuthService/GetConsoleURL"
	var names []string
	for _, s := range collector.Spans() {
		names = append(names, s.GetName())
		if s.GetName() != name {
			continue
		}
		if got := hex.EncodeToString(s.GetTraceId()); got != traceID {
			t.Errorf("%s: trace %s, want the caller's %s", name, got, traceID)
		}
		if want, _ := hex.DecodeString(parentID); !bytes.Equal(s.GetParentSpanId(), want) {
			t.Errorf("%s: parent span %x, want the caller's %s", name, s.GetParentSpanId(), parentID)
		}
		return
	}
	t.Errorf("no span %s; got %v", name, names)
}
