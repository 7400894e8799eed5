package etcd

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/vncgate/vncgate/testkit/loopback"
)

// Link is a TCP forwarder to an etcd server that a test can cut, to take
// one client away from etcd while others still reach it (etcd itself stays
// up: writes and compactions go on behind the cut client's back).
type Link struct {
	// Addr is the forwarder's address, host:port: a client's endpoint.
	Addr string

	mu   sync.Mutex
	down bool
	open map[net.Conn]struct{}
}

// NewLink forwards a new loopback address to s until t ends.
func (s *Server) NewLink(t testing.TB) *Link {
	t.Helper()
	l := &Link{open: map[net.Conn]struct{}{}}
	l.Addr = loopback.Serve(t, func(c net.Conn) {
		l.mu.Lock()
		if l.down {
			l.mu.Unlock()
			return
		}
		up, err := net.Dial("tcp", s.Endpoint)
		if err != nil {
			l.mu.Unlock()
			return
		}
		l.open[c], l.open[up] = struct{}{}, struct{}{}
		l.mu.Unlock()
		done := make(chan struct{}, 2)
		go func() { io.Copy(up, c); done <- struct{}{} }()
		go func() { io.Copy(c, up); done <- struct{}{} }()
		<-done
		up.Close()
		c.Close()
		<-done
		l.mu.Lock()
		delete(l.open, c)
		delete(l.open, up)
		l.mu.Unlock()
	})
	return l
}

// Cut closes every forwarded connection and refuses new ones until Restore.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = true
	for c := range l.open {
		c.Close()
	}
}

// Restore forwards new connections again.
func (l *Link) Restore() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = false
}
