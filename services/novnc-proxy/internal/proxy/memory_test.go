package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"
)

// TestIdleSessionMemory: an idle console costs the proxy two goroutines
// (one per relay direction; the HTTP handler has returned) and no more.
// It logs roughly how much memory that is (heap and goroutine stacks);
// `make bench` owns that number.
func TestIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 300
	w := newWorld(t, func(c *worldConfig) { c.opts.PingInterval = time.Minute; c.core.IdleTimeout = time.Hour })

	// The VNC side: accept and hold, sending nothing.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, n)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		close(held)
		for c := range held {
			c.Close()
		}
	})
	port := int32(l.Addr().(*net.TCPAddr).Port)
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = w.auth.Mint(w.instance, "novnc", "127.0.0.1", port, time.Minute)
	}

	// The browser side: bare TCP connections that upgrade and then idle, so
	// the client costs next to nothing in this process.
	measure := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	before := measure()
	goroutines := runtime.NumGoroutine()
	clients := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	addr := w.http.Listener.Addr().String()
	for _, tok := range tokens {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		fmt.Fprintf(c, "GET /?token=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: %s\r\n\r\n", tok, addr, w.origin)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
	}
	waitFor(t, "every session to start", func() bool { return w.core.Len() == n })
	// The handlers return right after handing their sessions over.
	const perSession = 2
	waitFor(t, "the HTTP handlers to return", func() bool { return runtime.NumGoroutine() <= goroutines+perSession*n })
	after := measure()
	per := float64(after-before) / n
	t.Logf("idle sessions: %d; heap+stacks: %.1f KiB per session (client and VNC-side sockets of this process included); goroutines: %d more",
		n, per/1024, runtime.NumGoroutine()-goroutines)
	if got := runtime.NumGoroutine() - goroutines; got < n {
		t.Errorf("goroutines: %d more for %d sessions, want at least one each (is the measurement broken?)", got, n)
	}
}
