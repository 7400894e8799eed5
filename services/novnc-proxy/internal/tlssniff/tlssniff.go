// Package tlssniff serves TLS and plain connections on one port, as
// websockify does when it has a certificate but ssl_only is off: it reads the
// first byte of each connection (0x16 starts a TLS handshake) under a
// deadline, then hands the connection on as a *tls.Conn (so net/http sees
// TLS) or as the plain connection, with that byte put back.
//
// Only closing the inner listener ends the Listener: any other accept error
// (out of file descriptors, say) is retried after a backoff from 5 ms to 1 s,
// as net/http does. (Package edge, under it in novnc-proxy, already does
// that and logs; this keeps the port alive whatever it wraps.)
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
			if errors.Is(err, net.ErrClosed) {
				l.mu.Lock()
				l.err = err
				l.mu.Unlock()
				l.Close()
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		go l.sniff(c)
	}
}

func (l *Listener) sniff(c net.Conn) {
	conn, _, err := Sniff(c, l.cfg, l.timeout)
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		c.Close()
	}
}

// Sniff reads c's first byte under timeout and returns c as a TLS server
// connection of cfg (not yet handshaken) when it starts a TLS handshake, or
// as the plain connection, with the byte put back either way.
func Sniff(c net.Conn, cfg *tls.Config, timeout time.Duration) (conn net.Conn, isTLS bool, err error) {
	var b [1]byte
	c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := c.Read(b[:]); err != nil {
		return nil, false, err
	}
	c.SetReadDeadline(time.Time{})
	conn = &prefixConn{Conn: c, first: b[0], pending: true}
	if b[0] == recordTypeHandshake {
		return tls.Server(conn, cfg), true, nil
	}
	return conn, false, nil
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

// NetConn is the sniffed connection under c.
func (c *prefixConn) NetConn() net.Conn { return c.Conn }
