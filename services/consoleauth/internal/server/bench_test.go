package server_test

import (
	"sync"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
)

// BenchmarkGetConsoleURL mints console URLs over gRPC against a consoleauth
// on one embedded etcd with an in-test agent, and reports URLs/s (target: at
// least 2,000/s). One op is a batch of urlsPerOp URLs from callers
// concurrent callers, so even -benchtime 1x measures throughput rather than
// one call's latency. Each URL costs two etcd reads (location, agent), one
// agent call and one transaction; leases are shared.
func BenchmarkGetConsoleURL(b *testing.B) {
	const urlsPerOp, callers = 256, 32
	w := newWorld(b, nil)
	w.agent.AddInstance(b, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(b)
	req := &consoleauthv1.GetConsoleURLRequest{ServerId: vm,
		RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}}
	// Warm up: connections and the first lease.
	if _, err := w.grpc.GetConsoleURL(ctx, req); err != nil {
		b.Fatalf("warm up: %v", err)
	}

	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		work := make(chan struct{}, urlsPerOp)
		for range urlsPerOp {
			work <- struct{}{}
		}
		close(work)
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for range work {
					if _, err := w.grpc.GetConsoleURL(ctx, req); err != nil {
						b.Errorf("get console url: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N*urlsPerOp)/elapsed.Seconds(), "URLs/s")
}
