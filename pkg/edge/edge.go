// Package edge is the public side of both console proxies' listeners. It
// promises:
//
//   - Accept never gives up while the listener is open. A failed accept (out
//     of file descriptors, EMFILE or ENFILE, or any other error) is retried
//     after a backoff from 5 ms doubling to 1 s, as net/http does. Each
//     episode of failures is logged twice, when it starts and when accepts
//     have worked again for a while (with how many failed), never once per
//     error; every failure
//     is counted (vncgate_proxy_accept_errors_total). A process that ran out
//     of file descriptors serves again as soon as some are freed.
//   - Connections are capped globally (max_connections) and per client
//     address (max_connections_per_client; an IPv6 client is its /64),
//     counted from accept to Close, so connections that have not sent a
//     request yet count too. A connection over a cap never reaches the
//     server: Options.Refuse answers it in the proxy's protocol under
//     RefuseTimeout, at most MaxRefusing at once (past that, they are closed
//     unanswered), and it is counted (vncgate_proxy_connections_refused_total).
//   - Connections from trusted proxies (trusted_proxies) count against the
//     global cap only: their clients' addresses are known later (a PROXY
//     header, X-Forwarded-For), and the proxy then caps the client with
//     Caps.Client.
package edge

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vncgate/vncgate/pkg/proxymetrics"
)

// Refusals of a connection over a cap; Options.Refuse gets one of them.
var (
	ErrTooMany           = errors.New("too many connections")
	ErrTooManyFromClient = errors.New("too many connections from this address")
)

// Backoff bounds of a failing accept (net/http's).
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

// RefuseTimeout bounds answering one connection over a cap; MaxRefusing
// bounds how many are answered at once.
const (
	RefuseTimeout = time.Second
	MaxRefusing   = 64
)

// Caps counts open connections, in all and per client; safe for concurrent
// use. A nil *Caps caps nothing.
type Caps struct {
	max, perClient int
	metrics        *proxymetrics.Metrics

	mu       sync.Mutex
	open     int
	byClient map[netip.Prefix]int
}

// NewCaps allows max connections in all and perClient per client address;
// 0 means no cap. Refusals are counted in m (nil: not exported).
func NewCaps(max, perClient int, m *proxymetrics.Metrics) *Caps {
	if m == nil {
		m = proxymetrics.New(nil)
	}
	return &Caps{max: max, perClient: perClient, metrics: m, byClient: map[netip.Prefix]int{}}
}

// ClientKey is the key a client address is capped under: the address, or
// for IPv6 its /64 (one host usually holds a whole /64).
func ClientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := a.BitLen()
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// accept takes a place for a new connection from peer; with perClient, one
// of peer's places too. It returns how to give them back.
func (c *Caps) accept(peer netip.Addr, perClient bool) (release func(), err error) {
	if c == nil {
		return func() {}, nil
	}
	key := ClientKey(peer)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max > 0 && c.open >= c.max {
		c.metrics.ConnRefused(proxymetrics.CapMaxConnections)
		return nil, ErrTooMany
	}
	perClient = perClient && peer.IsValid() && c.perClient > 0
	if perClient && c.byClient[key] >= c.perClient {
		c.metrics.ConnRefused(proxymetrics.CapPerClient)
		return nil, ErrTooManyFromClient
	}
	c.open++
	if perClient {
		c.byClient[key]++
	}
	c.metrics.ConnOpened()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.open--
		if perClient {
			c.forget(key)
		}
		c.metrics.ConnClosed()
	}, nil
}

// Client takes one of client's places for a connection whose client the
// proxy learned after accept (from a trusted proxy's PROXY header or
// X-Forwarded-For). It returns ErrTooManyFromClient, counted, when client
// has its maximum; otherwise release gives the place back.
func (c *Caps) Client(client netip.Addr) (release func(), err error) {
	if c == nil || c.perClient <= 0 || !client.IsValid() {
		return func() {}, nil
	}
	key := ClientKey(client)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byClient[key] >= c.perClient {
		c.metrics.ConnRefused(proxymetrics.CapPerClient)
		return nil, ErrTooManyFromClient
	}
	c.byClient[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.forget(key)
		})
	}, nil
}

// forget gives back one of key's places; c.mu is held.
func (c *Caps) forget(key netip.Prefix) {
	if c.byClient[key] <= 1 {
		delete(c.byClient, key)
		return
	}
	c.byClient[key]--
}

// Open is the number of connections open now.
func (c *Caps) Open() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}

// Options are a Listener's caps, trust and answers.
type Options struct {
	// Caps counts connections; nil: no caps.
	Caps *Caps
	// Trusted proxies' connections are capped per client by the proxy,
	// once it knows the client (Caps.Client).
	Trusted Trust
	// Refuse answers a connection over a cap (err is ErrTooMany or
	// ErrTooManyFromClient) in the proxy's protocol; the connection has a
	// RefuseTimeout deadline and is closed when Refuse returns. Nil: closed
	// unanswered.
	Refuse func(c net.Conn, err error)
	// Metrics counts failed accepts; nil: not exported.
	Metrics *proxymetrics.Metrics
	Log     *slog.Logger
}

// Listener is a net.Listener; see the package comment.
type Listener struct {
	inner    net.Listener
	opts     Options
	done     chan struct{}
	once     sync.Once
	refusing chan struct{} // a semaphore of MaxRefusing

	mu       sync.Mutex
	failures int         // failed accepts in the current episode; 0: none
	since    time.Time   // when the episode began
	lastFail time.Time   // the episode's latest failure
	quiet    *time.Timer // ends the episode once accepts work for episodeQuiet
}

// episodeQuiet is how long accepts must work, without a failure, for an
// episode of failures to end (longer than the longest backoff, so a port
// hovering at the descriptor limit stays one episode).
const episodeQuiet = 2 * maxBackoff

// NewListener serves inner's connections with opts.
func NewListener(inner net.Listener, opts Options) *Listener {
	if opts.Metrics == nil {
		opts.Metrics = proxymetrics.New(nil)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Listener{inner: inner, opts: opts, done: make(chan struct{}), refusing: make(chan struct{}, MaxRefusing)}
}

// Accept returns the next connection within the caps. It fails only once
// the listener is closed.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if l.closed() || errors.Is(err, net.ErrClosed) {
				return nil, net.ErrClosed
			}
			delay = min(max(2*delay, minBackoff), maxBackoff)
			l.failed(err, delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return nil, net.ErrClosed
			}
			continue
		}
		delay = 0
		l.recovered()
		peer := AddrOf(c.RemoteAddr())
		release, err := l.opts.Caps.accept(peer, !l.opts.Trusted.Contains(peer))
		if err != nil {
			l.refuse(c, err)
			continue
		}
		return &Conn{Conn: c, release: release}, nil
	}
}

// failed counts a failed accept and logs the start of an episode.
func (l *Listener) failed(err error, retry time.Duration) {
	l.opts.Metrics.AcceptError()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.failures == 0 {
		l.since = now
		l.opts.Log.Warn("accept failing: retrying with backoff until it works", "addr", l.inner.Addr().String(), "error", err, "retry_in", retry.String())
	}
	l.failures++
	l.lastFail = now
}

// recovered notes a working accept: during an episode, it ends the episode
// (logged with how many accepts failed) once accepts worked episodeQuiet
// without a failure.
func (l *Listener) recovered() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failures == 0 || l.quiet != nil {
		return
	}
	l.quiet = time.AfterFunc(episodeQuiet, l.endEpisode)
}

func (l *Listener) endEpisode() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if left := episodeQuiet - time.Since(l.lastFail); left > 0 {
		l.quiet.Reset(left) // failed again meanwhile
		return
	}
	l.opts.Log.Info("accept working again", "addr", l.inner.Addr().String(), "failed_accepts", l.failures,
		"after", l.lastFail.Sub(l.since).Round(time.Millisecond).String())
	l.failures, l.quiet = 0, nil
}

// refuse answers a connection over a cap in its own goroutine, or closes it
// at once when MaxRefusing are being answered.
func (l *Listener) refuse(c net.Conn, why error) {
	if l.opts.Refuse == nil {
		c.Close()
		return
	}
	select {
	case l.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(RefuseTimeout))
		l.opts.Refuse(c, why)
	}()
}

func (l *Listener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// Close stops accepting; open connections go on.
func (l *Listener) Close() error {
	err := net.ErrClosed
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
		l.mu.Lock()
		if l.quiet != nil {
			l.quiet.Stop()
		}
		l.mu.Unlock()
	})
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Conn is an accepted connection holding its places in the caps until
// Close. Reads and writes are the inner connection's, untouched.
type Conn struct {
	net.Conn
	release func()
	once    sync.Once
}

// Close closes the connection and gives back its places.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes a TCP connection (the relay's half-close).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// CloseRead half-closes a TCP connection (the relay's half-close).
func (c *Conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errors.ErrUnsupported
}

// TransparentTCP is the TCP connection under c (see relay.TransparentTCP),
// so an idle relayed session holds no copy buffer.
func (c *Conn) TransparentTCP() *net.TCPConn {
	tc, _ := c.Conn.(*net.TCPConn)
	return tc
}

// AddrOf is the IP address of a, IPv4-mapped addresses unmapped; the zero
// Addr when a has none.
func AddrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		host = a.String()
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}
