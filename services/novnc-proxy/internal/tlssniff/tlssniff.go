// Package tlssniff serves TLS and plain connections on one port, as
// websockify does when it has a certificate but ssl_only is off: it reads the
// first byte of each connection (0x16 starts a TLS handshake) under a
// deadline, then hands the connection on as a *tls.Conn (so net/http sees
// TLS) or as the plain connection, with that byte put back.
package tlssniff

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// recordTypeHandshake is the first byte of every TLS ClientHello.
const recordTypeHandshake = 0x16

// Listener is a net.Listener; see the package comment.
type Listener struct {
	inner   net.Listener
	cfg     *tls.Config
	timeout time.Duration

	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	err       error // why the inner listener stopped
}

// New starts sniffing connections accepted from inner. A connection that
// sends nothing within timeout is closed.
func New(inner net.Listener, cfg *tls.Config, timeout time.Duration) *Listener {
	l := &Listener{inner: inner, cfg: cfg, timeout: timeout, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func (l *Listener) acceptLoop() {
	var delay time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.Close()
			return
		}
		delay = 0
		go l.sniff(c)
	}
}

func (l *Listener) sniff(c net.Conn) {
	var b [1]byte
	c.SetReadDeadline(time.Now().Add(l.timeout))
	if _, err := c.Read(b[:]); err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	var conn net.Conn = &prefixConn{Conn: c, first: b[0], pending: true}
	if b[0] == recordTypeHandshake {
		conn = tls.Server(conn, l.cfg)
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next sniffed connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.inner.Close()
	})
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// prefixConn gives back the sniffed byte before the rest of the stream.
type prefixConn struct {
	net.Conn
	first   byte
	pending bool
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if c.pending && len(p) > 0 {
		c.pending = false
		p[0] = c.first
		return 1, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite keeps TCP half-close available to whoever holds the conn.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
