package grpcserver

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/otlp"

	"github.com/prometheus/client_golang/prometheus"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/requestid"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// records returns the JSON records logged to b so far.
func records(t *testing.T, b *testlog.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(b.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		out = append(out, rec)
	}
	return out
}

// serve starts a gRPC server with o's options and the health service on
// loopback and returns a client connection with o's dial options.
func serve(t *testing.T, o Options) *grpc.ClientConn {
	cc, _ := serveAndServer(t, o)
	return cc
}

func serveAndServer(t *testing.T, o Options) (*grpc.ClientConn, *grpc.Server) {
	t.Helper()
	srv := grpc.NewServer(ServerOptions(o)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	o.Metrics.Initialize(srv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), append(DialOptions(o), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc, srv
}

func TestRequestID(t *testing.T) {
	var logs testlog.Buffer
	cc := serve(t, Options{Log: logging.New(&logs, "test", logging.Options{})})
	client := healthpb.NewHealthClient(cc)
	for _, tc := range []struct {
		name, sent string
		keep       bool
	}{
		{"a valid id is kept", "rest-edge-1", true},
		{"none: one is made", "", false},
		{"an invalid one is replaced", "bad id with spaces", false},
		{"a too long one is replaced", strings.Repeat("a", 65), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.sent != "" {
				ctx = requestid.NewContext(ctx, tc.sent)
			}
			var header metadata.MD
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header)); err != nil {
				t.Fatal(err)
			}
			// No header: it would commit an error answer, which gRPC
			// then does not retry on another replica.
			if ids := header.Get(requestid.MetadataKey); len(ids) > 0 {
				t.Errorf("response header x-request-id %q, want none", ids)
			}
			recs := records(t, &logs)
			last := recs[len(recs)-1]
			got, _ := last[logging.KeyRequestID].(string)
			if !requestid.Valid(got) || tc.keep && got != tc.sent || !tc.keep && got == tc.sent {
				t.Errorf("rpc line's request_id %q, sent %q: want it kept: %v", got, tc.sent, tc.keep)
			}
			if last["msg"] != "rpc" || last[logging.KeyMethod] != "/grpc.health.v1.Health/Check" || last[logging.KeyCode] != "OK" {
				t.Errorf("rpc line: got %v, want method and code OK", last)
			}
			if _, ok := last[logging.KeyDurationMS].(float64); !ok {
				t.Errorf("rpc line: got %v, want duration_ms", last)
			}
		})
	}
}

func TestMetricsAfterCalls(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cc := serve(t, Options{Metrics: NewMetrics(reg)})
	client := healthpb.NewHealthClient(cc)
	// Initialize: the method is there before its first call.
	const checkOK = `grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}`
	if got, ok := samples(t, reg)[checkOK]; !ok || got != 0 {
		t.Fatalf("before any call: got %v (present: %v), want the series at 0", got, ok)
	}
	for range 3 {
		if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "nope"}); err == nil {
		t.Fatal("a check of an unknown service succeeded")
	}
	want := map[string]float64{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}`:       3,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}`: 1,
		`grpc_client_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}`:       3,
		`grpc_server_handling_seconds_count{grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}`:             4,
		`grpc_client_handling_seconds_count{grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}`:             4,
	}
	got := samples(t, reg)
	for series, n := range want {
		if got[series] != n {
			t.Errorf("%s: got %v, want %v", series, got[series], n)
		}
	}
}

// samples flattens reg's counters and histogram counts to series → value.
func samples(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.GetCounter() != nil:
				out[f.GetName()+key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[f.GetName()+"_count"+key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// exporterRunning reports whether an OpenTelemetry SDK goroutine (the batch
// span processor, the OTLP exporter) is alive.
func exporterRunning() bool {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return bytes.Contains(buf[:n], []byte("go.opentelemetry.io/otel/sdk/trace")) ||
		bytes.Contains(buf[:n], []byte("otlptracegrpc"))
}

func TestTracingOff(t *testing.T) {
	t.Setenv(envEndpoint, "")
	t.Setenv(envTracesEndpoint, "")
	tr, err := StartTracing(t.Context(), TracingOptions{}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if tr.Enabled() {
		t.Fatal("tracing on without an endpoint")
	}
	cc := serve(t, Options{Tracing: tr})
	if _, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if exporterRunning() {
		t.Error("an OpenTelemetry exporter goroutine runs with tracing off")
	}
	if err := tr.Shutdown(t.Context()); err != nil {
		t.Error(err)
	}
}

func TestTracingBadEndpoint(t *testing.T) {
	for _, tc := range []struct{ option, env, want string }{
		{"127.0.0.1:4317", "", "otlp_endpoint \"127.0.0.1:4317\": want an OTLP/gRPC collector URL"},
		{"ftp://collector:4317", "", "want an OTLP/gRPC collector URL"},
		{"http://", "", "want an OTLP/gRPC collector URL"},
		{"", "collector:4317", envEndpoint + ` "collector:4317": want an OTLP/gRPC collector URL`},
	} {
		t.Setenv(envEndpoint, tc.env)
		t.Setenv(envTracesEndpoint, "")
		_, err := StartTracing(t.Context(), TracingOptions{Endpoint: tc.option}, "test")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("option %q, env %q: got %v, want an error containing %q", tc.option, tc.env, err, tc.want)
		}
	}
}

func TestTracingOn(t *testing.T) {
	for _, viaEnv := range []bool{false, true} {
		name := "otlp_endpoint"
		if viaEnv {
			name = envEndpoint
		}
		t.Run(name, func(t *testing.T) {
			c := otlp.Start(t)
			url := c.URL
			o := TracingOptions{Endpoint: url}
			t.Setenv(envTracesEndpoint, "")
			t.Setenv(envEndpoint, "")
			if viaEnv {
				o.Endpoint = ""
				t.Setenv(envEndpoint, url)
			}
			tr, err := StartTracing(t.Context(), o, "test")
			if err != nil {
				t.Fatal(err)
			}
			if !tr.Enabled() {
				t.Fatal("tracing off with an endpoint")
			}
			cc, srv := serveAndServer(t, Options{Tracing: tr})
			if _, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
			// The server's span ends after the client has its answer:
			// GracefulStop waits for the handler, span end included.
			srv.GracefulStop()
			// Shutdown exports what is queued.
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if err := tr.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			kinds := map[tracepb.Span_SpanKind][]byte{}
			for _, s := range c.Spans() {
				if s.GetName() == "grpc.health.v1.Health/Check" {
					kinds[s.GetKind()] = s.GetTraceId()
				}
			}
			server, client := kinds[tracepb.Span_SPAN_KIND_SERVER], kinds[tracepb.Span_SPAN_KIND_CLIENT]
			if server == nil || client == nil {
				t.Fatalf("got spans %v, want a client and a server span of the call", c.Spans())
			}
			if !bytes.Equal(server, client) {
				t.Errorf("the server span's trace %x is not the client's %x: no propagation", server, client)
			}
		})
	}
}
