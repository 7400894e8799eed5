// Package loopback runs throwaway TCP servers on 127.0.0.1 for tests: a VNC
// server stand-in that echoes, streams or closes, with every connection it
// accepted closed and every handler awaited when the test ends.
package loopback

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Serve runs handle for every connection accepted on a new loopback
// listener, closing the connection when handle returns, and returns the
// listener's address. When t ends, the listener and the connections still
// open are closed and Serve waits for every handle to return.
func Serve(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			})
		}
	})
	return l.Addr().String()
}

// Echo serves connections that echo every byte until the client closes.
func Echo(t testing.TB) string {
	t.Helper()
	return Serve(t, func(c net.Conn) { io.Copy(c, c) })
}

// Pair returns the two ends of a loopback TCP connection, both closed when
// t ends. (TCP rather than net.Pipe: writes are buffered and half-close
// works, as on the proxies' real connections.)
func Pair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		a.Close()
		t.Fatal("loopback accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
