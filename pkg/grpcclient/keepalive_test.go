package grpcclient

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/testkit/loopback"
)

// freezer forwards TCP to addr until freeze: from then on it moves no
// byte either way and closes nothing, as a host that lost power or a
// firewall that forgot the flow (no FIN, no RST).
type freezer struct {
	addr   string
	frozen atomic.Bool
	thaw   chan struct{} // closed when the test ends, to let goroutines go
}

func newFreezer(t *testing.T, to string) *freezer {
	t.Helper()
	f := &freezer{thaw: make(chan struct{})}
	f.addr = loopback.Serve(t, func(c net.Conn) {
		up, err := net.Dial("tcp", to)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{}, 2)
		go func() { f.copy(up, c); done <- struct{}{} }()
		go func() { f.copy(c, up); done <- struct{}{} }()
		<-done
	})
	// After Serve's cleanup in the order of cleanups: Serve waits for
	// the handlers, which wait for this.
	t.Cleanup(func() { close(f.thaw) })
	return f
}

// copy forwards src to dst, holding what it read once frozen.
func (f *freezer) copy(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if f.frozen.Load() {
			<-f.thaw
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestSilentReplicaDropped: when a replica goes silent without closing
// its connection, keepalive notices and calls fail over to the other
// replica: 20 checks, each allowed a minute, all succeed. Without
// keepalive, the checks the round robin sends to the silent replica
// would hang for their whole minute (its connection stays READY).
func TestSilentReplicaDropped(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: keepalive needs at least 10 s to notice")
	}
	p := newPKI(t, "127.0.0.1")
	a := startReplica(t, "a", "127.0.0.1:0", p.server)
	b := startReplica(t, "b", "127.0.0.1:0", p.server)
	f := newFreezer(t, a.addr)
	// gRPC raises a client's ping interval to 10 s at least: the shortest
	// this test can use. The timeout leaves a loaded machine time to answer
	// b's pings. The servers run ServerOptions, as ours do.
	fast := keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 3 * time.Second}
	_, client := dial(t, f.addr+","+b.addr, p.client, Options{DialOptions: []grpc.DialOption{grpc.WithKeepaliveParams(fast)}})
	until(t, "both replicas used", client, func(string, error) bool { return a.calls.Load() > 0 && b.calls.Load() > 0 })

	f.frozen.Store(true)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: "t", ConsoleType: "novnc"}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a check with replica a silent: %v, want b to answer", err)
	}
}

// TestServerOptionsTolerateOurClients: the servers' enforcement allows
// pings as often as ClientKeepalive sends them, with a stream open or not
// (a client pinging more often than a server allows gets GOAWAY
// too_many_pings and loses every call in flight).
func TestServerOptionsTolerateOurClients(t *testing.T) {
	if keepaliveMinTime >= ClientKeepalive.Time {
		t.Errorf("servers tolerate pings %v apart, clients send them every %v: want the tolerance below", keepaliveMinTime, ClientKeepalive.Time)
	}
	if ClientKeepalive.PermitWithoutStream {
		t.Errorf("clients ping idle connections; want pings only while a call or stream is open")
	}
}
