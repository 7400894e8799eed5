// Package otlp is an in-process OTLP/gRPC trace collector for tests of
// tracing: services export to its URL, tests read the spans it received.
package otlp

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Collector receives trace exports until the test ends.
type Collector struct {
	collectortrace.UnimplementedTraceServiceServer
	// URL is what otlp_endpoint takes: http://127.0.0.1:PORT.
	URL string

	mu    sync.Mutex
	spans []*tracepb.Span
}

// Start runs a collector on a loopback port, stopped when t ends.
func Start(t testing.TB) *Collector {
	t.Helper()
	c := &Collector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	c.URL = "http://" + l.Addr().String()
	return c
}

// Export is the OTLP trace service.
func (c *Collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans returns the spans received so far.
func (c *Collector) Spans() []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans)
}
